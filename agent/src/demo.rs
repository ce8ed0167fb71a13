//! `switchback demo` (filled in below) and the demo's tiny HTTP service.

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {}

pub fn run(_keep: bool) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not built yet")
}

pub fn serve(_args: &ServiceArgs) -> anyhow::Result<()> {
    anyhow::bail!("the demo service is not built yet")
}
