//! Bringing one planned VM up: adopted, received from another host,
//! restored from a checkpoint or launched; then booted and configured, or
//! recorded as failed.

use std::collections::BTreeMap;

use labspan_image::Image;
use labspan_proto::health::GuestState;
use labspan_proto::plan::{LabPlan, VmPlan};

use super::moves::endpoint;
use super::{vms, Agent, AgentError, Event, VmOutcome, BOOT_TIMEOUT};
use crate::paths;
use crate::supervise;
use crate::vm::{self, Accel, AccelChoice, Vm, VmConfig, VmError};

impl Agent {
    /// The outcome of a failed guest that is left as it is.
    pub(super) fn left(
        &self,
        lab: &LabPlan,
        plan: &VmPlan,
        vm: Option<Vm>,
        why: &str,
    ) -> VmOutcome {
        let dir = paths::vm_dir(&self.state, &lab.lab, &plan.name);
        VmOutcome {
            lab: lab.lab.clone(),
            vm: plan.name.clone(),
            pid: vm.map_or(0, |v| v.pid()),
            error: Some(format!(
                "the guest failed ({why}) and is left as it is (restart: {}); `labspan restart {} {}` restarts it",
                plan.restart, lab.lab, plan.name
            )),
            console: dir.join(paths::CONSOLE_SOCKET),
        }
    }

    /// The accelerator to launch with; `auto` probes KVM once per boot of the
    /// host, with an image that has a guest agent.
    pub(super) async fn accel(
        &self,
        images: &BTreeMap<(String, String), Image>,
    ) -> Result<Accel, AgentError> {
        let probe = images.values().find(|i| i.manifest.guest.guest_agent);
        match probe {
            Some(image) => vm::accel::resolve(self.accel, &self.state, image)
                .await
                .map_err(|cause| AgentError::vm(String::new(), cause)),
            None => Ok(match self.accel {
                AccelChoice::Kvm => Accel::Kvm,
                _ => Accel::Tcg,
            }),
        }
    }

