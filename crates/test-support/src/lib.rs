//! Helpers for Myelin's privileged tests.
//!
//! Tests that need root (namespaces, eBPF) call [`privileged`] first. Outside
//! CI a machine without the privilege skips them with a note; in CI
//! (`CI=true`) they must run, so a missing privilege fails the test instead.

use std::path::{Path, PathBuf};

/// Whether the privileged test `name` can run here. Returns false (skip) only
/// outside CI; in CI a missing privilege panics, failing the test.
pub fn privileged(name: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if root {
        return true;
    }
    assert!(
        !in_ci,
        "{name}: CI=true requires the privileged tests to run, but this process is not root"
    );
    eprintln!("{name}: skipped (needs root; CI runs it)");
    false
}

/// A bpffs mounted on a fresh temporary directory, unmounted and removed on
/// drop (also when the test fails).
pub struct ScratchBpffs {
    dir: tempfile::TempDir,
}

impl ScratchBpffs {
    /// Mounts a new bpffs under the system temporary directory.
    pub fn mount() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("myelin-test-bpffs-")
            .tempdir()?;
        nix::mount::mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(std::io::Error::from)?;
        Ok(Self { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The mount point as an owned path.
    pub fn path_buf(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for ScratchBpffs {
    fn drop(&mut self) {
        // Lazy unmount: a pin still open elsewhere must not keep the test's
        // directory alive.
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}
