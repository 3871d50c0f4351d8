//! `myelin-bench`: the programs `bench/run.sh` drives.
//!
//! - `load`: an open-loop HTTP/1.1 generator at a constant request rate, with latency
//!   measured from each request's *intended* send time (coordinated omission accounted
//!   for) and the CPU the system under test spent per request;
//! - `proxy`: Myelin's L7 proxy with a fixed-upstream listener (node proxy or sidecar);
//! - `agent`: a stand-in for the agent's proxy side: it serves the control socket, pushes
//!   the snapshot and consumes the proxy's L7 events, as the agent does;
//! - `datapath`: loads Myelin's kernel programs and attaches them to pod veths, as a
//!   lone node or as one of two joined by an overlay or by native routes;
//! - `grpc-server`, `grpc-load`: gRPC unary calls over h2c, for calls per second;
//! - `soak`: the proxy's memory under a storm of client connections and after it;
//! - `control-plane`: many agents without a datapath against a real etcd, with churn;
//!   `cluster-agent` is its full agent (a process of its own, for its memory);
//! - `first-ok`: new connections until one gets a 200, for the convergence figure.

mod cluster_agent;
mod control_plane;
mod cpu;
mod first_ok;
mod grpc;
mod kernel;
mod load;
mod mesh;
mod nodes;
mod soak;

use clap::{Parser, Subcommand};

/// Benchmark helpers for `bench/run.sh`.
#[derive(Parser)]
#[command(name = "myelin-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open-loop HTTP load at a constant rate; prints one JSON report on stdout.
    Load(load::LoadArgs),
    /// Myelin's L7 proxy with one fixed-upstream listener.
    Proxy(mesh::ProxyArgs),
    /// The agent's side of the proxy control channel: snapshot push and event intake.
    Agent(mesh::AgentArgs),
    /// Attach Myelin's kernel programs to pod veths until SIGTERM/SIGINT.
    Datapath(kernel::DatapathArgs),
    /// A minimal gRPC server (h2c): every unary call answered with `grpc-status: 0`.
    GrpcServer(grpc::ServerArgs),
    /// Closed-loop gRPC unary calls on one h2c connection; prints one JSON report.
    GrpcLoad(grpc::LoadArgs),
    /// The proxy's memory under a storm of client connections and after; prints one JSON
    /// report.
    Soak(soak::SoakArgs),
    /// Many agents without a datapath against a real etcd, with churn; prints one JSON
    /// report.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// One agent's receiving side of the cluster store (used by `control-plane`).
    ClusterAgent(cluster_agent::ClusterAgentArgs),
    /// New connections until one is answered 200; prints when.
    FirstOk(first_ok::FirstOkArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = match Cli::parse().command {
        Command::Load(args) => load::run(&args),
        Command::Proxy(args) => mesh::run_proxy(&args),
        Command::Agent(args) => mesh::run_agent(&args),
        Command::Datapath(args) => kernel::run(&args),
        Command::GrpcServer(args) => grpc::run_server(&args),
        Command::GrpcLoad(args) => grpc::run_load(&args),
        Command::Soak(args) => soak::run(&args),
        Command::ControlPlane(args) => control_plane::run(&args),
        Command::ClusterAgent(args) => cluster_agent::run(&args),
        Command::FirstOk(args) => first_ok::run(&args),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("myelin-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Waits for SIGTERM or SIGINT, the way `bench/run.sh` stops its helpers.
async fn wait_for_stop() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