    pub(super) async fn bring_up(
        &self,
        lab: &LabPlan,
        plan: &VmPlan,
        image: &Image,
        accel: Accel,
        adopted: Option<Vm>,
        events: &(dyn Fn(Event) + Sync),
    ) -> VmOutcome {
        let dir = paths::vm_dir(&self.state, &lab.lab, &plan.name);
        let mut outcome = VmOutcome {
            lab: lab.lab.clone(),
            vm: plan.name.clone(),
            pid: 0,
            error: None,
            console: dir.join(paths::CONSOLE_SOCKET),
        };
        let result = async {
            let vm = match adopted {
                Some(vm) => {
                    events(Event::Adopted {
                        lab: lab.lab.clone(),
                        vm: plan.name.clone(),
                        pid: vm.pid(),
                    });
                    let key = (lab.lab.clone(), plan.name.clone());
                    if vm::migrate::interrupted_out(&dir) && !self.moving_out().contains(&key) {
                        tracing::warn!(
                            lab = lab.lab,
                            vm = plan.name,
                            "an outgoing move was cut short by the agent's end: cancelling it, the guest runs on here"
                        );
                        if let Err(e) = vm::migrate::abandon_out(&vm).await {
                            tracing::warn!(lab = lab.lab, vm = plan.name, error = %e, "cannot cancel the move cut short");
                        }
                    }
                    // Loaded by a reset that has not resumed it: its guest
                    // agent will not answer, and it must not run on its
                    // own. It is left paused, and reported not up (the lab
                    // is not running as a whole) until a reset loads it
                    // again; the plan is answered at once.
                    if let Some(checkpoint) = vm::checkpoint::awaits_resume(&vm).await {
                        outcome.pid = vm.pid();
                        return Err(AgentError::Checkpoint {
                            lab: lab.lab.clone(),
                            why: format!(
                                "paused in the state of checkpoint \"{checkpoint}\" by a reset that has not resumed it (a reset that failed leaves it so): `labspan reset {} {checkpoint}` runs the lab again",
                                lab.lab
                            ),
                        });
                    }
                    vm
                }
                None if plan.incoming.is_some() => {
                    let cfg = vm_config(plan, image, accel);
                    let at = plan.incoming.as_ref().map(endpoint);
                    let at = at.as_ref().ok_or_else(|| AgentError::NoSuchVm {
                        lab: lab.lab.clone(),
                        vm: plan.name.clone(),
                    })?;
                    events(Event::Receiving {
                        lab: lab.lab.clone(),
                        vm: plan.name.clone(),
                    });
                    let tls = self.move_credentials(&lab.lab, &plan.name)?;
                    vm::launch_incoming(&dir, &cfg, at, tls)
                        .await
                        .map_err(|source| AgentError::moving(lab.lab.clone(), source))?
                }
                None => {
                    let restored = match &plan.restore {
                        Some(checkpoint) => {
                            self.restore(lab, plan, image, accel, checkpoint, events)
                                .await
                        }
                        None => None,
                    };
                    if let Some(vm) = restored {
                        outcome.pid = vm.pid();
                        return Ok(true);
                    }
                    events(Event::Launching {
                        lab: lab.lab.clone(),
                        vm: plan.name.clone(),
                    });
                    let cfg = vm_config(plan, image, accel);
                    let mut health = supervise::load(&dir);
                    let vm = vm::launch(&dir, &cfg)
                        .await
                        .map_err(|cause| AgentError::vm(lab.lab.clone(), cause))?;
                    if health.state != GuestState::Booting {
                        health.booting(supervise::now());
                    }
                    supervise::save(&dir, &health);
                    vm
                }
            };
            outcome.pid = vm.pid();
            if plan.incoming.is_some() {
                // The guest is still on its way: nothing to wait for here.
                return Ok(false);
            }
            if vm::migrate::is_incoming(&dir) {
                self.arrived(&lab.lab, plan, &vm).await?;
                events(Event::Arrived {
                    lab: lab.lab.clone(),
                    vm: plan.name.clone(),
                });
            }
            if !image.manifest.guest.guest_agent {
                return Ok(true);
            }
            let after = match vm.wait_guest_agent(BOOT_TIMEOUT).await {
                Ok(after) => after,
                Err(e) => {
                    self.boot_failed(lab, plan, &vm, &e, events);
                    return Err(AgentError::vm(lab.lab.clone(), e));
                }
            };
            events(Event::Booted {
                lab: lab.lab.clone(),
                vm: plan.name.clone(),
                after,
            });
            if self.configure(&lab.lab, plan, &vm).await? {
                events(Event::Configured {
                    lab: lab.lab.clone(),
                    vm: plan.name.clone(),
                });
            }
            let mut health = supervise::load(&dir);
            health.ready(supervise::now());
            supervise::save(&dir, &health);
            Ok::<bool, AgentError>(true)
        }
        .await;
        match result {
            Ok(true) => events(Event::Ready {
                lab: lab.lab.clone(),
                vm: plan.name.clone(),
            }),
            Ok(false) => {}
            Err(e) => outcome.error = Some(e.to_string()),
        }
        outcome
    }

