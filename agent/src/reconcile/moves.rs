//! Live moves of guests between hosts: this host's sending side, the end of
//! its receiving side, and how a move looks from here.

use std::collections::BTreeSet;

use labspan_proto::plan::VmPlan;

use super::{Agent, AgentError, Key};
use crate::paths;
use crate::supervise;
use crate::vm::{self, Vm};

impl Agent {
    /// Lets moves run, with this agent's cluster certificate (once).
    pub fn set_move_credentials(&self, tls: vm::migrate::Credentials) {
        let _ = self.move_credentials.set(tls);
    }

    pub(super) fn move_credentials(
        &self,
        lab: &str,
        vm: &str,
    ) -> Result<&vm::migrate::Credentials, AgentError> {
        self.move_credentials.get().ok_or_else(|| {
            AgentError::moving(
                lab,
                vm::migrate::MoveError::Failed {
                    vm: vm.to_string(),
                    what: "TLS setup",
                    why: "this agent has no cluster certificate for the move's streams".into(),
                },
            )
        })
    }

    /// Ends the receiving side of a move recorded done: the guest runs here,
    /// configured as it was on its old host (same boot: its files and
    /// `exec` lines are not run again).
    pub(super) async fn arrived(
        &self,
        lab: &str,
        plan: &VmPlan,
        vm: &Vm,
    ) -> Result<(), AgentError> {
        vm::migrate::finish_incoming(vm)
            .await
            .map_err(|source| AgentError::moving(lab, source))?;
        self.arrived_configured(plan, vm)?;
        let mut health = supervise::load(vm.dir());
        health.ready(supervise::now());
        supervise::save(vm.dir(), &health);
        Ok(())
    }

    /// Live-migrates guest `node` of `lab` into the QEMU waiting for it at
    /// `to` (the destination's plan holds it as incoming). On failure the
    /// guest runs on here, unless it had already left (then the error says
    /// so and a leader decides the move done).
    pub async fn migrate_out(
        &self,
        lab: &str,
        node: &str,
        to: &vm::migrate::Endpoint,
        progress: &(dyn Fn(vm::migrate::Progress) + Sync),
    ) -> Result<labspan_proto::msg::MoveFigures, AgentError> {
        let key = (lab.to_string(), node.to_string());
        let dir = paths::vm_dir(&self.state, lab, node);
        let vm = vm::adopt(&dir)
            .map_err(|source| AgentError::vm(lab.to_string(), source))?
            .ok_or_else(|| AgentError::NoSuchVm {
                lab: lab.to_string(),
                vm: node.to_string(),
            })?;
        let tls = self.move_credentials(lab, node)?;
        let _busy = self.mark_busy(&key);
        self.moving_out().insert(key.clone());
        let result = vm::migrate::migrate_out(&vm, to, tls, progress).await;
        self.moving_out().remove(&key);
        result.map_err(|source| AgentError::moving(lab, source))
    }

    pub(super) fn moving_out(&self) -> std::sync::MutexGuard<'_, BTreeSet<Key>> {
        self.moving_out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How a move of `node` of `lab` looks on this host.
    pub async fn move_status(&self, lab: &str, node: &str) -> labspan_proto::msg::MoveSide {
        use labspan_proto::msg::MoveSide;
        use vm::migrate::Arrival;
        if self
            .moving_out()
            .contains(&(lab.to_string(), node.to_string()))
        {
            return MoveSide::Migrating;
        }
        let dir = paths::vm_dir(&self.state, lab, node);
        let Ok(Some(vm)) = vm::adopt(&dir) else {
            return MoveSide::Absent;
        };
        if vm::migrate::is_incoming(&dir) {
            return match vm::migrate::arrival(&vm).await {
                Ok(Arrival::Arrived) => MoveSide::Completed,
                Ok(Arrival::Waiting) => MoveSide::Waiting,
                Ok(Arrival::Failed) | Err(_) => MoveSide::Absent,
            };
        }
        match vm::migrate::departed(&vm).await {
            Ok(true) => MoveSide::Completed,
            _ => MoveSide::Idle,
        }
    }
}

/// Where a planned incoming guest is received.
pub(super) fn endpoint(incoming: &labspan_proto::plan::IncomingPlan) -> vm::migrate::Endpoint {
    vm::migrate::Endpoint {
        addr: incoming.addr,
        port: incoming.port,
        peer: incoming.from.clone(),
    }
}
