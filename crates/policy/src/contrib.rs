//! An endpoint's tables kept as the sum of what each policy contributes, so
//! that adding, replacing or removing one policy costs that policy's own
//! entries instead of a recomputation from every policy selecting the
//! endpoint.
//!
//! Each key holds a tally of its sources (deny and allow/redirect rules
//! with counts, and each policy's L7 rules); the visible entry is a pure
//! function of the tally and of the deny keys covering it, so adding and
//! subtracting contributions in any order gives the table a recomputation
//! from scratch gives.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::identity::{ANY, Identity};
use crate::resolve::{
    Action, DirectionDiff, DirectionPolicy, Entry, EntryKey, EntryValue, L7Policy, PortRange,
};
use crate::rules::{Direction, PolicyKey, Proto, Provenance};

/// One entry a policy rule produces for an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contributed {
    pub direction: Direction,
    pub key: EntryKey,
    pub action: Action,
    pub from: Provenance,
}

/// Everything one policy produces for one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Contribution {
    /// A selecting rule enforces default deny on ingress.
    pub ingress_enforced: bool,
    /// A selecting rule enforces default deny on egress.
    pub egress_enforced: bool,
    pub entries: Vec<Contributed>,
}

impl Contribution {
    fn is_empty(&self) -> bool {
        !self.ingress_enforced && !self.egress_enforced && self.entries.is_empty()
    }
}

/// The sources of one key.
#[derive(Debug, Clone, Default)]
struct Tally {
    /// Deny rules, with how many entries each produced here.
    deny: BTreeMap<Provenance, u32>,
    /// Allow and redirect rules, with counts.
    permit: BTreeMap<Provenance, u32>,
    /// Allow entries.
    allows: u32,
    /// Each policy's L7 rules on this key, merged in the policy's order.
    redirects: BTreeMap<PolicyKey, L7Policy>,
    /// Since the last settle: whether the action (or its L7 rules) may
    /// have changed, so the entry is built again.
    rebuild: bool,
    /// Since the last settle: rules that entered (`true`) or left the
    /// entry's provenance, applied to the visible entry in place (an entry
    /// many policies share is not rebuilt for each of them).
    delta: Vec<(Provenance, bool)>,
}

/// Counts one more entry of `from`; whether `from` is new here.
fn count_up(map: &mut BTreeMap<Provenance, u32>, from: &Provenance) -> bool {
    let n = map.entry(from.clone()).or_default();
    *n += 1;
    *n == 1
}

/// Counts one entry of `from` less; whether `from` left.
fn count_down(map: &mut BTreeMap<Provenance, u32>, from: &Provenance) -> bool {
    let Some(n) = map.get_mut(from) else {
        return false;
    };
    *n -= 1;
    if *n == 0 {
        map.remove(from);
        return true;
    }
    false
}

impl Tally {
    fn add(&mut self, c: &Contributed) {
        let was_deny = self.is_deny();
        let entered = match &c.action {
            Action::Deny => count_up(&mut self.deny, &c.from),
            Action::Allow => {
                self.allows += 1;
                self.rebuild |= self.allows == 1;
                count_up(&mut self.permit, &c.from)
            }
            Action::Redirect(l7) => {
                self.rebuild = true;
                match self.redirects.entry(c.from.policy.clone()) {
                    MapEntry::Vacant(v) => {
                        v.insert(l7.clone());
                    }
                    MapEntry::Occupied(mut o) => o.get_mut().merge(l7.clone()),
                }
                count_up(&mut self.permit, &c.from)
            }
        };
        self.note(was_deny, c, entered, true);
    }

    /// Subtracts an entry. A policy's contribution leaves whole, so its
    /// L7 rules on this key go with its first redirect entry.
    fn remove(&mut self, c: &Contributed) {
        let was_deny = self.is_deny();
        let left = match &c.action {
            Action::Deny => count_down(&mut self.deny, &c.from),
            Action::Allow => {
                self.allows = self.allows.saturating_sub(1);
                self.rebuild |= self.allows == 0;
                count_down(&mut self.permit, &c.from)
            }
            Action::Redirect(_) => {
                self.rebuild = true;
                self.redirects.remove(&c.from.policy);
                count_down(&mut self.permit, &c.from)
            }
        };
        self.note(was_deny, c, left, false);
    }

