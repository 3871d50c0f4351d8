//! Field masks on flows. Hubble clients may ask for a subset of Flow fields;
//! we keep every top-level field a path names (a nested path such as
//! `source.pod_name` keeps the whole `source`), which returns a superset of
//! what was asked and never less.

use crate::proto::flow::Flow;

/// The flow reduced to the top-level fields named by `paths`; the whole flow
/// when `paths` is empty.
pub fn apply(flow: &Flow, paths: &[String]) -> Flow {
    if paths.is_empty() {
        return flow.clone();
    }
    let mut out = Flow::default();
    for path in paths {
        let top = path.split('.').next().unwrap_or(path);
        copy_field(flow, &mut out, top);
    }
    out
}

fn copy_field(from: &Flow, to: &mut Flow, name: &str) {
    match name {
        "time" => to.time = from.time,
        "uuid" => to.uuid.clone_from(&from.uuid),
        "verdict" => to.verdict = from.verdict,
        "drop_reason" => to.drop_reason = from.drop_reason,
        "auth_type" => to.auth_type = from.auth_type,
        "ethernet" => to.ethernet.clone_from(&from.ethernet),
        "IP" => to.ip.clone_from(&from.ip),
        "l4" => to.l4 = from.l4,
        "source" => to.source.clone_from(&from.source),
        "destination" => to.destination.clone_from(&from.destination),
        "Type" => to.r#type = from.r#type,
        "node_name" => to.node_name.clone_from(&from.node_name),
        "node_labels" => to.node_labels.clone_from(&from.node_labels),
        "source_names" => to.source_names.clone_from(&from.source_names),
        "destination_names" => to.destination_names.clone_from(&from.destination_names),
        "l7" => to.l7.clone_from(&from.l7),
        "reply" => to.reply = from.reply,
        "event_type" => to.event_type = from.event_type,
        "source_service" => to.source_service.clone_from(&from.source_service),
        "destination_service" => to.destination_service.clone_from(&from.destination_service),
        "traffic_direction" => to.traffic_direction = from.traffic_direction,
        "policy_match_type" => to.policy_match_type = from.policy_match_type,
        "trace_observation_point" => to.trace_observation_point = from.trace_observation_point,
        "trace_reason" => to.trace_reason = from.trace_reason,
        "file" => to.file.clone_from(&from.file),
        "drop_reason_desc" => to.drop_reason_desc = from.drop_reason_desc,
        "is_reply" => to.is_reply = from.is_reply,
        "debug_capture_point" => to.debug_capture_point = from.debug_capture_point,
        "interface" => to.interface.clone_from(&from.interface),
        "proxy_port" => to.proxy_port = from.proxy_port,
        "trace_context" => to.trace_context.clone_from(&from.trace_context),
        "sock_xlate_point" => to.sock_xlate_point = from.sock_xlate_point,
        "socket_cookie" => to.socket_cookie = from.socket_cookie,
        "cgroup_id" => to.cgroup_id = from.cgroup_id,
        "Summary" => to.summary.clone_from(&from.summary),
        "egress_allowed_by" => to.egress_allowed_by.clone_from(&from.egress_allowed_by),
        "ingress_allowed_by" => to.ingress_allowed_by.clone_from(&from.ingress_allowed_by),
        "egress_denied_by" => to.egress_denied_by.clone_from(&from.egress_denied_by),
        "ingress_denied_by" => to.ingress_denied_by.clone_from(&from.ingress_denied_by),
        // The server refuses paths that name no Flow field before this
        // (`wire_check::check_field_path`); the fields left (emitter, tunnel,
        // ip_trace_id, extensions, policy_log, aggregate) are never filled.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::Endpoint;

    #[test]
    fn keeps_named_fields_only() {
        let flow = Flow {
            uuid: "u".into(),
            node_name: "n".into(),
            source: Some(Endpoint {
                identity: 5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let masked = apply(&flow, &["source.identity".into(), "uuid".into()]);
        assert_eq!(masked.uuid, "u");
        assert_eq!(masked.source.map(|s| s.identity), Some(5));
        assert!(masked.node_name.is_empty());
        assert_eq!(apply(&flow, &[]), flow);
    }
}
