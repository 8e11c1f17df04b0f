//! The messages of the image endpoint every agent serves
//! (`labspan-image/1`, [`crate::endpoint`]).
//!
//! One exchange per stream. A fetch: the client sends [`ImageRequest::Get`]
//! as one codec envelope; the server answers [`ImageReply::Offer`] as one
//! envelope, then the bytes of every file of the offer, in its order, each
//! exactly its size, then FIN. A push: the client sends
//! [`ImageRequest::Push`], then the bytes of every file the same way, then
//! FIN; the server answers one envelope, [`ImageReply::Stored`] or an error.
//! A checkpoint copy: the client sends [`ImageRequest::CheckpointFile`];
//! the server answers [`ImageReply::CheckpointFile`], then the file's
//! bytes, then FIN.

use labspan_proto::image::ImageDigest;
use labspan_proto::msg::ErrorReply;
use serde::{Deserialize, Serialize};

/// A request on an agent's image endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageRequest {
    /// Send the image at `objects/HASH` (agents only).
    Get { hash: String },
    /// Store the image that follows under `name` (admins only): the files of
    /// `digest`, in its order, follow this envelope on the stream.
    Push {
        name: String,
        hash: String,
        digest: ImageDigest,
    },
    /// Send the file of `kind` of node `node`'s share of checkpoint `name`
    /// of `lab` (agents only: a second host copying it).
    CheckpointFile {
        lab: String,
        name: String,
        node: String,
        kind: String,
    },
}

/// The answer of an agent's image endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageReply {
    /// The image's files follow, in this order.
    Offer { hash: String, digest: ImageDigest },
    /// A pushed image is in the store under `name`.
    Stored { name: String, hash: String },
    /// The checkpoint file asked for follows: `bytes` bytes.
    CheckpointFile { bytes: u64 },
    /// Refused or failed.
    Error(ErrorReply),
}
