//! `observe` as a library: Hubble's flags, the FlowFilters the hubble CLI
//! builds from them, and a client loop that prints what the agent sends.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use prost_types::Timestamp;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::filter;
use crate::filter_flags::FilterArgs;
use crate::printer::{OutputFormat, PrintOptions, Printer, TimeFormat};
use crate::proto::observer::observer_client::ObserverClient;
use crate::proto::observer::{GetAgentEventsRequest, GetFlowsRequest};
use crate::tls::ClientTls;

/// Flows printed when no count, time range or follow is given (Hubble's default).
pub const DEFAULT_LAST: u64 = 20;

/// The observer address when none is named (hubble's default).
pub const DEFAULT_SERVER: &str = "localhost:4245";

/// Flags of `observe`, named and meant as in `hubble observe`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ObserveArgs {
    /// What to observe instead of flows.
    #[command(subcommand)]
    pub command: Option<ObserveCommand>,
    /// Observer API address: unix:///path/to.sock, host:port, http://host:port
    /// or tls://host:port (TLS) [default: localhost:4245, or the lab's node].
    #[arg(long, env = "HUBBLE_SERVER")]
    pub server: Option<String>,
    /// TLS to the observer API (hubble's flags).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Get the last N flows stored by the agent.
    #[arg(long)]
    pub last: Option<u64>,
    /// Get the first N flows stored by the agent.
    #[arg(long, conflicts_with_all = ["last", "follow"])]
    pub first: Option<u64>,
    /// Get all flows stored by the agent.
    #[arg(long, conflicts_with_all = ["last", "first"])]
    pub all: bool,
    /// Keep printing new flows as they arrive.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Flows since this time: RFC 3339, or a duration ago like 5m, 1h30m.
    #[arg(long)]
    pub since: Option<String>,
    /// Flows until this time: RFC 3339, or a duration ago like 5m.
    #[arg(long)]
    pub until: Option<String>,

    /// Filter flags, split into whitelist and blacklist by `--not`.
    #[command(flatten)]
    pub filters: FilterArgs,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "compact")]
    pub output: OutputFormatArg,
    /// Print the node name in each line (compact: after the time, in brackets).
    #[arg(long)]
    pub print_node_name: bool,
    /// How times are printed (compact, dict and table output; JSON keeps
    /// RFC 3339). Hubble's names, matched without regard to case.
    #[arg(long, value_enum, ignore_case = true, default_value = "StampMilli")]
    pub time_format: TimeFormat,
    /// Show pod, service and DNS names instead of IP addresses.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ip_translation: bool,
}

/// `observe`'s subcommands, as `hubble observe`'s.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ObserveCommand {
    /// Observe the agent's events: agent start, policy, endpoint, ipcache
    /// and service changes (`hubble observe agent-events`).
    AgentEvents(AgentEventsArgs),
}

/// Flags of `observe agent-events`, named and meant as in hubble's.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentEventsArgs {
    /// Observer API address: unix:///path/to.sock, host:port, http://host:port
    /// or tls://host:port (TLS) [default: localhost:4245, or the lab's node].
    #[arg(long, env = "HUBBLE_SERVER")]
    pub server: Option<String>,
    /// TLS to the observer API (hubble's flags).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Get the last N events stored by the agent (20 without --since/--until).
    #[arg(long)]
    pub last: Option<u64>,
    /// Get all events stored by the agent.
    #[arg(long, conflicts_with = "last")]
    pub all: bool,
    /// Keep printing new events as they arrive.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Events since this time: RFC 3339, or a duration ago like 5m, 1h30m.
    #[arg(long)]
    pub since: Option<String>,
    /// Events until this time: RFC 3339, or a duration ago like 5m
    /// (ignored with --follow, as in hubble).
    #[arg(long)]
    pub until: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "compact")]
    pub output: OutputFormatArg,
    /// Print the node name in each line (compact: after the time, in brackets).
    #[arg(long)]
    pub print_node_name: bool,
    /// How times are printed (compact, dict and table output). Hubble's
    /// names, matched without regard to case.
    #[arg(long, value_enum, ignore_case = true, default_value = "StampMilli")]
    pub time_format: TimeFormat,
}

impl ObserveArgs {
    /// The server address (`None`: not named by flag or environment) and
    /// TLS flags this command line connects with: the subcommand's when one
    /// is given.
    pub fn connection_mut(&mut self) -> (&mut Option<String>, &TlsArgs) {
        match &mut self.command {
            Some(ObserveCommand::AgentEvents(args)) => (&mut args.server, &args.tls),
            None => (&mut self.server, &self.tls),
        }
    }
}

