//! The decoded bundles of the stored labs: a cache derived from the state's
//! labs, never serialized.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use labspan_proto::codec::{self, CodecError};
use labspan_proto::lab::LabBundle;

use super::LabRecord;

/// Each lab's bundle, decoded once when its spec is applied (or a snapshot
/// read): deploys, recovery ticks, plan pushes and the coordinators' file
/// copies read every lab's bundle, and decoding every stored lab each time
/// cost them in proportion to the whole cluster.
///
/// It is derived from [`ClusterState::labs`], so it is not part of the
/// state's value: two states with the same labs are equal whatever their
/// caches hold. A lab it lacks, or whose spec changed behind `apply` (a
/// state built by hand), is decoded on demand: the cache can be stale or
/// empty without giving a wrong answer.
#[derive(Clone, Default)]
pub struct Bundles(pub(super) BTreeMap<String, Cached>);

/// A decoded bundle and the spec it was decoded from.
#[derive(Clone)]
pub(super) struct Cached {
    pub(super) spec: Arc<[u8]>,
    /// Where the record's spec was when it was decoded: while the record
    /// keeps that very buffer (of that length), its spec is unchanged, and
    /// reads skip comparing its bytes (every deploy, recovery tick and
    /// file check reads every lab: comparing each stored spec byte by
    /// byte cost them the size of every spec; docs/benchmarks.md, "State
    /// at scale"). A spec replaced behind `apply` is a new buffer, made
    /// while the old one still lived, so it is never at the same address.
    at: usize,
    pub(super) bundle: Arc<LabBundle>,
}

impl Cached {
    fn decoded_from(&self, spec: &[u8]) -> bool {
        (self.at == spec.as_ptr() as usize && self.spec.len() == spec.len()) || *self.spec == *spec
    }
}

impl Bundles {
    /// The bundle of `spec`, stored for lab `name`.
    pub(super) fn of(&self, name: &str, spec: &[u8]) -> Result<Arc<LabBundle>, CodecError> {
        match self.0.get(name) {
            Some(c) if c.decoded_from(spec) => Ok(c.bundle.clone()),
            _ => codec::decode::<LabBundle>(spec).map(Arc::new),
        }
    }

    /// Caches `bundle` as lab `name`'s, decoded from `spec`: the record's
    /// own spec, not a copy.
    pub(super) fn insert(&mut self, name: &str, spec: &[u8], bundle: Arc<LabBundle>) {
        let cached = Cached {
            spec: Arc::from(spec),
            at: spec.as_ptr() as usize,
            bundle,
        };
        self.0.insert(name.to_string(), cached);
    }

    /// Decodes every lab of `labs` (a spec that does not decode is left
    /// out, and refused again when asked for).
    pub(super) fn decode_all(labs: &BTreeMap<String, LabRecord>) -> Bundles {
        let mut out = Bundles::default();
        for (name, rec) in labs {
            if let Ok(bundle) = codec::decode::<LabBundle>(&rec.spec) {
                out.insert(name, &rec.spec, Arc::new(bundle));
            }
        }
        out
    }
}

impl PartialEq for Bundles {
    fn eq(&self, _: &Bundles) -> bool {
        true
    }
}

impl Eq for Bundles {}

impl fmt::Debug for Bundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bundles({} decoded)", self.0.len())
    }
}
