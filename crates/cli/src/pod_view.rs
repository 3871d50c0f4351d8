//! `myelin lab sandbox -- CMD`: runs a pod's command (the kubelet's and
//! `lab exec`'s) with a pod's view of this machine. `ip netns exec` already
//! gives it the pod's network and a mount namespace of its own; here the
//! labs' run directory (agent and lab sockets, state, certificates, logs)
//! is hidden under an empty tmpfs, and the capabilities that could undo
//! that (unmounting, reaching the host's mounts through another process's
//! /proc/PID/root, opening files by handle, loading modules) leave the
//! bounding set, so the command and all it starts can never regain them.
//! It keeps root's other capabilities: binding port 80, raw sockets.

use std::os::unix::process::CommandExt as _;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use nix::mount::{MsFlags, mount};

/// What a pod must not see: every lab's run directory.
const HIDDEN: &str = "/run/myelin";

/// The capabilities a pod process gives up for good (numbers from
/// linux/capability.h): CAP_DAC_READ_SEARCH, CAP_SYS_MODULE,
/// CAP_SYS_PTRACE, CAP_SYS_ADMIN.
const DROPPED: [u32; 4] = [2, 16, 19, 21];

/// Hides [`HIDDEN`], drops [`DROPPED`], then replaces this process with
/// `command`. Returns only on failure.
pub fn exec_as_pod(command: &[String]) -> anyhow::Error {
    match hide_and_drop() {
        Ok(()) => {
            let Some((program, args)) = command.split_first() else {
                return anyhow!("no command given: myelin lab sandbox -- CMD [ARGS...]");
            };
            // A pod's files are its own business again (the supervisor's umask is 077).
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            let error = std::process::Command::new(program).args(args).exec();
            anyhow!("running {program:?} in the pod: {error}")
        }
        Err(e) => e.context("giving the pod its view of this machine (needs root)"),
    }
}

fn hide_and_drop() -> anyhow::Result<()> {
    // A mount namespace of its own, whose mounts never reach the host's.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("making / a slave mount")?;
    if Path::new(HIDDEN).is_dir() {
        mount(
            Some("tmpfs"),
            HIDDEN,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=16k"),
        )
        .with_context(|| format!("mounting an empty tmpfs over {HIDDEN}"))?;
    }
    for cap in DROPPED {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("dropping capability {cap} from the bounding set"));
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("clearing the ambient capabilities");
    }
    clear_inheritable()
}

/// Removes [`DROPPED`] from the inheritable set too: root's permitted set
/// after exec is the bounding set joined with the inheritable one.
fn clear_inheritable() -> anyhow::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a version-3 header and room for its two data words.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("capget");
    }
    for cap in DROPPED {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[word].inheritable &= !bit;
    }
    // SAFETY: capset with the header and data capget just filled.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    Ok(())
}
