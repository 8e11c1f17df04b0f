//! Following a lab's progress on the cluster (`Request::Follow`): `up` and
//! `down` follow their lab while the cluster works on it, `events` follows
//! until it is stopped. Each step goes to a [`Renderer`].
//!
//! The leader streams the steps; when leadership moves the stream ends,
//! and the follower dials the cluster again and follows the new leader
//! (steps taken in between are not replayed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use labspan_proto::msg::Request;
use labspan_proto::progress::ProgressEvent;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::progress::Renderer;

/// How long `up` or `down` waits, once the cluster answered, for the step
/// that ends its lab's deploy or removal to arrive on the stream.
const END_WAIT: Duration = Duration::from_secs(10);
/// Pause before dialling the cluster again when the stream ended.
const REDIAL: Duration = Duration::from_secs(1);

/// A follow in progress; it stops when dropped.
pub struct Following {
    task: JoinHandle<()>,
    /// How many steps that end a lab-wide operation of the lab were seen.
    ends: watch::Receiver<u64>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a follow of `lab` (every lab: `None`) on the cluster at `path`,
/// returning once the leader has subscribed, so nothing done after this is
/// missed.
pub async fn start(
    path: &Path,
    lab: Option<&str>,
    show: Arc<Renderer>,
) -> anyhow::Result<Following> {
    let req = Request::Follow {
        lab: lab.map(str::to_string),
    };
    let first = crate::remote::open_stream(path, &req).await?;
    let (tx, ends) = watch::channel(0);
    let path = path.to_path_buf();
    let task = tokio::spawn(follow(path, req, first, show, tx));
    Ok(Following { task, ends })
}

/// [`start`] for `up` and `down`: a cluster that cannot stream progress
/// (an older one, say) leaves a note and the command goes on without it.
pub async fn start_or_note(path: &Path, lab: &str, show: &Arc<Renderer>) -> Option<Following> {
    match start(path, Some(lab), show.clone()).await {
        Ok(f) => Some(f),
        Err(e) => {
            show.note(&format!(
                "no progress from the cluster ({e:#}); the result shows when it is done"
            ));
            None
        }
    }
}

impl Following {
    /// Steps that ended a lab-wide operation so far.
    pub fn ends_seen(&self) -> u64 {
        *self.ends.borrow()
    }

    /// Waits (at most [`END_WAIT`]) for one more end of a lab-wide step
    /// than `before`, so that the steps of an operation the cluster has
    /// answered are shown before its result; then stops following.
    pub async fn stop_after_end(mut self, before: u64) {
        let _ = tokio::time::timeout(END_WAIT, self.ends.wait_for(|n| *n > before)).await;
    }

    /// Follows until the process is stopped.
    pub async fn forever(mut self) {
        let _ = (&mut self.task).await;
    }
}

type Stream = (
    labspan_transport::client::Client,
    quinn::SendStream,
    quinn::RecvStream,
);

async fn follow(
    path: PathBuf,
    req: Request,
    first: Stream,
    show: Arc<Renderer>,
    ends: watch::Sender<u64>,
) {
    let mut stream = Some(first);
    let mut said_lost = false;
    loop {
        if let Some((_client, _send, mut recv)) = stream.take() {
            said_lost = false;
            // Until the leader moves, or the connection breaks.
            while let Ok(e) = labspan_transport::read_message::<ProgressEvent>(&mut recv).await {
                show.event(&e);
                if e.node.is_none() && e.phase.ends_lab_step() {
                    ends.send_modify(|n| *n += 1);
                }
            }
        }
        // Not a `Poll`: the follow redials for as long as its caller
        // keeps it, with no deadline.
        tokio::time::sleep(REDIAL).await;
        match crate::remote::open_stream(&path, &req).await {
            Ok(s) => stream = Some(s),
            Err(e) if !said_lost => {
                said_lost = true;
                show.note(&format!("progress: lost the cluster ({e:#}); retrying"));
            }
            Err(_) => {}
        }
    }
}
