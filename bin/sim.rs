//! `skypipe-sim`: writes the built-in simulated data sets used by the demo and the tests.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Built-in simulated data sets (seeded, sized from tiny to benchmark scale).
///
/// `cmb` reads an optional TOML file of simulation keys (every key: configs/sim-cmb.toml);
/// `image` takes flags only; `residuals` compares a multiband catalogue of an `image` data
/// set with its truth. See `skypipe-sim <COMMAND> --help`.
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
    /// A multiband catalogue against the truth of the `image` data set it was made from: prints
    /// matches, the astrometric RMS of bright stars and the median magnitude residual per band,
    /// and draws both as a PNG (astrometric offsets; magnitude residuals against true magnitude).
    Residuals(ResidualArgs),
}

/// Arguments of `skypipe-sim residuals`.
#[derive(Debug, clap::Args)]
struct ResidualArgs {
    /// The `skypipe-sim image --out` directory (its `truth/` is read).
    #[arg(long)]
    data: PathBuf,
    /// A multiband catalogue (tract or patch, `RUN_DIR/multiband/tTTTT.fits`).
    #[arg(long)]
    catalog: PathBuf,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Width of the picture, pixels.
    #[arg(long, default_value_t = 800)]
    width: u32,
}

/// Runs `skypipe-sim residuals`: 0 when the picture was written, 1 on an error (named).
fn residuals(args: &ResidualArgs) -> u8 {
    match skypipe_multiband::truth::residual_plot(&args.data, &args.catalog, &args.out, args.width)
    {
        Ok(summary) => {
            let r = &summary.residuals;
            println!(
                "matched {} of {} catalogue objects to the truth",
                r.matched, r.objects
            );
            println!(
                "astrometry: {} stars brighter than {} mag, median offset {:.2} mas, RMS {:.2} mas",
                r.astrometric_mas.len(),
                r.bright_mag,
                r.astrometric_median_mas(),
                r.astrometric_rms_mas()
            );
            for (band, (median, n)) in r.bright_median_dmag() {
                println!("photometry {band}: median PSF mag - true {median:+.4} over {n} stars");
            }
            println!("picture: {}", summary.picture.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(match &cli.data_set {
        DataSet::Cmb(args) => skypipe_cmb::sim::run(args),
        DataSet::Image(args) => skypipe_optical::sim::run(args),
        DataSet::Residuals(args) => residuals(args),
    })
}
