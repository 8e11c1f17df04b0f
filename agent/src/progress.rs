//! The agent's progress, carried to the leader: each reconcile or
//! supervisor [`Event`] becomes a [`ProgressEvent`] of one node, queued in
//! an [`Outbox`] and sent in batches (`Request::Progress`) on the agent's
//! connection. The leader passes them to whoever follows the lab
//! (`labspan up`, `down`, `events`).
//!
//! Progress is soft: while no leader is connected it waits in a bounded
//! queue, and what does not fit is dropped (the lab's record says how it
//! ended). Before an apply's reply is written its events are flushed, so a
//! follower sees them before the step that ends the deploy.

use std::time::Duration;

use labspan_proto::msg::{Reply, Request};
use labspan_proto::plan::HostPlan;
use labspan_proto::progress::{now_unix_ms, Phase, ProgressEvent, MAX_BATCH};
use quinn::Connection;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::reconcile::Event;

/// Events held while no leader takes them (a few minutes of a busy host).
const QUEUE: usize = 4096;
/// The longest an apply's reply waits for its events to reach the leader.
const FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// What the node events of one agent [`Event`] are: fetches are per lab
/// and image, and become one event per node of `plan` that boots that
/// image (no plan: none).
pub fn events_of(event: &Event, plan: Option<&HostPlan>) -> Vec<ProgressEvent> {
    let one = |lab: &str, vm: &str, phase: Phase| {
        vec![ProgressEvent {
            lab: lab.to_string(),
            node: Some(vm.to_string()),
            host: None,
            phase,
            at_unix_ms: now_unix_ms(),
        }]
    };
    match event {
        Event::Launching { lab, vm } => one(lab, vm, Phase::Booting),
        Event::Receiving { lab, vm } => one(lab, vm, Phase::Receiving),
        // The guest now runs here; its configuration came with it.
        Event::Arrived { lab, vm } => one(lab, vm, Phase::Running),
        Event::Restored {
            lab,
            vm,
            checkpoint,
        } => one(
            lab,
            vm,
            Phase::Restored {
                checkpoint: checkpoint.clone(),
            },
        ),
        Event::Adopted { lab, vm, pid } => one(lab, vm, Phase::Kept { pid: *pid }),
        Event::Restarting { lab, vm, why } => one(lab, vm, Phase::Restarting { why: why.clone() }),
        Event::Booted { lab, vm, after } => one(
            lab,
            vm,
            Phase::Configuring {
                boot_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            },
        ),
        // Configuring ends with Ready, which every VM that came up sends.
        Event::Configured { .. } => Vec::new(),
        Event::Ready { lab, vm } => one(lab, vm, Phase::Running),
        Event::Stopped { lab, vm } => one(lab, vm, Phase::Stopped),
        Event::Failed {
            lab,
            vm,
            state,
            why,
        } => one(
            lab,
            vm,
            Phase::Failed {
                why: format!("{state}: {why}"),
            },
        ),
        Event::BackingOff { lab, vm, delay } => one(
            lab,
            vm,
            Phase::BackingOff {
                delay_secs: delay.as_secs(),
            },
        ),
        Event::Left { lab, vm, why } => one(lab, vm, Phase::Left { why: why.clone() }),
        Event::Fetching {
            lab,
            image,
            from,
            bytes,
            total,
            ..
        } => nodes_booting(plan, lab, image)
            .into_iter()
            .flat_map(|vm| {
                let phase = Phase::Fetching {
                    image: image.clone(),
                    from: from.clone(),
                    bytes: *bytes,
                    total: *total,
                };
                one(lab, &vm, phase)
            })
            .collect(),
        Event::FetchRetry {
            lab,
            image,
            from,
            why,
        } => nodes_booting(plan, lab, image)
            .into_iter()
            .flat_map(|vm| {
                let phase = Phase::FetchRetry {
                    image: image.clone(),
                    from: from.clone(),
                    why: why.clone(),
                };
                one(lab, &vm, phase)
            })
            .collect(),
    }
}

