//! Pins the layout of everything labspan encodes (`labspan_proto::codec`):
//! requests and replies between members, agents' requests and plans, Raft
//! commands and the replicated state that snapshots hold.
//!
//! bincode is not self-describing: a field added, removed or reordered in
//! any of these types makes old bytes decode wrongly or not at all. The
//! envelope's version is what turns that into a clear refusal, so every such
//! change must bump `codec::VERSION`. This test traces the types' serde
//! layout (serde-reflection) and compares it with `tests/wire-format.txt`,
//! which starts with the version it was made for: a changed layout fails
//! until the version is bumped and the file made again with
//! `LABSPAN_BLESS=1 cargo test -p labspan-coordinator --test wire_format`.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use labspan_coordinator::raft::{ClusterState, Command};
use labspan_proto::codec::VERSION;
use labspan_proto::msg::{AgentReply, AgentRequest, Reply, Request};
use labspan_proto::plan::HostPlan;
use serde_reflection::{Tracer, TracerConfig};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/wire-format.txt");

/// Traces each type named, as `trace!(tracer, Type, ...)`; an enum nested
/// in a root is traced once per variant only when it is a root itself.
macro_rules! trace {
    ($tracer:expr, $($t:ty),+ $(,)?) => {
        $(
            if let Err(e) = $tracer.trace_simple_type::<$t>() {
                panic!("cannot trace the layout of {}: {e}", stringify!($t));
            }
        )+
    };
}

fn layout() -> String {
    use labspan_coordinator::raft::{CheckpointOpKind, MovePhase};
    use labspan_proto::msg::{ErrorKind, LabStatus, MoveSide, NodeState, Role};
    let mut tracer = Tracer::new(TracerConfig::default().is_human_readable(false));
    // The roots: what crosses the wire and what the log and snapshots hold.
    trace!(
        tracer,
        Request,
        Reply,
        AgentRequest,
        AgentReply,
        HostPlan,
        Command,
        ClusterState
    );
    // Every enum they hold, so that each variant is in the layout.
    trace!(
        tracer,
        labspan_proto::lab::Check,
        labspan_proto::lab::RestartPolicy,
        labspan_proto::health::GuestState,
        labspan_proto::progress::Phase,
        ErrorKind,
        LabStatus,
        MoveSide,
        NodeState,
        Role,
        CheckpointOpKind,
        MovePhase,
        std::net::IpAddr,
        ipnet::IpNet,
    );
    let registry = tracer
        .registry()
        .unwrap_or_else(|e| panic!("incomplete layout: {e}"));
    let body = serde_json::to_string_pretty(&registry).expect("the layout as JSON");
    format!("codec::VERSION {VERSION}\n{body}\n")
}

#[test]
fn a_changed_wire_or_storage_layout_bumps_the_codec_version() {
    let now = layout();
    if std::env::var_os("LABSPAN_BLESS").is_some() {
        std::fs::write(GOLDEN, &now).expect("writing the layout file");
        return;
    }
    let pinned = std::fs::read_to_string(GOLDEN).expect("reading tests/wire-format.txt");
    if now == pinned {
        return;
    }
    let pinned_version = pinned.lines().next().unwrap_or_default();
    let now_version = format!("codec::VERSION {VERSION}");
    assert_ne!(
        pinned_version, now_version,
        "the encoded layout changed but codec::VERSION is still {VERSION}: bump it \
         (proto/src/codec.rs), then run `LABSPAN_BLESS=1 cargo test -p labspan-coordinator \
         --test wire_format` and commit tests/wire-format.txt"
    );
    panic!(
        "codec::VERSION is {VERSION} and the layout changed: run `LABSPAN_BLESS=1 cargo test \
         -p labspan-coordinator --test wire_format` and commit tests/wire-format.txt"
    );
}