    /// Starts `plan`'s guest here from `checkpoint` of its lab (its host
    /// was lost; the leader put the checkpoint's files here), running and
    /// configured as it was then; `None` (and the reason in the events and
    /// the log) when it cannot be loaded: the guest then boots from its
    /// image.
    async fn restore(
        &self,
        lab: &LabPlan,
        plan: &VmPlan,
        image: &Image,
        accel: Accel,
        checkpoint: &str,
        events: &(dyn Fn(Event) + Sync),
    ) -> Option<Vm> {
        let dir = paths::vm_dir(&self.state, &lab.lab, &plan.name);
        let from = paths::checkpoint_dir(&self.state, &lab.lab, checkpoint, &plan.name);
        let loaded = async {
            let ram = from.join(vm::checkpoint::RAM_FILE);
            if !ram.exists() {
                return Err(format!("{} is missing", ram.display()));
            }
            // The running overlay goes over the layer store's link (the
            // checkpoint may be deleted), whose image is this host's.
            let layer = match image.disk_path() {
                Some(base) => {
                    let disk = from.join(vm::checkpoint::DISK_FILE);
                    let layers = paths::layers_dir(&self.state, &lab.lab, &plan.name);
                    let layer = vm::checkpoint::layer_of(&plan.name, &disk, &layers, &base);
                    Some(layer.map_err(|e| e.to_string())?)
                }
                None => None,
            };
            let cfg = vm_config(plan, image, accel);
            let vm = vm::launch_restored(&dir, &cfg, layer.as_deref(), &ram, checkpoint)
                .await
                .map_err(|e| e.to_string())?;
            let started = async {
                let mut s = vm::checkpoint::session(&vm).await?;
                vm::checkpoint::start_loaded(&mut s, &vm).await
            };
            if let Err(e) = started.await {
                let _ = vm.halt().await;
                return Err(e.to_string());
            }
            Ok(vm)
        };
        let vm = match loaded.await {
            Ok(vm) => vm,
            Err(why) => {
                let why = format!(
                    "checkpoint {checkpoint:?} cannot be loaded here ({why}): booting from its image"
                );
                tracing::warn!(
                    lab = lab.lab,
                    vm = plan.name,
                    why,
                    "restart from a checkpoint failed"
                );
                events(Event::Restarting {
                    lab: lab.lab.clone(),
                    vm: plan.name.clone(),
                    why,
                });
                return None;
            }
        };
        if image.manifest.guest.guest_agent {
            if let Err(e) = vm::checkpoint::set_guest_time(&vm).await {
                tracing::warn!(lab = lab.lab, vm = plan.name, error = %e, "guest clock not set");
            }
        }
        // Configured as it was when the checkpoint was taken: its files and
        // `exec` lines do not run again.
        if let Err(e) = self.arrived_configured(plan, &vm) {
            tracing::warn!(lab = lab.lab, vm = plan.name, error = %e, "restored guest not marked configured");
        }
        let mut health = supervise::load(vm.dir());
        health.ready(supervise::now());
        supervise::save(vm.dir(), &health);
        tracing::info!(
            lab = lab.lab,
            vm = plan.name,
            checkpoint,
            "guest restarted from a checkpoint"
        );
        events(Event::Restored {
            lab: lab.lab.clone(),
            vm: plan.name.clone(),
            checkpoint: checkpoint.to_string(),
        });
        Some(vm)
    }

    /// Records a guest that failed while booting, for the supervisor to
    /// restart it by its policy.
    fn boot_failed(
        &self,
        lab: &LabPlan,
        plan: &VmPlan,
        vm: &Vm,
        error: &VmError,
        events: &(dyn Fn(Event) + Sync),
    ) {
        let (state, why) = match error {
            VmError::Died { .. } => (GuestState::QemuGone, "its QEMU process is gone".into()),
            VmError::AgentTimeout { timeout, .. } => (
                GuestState::Hung,
                format!("its guest agent did not answer within {timeout:?} of boot"),
            ),
            VmError::GuestStopped { state, .. } => (
                supervise::guest_state(*state),
                format!("it {state} while booting"),
            ),
            _ => return,
        };
        let mut health = supervise::load(vm.dir());
        health.fail(
            state,
            &why,
            supervise::now(),
            vm.console_lines(supervise::CONSOLE_LINES),
        );
        supervise::save(vm.dir(), &health);
        events(Event::Failed {
            lab: lab.lab.clone(),
            vm: plan.name.clone(),
            state,
            why,
        });
    }
}

pub(super) fn vm_config(plan: &VmPlan, image: &Image, accel: Accel) -> VmConfig {
    VmConfig {
        name: plan.name.clone(),
        image: image.clone(),
        memory_mib: plan.memory_mib,
        cpus: plan.cpus,
        accel,
        nics: vms::nic_specs(plan),
    }
}
