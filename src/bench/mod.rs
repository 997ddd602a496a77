//! `edgeplex bench`: fan-out cost and wake-up latency of rings against a Unix-socket baseline.

use clap::Args;

/// `edgeplex bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {}

/// Options of the hidden reader process `edgeplex bench-reader`.
#[derive(Debug, Args)]
pub struct ReaderArgs {}

/// Run the benchmark and print one JSON object.
pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet built")
}

/// Run one reader process of the benchmark.
pub fn run_reader(_args: &ReaderArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet built")
}
