//! The node routing that the redirect to the L7 proxy relies on.
//!
//! `bpf_sk_assign` picks the proxy's socket, but the packet still goes through the node's
//! routing, which would forward it towards its original destination. Packets the datapath
//! hands to the proxy carry [`PROXY_MARK_TO_PROXY`]; a policy rule sends them to a table
//! whose only route is local, so the stack delivers them to the assigned socket.

use myelin_common::maps::{PROXY_MARK_MASK, PROXY_MARK_TO_PROXY};

/// Routing table holding the local default routes for packets handed to the proxy.
pub const PROXY_ROUTE_TABLE: u32 = 2004;

/// Priority of the rule that sends marked packets to [`PROXY_ROUTE_TABLE`]: before the
/// main table (32766).
pub const PROXY_RULE_PRIORITY: u32 = 100;

/// The `ip` invocations (the arguments after `ip`) that set this routing up in a node's
/// network namespace, for IPv4 and IPv6: a rule for the mark and a local default route.
pub fn proxy_delivery_routes() -> Vec<Vec<String>> {
    let mark = format!("{PROXY_MARK_TO_PROXY:#x}/{PROXY_MARK_MASK:#x}");
    let table = PROXY_ROUTE_TABLE.to_string();
    let priority = PROXY_RULE_PRIORITY.to_string();
    [("-4", "0.0.0.0/0"), ("-6", "::/0")]
        .into_iter()
        .flat_map(|(family, everything)| {
            [
                vec![
                    family, "rule", "add", "fwmark", &mark, "lookup", &table, "pref", &priority,
                ],
                vec![
                    family, "route", "add", "local", everything, "dev", "lo", "table", &table,
                ],
            ]
            .map(|args| args.into_iter().map(str::to_owned).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_the_mark_the_programs_set() {
        let routes = proxy_delivery_routes();
        assert_eq!(
            routes[0].join(" "),
            "-4 rule add fwmark 0x200/0xf00 lookup 2004 pref 100"
        );
        assert_eq!(
            routes[3].join(" "),
            "-6 route add local ::/0 dev lo table 2004"
        );
        assert_eq!(routes.len(), 4);
    }
}
