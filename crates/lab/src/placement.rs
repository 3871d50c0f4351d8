//! Where a new pod runs, as a scheduler decides it: the node `spec.nodeName`
//! names; else among the nodes whose labels `spec.nodeSelector` selects
//! (every lab node carries `kubernetes.io/hostname=<name>` and
//! `kubernetes.io/os=linux`), the one running the fewest pods, the lowest
//! node number on a tie. A pod no node can take is refused, with its field.

use std::collections::BTreeMap;

/// The labels every node carries besides its hostname.
const NODE_OS_LABEL: (&str, &str) = ("kubernetes.io/os", "linux");

/// The label that names a node.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLoad {
    /// Its name.
    pub name: String,
    /// Its number (ties go to the lowest).
    pub index: u8,
    /// The pods it runs, counting those placed by the apply being planned.
    pub pods: usize,
}

/// The labels of node `name`.
pub fn node_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (HOSTNAME_LABEL.to_string(), name.to_string()),
        (NODE_OS_LABEL.0.to_string(), NODE_OS_LABEL.1.to_string()),
    ])
}

/// Picks the node for a pod pinned to `node_name` (if any) and selecting
/// nodes by `node_selector`, among `nodes`, and counts the pod on it. `at`
/// is the pod spec's field path (`spec`, `spec.template.spec`) for the
/// refusal, which names the field and the node.
pub fn place(
    nodes: &mut [NodeLoad],
    node_name: Option<&str>,
    node_selector: &BTreeMap<String, String>,
    at: &str,
) -> Result<String, String> {
    let names = || {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        names.join(", ")
    };
    let selected = |node: &NodeLoad| {
        let labels = node_labels(&node.name);
        node_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let chosen = match node_name {
        Some(pinned) => {
            let Some(node) = nodes.iter().position(|n| n.name == pinned) else {
                return Err(format!(
                    "{at}.nodeName: node {pinned:?} does not exist; the lab's nodes are {} \
                     (add it with `myelin lab node add {pinned}`)",
                    names()
                ));
            };
            if !selected(&nodes[node]) {
                return Err(format!(
                    "{at}.nodeSelector: node {pinned:?} (its {at}.nodeName) does not carry {}",
                    selector_text(node_selector)
                ));
            }
            node
        }
        None => nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| selected(n))
            .min_by_key(|(_, n)| (n.pods, n.index))
            .map(|(i, _)| i)
            .ok_or_else(|| {
                format!(
                    "{at}.nodeSelector: no node carries {}; the lab's nodes are {} and each \
                     carries only {HOSTNAME_LABEL}=<its name> and {}={}",
                    selector_text(node_selector),
                    names(),
                    NODE_OS_LABEL.0,
                    NODE_OS_LABEL.1
                )
            })?,
    };
    nodes[chosen].pods += 1;
    Ok(nodes[chosen].name.clone())
}

fn selector_text(selector: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(pods: &[usize]) -> Vec<NodeLoad> {
        pods.iter()
            .enumerate()
            .map(|(i, &pods)| NodeLoad {
                name: format!("node{}", i + 1),
                index: i as u8 + 1,
                pods,
            })
            .collect()
    }

    fn hostname(name: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(HOSTNAME_LABEL.to_string(), name.to_string())])
    }

    #[test]
    fn the_fewest_pods_win_and_ties_go_to_the_lowest_number() {
        let mut loads = nodes(&[2, 1, 1]);
        let none = BTreeMap::new();
        assert_eq!(
            place(&mut loads, None, &none, "spec").as_deref(),
            Ok("node2")
        );
        assert_eq!(
            place(&mut loads, None, &none, "spec").as_deref(),
            Ok("node3")
        );
        // All at two now: the lowest number.
        assert_eq!(
            place(&mut loads, None, &none, "spec").as_deref(),
            Ok("node1")
        );
        assert_eq!(loads.iter().map(|n| n.pods).collect::<Vec<_>>(), [3, 2, 2]);
    }

    #[test]
    fn ties_follow_the_node_number_not_the_order_given() {
        let mut loads = vec![
            NodeLoad {
                name: "edge".into(),
                index: 4,
                pods: 0,
            },
            NodeLoad {
                name: "node2".into(),
                index: 2,
                pods: 0,
            },
        ];
        let placed = place(&mut loads, None, &BTreeMap::new(), "spec");
        assert_eq!(placed.as_deref(), Ok("node2"));
    }

    #[test]
    fn a_pinned_pod_goes_to_its_node_whatever_the_load() {
        let mut loads = nodes(&[0, 5, 0]);
        let placed = place(&mut loads, Some("node2"), &BTreeMap::new(), "spec");
        assert_eq!(placed.as_deref(), Ok("node2"));
        assert_eq!(loads[1].pods, 6);
    }

    #[test]
    fn a_hostname_selector_picks_its_node() {
        let mut loads = nodes(&[0, 0, 9]);
        let placed = place(&mut loads, None, &hostname("node3"), "spec.template.spec");
        assert_eq!(placed.as_deref(), Ok("node3"));
        let os = BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())]);
        assert_eq!(place(&mut loads, None, &os, "spec").as_deref(), Ok("node1"));
    }

    #[test]
    fn a_pod_pinned_to_a_missing_node_is_refused_with_field_and_node() {
        let mut loads = nodes(&[0, 0]);
        let refused = place(
            &mut loads,
            Some("node9"),
            &BTreeMap::new(),
            "spec.template.spec",
        )
        .expect_err("no node9");
        assert!(
            refused.starts_with("spec.template.spec.nodeName: node \"node9\" does not exist"),
            "{refused}"
        );
        assert!(refused.contains("node1, node2"), "{refused}");
        assert_eq!(loads.iter().map(|n| n.pods).sum::<usize>(), 0);
    }

    #[test]
    fn a_selector_no_node_carries_is_refused() {
        let mut loads = nodes(&[0]);
        let refused = place(&mut loads, None, &hostname("node7"), "spec").expect_err("none");
        assert!(
            refused.starts_with("spec.nodeSelector: no node carries kubernetes.io/hostname=node7"),
            "{refused}"
        );
        let disagree = place(&mut loads, Some("node1"), &hostname("node7"), "spec")
            .expect_err("name and selector disagree");
        assert!(
            disagree.starts_with("spec.nodeSelector: node \"node1\""),
            "{disagree}"
        );
    }
}