    /// Records how the visible entry changed: a rule entering or leaving
    /// the provenance of the kind shown, or a switch between deny and the rest.
    fn note(&mut self, was_deny: bool, c: &Contributed, changed: bool, entered: bool) {
        if was_deny != self.is_deny() {
            self.rebuild = true;
        } else if changed && (c.action == Action::Deny) == self.is_deny() {
            self.delta.push((c.from.clone(), entered));
        }
    }

    fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.permit.is_empty()
    }

    fn is_deny(&self) -> bool {
        !self.deny.is_empty()
    }

    /// The entry: any deny wins (with only the deny rules as provenance);
    /// otherwise redirects, their L7 rules merged in policy order, with
    /// `allow_all` when an allow overlaps; otherwise an allow.
    fn value(&self) -> EntryValue {
        if self.is_deny() {
            return EntryValue {
                action: Action::Deny,
                provenance: Arc::new(self.deny.keys().cloned().collect()),
            };
        }
        let provenance = Arc::new(self.permit.keys().cloned().collect());
        let mut redirects = self.redirects.values();
        let Some(first) = redirects.next() else {
            return EntryValue {
                action: Action::Allow,
                provenance,
            };
        };
        let mut l7 = first.clone();
        for more in redirects {
            l7.merge(more.clone());
        }
        l7.allow_all |= self.allows > 0;
        EntryValue {
            action: Action::Redirect(l7),
            provenance,
        }
    }
}

/// The tallies of one direction.
#[derive(Debug, Clone, Default)]
struct DirectionTally {
    /// Contributions that enforce default deny.
    enforcing: u32,
    tallies: BTreeMap<EntryKey, Tally>,
    /// Keys whose tally is a deny, by peer (to find what a deny covers).
    denies: BTreeMap<Identity, BTreeSet<EntryKey>>,
    /// Keys changed since the last settle.
    touched: BTreeSet<EntryKey>,
}

impl DirectionTally {
    fn add(&mut self, c: &Contributed) {
        // A new tally has no delta against what the table holds (a key
        // emptied and filled again in one change included): built whole.
        self.tallies
            .entry(c.key)
            .or_insert_with(|| Tally {
                rebuild: true,
                ..Tally::default()
            })
            .add(c);
        self.touched.insert(c.key);
    }

    fn remove(&mut self, c: &Contributed) {
        if let Some(t) = self.tallies.get_mut(&c.key) {
            t.remove(c);
            if t.is_empty() {
                self.tallies.remove(&c.key);
            }
        }
        self.touched.insert(c.key);
    }

    /// Whether a deny entry covers `key` entirely (then an allow or
    /// redirect on it can never apply and the datapath need not hold it).
    fn covered(&self, key: &EntryKey) -> bool {
        let mut peers = vec![ANY];
        if key.peer != ANY {
            peers.push(key.peer);
        }
        peers
            .iter()
            .filter_map(|p| self.denies.get(p))
            .flatten()
            .any(|d| d.covers(key))
    }

