//! Benchmarks (see `docs/BENCHMARKS.md`).

/// Arguments of `xos-vmm bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Print one JSON array of records instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only run benchmarks whose name contains this.
    pub filter: Option<String>,
}

/// Runs `xos-vmm bench`.
pub fn main(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