/// How to reach the observer API over TLS; named and meant as hubble's flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Use TLS to connect to the server (also when the address starts with
    /// tls:// or a client certificate is given).
    #[arg(long, env = "HUBBLE_TLS")]
    pub tls: bool,
    /// Paths to CA certificate files (PEM) to verify the server with;
    /// default: the system's roots.
    #[arg(long, env = "HUBBLE_TLS_CA_CERT_FILES", value_delimiter = ',')]
    pub tls_ca_cert_files: Vec<PathBuf>,
    /// Path to the client certificate file (PEM) for mutual TLS (implies TLS).
    #[arg(long, env = "HUBBLE_TLS_CLIENT_CERT_FILE")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// Path to the client certificate's private key file (PEM) (implies TLS).
    #[arg(long, env = "HUBBLE_TLS_CLIENT_KEY_FILE")]
    pub tls_client_key_file: Option<PathBuf>,
    /// Server name to verify the server certificate against
    /// (e.g. instance.hubble-relay.cilium.io).
    #[arg(long, env = "HUBBLE_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The client TLS settings, or `None` for plaintext. As in hubble, TLS
    /// is on with `--tls`, a `tls://` (or `https://`) address or a client
    /// certificate.
    pub fn client_tls(&self, server: &str) -> Option<ClientTls> {
        let enabled = self.tls
            || server.starts_with("tls://")
            || server.starts_with("https://")
            || self.tls_client_cert_file.is_some()
            || self.tls_client_key_file.is_some();
        enabled.then(|| ClientTls {
            ca_files: self.tls_ca_cert_files.clone(),
            cert_file: self.tls_client_cert_file.clone(),
            key_file: self.tls_client_key_file.clone(),
            server_name: self.tls_server_name.clone(),
        })
    }
}

/// Wrapper giving [`OutputFormat`] a default for `ObserveArgs::default()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormatArg {
    /// One line per flow.
    #[default]
    Compact,
    /// KEY: VALUE blocks.
    Dict,
    /// Tab-aligned columns.
    #[value(alias = "tab")]
    Table,
    /// Alias for jsonpb.
    Json,
    /// GetFlowsResponse in proto3 JSON.
    Jsonpb,
}

impl From<OutputFormatArg> for OutputFormat {
    fn from(value: OutputFormatArg) -> Self {
        match value {
            OutputFormatArg::Compact => Self::Compact,
            OutputFormatArg::Dict => Self::Dict,
            OutputFormatArg::Table => Self::Table,
            OutputFormatArg::Json => Self::Json,
            OutputFormatArg::Jsonpb => Self::Jsonpb,
        }
    }
}

/// Parses Go-style durations: "90s", "5m", "1h30m", "250ms".
fn parse_duration(value: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = value;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(number * seconds).ok()?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// `--since`/`--until`: RFC 3339 or a duration before now.
fn parse_time(value: &str, now: SystemTime) -> anyhow::Result<Timestamp> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        let nanos = i32::try_from(t.timestamp_subsec_nanos()).unwrap_or_default();
        return Ok(Timestamp {
            seconds: t.timestamp(),
            nanos,
        });
    }
    let ago = parse_duration(value).with_context(|| {
        format!(
            "invalid time {value:?}: expected RFC 3339 (2024-01-02T15:04:05Z) or a duration like 5m"
        )
    })?;
    let at = now
        .checked_sub(ago)
        .with_context(|| format!("time {value:?} reaches before the epoch"))?;
    Ok(Timestamp::from(at))
}

/// The GetFlows request `hubble observe` sends for these flags.
pub fn build_request(args: &ObserveArgs) -> anyhow::Result<GetFlowsRequest> {
    let now = SystemTime::now();
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time(s, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_time(s, now))
        .transpose()?;
    let (number, first) = if args.all {
        (u64::MAX, false)
    } else if let Some(n) = args.first {
        (n, true)
    } else if let Some(n) = args.last {
        (n, false)
    } else if !args.follow && since.is_none() && until.is_none() {
        (DEFAULT_LAST, false)
    } else {
        (0, false)
    };
    let whitelist = args.filters.whitelist_filters()?;
    let blacklist = args.filters.blacklist_filters()?;
    // Validate here so that a typo is reported before connecting; a filter
    // only this agent cannot honour still goes to the server, which may be
    // another (a Hubble Relay, a newer agent) and answers for itself.
    match filter::FilterSet::new(&whitelist, &blacklist) {
        Ok(_) | Err(filter::FilterError::Unsupported { .. }) => {}
        Err(e) => return Err(anyhow::Error::new(e).context("invalid filter")),
    }
    Ok(GetFlowsRequest {
        number,
        first,
        follow: args.follow,
        whitelist,
        blacklist,
        since,
        until,
        ..Default::default()
    })
}

