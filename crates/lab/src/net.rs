//! Network namespaces (made and removed in this process by
//! `myelin_podnet::netns`), the node's and the underlay's links, addresses and
//! routes through iproute2, and sysctls written from a thread that entered
//! the namespace.

use std::os::fd::AsFd as _;
use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs `ip` with `args`; the error carries the command and what it printed.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2 is required: apt-get install iproute2)")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Network namespaces that exist now.
pub fn list_netns() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(myelin_podnet::netns::NETNS_DIR)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Creates a network namespace with its loopback up.
pub fn add_netns(name: &str) -> anyhow::Result<()> {
    let path = myelin_podnet::netns::create(name)?;
    Ok(myelin_podnet::link_up(&path, "lo")?)
}

/// Deletes a network namespace (its interfaces go with it); absent is fine.
pub fn delete_netns(name: &str) -> anyhow::Result<()> {
    Ok(myelin_podnet::netns::delete(name)?)
}

/// Runs `f` on a thread that has entered network namespace `name`.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = myelin_podnet::netns::path(name);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the network namespace")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread working in network namespace {name} panicked"))?
}

/// Writes sysctls (`net/ipv4/ip_forward` style keys) inside namespace `name`.
pub fn sysctls(name: &str, settings: &[(&str, &str)]) -> anyhow::Result<()> {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    in_netns(name, move || {
        for (key, value) in settings {
            let path = format!("/proc/sys/{key}");
            std::fs::write(&path, &value).with_context(|| format!("setting {path} = {value}"))?;
        }
        Ok(())
    })
}
