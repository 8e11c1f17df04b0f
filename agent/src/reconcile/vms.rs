//! Which VMs to stop, replace, restart, launch, adopt or leave: a pure diff
//! of what runs on this host against its plan, like `net::diff` for the
//! network. `Agent::apply` observes, calls [`vm_actions`], and carries out
//! the actions.

use std::collections::BTreeMap;

use labspan_proto::plan::VmPlan;

use crate::vm::{NicSpec, VmRecord};

/// (lab, node).
pub type Key = (String, String);

/// A VM folder found on this host.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// Its QEMU process is gone (the folder, disk included, is still there).
    Gone,
    /// Its QEMU runs this; `failed` says why the guest in it has failed
    /// (panicked, shut down, hung), if it has.
    Running {
        record: Box<VmRecord>,
        failed: Option<String>,
    },
}

/// A VM the plan wants.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub plan: &'a VmPlan,
    /// Content hash of the image it resolves to on this host.
    pub image_hash: &'a str,
}

/// One step of bringing the VMs to the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmAction {
    /// Not in the plan: stop it and remove its folder.
    Stop(Key),
    /// Its definition changed: stop it, remove its folder (a fresh disk),
    /// launch it anew.
    Replace { key: Key, why: String },
    /// It failed or its QEMU is gone: end its QEMU, keep its folder and
    /// disk, launch it again.
    Restart { key: Key, why: String },
    /// New: launch it.
    Launch(Key),
    /// Running as planned: keep its QEMU.
    Adopt(Key),
    /// It failed and may not be restarted now: leave it and report why.
    Leave { key: Key, why: String },
}

/// The actions that bring `found` to `wanted`, stops first. A failed guest
/// (or one whose QEMU is gone) is restarted only when `may_restart` allows
/// it, else left as it is.
pub fn vm_actions(
    found: &BTreeMap<Key, Found>,
    wanted: &BTreeMap<Key, Wanted<'_>>,
    may_restart: impl Fn(&Key) -> bool,
) -> Vec<VmAction> {
    let mut stops = Vec::new();
    let mut rest = Vec::new();
    for key in found.keys().filter(|k| !wanted.contains_key(*k)) {
        stops.push(VmAction::Stop(key.clone()));
    }
    for (key, want) in wanted {
        let key = key.clone();
        let failed = |why: String| {
            if may_restart(&key) {
                VmAction::Restart {
                    key: key.clone(),
                    why,
                }
            } else {
                VmAction::Leave {
                    key: key.clone(),
                    why,
                }
            }
        };
        let action = match found.get(&key) {
            None => VmAction::Launch(key),
            Some(Found::Gone) => failed("its QEMU process is gone".into()),
            Some(Found::Running { record, failed: f }) => {
                match mismatch(record, want.plan, want.image_hash) {
                    Some(why) => VmAction::Replace { key, why },
                    None => match f {
                        Some(why) => failed(why.clone()),
                        None => VmAction::Adopt(key),
                    },
                }
            }
        };
        rest.push(action);
    }
    stops.extend(rest);
    stops
}

/// Why a running VM no longer matches its plan (`None`: it matches).
pub fn mismatch(rec: &VmRecord, plan: &VmPlan, image_hash: &str) -> Option<String> {
    if rec.image_hash != image_hash {
        return Some(format!("image \"{}\" changed", plan.image));
    }
    if rec.spec.memory_mib != plan.memory_mib || rec.spec.cpus != plan.cpus {
        return Some("memory or cpus changed".into());
    }
    if rec.spec.nics != nic_specs(plan) {
        return Some("its NICs changed".into());
    }
    None
}

