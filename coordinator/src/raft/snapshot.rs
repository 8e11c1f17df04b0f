//! The snapshot format: the cluster state as a stream of codec envelopes, a
//! head and then one envelope per host, lab, VNI and join token.
//!
//! No message holds the whole state, so a snapshot is bounded by memory, not
//! by the codec's [`MAX_MESSAGE_SIZE`](labspan_proto::codec::MAX_MESSAGE_SIZE);
//! openraft sends it to a follower in chunks of `snapshot_max_chunk_size`
//! bytes, each one Raft RPC. The head counts what follows, so a snapshot cut
//! short is refused instead of installed as a smaller state.

use labspan_proto::codec::{self, CodecError};
use serde::{Deserialize, Serialize};

use super::state::{ClusterState, Host, JoinToken, LabRecord};

/// One envelope of a snapshot, as read back.
#[derive(Deserialize)]
enum Part {
    Head(Head),
    Host(String, Host),
    Lab(String, Box<LabRecord>),
    Vni(u32, String, String),
    Token(String, JoinToken),
    Revoked(String),
}

/// One envelope of a snapshot, as written: [`Part`] over borrowed data (the
/// same encoding, without copying the state).
#[derive(Serialize)]
enum PartRef<'a> {
    Head(Head),
    Host(&'a str, &'a Host),
    Lab(&'a str, &'a LabRecord),
    Vni(u32, &'a str, &'a str),
    Token(&'a str, &'a JoinToken),
    Revoked(&'a str),
}

/// The first envelope: how many of each part follow, and the scalar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    hosts: u64,
    labs: u64,
    vnis: u64,
    tokens: u64,
    revoked: u64,
    next_node_id: u64,
}

/// Why snapshot bytes are not a cluster state.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An envelope is malformed or over the message limit.
    #[error("snapshot part {index}: {cause}")]
    Codec { index: usize, cause: CodecError },
    /// The first envelope is not the head, or a second head follows.
    #[error("snapshot part {index}: {what}")]
    Layout { index: usize, what: &'static str },
    /// Fewer or more parts than the head announced.
    #[error("snapshot holds {got:?}, its head announced {announced:?}: it was cut or altered")]
    Count { announced: Counts, got: Counts },
}

/// Parts of each kind: (hosts, labs, VNIs, tokens, revoked coordinators).
pub type Counts = (u64, u64, u64, u64, u64);

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Encodes `state` as a snapshot.
pub fn write(state: &ClusterState) -> Result<Vec<u8>, CodecError> {
    // Destructured so a field added to the state cannot be left out here.
    let ClusterState {
        hosts,
        labs,
        vni_owners,
        tokens,
        next_node_id,
        revoked,
        bundles: _,
    } = state;
    let head = Head {
        hosts: count(hosts.len()),
        labs: count(labs.len()),
        vnis: count(vni_owners.len()),
        tokens: count(tokens.len()),
        revoked: count(revoked.len()),
        next_node_id: *next_node_id,
    };
    let mut out = codec::encode(&PartRef::Head(head))?;
    for (name, host) in hosts {
        out.extend(codec::encode(&PartRef::Host(name, host))?);
    }
    for (name, lab) in labs {
        out.extend(codec::encode(&PartRef::Lab(name, lab))?);
    }
    for (vni, (lab, segment)) in vni_owners {
        out.extend(codec::encode(&PartRef::Vni(*vni, lab, segment))?);
    }
    for (hash, token) in tokens {
        out.extend(codec::encode(&PartRef::Token(hash, token))?);
    }
    for name in revoked {
        out.extend(codec::encode(&PartRef::Revoked(name))?);
    }
    Ok(out)
}

