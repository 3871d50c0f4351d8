//! The live service map of a real lab agent in a real browser: the Star Wars
//! app with the L3/L4 policy (tiefighter lands, xwing is denied), traffic
//! from both while headless Chromium loads the page. Chromium runs inside the
//! node's network namespace and loads http://127.0.0.1:12000/ there, so the
//! test never depends on the host's forwarded port (another lab may hold it)
//! and its traffic stays in the lab. The rendered DOM must show the
//! deathstar, tiefighter and xwing nodes and a denied xwing → deathstar
//! edge; the screenshot is kept as `target/test-artifacts/servicemap-lab.png`
//! (and the DOM beside it).
//!
//! Needs Debian's `chromium`: in CI (`CI=true`) a missing browser fails the
//! test, elsewhere it is skipped with a note.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Lab, starwars, text};
use myelin_observe::servicemap::{EdgeStatus, MapView};
use myelin_test_support::privileged;

const URL: &str = "http://deathstar.default.svc.cluster.local/v1/request-landing";
/// The page, as the agent serves it inside the node.
const PAGE: &str = "http://127.0.0.1:12000/";
/// Longest one browser run may take before it is killed with its children.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest the map may take to show the traffic.
const MAP_WAIT: Duration = Duration::from_secs(30);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            !in_ci(),
            "CI=true requires the browser test, but chromium is not installed \
             (apt-get install chromium)"
        );
        eprintln!("servicemap_lab: skipped (no chromium; apt-get install chromium)");
    }
    found
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join("test-artifacts")
}

fn l3_l4_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/starwars/sw_l3_l4_policy.yaml")
}

fn node_netns(lab: &Lab) -> String {
    format!("ml-{}_node1", lab.name)
}

/// One landing request from `pod`; true when the ship landed.
fn land(lab: &Lab, pod: &str) -> bool {
    let output = lab.exec(pod, &["curl", "-s", "-m", "2", "-XPOST", URL]);
    output.status.success() && output.stdout == b"Ship landed\n"
}

/// The lab's service map token (the page refuses requests without it).
fn token(lab: &Lab) -> String {
    let file = myelin_lab::LabNames::new(&lab.name).servicemap_token();
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_string()
}

