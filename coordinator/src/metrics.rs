//! The coordinator's Prometheus metrics (docs/metrics.md). Counters and
//! histograms are fed as things happen; gauges (term, hosts, labs) are read
//! from Raft and the state machine when a scrape asks, so they are never stale.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::Raft;
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::raft::{SharedState, TypeConfig};

/// The port coordinators serve `/metrics` on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7180;

/// What a scrape's `Content-Type` says (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every status a lab can have: each gets a series, 0 when no lab has it.
const LAB_STATUSES: [&str; 5] = ["Deploying", "Running", "Failed", "Deleting", "Degraded"];

/// One label `name=value` (hosts by state, labs by status, recoveries by kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// The apply-latency histogram: a batch of entries applies in microseconds
/// to milliseconds (100 µs .. ~26 s).
pub fn apply_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// Counters and histograms fed by the coordinator as it works.
#[derive(Debug)]
pub struct Metrics {
    leader_changes: Counter,
    commit_seconds: Histogram,
    apply_seconds: Histogram,
    recoveries: Family<KindLabel, Counter>,
}

/// What a recovery step did (the `kind` label of `labspan_recoveries_total`).
#[derive(Debug, Clone, Copy)]
pub enum RecoveryKind {
    /// A lost host's nodes were started on other hosts.
    Move,
    /// Lost nodes had no host to go to: the lab is degraded.
    Strand,
    /// A degraded lab was made whole again.
    Restore,
    /// A running node was moved live to make room for a lost host's nodes.
    MakeRoom,
}

impl RecoveryKind {
    fn label(self) -> &'static str {
        match self {
            RecoveryKind::Move => "move",
            RecoveryKind::Strand => "strand",
            RecoveryKind::Restore => "restore",
            RecoveryKind::MakeRoom => "make_room",
        }
    }
}

impl Metrics {
    /// Metrics whose apply latency `apply_seconds` measures (the state machine's).
    pub fn new(apply_seconds: Histogram) -> Metrics {
        let recoveries = Family::default();
        for kind in [
            RecoveryKind::Move,
            RecoveryKind::Strand,
            RecoveryKind::Restore,
            RecoveryKind::MakeRoom,
        ] {
            recoveries.get_or_create_owned(&KindLabel {
                kind: kind.label().into(),
            });
        }
        Metrics {
            leader_changes: Counter::default(),
            // A write commits on a majority and applies: milliseconds to
            // seconds (1 ms .. ~16 s).
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            apply_seconds,
            recoveries,
        }
    }

    /// A write took `secs` from proposal to applied.
    pub fn committed(&self, secs: f64) {
        self.commit_seconds.observe(secs);
    }

    /// This coordinator saw the leader change.
    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    /// A recovery step was carried out.
    pub fn recovered(&self, kind: RecoveryKind) {
        self.recoveries
            .get_or_create(&KindLabel {
                kind: kind.label().into(),
            })
            .inc();
    }
}

/// What a scrape reads: the coordinator's Raft node, its replica of the
/// state, and its counters. Cheap to clone.
#[derive(Clone)]
pub struct Source {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) state: SharedState,
    pub(crate) metrics: Arc<Metrics>,
}

impl Source {
    /// The metrics now, in the Prometheus text format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        let m = self.raft.metrics().borrow().clone();
        let gauge = |v: u64| {
            let g: Gauge = Gauge::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            g
        };
        registry.register(
            "labspan_raft_term",
            "The Raft term this coordinator is in",
            gauge(m.current_term),
        );
        registry.register(
            "labspan_raft_commit_index",
            "Index of the last log entry committed and applied on this coordinator",
            gauge(m.last_applied.map_or(0, |l| l.index)),
        );
        registry.register(
            "labspan_raft_is_leader",
            "1 while this coordinator leads the cluster",
            gauge(u64::from(m.current_leader == Some(m.id))),
        );
        registry.register(
            "labspan_raft_leader_changes",
            "Times this coordinator saw the leader change",
            self.metrics.leader_changes.clone(),
        );
        registry.register(
            "labspan_raft_commit_seconds",
            "Time from proposing a write to its being applied (on the leader)",
            self.metrics.commit_seconds.clone(),
        );
        registry.register(
            "labspan_raft_apply_seconds",
            "Time the state machine takes to apply a batch of committed entries",
            self.metrics.apply_seconds.clone(),
        );
        registry.register(
            "labspan_recoveries",
            "Recovery steps carried out by this coordinator as leader, by kind",
            self.metrics.recoveries.clone(),
        );
        let (hosts, labs) = self.counts();
        registry.register(
            "labspan_hosts",
            "Lab hosts by state (up, down)",
            family(hosts, |state| StateLabel { state }),
        );
        registry.register(
            "labspan_labs",
            "Labs by status",
            family(labs, |status| StatusLabel { status }),
        );
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry)?;
        Ok(text)
    }

    /// Hosts by state and labs by status, as this replica has them.
    fn counts(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let data = self.state.read();
        let mut hosts: BTreeMap<String, u64> =
            [("up".to_string(), 0), ("down".to_string(), 0)].into();
        for h in data.state.hosts.values() {
            *hosts
                .entry(if h.up { "up" } else { "down" }.into())
                .or_default() += 1;
        }
        let mut labs: BTreeMap<String, u64> =
            LAB_STATUSES.iter().map(|s| (s.to_string(), 0)).collect();
        for rec in data.state.labs.values() {
            *labs.entry(rec.status.word().into()).or_default() += 1;
        }
        (hosts, labs)
    }
}

fn family<L>(counts: BTreeMap<String, u64>, label: impl Fn(String) -> L) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f: Family<L, Gauge> = Family::default();
    for (key, n) in counts {
        f.get_or_create(&label(key))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    f
}

/// Counts the leader changes this coordinator sees, until Raft stops.
pub(crate) async fn watch_leader(raft: Raft<TypeConfig>, metrics: Arc<Metrics>) {
    let mut rx = raft.metrics();
    let mut leader = rx.borrow().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow().current_leader;
        if now.is_some() && now != leader {
            metrics.leader_changed();
        }
        if now.is_some() {
            leader = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recoveries_are_counted_by_kind_and_every_kind_has_a_series() {
        let m = Metrics::new(apply_histogram());
        m.recovered(RecoveryKind::Move);
        m.recovered(RecoveryKind::Move);
        let mut registry = Registry::default();
        registry.register("labspan_recoveries", "help", m.recoveries.clone());
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("labspan_recoveries_total{kind=\"move\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("labspan_recoveries_total{kind=\"strand\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("labspan_recoveries_total{kind=\"restore\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn gauges_list_every_state_even_at_zero() {
        let counts: BTreeMap<String, u64> = [("up".to_string(), 2), ("down".to_string(), 0)].into();
        let mut registry = Registry::default();
        registry.register(
            "labspan_hosts",
            "help",
            family(counts, |state| StateLabel { state }),
        );
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("labspan_hosts{state=\"up\"} 2"), "{text}");
        assert!(text.contains("labspan_hosts{state=\"down\"} 0"), "{text}");
    }
}
