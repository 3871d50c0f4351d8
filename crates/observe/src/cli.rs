//! `observe` as a library: Hubble's flags, the FlowFilters the hubble CLI
//! builds from them, and a client loop that prints what the agent sends.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use prost_types::Timestamp;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::filter;
use crate::flows;
use crate::printer::{OutputFormat, PrintOptions, Printer};
use crate::proto::flow::{EventTypeFilter, FlowFilter, TrafficDirection, Verdict};
use crate::proto::observer::GetFlowsRequest;
use crate::proto::observer::observer_client::ObserverClient;
use crate::tls::ClientTls;

/// Flows printed when no count, time range or follow is given (Hubble's default).
pub const DEFAULT_LAST: u64 = 20;

/// Flags of `observe`, named and meant as in `hubble observe`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ObserveArgs {
    /// Observer API address: unix:///path/to.sock, host:port, http://host:port
    /// or tls://host:port (TLS).
    #[arg(long, env = "HUBBLE_SERVER", default_value = "localhost:4245")]
    pub server: String,
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

    /// Flows from or to a pod ([namespace/]pod-prefix; namespace defaults to "default").
    #[arg(long)]
    pub pod: Vec<String>,
    /// Flows from a pod ([namespace/]pod-prefix).
    #[arg(long)]
    pub from_pod: Vec<String>,
    /// Flows to a pod ([namespace/]pod-prefix).
    #[arg(long)]
    pub to_pod: Vec<String>,
    /// Flows from or to a namespace.
    #[arg(long, short = 'n')]
    pub namespace: Vec<String>,
    /// Flows from a namespace.
    #[arg(long)]
    pub from_namespace: Vec<String>,
    /// Flows to a namespace.
    #[arg(long)]
    pub to_namespace: Vec<String>,
    /// Flows from or to endpoints matching a label selector.
    #[arg(long, short = 'l')]
    pub label: Vec<String>,
    /// Flows from endpoints matching a label selector.
    #[arg(long)]
    pub from_label: Vec<String>,
    /// Flows to endpoints matching a label selector.
    #[arg(long)]
    pub to_label: Vec<String>,
    /// Flows from or to a service ([namespace/]name).
    #[arg(long)]
    pub service: Vec<String>,
    /// Flows from a service.
    #[arg(long)]
    pub from_service: Vec<String>,
    /// Flows to a service.
    #[arg(long)]
    pub to_service: Vec<String>,
    /// Flows from or to a DNS name.
    #[arg(long)]
    pub fqdn: Vec<String>,
    /// Flows from a DNS name.
    #[arg(long)]
    pub from_fqdn: Vec<String>,
    /// Flows to a DNS name.
    #[arg(long)]
    pub to_fqdn: Vec<String>,
    /// Flows from or to a security identity.
    #[arg(long)]
    pub identity: Vec<u32>,
    /// Flows from a security identity.
    #[arg(long)]
    pub from_identity: Vec<u32>,
    /// Flows to a security identity.
    #[arg(long)]
    pub to_identity: Vec<u32>,
    /// Flows from or to an IP address or CIDR.
    #[arg(long)]
    pub ip: Vec<String>,
    /// Flows from an IP address or CIDR.
    #[arg(long)]
    pub from_ip: Vec<String>,
    /// Flows to an IP address or CIDR.
    #[arg(long)]
    pub to_ip: Vec<String>,
    /// Flows with this L4 source or destination port.
    #[arg(long)]
    pub port: Vec<String>,
    /// Flows with this L4 source port.
    #[arg(long)]
    pub from_port: Vec<String>,
    /// Flows with this L4 destination port.
    #[arg(long)]
    pub to_port: Vec<String>,

    /// Flows with this verdict (FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED).
    #[arg(long)]
    pub verdict: Vec<String>,
    /// Event types: TYPE[:SUBTYPE], e.g. drop, trace:to-endpoint, l7, policy-verdict.
    #[arg(long = "type", short = 't')]
    pub event_type: Vec<String>,
    /// L4 or L7 protocol: tcp, udp, icmp, http, dns, ...
    #[arg(long)]
    pub protocol: Vec<String>,
    /// HTTP status code or prefix: 404, 4+, 5+.
    #[arg(long)]
    pub http_status: Vec<String>,
    /// HTTP method.
    #[arg(long)]
    pub http_method: Vec<String>,
    /// HTTP path regular expression.
    #[arg(long)]
    pub http_path: Vec<String>,
    /// Traffic direction: ingress or egress.
    #[arg(long)]
    pub traffic_direction: Vec<String>,
    /// Only replies (true) or only requests (false).
    #[arg(long)]
    pub is_reply: Option<bool>,
    /// Node name pattern.
    #[arg(long)]
    pub node_name: Vec<String>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "compact")]
    pub output: OutputFormatArg,
    /// Print the node name in each line.
    #[arg(long)]
    pub print_node_name: bool,
    /// Show pod, service and DNS names instead of IP addresses.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ip_translation: bool,
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

