//! Hand-built cluster states for the service's decision tests (moves,
//! recovery, checkpoints): one way to make a host, a stored lab and a state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use labspan_proto::codec;
use labspan_proto::lab::{parse, LabBundle};

use crate::hosts::DEFAULT_RESERVE_MIB;
use crate::placement::vm_memory_mib;
use crate::raft::{Capacity, ClusterState, Host, LabRecord, LabStatus};

/// Host `i` (VTEP 198.18.0.`i`), with room for `vms` guests of 256 MiB and
/// 1 vCPU.
pub fn host(i: u8, vms: u64, up: bool) -> Host {
    Host {
        capacity: Capacity {
            memory_mib: DEFAULT_RESERVE_MIB + vms * vm_memory_mib(256, 1),
            vcpus: 8,
        },
        labels: BTreeSet::new(),
        vtep: IpAddr::V4(Ipv4Addr::new(198, 18, 0, i)),
        up,
        cordoned: false,
    }
}

/// The stored spec of the lab file `yaml`.
pub fn spec(yaml: &str) -> Vec<u8> {
    let lab = parse("test lab", yaml).unwrap_or_else(|d| panic!("{d}\n{yaml}"));
    codec::encode(&LabBundle {
        lab,
        files: BTreeMap::new(),
    })
    .expect("encodes")
}

/// A stored lab with its nodes placed as `placement` says.
pub fn record(spec: Vec<u8>, placement: &[(&str, &str)], status: LabStatus) -> LabRecord {
    LabRecord {
        spec,
        vnis: BTreeMap::new(),
        placement: placement
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect(),
        status,
        moving: BTreeSet::new(),
        origin: None,
        migration: None,
        checkpoints: Default::default(),
        checkpoint_op: None,
        restored_from: Default::default(),
    }
}

/// A state of these hosts and labs.
pub fn state(hosts: &[(&str, Host)], labs: Vec<(&str, LabRecord)>) -> ClusterState {
    ClusterState {
        hosts: hosts
            .iter()
            .map(|(n, h)| (n.to_string(), h.clone()))
            .collect(),
        labs: labs.into_iter().map(|(n, r)| (n.to_string(), r)).collect(),
        ..ClusterState::default()
    }
}
