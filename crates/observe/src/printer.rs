//! Output of GetFlows and GetAgentEvents responses as the hubble CLI prints
//! them: compact lines, dict blocks, a table, and proto3 JSON.

use std::io::{self, Write};

use prost_types::Timestamp;

use crate::flows;
use crate::proto::flow::{
    AgentEvent, AgentEventType, Flow, LostEventSource, ServiceUpsertNotificationAddr, Verdict,
    agent_event, layer4, layer7,
};
use crate::proto::observer::{GetAgentEventsResponse, GetFlowsResponse, get_flows_response};
use crate::proto::relay::NodeState;

/// Output formats of `observe -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per flow (the default).
    Compact,
    /// KEY: VALUE blocks separated by dashes.
    Dict,
    /// Tab-aligned columns, printed at the end.
    Table,
    /// Alias for jsonpb, as in the current hubble CLI.
    Json,
    /// GetFlowsResponse in proto3 JSON, one object per line.
    Jsonpb,
}

/// How flows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrintOptions {
    /// The output format.
    pub format: OutputFormat,
    /// Print the node name after the time.
    pub node_name: bool,
    /// Show pod, service and DNS names instead of IP addresses.
    pub ip_translation: bool,
    /// How times are printed (compact, dict and table).
    pub time_format: TimeFormat,
}

impl Default for PrintOptions {
    fn default() -> Self {
        Self {
            format: OutputFormat::Compact,
            node_name: false,
            ip_translation: true,
            time_format: TimeFormat::default(),
        }
    }
}

/// Hubble's `--time-format` values, named as hubble names them (matched
/// without regard to case). Times are printed in UTC, as hubble does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TimeFormat {
    /// Jan _2 15:04:05.000
    #[default]
    #[value(name = "StampMilli")]
    StampMilli,
    /// 2006-01-02
    #[value(name = "YearMonthDay")]
    YearMonthDay,
    /// 2006-01-02T15Z07:00
    #[value(name = "YearMonthDayHour")]
    YearMonthDayHour,
    /// 2006-01-02T15:04Z07:00
    #[value(name = "YearMonthDayHourMinute")]
    YearMonthDayHourMinute,
    /// 2006-01-02T15:04:05Z07:00
    #[value(name = "RFC3339")]
    Rfc3339,
    /// 2006-01-02T15:04:05.999Z07:00
    #[value(name = "RFC3339Milli")]
    Rfc3339Milli,
    /// 2006-01-02T15:04:05.999999Z07:00
    #[value(name = "RFC3339Micro")]
    Rfc3339Micro,
    /// 2006-01-02T15:04:05.999999999Z07:00
    #[value(name = "RFC3339Nano")]
    Rfc3339Nano,
    /// Mon, 02 Jan 2006 15:04:05 -0700
    #[value(name = "RFC1123Z")]
    Rfc1123Z,
}

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range of a
/// valid protobuf Timestamp.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// Go's `.999…` layout element: the fraction truncated to `digits`, trailing
/// zeros dropped, nothing at all (not even the dot) when it is zero.
fn trimmed_fraction(nanos: u32, digits: u32) -> String {
    let value = nanos / 10u32.pow(9 - digits);
    if value == 0 {
        return String::new();
    }
    let text = format!(".{value:0width$}", width = digits as usize);
    text.trim_end_matches('0').to_string()
}

