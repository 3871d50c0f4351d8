//! `myelin relay`'s inherited listeners as a user (or a supervisor) gets
//! them wrong: each mistake is refused at start, naming the flag, the value
//! and what is wrong. (A lab hands the relay its real listeners; the cluster
//! tests cover that path.)

use std::process::Command;

const MYELIN: &str = env!("CARGO_BIN_EXE_myelin");

/// `myelin relay ARGS` with a peer that need not exist; its error output.
fn refused(args: &[&str]) -> String {
    let output = Command::new(MYELIN)
        .args(["relay", "--peer", "node1=unix:///nonexistent/hubble.sock"])
        .args(args)
        .output()
        .expect("run myelin relay");
    assert!(!output.status.success(), "myelin relay {args:?} started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_descriptor_that_is_not_a_listening_socket_is_refused() {
    let closed = refused(&["--listen-fd", "987"]);
    assert!(
        closed.contains("--listen-fd 987") && closed.contains("no such open file descriptor"),
        "{closed}"
    );
    let stream = refused(&["--listen-fd", "1"]);
    assert!(stream.contains("standard streams"), "{stream}");
    let map = refused(&[
        "--listen-socket",
        "/nonexistent/relay.sock",
        "--servicemap-fd",
        "986",
    ]);
    assert!(map.contains("--servicemap-fd 986"), "{map}");
}

#[test]
fn the_service_map_needs_its_token_file() {
    let missing = refused(&[
        "--listen-socket",
        "/nonexistent/relay.sock",
        "--servicemap",
        "127.0.0.1:0",
    ]);
    assert!(missing.contains("--servicemap-token-file"), "{missing}");
}
