//! The built-in simulated data set (under construction).

/// Command-line options of this simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
}

/// Writes the data set; returns the process exit code.
pub fn run(args: &SimArgs) -> u8 {
    eprintln!("error: not built yet: {}", args.out.display());
    1
}
