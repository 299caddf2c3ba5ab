//! `skypipe-sim`: writes the built-in simulated data sets used by the demo and the tests.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Built-in simulated data sets (seeded, sized from tiny to benchmark scale).
///
/// `cmb` reads an optional TOML file of simulation keys (every key: configs/sim-cmb.toml);
/// `image` takes flags only. See `skypipe-sim <COMMAND> --help`.
#[derive(Debug, Parser)]
#[command(name = "skypipe-sim", version)]
struct Cli {
    #[command(subcommand)]
    data_set: DataSet,
}

#[derive(Debug, Subcommand)]
enum DataSet {
    /// A Planck-like CMB scan: attitude, focal plane, raw timestreams, and the truth.
    Cmb(skypipe_cmb::sim::SimArgs),
    /// An HSC-like imaging survey: raw CCD exposures, calibration frames, reference catalogue, truth.
    Image(skypipe_optical::sim::SimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(match &cli.data_set {
        DataSet::Cmb(args) => skypipe_cmb::sim::run(args),
        DataSet::Image(args) => skypipe_optical::sim::run(args),
    })
}
