//! Terminal renderings of a [`MapView`]: an aligned table of edges and
//! Graphviz DOT.

use std::fmt::Write;

use crate::printer::render_table;

use super::view::{EdgeStatus, EdgeView, MapView, NodeKind};

/// `PROTO/PORT`, or just the protocol when there is no port (ICMP).
fn proto_port(edge: &EdgeView) -> String {
    if edge.port == 0 {
        edge.protocol.clone()
    } else {
        format!("{}/{}", edge.protocol, edge.port)
    }
}

fn error_percent(edge: &EdgeView) -> String {
    edge.error_ratio
        .map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn status_name(status: EdgeStatus) -> &'static str {
    match status {
        EdgeStatus::Forwarded => "forwarded",
        EdgeStatus::Denied => "denied",
        EdgeStatus::Mixed => "partly denied",
    }
}

/// The table `myelin servicemap` prints: one line per edge,
/// `SOURCE -> DESTINATION  PROTO/PORT  FLOWS/S  REQ/S  ERR%  DROPS  STATUS`,
/// rates over the view's window, drops since the edge appeared. A last
/// line says what the map missed, when it missed anything.
pub fn render_text(view: &MapView) -> String {
    let mut rows = vec![
        [
            "SOURCE",
            "",
            "DESTINATION",
            "PROTO/PORT",
            "FLOWS/S",
            "REQ/S",
            "ERR%",
            "DROPS",
            "STATUS",
        ]
        .map(str::to_string)
        .to_vec(),
    ];
    for edge in &view.edges {
        rows.push(vec![
            view.label(&edge.source).to_string(),
            "->".to_string(),
            view.label(&edge.destination).to_string(),
            proto_port(edge),
            format!("{:.2}", edge.flow_rate),
            format!("{:.2}", edge.request_rate),
            error_percent(edge),
            edge.dropped.to_string(),
            status_name(edge.status).to_string(),
        ]);
    }
    let mut out = render_table(&rows);
    let missed = missed_note(view);
    if !missed.is_empty() {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "({missed})");
    }
    out
}

fn missed_note(view: &MapView) -> String {
    let mut parts = Vec::new();
    if view.lost_flows > 0 {
        parts.push(format!("{} flows lost", view.lost_flows));
    }
    if view.unplaced_flows > 0 {
        parts.push(format!("{} flows without endpoints", view.unplaced_flows));
    }
    if view.evicted_edges > 0 {
        parts.push(format!("{} edges evicted", view.evicted_edges));
    }
    parts.join(", ")
}

/// A DOT string literal.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The label under an edge: protocol and port, then rates, then drops.
fn edge_label(edge: &EdgeView) -> String {
    let mut lines = vec![proto_port(edge)];
    if edge.http_requests > 0 || edge.protocol == "HTTP" {
        lines.push(format!(
            "{:.2} req/s, {} err",
            edge.request_rate,
            error_percent(edge)
        ));
    } else {
        lines.push(format!("{:.2} flows/s", edge.flow_rate));
    }
    if edge.dropped > 0 {
        lines.push(format!("{} drops", edge.dropped));
    }
    lines.join("\n")
}

/// Graphviz DOT of the map: workloads as boxes, reserved identities and
/// addresses as ellipses; denied edges red, partly denied orange.
pub fn render_dot(view: &MapView) -> String {
    let mut out = String::from("digraph servicemap {\n");
    out.push_str("  rankdir=LR;\n");
    out.push_str("  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"Helvetica\"];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=10];\n");
    // Writing to a String cannot fail, hence the ignored results below.
    for node in &view.nodes {
        let shape = match node.kind {
            NodeKind::Workload | NodeKind::Pod => "",
            NodeKind::Reserved | NodeKind::Identity | NodeKind::Address => ", shape=ellipse",
        };
        let _ = writeln!(
            out,
            "  {} [label={}{shape}];",
            quote(&node.id),
            quote(&node.label)
        );
    }
    for edge in &view.edges {
        let color = match edge.status {
            EdgeStatus::Forwarded => "",
            EdgeStatus::Denied => ", color=red, fontcolor=red",
            EdgeStatus::Mixed => ", color=orange, fontcolor=orange",
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label={}{color}];",
            quote(&edge.source),
            quote(&edge.destination),
            quote(&edge_label(edge))
        );
    }
    out.push_str("}\n");
    out
}
