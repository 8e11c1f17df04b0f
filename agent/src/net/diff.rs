//! Desired interfaces against the kernel's → the ordered actions that turn
//! one into the other. Pure.

use std::collections::{BTreeMap, BTreeSet};

use super::action::Action;
use super::state::{same_impairment, Link, LinkKind};
use super::NetError;

/// The actions that make `observed` (every interface on the host) match
/// `desired`: deletions first (ports before bridges), then per desired
/// interface, in order, its creation and attribute changes.
///
/// Fails, deciding nothing, when an interface that is not labspan's has a
/// name the plan wants.
pub fn diff(desired: &[Link], observed: &[Link]) -> Result<Vec<Action>, NetError> {
    let by_name: BTreeMap<&str, &Link> = observed.iter().map(|l| (l.name.as_str(), l)).collect();
    let foreign: Vec<String> = desired
        .iter()
        .filter(|d| by_name.get(d.name.as_str()).is_some_and(|o| !o.is_owned()))
        .map(|d| d.name.clone())
        .collect();
    if !foreign.is_empty() {
        return Err(NetError::Foreign { names: foreign });
    }
    let wanted: BTreeMap<&str, &Link> = desired.iter().map(|l| (l.name.as_str(), l)).collect();
    let stale =
        |o: &&Link| o.is_owned() && wanted.get(o.name.as_str()).is_none_or(|d| d.kind != o.kind);
    let mut actions = deletions(observed.iter().filter(stale));
    let deleted: BTreeSet<&str> = actions.iter().map(Action::object).collect();
    let mut changes = Vec::new();
    for want in desired {
        let current = match by_name.get(want.name.as_str()) {
            Some(o) if !deleted.contains(o.name.as_str()) => {
                let mut current = (*o).clone();
                // A port of a bridge that is being deleted ends up on no bridge.
                if current
                    .master
                    .as_deref()
                    .is_some_and(|m| deleted.contains(m))
                {
                    current.master = None;
                }
                current
            }
            _ => {
                let alias = want.alias.clone().unwrap_or_default();
                changes.push(Action::Create {
                    name: want.name.clone(),
                    kind: want.kind.clone(),
                    alias: alias.clone(),
                    mtu: want.mtu,
                });
                Link::fresh(&want.name, want.kind.clone(), &alias, want.mtu)
            }
        };
        changes.extend(changes_of(&current, want));
    }
    actions.extend(changes);
    Ok(actions)
}

/// Deletes of every owned interface for which `remove` holds, ports first.
pub fn removal(observed: &[Link], remove: impl Fn(&Link) -> bool) -> Vec<Action> {
    deletions(observed.iter().filter(|l| l.is_owned() && remove(l)))
}

/// Ports (taps, VXLAN devices) before bridges, each group by name, so that
/// the order is stable.
fn deletions<'a>(links: impl Iterator<Item = &'a Link>) -> Vec<Action> {
    let (bridges, ports): (Vec<&Link>, Vec<&Link>) =
        links.partition(|l| l.kind == LinkKind::Bridge);
    let mut names: Vec<&str> = ports.iter().map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    let mut bridge_names: Vec<&str> = bridges.iter().map(|l| l.name.as_str()).collect();
    bridge_names.sort_unstable();
    names.extend(bridge_names);
    names
        .into_iter()
        .map(|n| Action::Delete {
            name: n.to_string(),
        })
        .collect()
}

/// Attribute changes that turn `current` into `want` (same name and kind).
fn changes_of(current: &Link, want: &Link) -> Vec<Action> {
    let name = || want.name.clone();
    let mut out = Vec::new();
    if current.alias != want.alias {
        let alias = want.alias.clone().unwrap_or_default();
        out.push(Action::SetAlias {
            name: name(),
            alias,
        });
    }
    if current.mtu != want.mtu {
        out.push(Action::SetMtu {
            name: name(),
            mtu: want.mtu,
        });
    }
    if current.master != want.master {
        out.push(Action::SetMaster {
            name: name(),
            master: want.master.clone(),
        });
    }
    for remote in current.fdb.difference(&want.fdb) {
        out.push(Action::FdbDelete {
            device: name(),
            remote: *remote,
        });
    }
    for remote in want.fdb.difference(&current.fdb) {
        out.push(Action::FdbAppend {
            device: name(),
            remote: *remote,
        });
    }
    if want.kind == LinkKind::Tap && !same_impairment(&current.impairment, &want.impairment) {
        out.push(Action::SetImpairment {
            name: name(),
            nic: nic_of(want),
            impairment: want.impairment,
        });
    }
    if current.up != want.up {
        out.push(Action::SetUp {
            name: name(),
            up: want.up,
        });
    }
    out
}

/// A tap's NIC as the lab names it (`node:nic`), from the alias labspan
/// gave it (`labspan:LAB/tap NODE.NIC`); the device name if it has none.
fn nic_of(tap: &Link) -> String {
    tap.alias
        .as_deref()
        .and_then(|a| a.split_once("/tap "))
        .and_then(|(_, nic)| nic.split_once('.'))
        .map_or_else(|| tap.name.clone(), |(node, nic)| format!("{node}:{nic}"))
}