/// The GetAgentEvents request `hubble observe agent-events` sends for these
/// flags: the last 20 events unless a count, --all or a time range is
/// given (also with --follow), and no `until` when following.
pub fn build_agent_events_request(args: &AgentEventsArgs) -> anyhow::Result<GetAgentEventsRequest> {
    let now = SystemTime::now();
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time(s, now))
        .transpose()?;
    let until = match (&args.until, args.follow) {
        (Some(until), false) => Some(parse_time(until, now)?),
        _ => None,
    };
    let mut number = if args.all {
        u64::MAX
    } else {
        args.last.unwrap_or(0)
    };
    if since.is_none() && until.is_none() && number == 0 {
        number = DEFAULT_LAST;
    }
    Ok(GetAgentEventsRequest {
        number,
        first: false,
        follow: args.follow,
        since,
        until,
    })
}

/// The output format asked for; a table, printed when the stream ends, needs a stream
/// that ends.
fn output_format(output: OutputFormatArg, follow: bool) -> anyhow::Result<OutputFormat> {
    let format = OutputFormat::from(output);
    if format == OutputFormat::Table && follow {
        bail!(
            "--output table cannot be used with --follow: the table is printed when the stream ends"
        );
    }
    Ok(format)
}

/// Runs `observe agent-events`: asks the agent for its events and prints them.
pub async fn run_agent_events(args: AgentEventsArgs) -> anyhow::Result<()> {
    let format = output_format(args.output, args.follow)?;
    let request = build_agent_events_request(&args)?;
    let server = args.server.as_deref().unwrap_or(DEFAULT_SERVER);
    let mut client = connect_with(server, &args.tls).await?;
    let stream = client
        .get_agent_events(request)
        .await
        .context("GetAgentEvents failed")?
        .into_inner();
    let opts = PrintOptions {
        format,
        node_name: args.print_node_name,
        ip_translation: true,
        time_format: args.time_format,
    };
    let mut printer = Printer::for_agent_events(std::io::stdout(), std::io::stderr(), opts);
    print_stream(stream, "agent event", |resp| {
        printer.write_agent_event(resp)
    })
    .await?;
    printer.finish()?;
    Ok(())
}