/// The QEMU NICs of a planned VM.
pub fn nic_specs(plan: &VmPlan) -> Vec<NicSpec> {
    plan.nics
        .iter()
        .map(|n| NicSpec {
            tap: n.tap.clone(),
            mac: n.mac,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::{Accel, LaunchSpec, VmPaths};
    use labspan_proto::plan::{GuestConfig, NicPlan};

    fn plan(name: &str, memory_mib: u64) -> VmPlan {
        VmPlan {
            name: name.into(),
            image: "tiny".into(),
            memory_mib,
            cpus: 1,
            nics: vec![NicPlan {
                name: "eth0".into(),
                segment: None,
                tap: format!("t-{name}"),
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                addrs: vec![],
                impairment: Default::default(),
            }],
            config: GuestConfig::default(),
            restart: Default::default(),
            incoming: None,
            restore: None,
        }
    }

    fn record(p: &VmPlan, hash: &str) -> VmRecord {
        let d = std::path::PathBuf::from("/s");
        VmRecord {
            name: p.name.clone(),
            image: p.image.clone(),
            image_hash: hash.into(),
            spec: LaunchSpec {
                name: p.name.clone(),
                memory_mib: p.memory_mib,
                cpus: p.cpus,
                accel: Accel::Tcg,
                kernel: None,
                initrd: None,
                cmdline: String::new(),
                disk: None,
                nics: nic_specs(p),
                paths: VmPaths {
                    pidfile: d.join("p"),
                    qmp: d.join("q"),
                    console: d.join("c"),
                    console_log: d.join("l"),
                    qga: d.join("g"),
                },
                incoming: false,
                start_paused: false,
            },
        }
    }

    fn key(n: &str) -> Key {
        ("lab".into(), n.into())
    }

    fn running(p: &VmPlan, hash: &str, failed: Option<&str>) -> Found {
        Found::Running {
            record: Box::new(record(p, hash)),
            failed: failed.map(String::from),
        }
    }

    #[test]
    fn every_case_in_one_plan() {
        let plans: BTreeMap<&str, VmPlan> =
            ["new", "same", "bigger", "newimage", "gone", "panicked"]
                .into_iter()
                .map(|n| (n, plan(n, 128)))
                .collect();
        let wanted: BTreeMap<Key, Wanted> = plans
            .iter()
            .map(|(n, p)| {
                (
                    key(n),
                    Wanted {
                        plan: p,
                        image_hash: "h1",
                    },
                )
            })
            .collect();
        let found = BTreeMap::from([
            (key("same"), running(&plans["same"], "h1", None)),
            (key("bigger"), running(&plan("bigger", 64), "h1", None)),
            (key("newimage"), running(&plans["newimage"], "h0", None)),
            (key("gone"), Found::Gone),
            (
                key("panicked"),
                running(&plans["panicked"], "h1", Some("it panicked")),
            ),
            (key("extra"), Found::Gone),
        ]);
        let actions = vm_actions(&found, &wanted, |_| true);
        assert_eq!(
            actions,
            vec![
                VmAction::Stop(key("extra")),
                VmAction::Replace {
                    key: key("bigger"),
                    why: "memory or cpus changed".into()
                },
                VmAction::Restart {
                    key: key("gone"),
                    why: "its QEMU process is gone".into()
                },
                VmAction::Launch(key("new")),
                VmAction::Replace {
                    key: key("newimage"),
                    why: "image \"tiny\" changed".into()
                },
                VmAction::Restart {
                    key: key("panicked"),
                    why: "it panicked".into()
                },
                VmAction::Adopt(key("same")),
            ]
        );
    }

    #[test]
    fn only_the_guests_allowed_are_restarted_the_others_are_left() {
        let (a, b) = (plan("a", 128), plan("b", 128));
        let wanted = BTreeMap::from([
            (
                key("a"),
                Wanted {
                    plan: &a,
                    image_hash: "h",
                },
            ),
            (
                key("b"),
                Wanted {
                    plan: &b,
                    image_hash: "h",
                },
            ),
        ]);
        let found = BTreeMap::from([
            (key("a"), running(&a, "h", Some("hung"))),
            (key("b"), Found::Gone),
        ]);
        let actions = vm_actions(&found, &wanted, |k| k == &key("a"));
        assert_eq!(
            actions,
            vec![
                VmAction::Restart {
                    key: key("a"),
                    why: "hung".into()
                },
                VmAction::Leave {
                    key: key("b"),
                    why: "its QEMU process is gone".into()
                },
            ]
        );
    }

    #[test]
    fn a_failed_guest_whose_definition_changed_is_replaced() {
        let p = plan("a", 256);
        let wanted = BTreeMap::from([(
            key("a"),
            Wanted {
                plan: &p,
                image_hash: "h",
            },
        )]);
        let found = BTreeMap::from([(key("a"), running(&plan("a", 128), "h", Some("panicked")))]);
        assert!(matches!(
            vm_actions(&found, &wanted, |_| false).as_slice(),
            [VmAction::Replace { .. }]
        ));
    }

    #[test]
    fn nothing_wanted_stops_everything() {
        let found = BTreeMap::from([
            (key("a"), Found::Gone),
            (key("b"), running(&plan("b", 1), "h", None)),
        ]);
        let actions = vm_actions(&found, &BTreeMap::new(), |_| true);
        assert_eq!(
            actions,
            vec![VmAction::Stop(key("a")), VmAction::Stop(key("b"))]
        );
    }
}
