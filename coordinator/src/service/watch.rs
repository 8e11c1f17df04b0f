//! `Request::Watch` (for `labspan web`): the cluster as the leader sees it,
//! one [`ClusterView`] now and one each time it changes. A change is a
//! Raft entry applied, a change of leader or membership, or what the agents
//! report of their guests (checked every [`GUESTS_EVERY`]); a view equal to
//! the last one sent is not sent again.

use std::sync::Arc;
use std::time::Duration;

use labspan_proto::msg::{ClusterView, LabSnapshot};
use labspan_transport::write_message;
use quinn::SendStream;

use super::{decide, labs, status, Inner};

/// How often guest health (reported by agents, not logged) is looked at.
const GUESTS_EVERY: Duration = Duration::from_secs(1);

/// The cluster now, from this coordinator (the leader: it alone hears the
/// agents).
pub(super) fn view(inner: &Inner) -> ClusterView {
    let status = status::now(inner);
    let state = inner.state.read();
    let labs = state
        .state
        .labs
        .iter()
        .map(|(name, rec)| LabSnapshot {
            report: decide::report(
                &state.state,
                name,
                rec,
                vec![],
                labs::guests_of(inner, name, rec),
            ),
            bundle: rec.spec.clone(),
        })
        .collect();
    ClusterView { status, labs }
}

/// Leader: writes views on `send` until the caller goes away or this
/// coordinator stops leading (the caller then watches the new leader).
pub(super) async fn serve(inner: &Arc<Inner>, mut send: SendStream) {
    let mut data = inner.raft.data_metrics();
    let mut server = inner.raft.server_metrics();
    let mut applied = data.borrow().last_applied;
    let mut last: Option<ClusterView> = None;
    loop {
        if !inner.is_leader() {
            let _ = send.finish();
            return;
        }
        let now = view(inner);
        if last.as_ref() != Some(&now) {
            if write_message(&mut send, &now).await.is_err() {
                return; // The caller went away.
            }
            last = Some(now);
        }
        // Raft's data metrics also change on every heartbeat answered:
        // wait for an entry applied, not for any change.
        let tick = tokio::time::sleep(GUESTS_EVERY);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                changed = data.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = data.borrow().last_applied;
                    if now != applied {
                        applied = now;
                        break;
                    }
                }
                changed = server.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                () = &mut tick => break,
            }
        }
    }
}
