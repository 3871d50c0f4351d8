//! The lab's own bpffs mount. `ip netns exec` remounts /sys, so pins under
//! /sys/fs/bpf would not be shared with the processes it starts; the lab
//! mounts a bpffs of its own under its run directory instead.

use std::path::Path;

use anyhow::Context as _;

/// Whether `path` is a mount point of a bpffs.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let target = path.to_string_lossy();
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, mount_point, fs_type) = (fields.next(), fields.next(), fields.next());
        mount_point == Some(target.as_ref()) && fs_type == Some("bpf")
    })
}

/// Mounts a bpffs at `path` unless one is there already; only root may
/// enter it (a bpffs root is world-writable with the sticky bit otherwise).
pub fn ensure_mounted(path: &Path) -> anyhow::Result<()> {
    if is_mounted(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting a bpffs at {} (needs root)", path.display()))
}

/// Unmounts the bpffs at `path` (lazily, so open pins cannot block it).
pub fn unmount(path: &Path) {
    while is_mounted(path) {
        if nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}