/// Decodes a snapshot made by [`write`].
pub fn read(mut bytes: &[u8]) -> Result<ClusterState, SnapshotError> {
    let mut state = ClusterState::default();
    let mut head: Option<Head> = None;
    let mut index = 0;
    while !bytes.is_empty() {
        let (part, rest) = codec::decode_first::<Part>(bytes)
            .map_err(|cause| SnapshotError::Codec { index, cause })?;
        bytes = rest;
        match (part, head.is_some()) {
            (Part::Head(h), false) => {
                state.next_node_id = h.next_node_id;
                head = Some(h);
            }
            (Part::Head(_), true) => {
                return Err(SnapshotError::Layout {
                    index,
                    what: "a second head",
                })
            }
            (_, false) => {
                return Err(SnapshotError::Layout {
                    index,
                    what: "data before the head",
                })
            }
            (Part::Host(name, host), true) => {
                state.hosts.insert(name, host);
            }
            (Part::Lab(name, lab), true) => {
                state.labs.insert(name, *lab);
            }
            (Part::Vni(vni, lab, segment), true) => {
                state.vni_owners.insert(vni, (lab, segment));
            }
            (Part::Token(hash, token), true) => {
                state.tokens.insert(hash, token);
            }
            (Part::Revoked(name), true) => {
                state.revoked.insert(name);
            }
        }
        index += 1;
    }
    let Some(head) = head else {
        return Err(SnapshotError::Layout {
            index,
            what: "no head: the snapshot is empty",
        });
    };
    let announced = (head.hosts, head.labs, head.vnis, head.tokens, head.revoked);
    let got = (
        count(state.hosts.len()),
        count(state.labs.len()),
        count(state.vni_owners.len()),
        count(state.tokens.len()),
        count(state.revoked.len()),
    );
    if announced != got {
        return Err(SnapshotError::Count { announced, got });
    }
    state.decode_bundles();
    Ok(state)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::{IpAddr, Ipv4Addr};

    use labspan_proto::codec::MAX_MESSAGE_SIZE;
    use labspan_proto::msg::Role;

    use super::*;
    use crate::raft::state::{Capacity, LabStatus};

    fn state(labs: usize, spec_len: usize) -> ClusterState {
        let mut s = ClusterState {
            next_node_id: 4,
            ..ClusterState::default()
        };
        s.hosts.insert(
            "h1".into(),
            Host {
                capacity: Capacity {
                    memory_mib: 1024,
                    vcpus: 2,
                },
                labels: BTreeSet::from(["fast".to_string()]),
                vtep: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                up: true,
                cordoned: false,
            },
        );
        for i in 0..labs {
            let name = format!("lab-{i}");
            let vni = 4096 + u32::try_from(i).unwrap_or(0);
            s.vni_owners.insert(vni, (name.clone(), "lan".into()));
            let record = LabRecord {
                spec: vec![u8::try_from(i % 251).unwrap_or(0); spec_len],
                vnis: BTreeMap::from([("lan".to_string(), vni)]),
                placement: BTreeMap::from([("r1".to_string(), "h1".to_string())]),
                status: LabStatus::Running,
                moving: BTreeSet::new(),
                origin: None,
                migration: None,
                checkpoints: Default::default(),
                checkpoint_op: None,
                restored_from: Default::default(),
            };
            s.labs.insert(name, record);
        }
        s.tokens.insert(
            "ab".into(),
            JoinToken {
                role: Role::Agent,
                expires_unix: 9,
                used_by: None,
            },
        );
        s.revoked.insert("c9".into());
        s
    }

    #[test]
    fn a_state_larger_than_one_message_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let big = state(40, 512 * 1024);
        let bytes = write(&big)?;
        assert!(bytes.len() > MAX_MESSAGE_SIZE, "{} bytes", bytes.len());
        assert_eq!(read(&bytes)?, big);
        Ok(())
    }

    #[test]
    fn a_cut_snapshot_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let bytes = write(&state(3, 10))?;
        // Cut inside the last envelope, then exactly after the second-to-last one.
        assert!(matches!(
            read(&bytes[..bytes.len() - 1]),
            Err(SnapshotError::Codec { .. })
        ));
        let without_token = write(&ClusterState {
            tokens: BTreeMap::new(),
            ..state(3, 10)
        })?;
        let head_len = codec::encode(&PartRef::Head(Head {
            hosts: 0,
            labs: 0,
            vnis: 0,
            tokens: 0,
            revoked: 0,
            next_node_id: 0,
        }))?
        .len();
        let mut forged = write(&state(3, 10))?[..head_len].to_vec();
        forged.extend(&without_token[head_len..]);
        assert!(matches!(read(&forged), Err(SnapshotError::Count { .. })));
        Ok(())
    }

    #[test]
    fn data_before_the_head_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let host = Host {
            capacity: Capacity {
                memory_mib: 1,
                vcpus: 1,
            },
            labels: BTreeSet::new(),
            vtep: IpAddr::V4(Ipv4Addr::LOCALHOST),
            up: true,
            cordoned: false,
        };
        let bytes = codec::encode(&PartRef::Host("h", &host))?;
        assert!(matches!(read(&bytes), Err(SnapshotError::Layout { .. })));
        assert!(matches!(read(&[]), Err(SnapshotError::Layout { .. })));
        Ok(())
    }
}
