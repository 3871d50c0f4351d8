//! Helpers for Myelin's privileged tests and the tests against a real etcd.
//!
//! Tests that need root (namespaces, eBPF) call [`privileged`] first. Outside
//! CI a machine without the privilege skips them with a note; in CI
//! (`CI=true`) they must run, so a missing privilege fails the test instead.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_HASH: u32 = 1;

/// One `bpf(2)` call with `attr` (zero beyond what the command reads).
fn bpf(command: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, writable union bpf_attr image of 128 bytes whose
    // pointers (set by the callers) outlive the call.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), attr.len()) };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Pins a hash map named `name` in directory `maps` (on a bpffs) with the given
/// record sizes and entries, as a build with that layout would have left it: for
/// tests of what a newer build makes of an older one's maps. Panics on failure.
pub fn pin_hash_map(
    maps: &Path,
    name: &str,
    key_size: u32,
    value_size: u32,
    entries: &[(&[u8], &[u8])],
) {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_MAP_TYPE_HASH.to_ne_bytes());
    attr[4..8].copy_from_slice(&key_size.to_ne_bytes());
    attr[8..12].copy_from_slice(&value_size.to_ne_bytes());
    attr[12..16].copy_from_slice(&1024u32.to_ne_bytes());
    let name_bytes = name.as_bytes();
    attr[28..28 + name_bytes.len().min(15)]
        .copy_from_slice(&name_bytes[..name_bytes.len().min(15)]);
    let fd = bpf(BPF_MAP_CREATE, &mut attr).expect("create map") as i32;
    // SAFETY: the kernel just returned this fd to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for (key, value) in entries {
        assert_eq!(
            (key.len(), value.len()),
            (key_size as usize, value_size as usize)
        );
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(value.as_ptr() as u64).to_ne_bytes());
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).expect("insert");
    }
    let path = CString::new(maps.join(name).as_os_str().as_bytes()).expect("path");
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_OBJ_PIN, &mut attr).expect("pin");
}

/// Whether Debian's `etcd` is on PATH for the etcd test `name`. Returns false (skip) only
/// outside CI; in CI a missing etcd panics, failing the test (scripts/setup.sh installs it).
pub fn require_etcd(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("etcd").is_file()));
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if found {
        return true;
    }
    assert!(
        !in_ci,
        "{name}: CI=true requires the etcd tests to run, but there is no `etcd` on PATH \
         (install Debian's etcd-server: scripts/setup.sh)"
    );
    eprintln!("{name}: skipped (needs Debian's etcd-server; CI runs it)");
    false
}

/// Whether the container runtime the CNI tests drive is here (`podman`, `runc`,
/// `buildah`, `nsenter` on PATH and busybox-static's `/bin/busybox`) for test `name`.
/// Returns false (skip) only outside CI; in CI a missing piece panics, failing the test
/// (scripts/setup.sh installs them).
pub fn require_container_runtime(name: &str) -> bool {
    let on_path = |program: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    };
    let missing: Vec<&str> = ["podman", "runc", "buildah", "nsenter"]
        .into_iter()
        .filter(|program| !on_path(program))
        .chain((!Path::new("/bin/busybox").is_file()).then_some("/bin/busybox"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !in_ci,
        "{name}: CI=true requires the container runtime tests to run, but {} missing \
         (install podman, runc, buildah, busybox-static: scripts/setup.sh)",
        missing.join(", ")
    );
    eprintln!("{name}: skipped (needs {}; CI runs it)", missing.join(", "));
    false
}
