//! Images between hosts over QUIC: the image endpoint every agent serves
//! (agents fetch from it, admins push to it), and the fetch with retries
//! the agent runs before it launches VMs whose image it lacks. The stream
//! format is described in [`crate::msg`]; what is received is
//! checked by [`ImageStore::receive`].

use std::time::Duration;

use labspan_transport::TransportError;

use crate::{ImageError, ReceiveError};

mod fetch;
mod push;
mod server;
#[cfg(test)]
mod tests;

pub use fetch::Fetcher;
pub use push::push;
pub use server::{send_files, serve, serve_with_checkpoints, CheckpointFiles};

/// Port of the image endpoint when `--image-listen` is not given.
pub const DEFAULT_IMAGE_PORT: u16 = 7102;
/// Attempts of one fetch: every source once, then again, up to this many.
pub const FETCH_ATTEMPTS: usize = 4;
/// Pause before attempt n (n ≥ 1) is n times this.
const RETRY_PAUSE: Duration = Duration::from_millis(300);
/// Largest envelope on an image stream (a file list, a few hundred bytes).
const MAX_ENVELOPE: usize = 1 << 20;
/// Bytes read from disk per write to the stream.
const CHUNK: usize = 1 << 20;
/// How often progress is reported during a transfer.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What went wrong in one exchange with one peer.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// Connecting or talking to the peer failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The stream broke while reading or writing.
    #[error("{doing}: {cause}")]
    Stream {
        doing: &'static str,
        cause: std::io::Error,
    },
    /// The peer refused, or answered something else.
    #[error("{0}")]
    Refused(String),
    /// What arrived is not the image that was asked for.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] ImageError),
}

/// Why an image could not be brought to this host.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No host that holds the image serves it.
    #[error(
        "image \"{image}\" (hash {hash}) is not on this host and no other host serves it: \
         start the agents with an image endpoint (`--image-listen`), or add the image here \
         with `labspan image push`"
    )]
    NoSource { image: String, hash: String },
    /// Every attempt failed; each is listed with its source.
    #[error("image \"{image}\" could not be fetched after {} attempts: {}", attempts.len(), attempts.join("; "))]
    Exhausted {
        image: String,
        attempts: Vec<String>,
    },
    /// The local store failed.
    #[error("image \"{image}\": {cause}")]
    Store { image: String, cause: ImageError },
    /// The client endpoint could not be made.
    #[error("cannot open the image client endpoint: {0}")]
    Endpoint(TransportError),
}

/// How far a transfer is.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub image: String,
    /// Host the bytes come from.
    pub from: String,
    pub bytes: u64,
    pub total: u64,
    /// Average rate since the transfer started, MiB/s.
    pub mib_per_s: f64,
}
