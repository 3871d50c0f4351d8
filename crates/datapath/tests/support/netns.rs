//! Network namespaces of a test's own: created by name, entered by a
//! thread, deleted by name on drop (also when the test fails).

use std::os::fd::AsFd;
use std::process::Command;

use nix::sched::{CloneFlags, setns};

/// Runs `ip ARGS` in the test's own namespace; panics on failure.
pub fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

/// Runs a command in namespace `ns`; panics on failure.
pub fn in_ns(ns: &str, args: &[&str]) {
    let status = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .status()
        .expect("run ip netns exec");
    assert!(status.success(), "{ns}: {}", args.join(" "));
}

/// Network namespaces created by this test, deleted by name on drop.
pub struct Namespaces {
    pub names: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Moves the current thread into namespace `name`.
pub fn enter(name: &str) {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a thread of its own inside namespace `ns` (sockets it opens
/// stay in `ns`) and returns its result.
pub fn in_thread<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("thread in namespace")
}
