//! `myelin-bench first-ok`: new connections, one after the other, each with a short
//! timeout, until one gets an HTTP 200; prints when (the machine's realtime clock, as
//! `date +%s%N` reads it) and how many attempts it took. Run in a pod's network namespace,
//! it times how soon a path opens without a process spawn per attempt.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::Args;

/// Options of `myelin-bench first-ok`.
#[derive(Args, Debug)]
pub struct FirstOkArgs {
    /// The server's address.
    #[arg(long)]
    to: SocketAddr,
    /// The request's path.
    #[arg(long, default_value = "/")]
    path: String,
    /// How long one attempt may take (connect, then the answer), in milliseconds: a SYN
    /// the policy drops is retried on a new connection after this.
    #[arg(long, default_value_t = 20)]
    attempt_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10)]
    deadline_s: u64,
}

/// Tries until an answer is 200; prints `{"ok_unix_ns": .., "attempts": ..}`.
pub fn run(args: &FirstOkArgs) -> anyhow::Result<()> {
    let attempt = Duration::from_millis(args.attempt_ms.max(1));
    let deadline = Instant::now() + Duration::from_secs(args.deadline_s);
    let mut attempts = 0u64;
    while Instant::now() < deadline {
        attempts += 1;
        let started = Instant::now();
        if answered_200(args.to, &args.path, attempt) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
            println!(
                "{}",
                serde_json::json!({"ok_unix_ns": now as u64, "attempts": attempts})
            );
            return Ok(());
        }
        // A refusal (nothing listening yet) comes back at once: do not spin.
        if let Some(rest) = Duration::from_millis(2).checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    bail!(
        "no 200 from {} within {} s ({attempts} attempts)",
        args.to,
        args.deadline_s
    )
}

/// One request on a new connection within `limit`.
fn answered_200(to: SocketAddr, path: &str, limit: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&to, limit) else {
        return false;
    };
    if stream.set_read_timeout(Some(limit)).is_err() {
        return false;
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}
