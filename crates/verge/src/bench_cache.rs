//! `verge bench cache`: replays a trace through every eviction policy.

/// Arguments of `verge bench cache`.
#[derive(clap::Args)]
pub struct CacheBenchArgs {}

/// Runs the cache benchmark.
pub fn run(_args: CacheBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("verge bench cache: not built yet")
}