/// The VMs of `lab` in `plan` that boot `image`.
fn nodes_booting(plan: Option<&HostPlan>, lab: &str, image: &str) -> Vec<String> {
    plan.into_iter()
        .flat_map(|p| &p.labs)
        .filter(|l| l.lab == lab)
        .flat_map(|l| &l.vms)
        .filter(|vm| vm.image == image)
        .map(|vm| vm.name.clone())
        .collect()
}

/// A step of an outgoing live move of `vm`, as its node's step.
pub fn of_move(lab: &str, vm: &str, p: &crate::vm::migrate::Progress) -> ProgressEvent {
    use crate::vm::migrate::Progress;
    let phase = match *p {
        Progress::Disk { done, total } => Phase::CopyingDisk { done, total },
        Progress::DiskReady { bytes } => Phase::CopyingDisk {
            done: bytes,
            total: bytes,
        },
        Progress::Ram {
            pass,
            sent,
            remaining,
        } => Phase::CopyingRam {
            pass,
            sent,
            remaining,
        },
        Progress::Switchover => Phase::SwitchingOver,
    };
    ProgressEvent {
        lab: lab.to_string(),
        node: Some(vm.to_string()),
        host: None,
        phase,
        at_unix_ms: now_unix_ms(),
    }
}

/// A VM that the apply reported not up, as its node's last step.
pub fn not_up(lab: &str, vm: &str, why: &str) -> ProgressEvent {
    ProgressEvent {
        lab: lab.to_string(),
        node: Some(vm.to_string()),
        host: None,
        phase: Phase::Failed {
            why: why.to_string(),
        },
        at_unix_ms: now_unix_ms(),
    }
}

enum Item {
    Event(ProgressEvent),
    /// Answered once every event queued before it was handed to a leader
    /// (or could not be).
    Flush(oneshot::Sender<()>),
}

/// The queue of progress events on their way to the leader.
pub struct Outbox {
    tx: mpsc::Sender<Item>,
    rx: Mutex<mpsc::Receiver<Item>>,
}

impl Default for Outbox {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Outbox {
            tx,
            rx: Mutex::new(rx),
        }
    }
}

impl Outbox {
    /// Queues `events`; drops them when the queue is full (no leader for a while).
    pub fn push(&self, events: Vec<ProgressEvent>) {
        for e in events {
            if self.tx.try_send(Item::Event(e)).is_err() {
                tracing::debug!("progress queue full; an event is dropped");
            }
        }
    }

    /// Waits until what was queued so far has reached a leader (or could
    /// not), for at most [`FLUSH_WITHIN`].
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.tx.try_send(Item::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(FLUSH_WITHIN, flushed).await;
        }
    }

    /// Sends queued events to the leader on `conn`, in batches, until the
    /// connection closes (or the task is dropped with its session).
    pub async fn forward(&self, conn: Connection) {
        let mut rx = self.rx.lock().await;
        let mut refused_once = false;
        loop {
            let Some(first) = rx.recv().await else { return };
            let mut batch = Vec::new();
            let mut flushes = Vec::new();
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Item::Event(e) => add(&mut batch, e),
                    Item::Flush(done) => flushes.push(done),
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                let req = Request::Progress { events: batch };
                match labspan_transport::request::<_, Reply>(&conn, &req).await {
                    Ok(Reply::Done) => {}
                    // An older leader that does not know the request, or
                    // one that refuses it: the VMs do not depend on it.
                    Ok(other) if !refused_once => {
                        refused_once = true;
                        tracing::warn!(reply = ?other, "the leader did not take the progress events");
                    }
                    Ok(_) => {}
                    Err(e) if conn.close_reason().is_some() => {
                        tracing::debug!(error = %e, "progress: the connection closed");
                        answer(flushes);
                        return;
                    }
                    Err(e) if !refused_once => {
                        refused_once = true;
                        tracing::warn!(error = %e, "the leader did not take the progress events (an older coordinator?)");
                    }
                    Err(_) => {}
                }
            }
            answer(flushes);
        }
    }
}

/// Tells each flush waiting that its events are gone.
fn answer(flushes: Vec<oneshot::Sender<()>>) {
    for done in flushes {
        // A flush that stopped waiting does not need the answer.
        let _ = done.send(());
    }
}