impl TimeFormat {
    /// The time as Go's layout of this format prints it in UTC, or "N/A"
    /// when there is no valid time.
    pub fn format(self, ts: Option<&Timestamp>) -> String {
        let time = ts.and_then(|t| {
            let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
            if !TIMESTAMP_SECONDS.contains(&t.seconds) {
                return None;
            }
            chrono::DateTime::from_timestamp(t.seconds, nanos)
        });
        let Some(time) = time else {
            return "N/A".to_string();
        };
        let seconds = || time.format("%Y-%m-%dT%H:%M:%S");
        let nanos = time.timestamp_subsec_nanos();
        match self {
            Self::StampMilli => time.format("%b %e %H:%M:%S%.3f").to_string(),
            Self::YearMonthDay => time.format("%Y-%m-%d").to_string(),
            Self::YearMonthDayHour => time.format("%Y-%m-%dT%HZ").to_string(),
            Self::YearMonthDayHourMinute => time.format("%Y-%m-%dT%H:%MZ").to_string(),
            Self::Rfc3339 => format!("{}Z", seconds()),
            Self::Rfc3339Milli => format!("{}{}Z", seconds(), trimmed_fraction(nanos, 3)),
            Self::Rfc3339Micro => format!("{}{}Z", seconds(), trimmed_fraction(nanos, 6)),
            Self::Rfc3339Nano => format!("{}{}Z", seconds(), trimmed_fraction(nanos, 9)),
            Self::Rfc1123Z => time.format("%a, %d %b %Y %H:%M:%S +0000").to_string(),
        }
    }
}

/// Cilium's reserved security identities and the names hubble prints.
pub const RESERVED_IDENTITIES: [(u32, &str); 10] = [
    (1, "host"),
    (2, "world"),
    (3, "unmanaged"),
    (4, "health"),
    (5, "init"),
    (6, "remote-node"),
    (7, "kube-apiserver"),
    (8, "ingress"),
    (9, "world-ipv4"),
    (10, "world-ipv6"),
];

/// The reserved identity with this name ("world" is 2).
pub fn reserved_identity(name: &str) -> Option<u32> {
    RESERVED_IDENTITIES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(id, _)| *id)
}

/// Hubble's rendering of a security identity: "(ID:n)" or a reserved name.
pub fn format_identity(identity: u32) -> String {
    match RESERVED_IDENTITIES.iter().find(|(id, _)| *id == identity) {
        Some((_, name)) => format!("({name})"),
        None => format!("(ID:{identity})"),
    }
}

fn ports(flow: &Flow) -> (String, String) {
    match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => {
            (t.source_port.to_string(), t.destination_port.to_string())
        }
        Some(layer4::Protocol::Udp(u)) => {
            (u.source_port.to_string(), u.destination_port.to_string())
        }
        Some(layer4::Protocol::Sctp(s)) => {
            (s.source_port.to_string(), s.destination_port.to_string())
        }
        _ => (String::new(), String::new()),
    }
}