/// Hubble CLI's two-sided filter: `left` (source side) OR `right`
/// (destination side). Flags naming both sides write source_X on the left
/// and destination_X on the right; every other flag writes both.
#[derive(Default)]
struct Tracker {
    left: Option<FlowFilter>,
    right: Option<FlowFilter>,
}

impl Tracker {
    fn left(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.left.get_or_insert_with(FlowFilter::default));
    }
    fn right(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.right.get_or_insert_with(FlowFilter::default));
    }
    fn both(&mut self, update: impl Fn(&mut FlowFilter)) {
        self.left(&update);
        self.right(&update);
    }
    fn filters(self) -> Vec<FlowFilter> {
        match (self.left, self.right) {
            (Some(l), Some(r)) if l == r => vec![l],
            (l, r) => l.into_iter().chain(r).collect(),
        }
    }
}

fn parse_verdict(value: &str) -> anyhow::Result<i32> {
    Verdict::from_str_name(&value.to_ascii_uppercase())
        .map(|v| v as i32)
        .with_context(|| format!("unknown verdict {value:?}: expected FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED or TRANSLATED"))
}

fn parse_event_type(value: &str) -> anyhow::Result<EventTypeFilter> {
    let (name, sub) = match value.split_once(':') {
        Some((n, s)) => (n, Some(s)),
        None => (value, None),
    };
    let code = filter::event_type_code(name).with_context(|| {
        format!("unknown event type {name:?}: expected drop, trace, l7, policy-verdict, capture, trace-sock, debug or agent")
    })?;
    let mut f = EventTypeFilter {
        r#type: code,
        match_sub_type: false,
        sub_type: 0,
    };
    if let Some(sub) = sub {
        if code != flows::MESSAGE_TYPE_TRACE {
            bail!("event type {name:?} has no subtypes; only trace:SUBTYPE is supported");
        }
        f.sub_type = flows::trace_subtype_by_name(sub)
            .with_context(|| format!("unknown trace subtype {sub:?}: expected to-endpoint, to-proxy, to-stack, from-endpoint, ..."))?;
        f.match_sub_type = true;
    }
    Ok(f)
}