    /// Keys of one peer's tallies.
    fn keys_of(&self, peer: Identity) -> impl Iterator<Item = EntryKey> + '_ {
        let first = EntryKey {
            peer,
            proto: Proto::Any,
            ports: PortRange { start: 0, end: 0 },
        };
        self.tallies
            .range(first..)
            .map(|(k, _)| *k)
            .take_while(move |k| k.peer == peer)
    }

    /// Brings `table` up to date with the touched keys (and the keys a deny
    /// that appeared or left covers); returns the diff and the keys visited.
    fn settle(&mut self, table: &mut DirectionPolicy) -> (DirectionDiff, usize) {
        let touched = std::mem::take(&mut self.touched);
        let mut deny_peers = BTreeSet::new();
        for key in &touched {
            let now = self.tallies.get(key).is_some_and(Tally::is_deny);
            let set = self.denies.entry(key.peer).or_default();
            let changed = if now {
                set.insert(*key)
            } else {
                set.remove(key)
            };
            if set.is_empty() {
                self.denies.remove(&key.peer);
            }
            if changed {
                deny_peers.insert(key.peer);
            }
        }
        let mut recheck = touched;
        if deny_peers.contains(&ANY) {
            recheck.extend(self.tallies.keys().copied());
        } else {
            for peer in deny_peers {
                recheck.extend(self.keys_of(peer));
            }
        }
        table.enforced = self.enforcing > 0;
        let mut diff = DirectionDiff {
            enforced: table.enforced,
            upsert: Vec::new(),
            remove: Vec::new(),
        };
        let visited = recheck.len();
        for key in recheck {
            let visible = self
                .tallies
                .get(&key)
                .is_some_and(|t| t.is_deny() || !self.covered(&key));
            let Some(tally) = self.tallies.get_mut(&key) else {
                if table.entries.remove(&key).is_some() {
                    diff.remove.push(key);
                }
                continue;
            };
            if !visible {
                // Hidden: built whole when it shows again.
                tally.rebuild = true;
                tally.delta.clear();
                if table.entries.remove(&key).is_some() {
                    diff.remove.push(key);
                }
                continue;
            }
            let rebuild = std::mem::take(&mut tally.rebuild);
            let delta = std::mem::take(&mut tally.delta);
            match table.entries.get_mut(&key) {
                // Only rules came or went: the entry is updated in place.
                Some(held) if !rebuild => {
                    // A rule that left and came back (a replaced policy
                    // producing this entry again) is no change.
                    let mut net: BTreeMap<Provenance, i32> = BTreeMap::new();
                    for (from, entered) in delta {
                        *net.entry(from).or_default() += if entered { 1 } else { -1 };
                    }
                    let mut changed = false;
                    for (from, n) in net {
                        changed |= match n.cmp(&0) {
                            std::cmp::Ordering::Greater => {
                                Arc::make_mut(&mut held.provenance).insert(from)
                            }
                            std::cmp::Ordering::Less => {
                                Arc::make_mut(&mut held.provenance).remove(&from)
                            }
                            std::cmp::Ordering::Equal => false,
                        };
                    }
                    if changed {
                        diff.upsert.push(Entry {
                            key,
                            value: held.clone(),
                        });
                    }
                }
                held => {
                    let value = tally.value();
                    if held.as_deref() != Some(&value) {
                        table.entries.insert(key, value.clone());
                        diff.upsert.push(Entry { key, value });
                    }
                }
            }
        }
        (diff, visited)
    }
}

/// One endpoint's contributions and the tallies they add up to.
#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointTables {
    contributions: BTreeMap<PolicyKey, Contribution>,
    ingress: DirectionTally,
    egress: DirectionTally,
}