/// Hands every message of `stream` to `write` until the stream ends or Ctrl-C.
async fn print_stream<T>(
    mut stream: tonic::Streaming<T>,
    what: &str,
    mut write: impl FnMut(&T) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            message = stream.message() => {
                match message.with_context(|| format!("{what} stream failed"))? {
                    Some(resp) => write(&resp)?,
                    None => return Ok(()),
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Connects to the observer API at `server` (unix:///path, host:port,
/// http(s) URL or tls://host:port), over TLS only for `tls://` and
/// `https://` addresses.
pub async fn connect(server: &str) -> anyhow::Result<ObserverClient<Channel>> {
    connect_with(server, &TlsArgs::default()).await
}

/// Connects to the observer API at `server` with hubble's TLS flags.
pub async fn connect_with(server: &str, tls: &TlsArgs) -> anyhow::Result<ObserverClient<Channel>> {
    Ok(ObserverClient::new(channel(server, tls).await?))
}

/// A channel to the observer API at `server`, for any service it serves
/// (the observer, the gRPC health service).
pub async fn channel(server: &str, tls: &TlsArgs) -> anyhow::Result<Channel> {
    let client_tls = tls.client_tls(server);
    if let Some(path) = server.strip_prefix("unix://") {
        if client_tls.is_some() {
            bail!("TLS is for TCP addresses; the unix socket {path} is plaintext");
        }
        let path = path.to_string();
        // The URI is required by tonic but unused: the connector dials the socket.
        return Endpoint::try_from("http://[::1]:4245")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .with_context(|| {
                format!("cannot connect to the observer at {server}: is the agent running?")
            });
    }
    let authority = ["tls://", "https://", "http://"]
        .iter()
        .find_map(|scheme| server.strip_prefix(scheme))
        .unwrap_or(server);
    if authority.contains("://") {
        bail!("invalid server address {server:?}: use unix://, tls://, http:// or host:port");
    }
    let scheme = if client_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{authority}");
    let mut endpoint = Endpoint::try_from(url.clone())
        .with_context(|| format!("invalid server address {server:?}"))?;
    if let Some(client_tls) = client_tls {
        endpoint = endpoint
            .tls_config(client_tls.load()?)
            .context("TLS settings")?;
    }
    endpoint.connect().await.with_context(|| {
        format!("cannot connect to the observer at {url}: is the agent running, and does it speak TLS as asked?")
    })
}

/// Runs `observe`: asks the agent for flows (or, with `agent-events`, its
/// events) and prints them to stdout.
pub async fn run(args: ObserveArgs) -> anyhow::Result<()> {
    if let Some(ObserveCommand::AgentEvents(events)) = args.command {
        return run_agent_events(events).await;
    }
    let format = output_format(args.output, args.follow)?;
    let request = build_request(&args)?;
    let server = args.server.as_deref().unwrap_or(DEFAULT_SERVER);
    let mut client = connect_with(server, &args.tls).await?;
    let stream = client
        .get_flows(request)
        .await
        .context("GetFlows failed")?
        .into_inner();
    let opts = PrintOptions {
        format,
        node_name: args.print_node_name,
        ip_translation: args.ip_translation,
        time_format: args.time_format,
    };
    // Unlocked handles keep this future Send (a lock guard held across an
    // await would not be), so callers may spawn it.
    let mut printer = Printer::new(std::io::stdout(), std::io::stderr(), opts);
    print_stream(stream, "flow", |resp| printer.write_response(resp)).await?;
    printer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_needs_a_stream_that_ends() {
        let error = output_format(OutputFormatArg::Table, true).expect_err("table and follow");
        assert_eq!(
            error.to_string(),
            "--output table cannot be used with --follow: the table is printed when the stream ends"
        );
        assert!(output_format(OutputFormatArg::Table, false).is_ok());
        assert!(output_format(OutputFormatArg::Compact, true).is_ok());
    }
    use crate::proto::flow::{FlowFilter, Verdict};
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: ObserveArgs,
    }

    fn request(argv: &[&str]) -> GetFlowsRequest {
        let mut full = vec!["observe"];
        full.extend_from_slice(argv);
        let cmd = Cmd::try_parse_from(full).unwrap_or_else(|e| panic!("{e}"));
        build_request(&cmd.args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    #[test]
    fn pod_makes_two_filters() {
        let req = request(&["--pod", "deathstar", "--protocol", "http"]);
        assert_eq!(req.number, DEFAULT_LAST);
        assert_eq!(req.whitelist.len(), 2);
        assert_eq!(req.whitelist[0].source_pod, vec!["deathstar"]);
        assert!(req.whitelist[0].destination_pod.is_empty());
        assert_eq!(req.whitelist[1].destination_pod, vec!["deathstar"]);
        assert_eq!(req.whitelist[0].protocol, vec!["http"]);
        assert_eq!(req.whitelist[1].protocol, vec!["http"]);
    }

    #[test]
    fn from_and_to_make_one_filter() {
        let req = request(&[
            "--from-pod",
            "default/xwing",
            "--to-pod",
            "default/deathstar",
            "-f",
        ]);
        assert_eq!(req.whitelist.len(), 1);
        assert_eq!(req.whitelist[0].source_pod, vec!["default/xwing"]);
        assert_eq!(req.whitelist[0].destination_pod, vec!["default/deathstar"]);
        assert!(req.follow);
        assert_eq!(req.number, 0);
    }

    #[test]
    fn types_verdicts_and_counts() {
        let req = request(&[
            "--type",
            "trace:to-endpoint",
            "--verdict",
            "dropped",
            "--last",
            "5",
        ]);
        assert_eq!(req.number, 5);
        let f = &req.whitelist[0];
        assert_eq!(f.verdict, vec![Verdict::Dropped as i32]);
        assert_eq!(f.event_type[0].r#type, 4);
        assert!(f.event_type[0].match_sub_type);
        assert_eq!(f.event_type[0].sub_type, 0);
        let first = request(&["--first", "3", "--namespace", "kube-system"]);
        assert!(first.first);
        assert_eq!(first.whitelist[0].source_pod, vec!["kube-system/"]);
    }

    #[test]
    fn bad_values_are_rejected() {
        let cmd = Cmd::try_parse_from(["observe", "--http-status", "6xx"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(build_request(&cmd.args).is_err());
        let cmd = Cmd::try_parse_from(["observe", "--type", "nonsense"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(build_request(&cmd.args).is_err());
    }

    #[test]
    fn not_moves_the_next_filter_into_the_blacklist() {
        let req = request(&["--not", "--verdict", "FORWARDED"]);
        assert!(req.whitelist.is_empty());
        assert_eq!(
            req.blacklist,
            [FlowFilter {
                verdict: vec![Verdict::Forwarded as i32],
                ..Default::default()
            }]
        );
        let req = request(&[
            "--pod",
            "default/xwing",
            "--not",
            "--to-pod",
            "kube-system/",
        ]);
        assert_eq!(req.whitelist.len(), 2);
        assert_eq!(req.whitelist[0].source_pod, ["default/xwing"]);
        assert_eq!(req.whitelist[1].destination_pod, ["default/xwing"]);
        assert_eq!(
            req.blacklist,
            [FlowFilter {
                destination_pod: vec!["kube-system/".into()],
                ..Default::default()
            }]
        );
        let err = Cmd::try_parse_from(["observe", "--verdict", "DROPPED", "--not"])
            .err()
            .expect("trailing --not");
        assert!(err.to_string().contains("--not must be followed"), "{err}");
        // A bad negated value is reported before connecting.
        let cmd = Cmd::try_parse_from(["observe", "--not", "--from-ip", "10.0.0.300"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(build_request(&cmd.args).is_err());
    }

    #[test]
    fn time_formats_are_hubbles_names_in_any_case() {
        let parse = |argv: &[&str]| {
            Cmd::try_parse_from(std::iter::once("observe").chain(argv.iter().copied()))
                .map(|c| c.args.time_format)
        };
        assert_eq!(parse(&[]).ok(), Some(TimeFormat::StampMilli));
        assert_eq!(
            parse(&["--time-format", "RFC3339Milli"]).ok(),
            Some(TimeFormat::Rfc3339Milli)
        );
        assert_eq!(
            parse(&["--time-format", "rfc1123z"]).ok(),
            Some(TimeFormat::Rfc1123Z)
        );
        let err = parse(&["--time-format", "Kitchen"])
            .expect_err("unknown format")
            .to_string();
        for name in [
            "StampMilli",
            "YearMonthDay",
            "YearMonthDayHour",
            "YearMonthDayHourMinute",
            "RFC3339",
            "RFC3339Milli",
            "RFC3339Micro",
            "RFC3339Nano",
            "RFC1123Z",
        ] {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
    }

    fn events_request(argv: &[&str]) -> GetAgentEventsRequest {
        let mut full = vec!["observe", "agent-events"];
        full.extend_from_slice(argv);
        let cmd = Cmd::try_parse_from(full).unwrap_or_else(|e| panic!("{e}"));
        match &cmd.args.command {
            Some(ObserveCommand::AgentEvents(args)) => {
                build_agent_events_request(args).unwrap_or_else(|e| panic!("{e:#}"))
            }
            None => panic!("agent-events not parsed"),
        }
    }

    #[test]
    fn agent_events_requests_as_hubble_builds_them() {
        let plain = events_request(&[]);
        assert_eq!((plain.number, plain.follow), (DEFAULT_LAST, false));
        // Unlike flows, following still starts with the last 20.
        let follow = events_request(&["-f"]);
        assert_eq!((follow.number, follow.follow), (DEFAULT_LAST, true));
        assert_eq!(events_request(&["--last", "50"]).number, 50);
        assert_eq!(events_request(&["--all"]).number, u64::MAX);
        let since = events_request(&["--since", "5m"]);
        assert_eq!(since.number, 0);
        assert!(since.since.is_some() && since.until.is_none());
        // --until is dropped when following, as hubble does.
        assert!(events_request(&["--until", "1m", "-f"]).until.is_none());
        assert!(events_request(&["--until", "1m"]).until.is_some());

        let mut cmd = Cmd::try_parse_from([
            "observe",
            "agent-events",
            "--server",
            "unix:///x.sock",
            "-o",
            "jsonpb",
            "--print-node-name",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cmd.args.connection_mut().0.as_deref(),
            Some("unix:///x.sock")
        );
        // Flow filters belong to flows, not to agent-events.
        assert!(Cmd::try_parse_from(["observe", "--pod", "x", "agent-events"]).is_err());
        assert!(Cmd::try_parse_from(["observe", "agent-events", "--pod", "x"]).is_err());
    }

    #[test]
    fn run_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let future = run(ObserveArgs::default());
        assert_send(&future);
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5x"), None);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(parse_time("100s", now).map(|t| t.seconds).ok(), Some(900));
        assert_eq!(
            parse_time("1970-01-01T00:01:00Z", now)
                .map(|t| t.seconds)
                .ok(),
            Some(60)
        );
    }
}
