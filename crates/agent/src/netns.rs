//! Entering the node's network namespace.

use anyhow::Context as _;

/// Moves the calling thread into the named network namespace
/// (`/run/netns/NAME`). Call it before any other thread exists (before the
/// async runtime starts), so that every thread of the agent lives there.
pub fn enter_netns(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path)
        .with_context(|| format!("opening {path}: does the network namespace exist?"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name} (needs root)"))?;
    Ok(())
}
