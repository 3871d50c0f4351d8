//! The labels every object `myelin install` prints carries, and the DaemonSet's selector.

use std::collections::BTreeMap;

/// `app.kubernetes.io/part-of: myelin`: how `kubectl delete -l` finds them all.
pub fn common() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/part-of".to_owned(), "myelin".to_owned())])
}

/// The labels of the agent's pods, which the DaemonSet selects them by.
pub fn agent_pods() -> BTreeMap<String, String> {
    let mut labels = common();
    labels.insert(
        "app.kubernetes.io/name".to_owned(),
        "myelin-agent".to_owned(),
    );
    labels
}
