//! A lab with a name of its own, driven through the `myelin` binary as a
//! user would; shared by the lab and mesh tests.
#![allow(dead_code)] // Each test file uses its own part of these helpers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub const MYELIN: &str = env!("CARGO_BIN_EXE_myelin");

pub fn starwars() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/starwars/http-sw-app.yaml")
}

/// A lab with a name of its own, removed when the test ends, pass or fail.
pub struct Lab {
    pub name: String,
}

pub fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl Lab {
    pub fn named() -> Self {
        Self {
            name: unique_name(),
        }
    }

    pub fn myelin(&self, args: &[&str]) -> Output {
        Command::new(MYELIN)
            .args(args)
            .env("MYELIN_LAB", &self.name)
            .output()
            .expect("run myelin")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.myelin(args);
        assert!(
            output.status.success(),
            "myelin {args:?} failed:\n{}",
            text(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `myelin ARGS` until its output satisfies `done` (flows reach the agent's ring a
    /// few milliseconds after the traffic: the proxy batches its events), for at most 10 s;
    /// returns the last output either way, for the caller's assertions to show.
    pub fn ok_until(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let output = self.ok(args);
            if done(&output) || std::time::Instant::now() >= deadline {
                return output;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn up(&self, manifests: &Path) -> String {
        self.ok(&["lab", "up", "-f", manifests.to_str().expect("utf-8 path")])
    }

    pub fn exec(&self, pod: &str, command: &[&str]) -> Output {
        let mut args = vec!["lab", "exec", pod, "--"];
        args.extend_from_slice(command);
        self.myelin(&args)
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["lab", "status", "-o", "json"])).expect("status json")
    }

    pub fn pod_address(&self, pod_prefix: &str, family: u8) -> String {
        let status = self.status();
        let pod = status["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(pod_prefix))
            })
            .unwrap_or_else(|| panic!("no pod {pod_prefix}* in {status}"));
        pod["addresses"]
            .as_array()
            .expect("addresses")
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| a.contains(':') == (family == 6))
            .expect("address of the family")
            .to_string()
    }

    pub fn netns(&self) -> Vec<String> {
        let prefix = format!("ml-{}_", self.name);
        std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    pub fn assert_gone(&self) {
        assert!(
            self.netns().is_empty(),
            "namespaces left: {:?}",
            self.netns()
        );
        let prefix = format!("ml-{}_", self.name);
        let etc_left: Vec<String> = std::fs::read_dir("/etc/netns")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(etc_left.is_empty(), "/etc/netns entries left: {etc_left:?}");
        let run_dir = format!("/run/myelin/labs/{}", self.name);
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        assert!(
            !mounts.contains(&run_dir),
            "a mount is left under {run_dir}"
        );
        assert!(!Path::new(&run_dir).exists(), "{run_dir} is left");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.myelin(&["lab", "down"]);
    }
}

/// The Star Wars app with the ships pinned to node3 (`spec.nodeName`), as
/// `make demo NODES=3` runs it (the deathstar's pods spread over the others
/// by the fewest-pods rule), written into `dir`; returns its path.
pub fn starwars_pinned(dir: &tempfile::TempDir) -> String {
    let app = std::fs::read_to_string(starwars()).expect("app");
    let mut out = String::new();
    let mut in_pod = false;
    for line in app.lines() {
        if line.starts_with("kind: ") {
            in_pod = line == "kind: Pod";
        }
        out.push_str(line);
        out.push('\n');
        if in_pod && line == "spec:" {
            out.push_str("  nodeName: node3\n");
        }
    }
    let path = dir.path().join("http-sw-app.yaml");
    std::fs::write(&path, out).expect("write app");
    path.to_str().expect("utf-8").to_string()
}

/// The lab's state as its supervisor saved it.
pub fn lab_state(lab: &Lab) -> serde_json::Value {
    let path = format!("/run/myelin/labs/{}/state.json", lab.name);
    serde_json::from_slice(&std::fs::read(&path).expect("state.json")).expect("json")
}

pub fn curl(lab: &Lab, pod: &str, method: &str, url: &str) -> String {
    let output = lab.exec(pod, &["curl", "-s", "-m", "5", "-X", method, url]);
    text(&output)
}
