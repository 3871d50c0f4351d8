//! Named network namespaces, as `ip netns add|delete` makes them but in
//! this process: a file under `/run/netns` with the namespace bind-mounted
//! on it, the directory a shared mount so that the name is seen in every
//! mount namespace.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::PodNetError;

/// Where named network namespaces live (iproute2's place).
pub const NETNS_DIR: &str = "/run/netns";

/// The file of network namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn failed<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(Errno) -> PodNetError + 'a {
    move |errno| PodNetError::Namespace {
        path: path.to_path_buf(),
        what,
        source: errno.into(),
    }
}

/// Makes [`NETNS_DIR`] a shared mount (bind-mounted onto itself first when
/// it is not a mount point yet), as iproute2 does.
fn share_directory() -> Result<(), PodNetError> {
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|source| PodNetError::Namespace {
        path: dir.to_path_buf(),
        what: "create the directory",
        source,
    })?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(failed(dir, "bind-mount onto itself"))?;
            shared().map_err(failed(dir, "make a shared mount"))
        }
        other => other.map_err(failed(dir, "make a shared mount")),
    }
}

/// Creates network namespace `name` with nothing in it but a loopback
/// that is down; fails if the name is taken.
pub fn create(name: &str) -> Result<PathBuf, PodNetError> {
    share_directory()?;
    let file = path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&file)
        .map_err(|source| PodNetError::Namespace {
            path: file.clone(),
            what: "create",
            source,
        })?;
    let target = file.clone();
    let bound = std::thread::spawn(move || {
        // Only this thread moves: the namespace is new and empty.
        unshare(CloneFlags::CLONE_NEWNET).map_err(failed(&target, "unshare"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(failed(&target, "bind-mount"))
    })
    .join()
    .map_err(|_| PodNetError::Worker("it panicked".into()))?;
    if let Err(error) = bound {
        let _ = std::fs::remove_file(&file);
        return Err(error);
    }
    Ok(file)
}

/// Deletes network namespace `name` (its links go with it once nothing
/// holds it); a name that does not exist is not an error.
pub fn delete(name: &str) -> Result<(), PodNetError> {
    let file = path(name);
    if File::open(&file).is_err() {
        return Ok(());
    }
    match umount2(&file, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(errno) => return Err(failed(&file, "unmount")(errno)),
    }
    std::fs::remove_file(&file).map_err(|source| PodNetError::Namespace {
        path: file,
        what: "remove",
        source,
    })
}