/// Go's `net.JoinHostPort`: brackets around IPv6 literals.
fn join_host_port(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn hostname(
    opts: &PrintOptions,
    ip: &str,
    port: &str,
    ns: &str,
    pod: &str,
    svc: &str,
    names: &[String],
) -> String {
    let join = |name: &str| {
        if ns.is_empty() {
            name.to_string()
        } else {
            format!("{ns}/{name}")
        }
    };
    let host = if !opts.ip_translation {
        ip.to_string()
    } else if !pod.is_empty() {
        join(pod)
    } else if !svc.is_empty() {
        join(svc)
    } else if !names.is_empty() {
        names.join(",")
    } else {
        ip.to_string()
    };
    if port.is_empty() || port == "0" {
        host
    } else {
        join_host_port(&host, port)
    }
}

/// Source and destination as Hubble names them (pod, service, DNS name or IP, with port).
pub fn host_names(flow: &Flow, opts: &PrintOptions) -> (String, String) {
    let Some(ip) = &flow.ip else {
        return flow
            .ethernet
            .as_ref()
            .map(|e| (e.source.clone(), e.destination.clone()))
            .unwrap_or_default();
    };
    let (src_port, dst_port) = ports(flow);
    let side = |ep: Option<&crate::proto::flow::Endpoint>,
                svc: Option<&crate::proto::flow::Service>,
                addr: &str,
                port: &str,
                names: &[String]| {
        let mut ns = ep.map_or("", |e| e.namespace.as_str());
        let pod = ep.map_or("", |e| e.pod_name.as_str());
        let mut svc_name = "";
        if let Some(svc) = svc {
            ns = &svc.namespace;
            svc_name = &svc.name;
        }
        hostname(opts, addr, port, ns, pod, svc_name, names)
    };
    (
        side(
            flow.source.as_ref(),
            flow.source_service.as_ref(),
            &ip.source,
            &src_port,
            &flow.source_names,
        ),
        side(
            flow.destination.as_ref(),
            flow.destination_service.as_ref(),
            &ip.destination,
            &dst_port,
            &flow.destination_names,
        ),
    )
}

/// Hubble's type column: L7 type, trace point, drop reason or policy verdict.
pub fn flow_type(flow: &Flow) -> String {
    if let Some(l7) = &flow.l7 {
        let l7_type = crate::proto::flow::L7FlowType::try_from(l7.r#type)
            .map_or("unknown_l7_type", |t| t.as_str_name())
            .to_lowercase();
        return match &l7.record {
            Some(layer7::Record::Http(_)) => format!("http-{l7_type}"),
            Some(layer7::Record::Dns(dns)) => format!("dns-{l7_type} {}", dns.observation_source),
            Some(layer7::Record::Kafka(_)) => format!("kafka-{l7_type}"),
            None => format!("l7-{l7_type}"),
        };
    }
    let (event_type, sub_type) = flow
        .event_type
        .as_ref()
        .map_or((0, 0), |e| (e.r#type, e.sub_type));
    match event_type {
        flows::MESSAGE_TYPE_TRACE => flows::trace_subtype_name(sub_type),
        flows::MESSAGE_TYPE_DROP => {
            let code = u32::try_from(sub_type).unwrap_or_default();
            let code = if code == 0 {
                flow.drop_reason_desc.unsigned_abs()
            } else {
                code
            };
            flows::drop_reason_text(code)
        }
        flows::MESSAGE_TYPE_POLICY_VERDICT => {
            let direction = crate::proto::flow::TrafficDirection::try_from(flow.traffic_direction)
                .map_or("TRAFFIC_DIRECTION_UNKNOWN", |d| d.as_str_name());
            format!(
                "policy-verdict:{} {}",
                flows::policy_match_text(flow.policy_match_type),
                direction
            )
        }
        flows::MESSAGE_TYPE_CAPTURE => {
            crate::proto::flow::DebugCapturePoint::try_from(flow.debug_capture_point)
                .map_or("UNKNOWN", |p| p.as_str_name())
                .to_string()
        }
        flows::MESSAGE_TYPE_TRACE_SOCK => match flow.sock_xlate_point {
            1 => "pre-xlate-fwd",
            2 => "post-xlate-fwd",
            3 => "pre-xlate-rev",
            4 => "post-xlate-rev",
            _ => "UNKNOWN",
        }
        .to_string(),
        _ => "UNKNOWN".to_string(),
    }
}

/// Hubble's verdict column; policy verdicts read ALLOWED / DENIED / AUDITED.
pub fn verdict_text(flow: &Flow) -> String {
    let verdict = Verdict::try_from(flow.verdict).unwrap_or(Verdict::Unknown);
    let is_policy_verdict = flow
        .event_type
        .as_ref()
        .is_some_and(|e| e.r#type == flows::MESSAGE_TYPE_POLICY_VERDICT);
    if is_policy_verdict {
        match verdict {
            Verdict::Forwarded | Verdict::Redirected => return "ALLOWED".to_string(),
            Verdict::Dropped | Verdict::Error => return "DENIED".to_string(),
            Verdict::Audit => return "AUDITED".to_string(),
            _ => {}
        }
    }
    verdict.as_str_name().to_string()
}

fn summary(flow: &Flow) -> String {
    if flow.auth_type != 0 {
        let auth = crate::proto::flow::AuthType::try_from(flow.auth_type)
            .map_or("UNKNOWN", |a| a.as_str_name());
        format!("{}; Auth: {auth}", flow.summary)
    } else {
        flow.summary.clone()
    }
}

/// One compact line (without newline), exactly as `hubble observe` prints it.
pub fn compact_line(flow: &Flow, opts: &PrintOptions) -> String {
    let (mut src, mut dst) = host_names(flow, opts);
    let mut src_id = format_identity(flow.source.as_ref().map_or(0, |e| e.identity));
    let mut dst_id = format_identity(flow.destination.as_ref().map_or(0, |e| e.identity));
    let arrow = match flow.is_reply {
        None => "<>",
        Some(false) => "->",
        Some(true) => {
            // Replies are printed client-first, like the request.
            std::mem::swap(&mut src, &mut dst);
            std::mem::swap(&mut src_id, &mut dst_id);
            "<-"
        }
    };
    let node = if opts.node_name {
        format!(" [{}]", flow.node_name)
    } else {
        String::new()
    };
    format!(
        "{}{node}: {src} {src_id} {arrow} {dst} {dst_id} {} {} ({})",
        opts.time_format.format(flow.time.as_ref()),
        flow_type(flow),
        verdict_text(flow),
        summary(flow)
    )
}

/// One dict block (without separator), as `hubble observe -o dict` prints it.
pub fn dict_block(flow: &Flow, opts: &PrintOptions) -> String {
    let (src, dst) = host_names(flow, opts);
    let mut out = format!(
        "  TIMESTAMP: {}\n",
        opts.time_format.format(flow.time.as_ref())
    );
    if opts.node_name {
        out.push_str(&format!("       NODE: {}\n", flow.node_name));
    }
    out.push_str(&format!("     SOURCE: {src}\n"));
    out.push_str(&format!("DESTINATION: {dst}\n"));
    out.push_str(&format!("       TYPE: {}\n", flow_type(flow)));
    out.push_str(&format!("    VERDICT: {}\n", verdict_text(flow)));
    out.push_str(&format!("    SUMMARY: {}\n", summary(flow)));
    out
}

fn table_row(flow: &Flow, opts: &PrintOptions) -> Vec<String> {
    let (src, dst) = host_names(flow, opts);
    let mut row = vec![opts.time_format.format(flow.time.as_ref())];
    if opts.node_name {
        row.push(flow.node_name.clone());
    }
    row.extend([src, dst, flow_type(flow), verdict_text(flow), summary(flow)]);
    row
}

/// Aligns cells as Go's tabwriter with padding 3 does (the last column is not padded).
pub fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        out.push('\n');
    }
    out
}

/// An agent event's type as hubble prints it: the enum name ("POLICY_UPDATED"),
/// or the number when it is not one we know.
pub fn agent_event_type(event: &AgentEvent) -> String {
    AgentEventType::try_from(event.r#type).map_or_else(
        |_| event.r#type.to_string(),
        |t| t.as_str_name().to_string(),
    )
}

fn service_addr(a: &ServiceUpsertNotificationAddr) -> String {
    join_host_port(&a.ip, &a.port.to_string())
}

/// Hubble's DETAILS of an agent event ("labels: [..], revision: 2, count: 1"),
/// or "UNKNOWN" when the notification does not fit the type.
pub fn agent_event_details(event: &AgentEvent, time_format: TimeFormat) -> String {
    use agent_event::Notification as N;
    let kind = AgentEventType::try_from(event.r#type).unwrap_or(AgentEventType::AgentEventUnknown);
    match (kind, &event.notification) {
        (AgentEventType::AgentEventUnknown, Some(N::Unknown(u))) => {
            format!("type: {}, notification: {}", u.r#type, u.notification)
        }
        (AgentEventType::AgentStarted, Some(N::AgentStart(a))) => {
            format!("start time: {}", time_format.format(a.time.as_ref()))
        }
        (
            AgentEventType::PolicyUpdated | AgentEventType::PolicyDeleted,
            Some(N::PolicyUpdate(p)),
        ) => {
            format!(
                "labels: [{}], revision: {}, count: {}",
                p.labels.join(","),
                p.revision,
                p.rule_count
            )
        }
        (
            AgentEventType::EndpointRegenerateSuccess | AgentEventType::EndpointRegenerateFailure,
            Some(N::EndpointRegenerate(r)),
        ) => {
            let mut out = format!("id: {}, labels: [{}]", r.id, r.labels.join(","));
            if !r.error.is_empty() {
                out.push_str(&format!(", error: {}", r.error));
            }
            out
        }
        (
            AgentEventType::EndpointCreated | AgentEventType::EndpointDeleted,
            Some(N::EndpointUpdate(e)),
        ) => {
            let mut out = format!("id: {}", e.id);
            if !e.namespace.is_empty() {
                out.push_str(&format!(", namespace: {}", e.namespace));
            }
            if !e.pod_name.is_empty() {
                out.push_str(&format!(", pod name: {}", e.pod_name));
            }
            out
        }
        (
            AgentEventType::IpcacheUpserted | AgentEventType::IpcacheDeleted,
            Some(N::IpcacheUpdate(i)),
        ) => {
            let mut out = format!("cidr: {}, identity: {}", i.cidr, i.identity);
            if let Some(old) = i.old_identity {
                out.push_str(&format!(", old identity: {old}"));
            }
            if !i.host_ip.is_empty() {
                out.push_str(&format!(", host ip: {}", i.host_ip));
            }
            if !i.old_host_ip.is_empty() {
                out.push_str(&format!(", old host ip: {}", i.old_host_ip));
            }
            out.push_str(&format!(", encrypt key: {}", i.encrypt_key));
            out
        }
        (AgentEventType::ServiceUpserted, Some(N::ServiceUpsert(svc))) => {
            let mut out = format!("id: {}", svc.id);
            if let Some(frontend) = &svc.frontend_address {
                out.push_str(&format!(", frontend: {}", service_addr(frontend)));
            }
            if !svc.backend_addresses.is_empty() {
                let backends: Vec<String> =
                    svc.backend_addresses.iter().map(service_addr).collect();
                out.push_str(&format!(", backends: [{}]", backends.join(",")));
            }
            for (name, value) in [
                ("type", &svc.r#type),
                ("traffic policy", &svc.traffic_policy),
                ("namespace", &svc.namespace),
                ("name", &svc.name),
            ] {
                if !value.is_empty() {
                    out.push_str(&format!(", {name}: {value}"));
                }
            }
            out
        }
        (AgentEventType::ServiceDeleted, Some(N::ServiceDelete(d))) => format!("id: {}", d.id),
        _ => "UNKNOWN".to_string(),
    }
}

/// One compact agent event line (without newline), as
/// `hubble observe agent-events` prints it: `TIME[ [NODE]]: TYPE (DETAILS)`.
pub fn agent_event_compact_line(resp: &GetAgentEventsResponse, opts: &PrintOptions) -> String {
    let node = if opts.node_name {
        format!(" [{}]", resp.node_name)
    } else {
        String::new()
    };
    let event = resp.agent_event.clone().unwrap_or_default();
    format!(
        "{}{node}: {} ({})",
        opts.time_format.format(resp.time.as_ref()),
        agent_event_type(&event),
        agent_event_details(&event, opts.time_format)
    )
}

/// Writes GetFlows responses in one of Hubble's formats.
#[derive(Debug)]
pub struct Printer<W: Write, E: Write> {
    out: W,
    err: E,
    opts: PrintOptions,
    flows_written: usize,
    table: Vec<Vec<String>>,
}

impl<W: Write, E: Write> Printer<W, E> {
    /// A printer writing flows to `out` and lost-event notices to `err`.
    pub fn new(out: W, err: E, opts: PrintOptions) -> Self {
        let mut table = Vec::new();
        if opts.format == OutputFormat::Table {
            let mut header = vec!["TIMESTAMP".to_string()];
            if opts.node_name {
                header.push("NODE".to_string());
            }
            header
                .extend(["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"].map(String::from));
            table.push(header);
        }
        Self {
            out,
            err,
            opts,
            flows_written: 0,
            table,
        }
    }

    /// A printer of GetAgentEvents responses (the table has agent event columns).
    pub fn for_agent_events(out: W, err: E, opts: PrintOptions) -> Self {
        let mut table = Vec::new();
        if opts.format == OutputFormat::Table {
            table.push(vec!["TIMESTAMP".to_string()]);
            if opts.node_name {
                table[0].push("NODE".to_string());
            }
            table[0].extend(["TYPE", "DETAILS"].map(String::from));
        }
        Self {
            out,
            err,
            opts,
            flows_written: 0,
            table,
        }
    }

    /// Prints one agent event; a response without one is skipped.
    pub fn write_agent_event(&mut self, resp: &GetAgentEventsResponse) -> io::Result<()> {
        let Some(event) = &resp.agent_event else {
            return Ok(());
        };
        let time = self.opts.time_format.format(resp.time.as_ref());
        let details = agent_event_details(event, self.opts.time_format);
        match self.opts.format {
            OutputFormat::Json | OutputFormat::Jsonpb => writeln!(
                self.out,
                "{}",
                crate::json::agent_event_response_to_json(resp)
            )?,
            OutputFormat::Compact => {
                writeln!(self.out, "{}", agent_event_compact_line(resp, &self.opts))?;
            }
            OutputFormat::Dict => {
                if self.flows_written > 0 {
                    writeln!(self.out, "------------")?;
                }
                writeln!(self.out, "  TIMESTAMP: {time}")?;
                if self.opts.node_name {
                    writeln!(self.out, "       NODE: {}", resp.node_name)?;
                }
                writeln!(self.out, "       TYPE: {}", agent_event_type(event))?;
                writeln!(self.out, "    DETAILS: {details}")?;
            }
            OutputFormat::Table => {
                let mut row = vec![time];
                if self.opts.node_name {
                    row.push(resp.node_name.clone());
                }
                row.extend([agent_event_type(event), details]);
                self.table.push(row);
            }
        }
        self.flows_written += 1;
        Ok(())
    }

    /// Prints one response.
    pub fn write_response(&mut self, resp: &GetFlowsResponse) -> io::Result<()> {
        if matches!(self.opts.format, OutputFormat::Json | OutputFormat::Jsonpb) {
            return writeln!(self.out, "{}", crate::json::response_to_json(resp));
        }
        match &resp.response_types {
            Some(get_flows_response::ResponseTypes::Flow(flow)) => self.write_flow(flow),
            Some(get_flows_response::ResponseTypes::LostEvents(lost)) => {
                let source = LostEventSource::try_from(lost.source)
                    .map_or("UNKNOWN_LOST_EVENT_SOURCE", |s| s.as_str_name());
                writeln!(
                    self.err,
                    "EVENTS LOST: {source} CPU({}) {}",
                    lost.cpu.unwrap_or(0),
                    lost.num_events_lost
                )
            }
            Some(get_flows_response::ResponseTypes::NodeStatus(status)) => {
                // A relay names the nodes it answers from; only those it
                // could not ask are worth the reader's attention.
                let state =
                    NodeState::try_from(status.state_change).unwrap_or(NodeState::UnknownNodeState);
                match state {
                    NodeState::NodeUnavailable | NodeState::NodeError => {
                        let what = if state == NodeState::NodeError {
                            "failed"
                        } else {
                            "unavailable"
                        };
                        let detail = if status.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", status.message)
                        };
                        writeln!(
                            self.err,
                            "nodes {what}: {}{detail}",
                            status.node_names.join(", ")
                        )
                    }
                    _ => {
                        tracing::debug!(nodes = ?status.node_names, "node status");
                        Ok(())
                    }
                }
            }
            None => Ok(()),
        }
    }

    fn write_flow(&mut self, flow: &Flow) -> io::Result<()> {
        match self.opts.format {
            OutputFormat::Compact => writeln!(self.out, "{}", compact_line(flow, &self.opts))?,
            OutputFormat::Dict => {
                if self.flows_written > 0 {
                    writeln!(self.out, "------------")?;
                }
                write!(self.out, "{}", dict_block(flow, &self.opts))?;
            }
            OutputFormat::Table => self.table.push(table_row(flow, &self.opts)),
            OutputFormat::Json | OutputFormat::Jsonpb => {}
        }
        self.flows_written += 1;
        Ok(())
    }

    /// Writes what is buffered (the table) and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.opts.format == OutputFormat::Table && self.flows_written > 0 {
            let table = render_table(&self.table);
            self.out.write_all(table.as_bytes())?;
        }
        self.out.flush()
    }
}