fn parse_direction(value: &str) -> anyhow::Result<i32> {
    match value.to_ascii_lowercase().as_str() {
        "ingress" => Ok(TrafficDirection::Ingress as i32),
        "egress" => Ok(TrafficDirection::Egress as i32),
        _ => bail!("unknown traffic direction {value:?}: expected ingress or egress"),
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
    let mut t = Tracker::default();
    let ns_prefix = |ns: &String| format!("{}/", ns.trim_end_matches('/'));

    for v in &args.pod {
        t.left(|f| f.source_pod.push(v.clone()));
        t.right(|f| f.destination_pod.push(v.clone()));
    }
    for v in &args.namespace {
        t.left(|f| f.source_pod.push(ns_prefix(v)));
        t.right(|f| f.destination_pod.push(ns_prefix(v)));
    }
    for v in &args.label {
        t.left(|f| f.source_label.push(v.clone()));
        t.right(|f| f.destination_label.push(v.clone()));
    }
    for v in &args.service {
        t.left(|f| f.source_service.push(v.clone()));
        t.right(|f| f.destination_service.push(v.clone()));
    }
    for v in &args.fqdn {
        t.left(|f| f.source_fqdn.push(v.clone()));
        t.right(|f| f.destination_fqdn.push(v.clone()));
    }
    for v in &args.identity {
        t.left(|f| f.source_identity.push(*v));
        t.right(|f| f.destination_identity.push(*v));
    }
    for v in &args.ip {
        t.left(|f| f.source_ip.push(v.clone()));
        t.right(|f| f.destination_ip.push(v.clone()));
    }
    for v in &args.port {
        t.left(|f| f.source_port.push(v.clone()));
        t.right(|f| f.destination_port.push(v.clone()));
    }

    for v in &args.from_pod {
        t.both(|f| f.source_pod.push(v.clone()));
    }
    for v in &args.to_pod {
        t.both(|f| f.destination_pod.push(v.clone()));
    }
    for v in &args.from_namespace {
        t.both(|f| f.source_pod.push(ns_prefix(v)));
    }
    for v in &args.to_namespace {
        t.both(|f| f.destination_pod.push(ns_prefix(v)));
    }
    for v in &args.from_label {
        t.both(|f| f.source_label.push(v.clone()));
    }
    for v in &args.to_label {
        t.both(|f| f.destination_label.push(v.clone()));
    }
    for v in &args.from_service {
        t.both(|f| f.source_service.push(v.clone()));
    }
    for v in &args.to_service {
        t.both(|f| f.destination_service.push(v.clone()));
    }
    for v in &args.from_fqdn {
        t.both(|f| f.source_fqdn.push(v.clone()));
    }
    for v in &args.to_fqdn {
        t.both(|f| f.destination_fqdn.push(v.clone()));
    }
    for v in &args.from_identity {
        t.both(|f| f.source_identity.push(*v));
    }
    for v in &args.to_identity {
        t.both(|f| f.destination_identity.push(*v));
    }
    for v in &args.from_ip {
        t.both(|f| f.source_ip.push(v.clone()));
    }
    for v in &args.to_ip {
        t.both(|f| f.destination_ip.push(v.clone()));
    }
    for v in &args.from_port {
        t.both(|f| f.source_port.push(v.clone()));
    }
    for v in &args.to_port {
        t.both(|f| f.destination_port.push(v.clone()));
    }

    for v in &args.verdict {
        let verdict = parse_verdict(v)?;
        t.both(|f| f.verdict.push(verdict));
    }
    for v in &args.event_type {
        let et = parse_event_type(v)?;
        t.both(|f| f.event_type.push(et));
    }
    for v in &args.protocol {
        t.both(|f| f.protocol.push(v.clone()));
    }
    for v in &args.http_status {
        t.both(|f| f.http_status_code.push(v.clone()));
    }
    for v in &args.http_method {
        t.both(|f| f.http_method.push(v.clone()));
    }
    for v in &args.http_path {
        t.both(|f| f.http_path.push(v.clone()));
    }
    for v in &args.traffic_direction {
        let d = parse_direction(v)?;
        t.both(|f| f.traffic_direction.push(d));
    }
    if let Some(reply) = args.is_reply {
        t.both(|f| f.reply.push(reply));
    }
    for v in &args.node_name {
        t.both(|f| f.node_name.push(v.clone()));
    }

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
    let whitelist = t.filters();
    // Validate here so that a typo is reported before connecting.
    filter::FilterSet::new(&whitelist, &[]).context("invalid filter")?;
    Ok(GetFlowsRequest {
        number,
        first,
        follow: args.follow,
        whitelist,
        since,
        until,
        ..Default::default()
    })
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

/// Runs `observe`: asks the agent for flows and prints them to stdout.
pub async fn run(args: ObserveArgs) -> anyhow::Result<()> {
    let format = OutputFormat::from(args.output);
    if format == OutputFormat::Table && args.follow {
        bail!(
            "--output table cannot be used with --follow: the table is printed when the stream ends"
        );
    }
    let request = build_request(&args)?;
    let mut client = connect_with(&args.server, &args.tls).await?;
    let mut stream = client
        .get_flows(request)
        .await
        .context("GetFlows failed")?
        .into_inner();
    let opts = PrintOptions {
        format,
        node_name: args.print_node_name,
        ip_translation: args.ip_translation,
    };
    // Unlocked handles keep this future Send (a lock guard held across an
    // await would not be), so callers may spawn it.
    let mut printer = Printer::new(std::io::stdout(), std::io::stderr(), opts);
    loop {
        tokio::select! {
            message = stream.message() => {
                match message.context("flow stream failed")? {
                    Some(resp) => printer.write_response(&resp)?,
                    None => break,
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    printer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