/// Adds `e` to `batch`; a fetch's newer count replaces the one just before
/// it for the same node (the leader needs the latest, not every chunk).
fn add(batch: &mut Vec<ProgressEvent>, e: ProgressEvent) {
    if let (Some(last), Phase::Fetching { .. }) = (batch.last_mut(), &e.phase) {
        if matches!(last.phase, Phase::Fetching { .. }) && last.lab == e.lab && last.node == e.node
        {
            *last = e;
            return;
        }
    }
    batch.push(e);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetching(node: &str, bytes: u64) -> ProgressEvent {
        ProgressEvent {
            lab: "seen".into(),
            node: Some(node.into()),
            host: None,
            phase: Phase::Fetching {
                image: "tiny".into(),
                from: "host1".into(),
                bytes,
                total: 100,
            },
            at_unix_ms: 0,
        }
    }

    #[test]
    fn a_batch_keeps_only_the_latest_count_of_a_fetch_in_a_row() {
        let mut batch = Vec::new();
        for e in [
            fetching("a", 10),
            fetching("a", 20),
            fetching("b", 5),
            fetching("a", 30),
        ] {
            add(&mut batch, e);
        }
        let counts: Vec<(String, Option<u8>)> = batch
            .iter()
            .map(|e| (e.node.clone().unwrap_or_default(), e.phase.percent()))
            .collect();
        assert_eq!(
            counts,
            [
                ("a".to_string(), Some(20)),
                ("b".to_string(), Some(5)),
                ("a".to_string(), Some(30))
            ]
        );
    }

    #[test]
    fn agent_events_map_to_node_phases() {
        let lab = || "seen".to_string();
        let vm = || "a".to_string();
        let phase = |e: Event| events_of(&e, None).first().map(|p| p.phase.word());
        assert_eq!(
            phase(Event::Launching {
                lab: lab(),
                vm: vm()
            }),
            Some("booting")
        );
        assert_eq!(
            phase(Event::Booted {
                lab: lab(),
                vm: vm(),
                after: Duration::from_millis(1500)
            }),
            Some("configuring")
        );
        assert_eq!(
            phase(Event::Configured {
                lab: lab(),
                vm: vm()
            }),
            None
        );
        assert_eq!(
            phase(Event::Ready {
                lab: lab(),
                vm: vm()
            }),
            Some("running")
        );
        assert_eq!(
            phase(Event::Stopped {
                lab: lab(),
                vm: vm()
            }),
            Some("stopped")
        );
        assert_eq!(
            phase(Event::Adopted {
                lab: lab(),
                vm: vm(),
                pid: 9
            }),
            Some("kept")
        );
    }

    fn vm(name: &str, image: &str) -> labspan_proto::plan::VmPlan {
        labspan_proto::plan::VmPlan {
            name: name.into(),
            image: image.into(),
            memory_mib: 256,
            cpus: 1,
            nics: vec![],
            config: Default::default(),
            restart: Default::default(),
            incoming: None,
            restore: None,
        }
    }

    #[test]
    fn a_fetch_is_shown_on_each_node_of_the_plan_that_boots_the_image() {
        let lab = |name: &str, vms| labspan_proto::plan::LabPlan {
            lab: name.into(),
            segments: vec![],
            vms,
            verify: vec![],
            images: vec![],
        };
        let plan = HostPlan {
            host: "host2".into(),
            generation: 1,
            labs: vec![
                lab(
                    "seen",
                    vec![vm("a", "tiny"), vm("r", "tiny-router"), vm("c", "tiny")],
                ),
                lab("other", vec![vm("z", "tiny")]),
            ],
            kept_checkpoints: vec![],
        };
        let fetch = Event::Fetching {
            lab: "seen".into(),
            image: "tiny".into(),
            from: "host1".into(),
            bytes: 1,
            total: 2,
            mib_per_s: 1.0,
        };
        let nodes: Vec<(Option<String>, Option<u8>)> = events_of(&fetch, Some(&plan))
            .into_iter()
            .map(|e| (e.node, e.phase.percent()))
            .collect();
        assert_eq!(
            nodes,
            [
                (Some("a".to_string()), Some(50)),
                (Some("c".to_string()), Some(50))
            ]
        );
        // No plan: nobody to show it on.
        assert!(events_of(&fetch, None).is_empty());
    }
}