impl EndpointTables {
    /// The policies contributing now.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyKey> {
        self.contributions.keys()
    }

    fn direction(&mut self, direction: Direction) -> &mut DirectionTally {
        match direction {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }

    /// Replaces what `policy` contributes (empty: it contributes nothing
    /// any more); returns the entries visited.
    pub fn set(&mut self, policy: &PolicyKey, new: Contribution) -> usize {
        let old = self.contributions.remove(policy).unwrap_or_default();
        if old == new {
            if !new.is_empty() {
                self.contributions.insert(policy.clone(), new);
            }
            return 0;
        }
        for c in &old.entries {
            self.direction(c.direction).remove(c);
        }
        for c in &new.entries {
            self.direction(c.direction).add(c);
        }
        let count = |b: bool| u32::from(b);
        self.ingress.enforcing =
            self.ingress.enforcing + count(new.ingress_enforced) - count(old.ingress_enforced);
        self.egress.enforcing =
            self.egress.enforcing + count(new.egress_enforced) - count(old.egress_enforced);
        let visited = old.entries.len() + new.entries.len();
        if !new.is_empty() {
            self.contributions.insert(policy.clone(), new);
        }
        visited
    }

    /// Brings one direction's visible table up to date; returns its diff
    /// and the keys visited.
    pub fn settle(
        &mut self,
        direction: Direction,
        table: &mut DirectionPolicy,
    ) -> (DirectionDiff, usize) {
        self.direction(direction).settle(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::PolicyKind;

    fn provenance(policy: &str) -> Provenance {
        Provenance {
            policy: PolicyKey {
                kind: PolicyKind::CiliumNetworkPolicy,
                namespace: "default".into(),
                name: policy.into(),
            },
            rule: "spec.ingress[0]".into(),
        }
    }

    fn key(peer: Identity, port: u16) -> EntryKey {
        EntryKey {
            peer,
            proto: Proto::Tcp,
            ports: PortRange {
                start: port,
                end: port,
            },
        }
    }

    fn contribution(policy: &str, entries: &[(EntryKey, Action)]) -> (PolicyKey, Contribution) {
        let from = provenance(policy);
        let entries = entries
            .iter()
            .map(|(key, action)| Contributed {
                direction: Direction::Ingress,
                key: *key,
                action: action.clone(),
                from: from.clone(),
            })
            .collect();
        (
            from.policy.clone(),
            Contribution {
                ingress_enforced: true,
                egress_enforced: false,
                entries,
            },
        )
    }

    fn settled(tables: &mut EndpointTables) -> DirectionPolicy {
        let mut table = DirectionPolicy::default();
        tables.settle(Direction::Ingress, &mut table);
        table
    }

    #[test]
    fn removing_a_policy_leaves_what_the_others_contribute() {
        let (a, ca) = contribution("a", &[(key(300, 80), Action::Allow)]);
        let (b, cb) = contribution(
            "b",
            &[(key(300, 80), Action::Allow), (key(301, 80), Action::Allow)],
        );
        let mut both = EndpointTables::default();
        both.set(&a, ca);
        both.set(&b, cb.clone());
        let mut table = settled(&mut both);
        assert_eq!(table.entries[&key(300, 80)].provenance.len(), 2);
        both.set(&a, Contribution::default());
        let (diff, visited) = both.settle(Direction::Ingress, &mut table);
        // Only the key policy a touched is visited and re-emitted.
        assert_eq!(visited, 1);
        assert_eq!(diff.upsert.len(), 1);
        let mut only_b = EndpointTables::default();
        only_b.set(&b, cb);
        assert_eq!(table, settled(&mut only_b));
        both.set(&b, Contribution::default());
        both.settle(Direction::Ingress, &mut table);
        assert_eq!(table, DirectionPolicy::default());
    }

    #[test]
    fn an_entry_emptied_and_filled_again_in_one_change_names_only_the_new_rules() {
        let (a, ca) = contribution("a", &[(key(300, 80), Action::Allow)]);
        let (b, cb) = contribution("b", &[(key(300, 80), Action::Allow)]);
        let mut tables = EndpointTables::default();
        tables.set(&a, ca);
        let mut table = settled(&mut tables);
        tables.set(&a, Contribution::default());
        tables.set(&b, cb);
        let (diff, _) = tables.settle(Direction::Ingress, &mut table);
        assert_eq!(diff.upsert.len(), 1);
        assert_eq!(
            *table.entries[&key(300, 80)].provenance,
            BTreeSet::from([provenance("b")])
        );
    }

    #[test]
    fn a_deny_hides_what_it_covers_until_it_leaves() {
        let any_on_80 = key(ANY, 80);
        let (d, deny) = contribution("deny", &[(any_on_80, Action::Deny)]);
        let (a, allow) = contribution(
            "allow",
            &[(key(300, 80), Action::Allow), (key(300, 81), Action::Allow)],
        );
        let mut tables = EndpointTables::default();
        tables.set(&a, allow);
        let mut table = settled(&mut tables);
        tables.set(&d, deny);
        let (diff, _) = tables.settle(Direction::Ingress, &mut table);
        assert_eq!(diff.remove, vec![key(300, 80)]);
        assert_eq!(
            table.entries.keys().copied().collect::<Vec<_>>(),
            vec![any_on_80, key(300, 81)]
        );
        assert_eq!(
            *table.entries[&any_on_80].provenance,
            BTreeSet::from([provenance("deny")])
        );
        tables.set(&d, Contribution::default());
        let (diff, _) = tables.settle(Direction::Ingress, &mut table);
        assert_eq!(diff.remove, vec![any_on_80]);
        assert_eq!(diff.upsert.len(), 1);
        assert!(table.entries.contains_key(&key(300, 80)));
    }
}