/// The map as the agent serves it to the page, read inside the node.
fn map_view(lab: &Lab) -> Option<MapView> {
    let output = Command::new("ip")
        .args(["netns", "exec", &node_netns(lab), "curl", "-s", "-m", "5"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", token(lab)))
        .arg(format!("{PAGE}api/servicemap"))
        .output()
        .ok()?;
    serde_json::from_slice(&output.stdout).ok()
}

/// Waits until the map has a forwarded tiefighter edge and a denied xwing
/// edge to the deathstar; returns the xwing edge's id.
fn wait_for_edges(lab: &Lab) -> u64 {
    let deadline = Instant::now() + MAP_WAIT;
    loop {
        let view = map_view(lab);
        let edge = |source: &str| {
            view.as_ref()?
                .edges
                .iter()
                .find(|e| e.source == source && e.destination == "default/deathstar")
                .cloned()
        };
        if let (Some(tiefighter), Some(xwing)) = (edge("default/tiefighter"), edge("default/xwing"))
            && tiefighter.forwarded > 0
            && xwing.status == EdgeStatus::Denied
        {
            return xwing.id;
        }
        assert!(
            Instant::now() < deadline,
            "the map did not show both edges within {MAP_WAIT:?}: {view:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs headless chromium inside the node with a fresh profile; returns
/// its stdout. A run that outlives [`BROWSER_TIMEOUT`] is killed with its
/// process group (the browser this test started and its children only).
fn run_chromium(lab: &Lab, browser: &Path, args: &[String]) -> String {
    let profile = tempfile::Builder::new()
        .prefix("myelin-chromium-")
        .tempdir()
        .unwrap_or_else(|e| panic!("profile directory: {e}"));
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &node_netns(lab)])
        .arg(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group (`ip netns exec` becomes chromium), so that a
    // hung browser and its renderer and GPU processes end together.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting chromium in the node: {e}"));
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = Child::wait_with_output(child);
        let _ = done_tx.send(());
        output
    });
    if done_rx.recv_timeout(BROWSER_TIMEOUT).is_err() {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
        let _ = waiter.join();
        panic!("chromium {args:?} did not finish within {BROWSER_TIMEOUT:?}");
    }
    let output = waiter
        .join()
        .expect("chromium waiter")
        .unwrap_or_else(|e| panic!("waiting for chromium: {e}"));
    assert!(
        output.status.success(),
        "chromium {args:?} failed with {}: {}",
        output.status,
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Landing requests from tiefighter and xwing in a loop, until dropped
/// (also when the test fails, so that the lab is still taken down).
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &Arc<Lab>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (lab, stop) = (Arc::clone(lab), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    land(&lab, "tiefighter");
                    land(&lab, "xwing");
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Attributes of every `<g ...>` element of the dumped DOM.
fn groups(dom: &str) -> Vec<BTreeMap<String, String>> {
    dom.split("<g ")
        .skip(1)
        .filter_map(|rest| rest.split_once('>').map(|(attrs, _)| attrs))
        .map(|attrs| {
            attrs
                .split('"')
                .collect::<Vec<_>>()
                .chunks(2)
                .filter_map(|pair| match pair {
                    [name, value] => Some((
                        name.trim().trim_end_matches('=').to_string(),
                        (*value).to_string(),
                    )),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

fn has_class(group: &BTreeMap<String, String>, class: &str) -> bool {
    group
        .get("class")
        .is_some_and(|c| c.split_whitespace().any(|x| x == class))
}

/// PNG width and height from its IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.get(..8)? != b"\x89PNG\r\n\x1a\n" || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(png.get(16..20)?.try_into().ok()?);
    let height = u32::from_be_bytes(png.get(20..24)?.try_into().ok()?);
    Some((width, height))
}

#[test]
fn chromium_renders_the_lab_service_map() {
    if !privileged("chromium_renders_the_lab_service_map") {
        return;
    }
    let Some(browser) = chromium() else { return };
    let lab = Arc::new(Lab::named());
    lab.up(&starwars());
    let applied = lab.ok(&["apply", "-f", l3_l4_policy().to_str().expect("utf-8")]);
    assert!(applied.contains("rule1 created"), "{applied}");
    assert!(land(&lab, "tiefighter"), "tiefighter must land");
    assert!(!land(&lab, "xwing"), "xwing must be denied");
    let xwing_edge = wait_for_edges(&lab);

    // Traffic keeps flowing while the browser looks.
    let traffic = Traffic::start(&lab);

    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    // Opened on the denied edge (#edge=N selects it, as a click does), so
    // that its recent flows are listed too.
    // The token in the URL once, as `myelin servicemap --url` prints it; the
    // page's own requests carry the cookie it sets.
    let url = format!("{PAGE}?token={}#edge={xwing_edge}", token(&lab));
    let dom = run_chromium(
        &lab,
        &browser,
        &[
            "--virtual-time-budget=5000".to_string(),
            "--dump-dom".to_string(),
            url.clone(),
        ],
    );
    std::fs::write(dir.join("servicemap-lab.html"), &dom)
        .unwrap_or_else(|e| panic!("saving the DOM: {e}"));

    let groups = groups(&dom);
    let nodes: Vec<&str> = groups
        .iter()
        .filter(|g| has_class(g, "node"))
        .filter_map(|g| g.get("data-node-id").map(String::as_str))
        .collect();
    for node in ["default/deathstar", "default/tiefighter", "default/xwing"] {
        assert!(
            nodes.contains(&node),
            "{node} not drawn; nodes {nodes:?}; DOM saved in {}",
            dir.display()
        );
    }
    let edge_status = |source: &str, destination: &str| -> Vec<&str> {
        groups
            .iter()
            .filter(|g| has_class(g, "edge"))
            .filter(|g| {
                g.get("data-source").is_some_and(|s| s == source)
                    && g.get("data-destination").is_some_and(|d| d == destination)
            })
            .filter_map(|g| {
                ["denied", "mixed", "forwarded"]
                    .into_iter()
                    .find(|s| has_class(g, s))
            })
            .collect()
    };
    let xwing = edge_status("default/xwing", "default/deathstar");
    assert!(
        xwing.iter().any(|s| *s == "denied" || *s == "mixed"),
        "no denied xwing → deathstar edge ({xwing:?}); DOM saved in {}",
        dir.display()
    );
    let tiefighter = edge_status("default/tiefighter", "default/deathstar");
    assert!(
        tiefighter.contains(&"forwarded") || tiefighter.contains(&"mixed"),
        "no forwarded tiefighter → deathstar edge ({tiefighter:?}); DOM saved in {}",
        dir.display()
    );
    assert!(
        !dom.contains("cannot reach the agent"),
        "the page lost the agent; DOM saved in {}",
        dir.display()
    );
    assert!(
        dom.contains("Recent flows: default/xwing → default/deathstar"),
        "the selected edge's flows are not listed; DOM saved in {}",
        dir.display()
    );

    let png_path = dir.join("servicemap-lab.png");
    let _ = std::fs::remove_file(&png_path);
    run_chromium(
        &lab,
        &browser,
        &[
            "--virtual-time-budget=5000".to_string(),
            format!("--screenshot={}", png_path.display()),
            "--window-size=1200,800".to_string(),
            url,
        ],
    );
    drop(traffic);
    let png = std::fs::read(&png_path)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png_path.display()));
    assert_eq!(png_size(&png), Some((1200, 800)), "screenshot size");
    // A blank page compresses to a few KB; a drawn map does not.
    assert!(
        png.len() > 20_000,
        "screenshot looks empty: {} bytes",
        png.len()
    );
    eprintln!("servicemap_lab: screenshot at {}", png_path.display());
}
