//! The agent's Prometheus metrics (docs/metrics.md): per VM, what the kernel
//! counts for its QEMU process (`/proc`) and its taps (`/sys/class/net`),
//! read when a scrape asks; plus image bytes received and plan apply time.

use std::collections::BTreeMap;
use std::path::Path;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::reconcile::Agent;

/// The port agents serve `/metrics` on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7181;

/// What a scrape's `Content-Type` says (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabels {
    lab: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TapLabels {
    lab: String,
    node: String,
    nic: String,
    tap: String,
    /// `from_guest` (the tap's rx) or `to_guest` (its tx).
    direction: &'static str,
}

/// Metrics the agent feeds as it works.
#[derive(Debug)]
pub struct Metrics {
    plan_apply_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            // A plan applies in milliseconds (nothing to change) to minutes
            // (guests booting under TCG): 10 ms .. ~5.5 min.
            plan_apply_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
        }
    }
}

impl Metrics {
    /// A host plan took `secs` to apply.
    pub fn plan_applied(&self, secs: f64) {
        self.plan_apply_seconds.observe(secs);
    }
}

/// One VM's figures, as the kernel counts them.
#[derive(Debug, Default)]
struct VmFigures {
    cpu_seconds: f64,
    resident_bytes: u64,
}

/// One tap's counters, from the host's side of it.
#[derive(Debug, Default, PartialEq)]
struct TapFigures {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    rx_dropped: u64,
    tx_dropped: u64,
}

/// Per-VM families, filled from this host's running VMs.
#[derive(Default)]
struct VmFamilies {
    cpu: Family<VmLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    resident: Family<VmLabels, Gauge>,
    tap_bytes: Family<TapLabels, Counter>,
    tap_packets: Family<TapLabels, Counter>,
    tap_dropped: Family<TapLabels, Counter>,
}

impl VmFamilies {
    fn add_vm(&self, labels: &VmLabels, vm: &VmFigures) {
        self.cpu.get_or_create(labels).inc_by(vm.cpu_seconds);
        self.resident
            .get_or_create(labels)
            .set(i64::try_from(vm.resident_bytes).unwrap_or(i64::MAX));
    }

    fn add_tap(&self, vm: &VmLabels, nic: &str, tap: &str, t: &TapFigures) {
        for (direction, bytes, packets, dropped) in [
            ("from_guest", t.rx_bytes, t.rx_packets, t.rx_dropped),
            ("to_guest", t.tx_bytes, t.tx_packets, t.tx_dropped),
        ] {
            let labels = TapLabels {
                lab: vm.lab.clone(),
                node: vm.node.clone(),
                nic: nic.to_string(),
                tap: tap.to_string(),
                direction,
            };
            self.tap_bytes.get_or_create(&labels).inc_by(bytes);
            self.tap_packets.get_or_create(&labels).inc_by(packets);
            self.tap_dropped.get_or_create(&labels).inc_by(dropped);
        }
    }

    fn register(self, registry: &mut Registry) {
        registry.register(
            "labspan_vm_cpu_seconds",
            "CPU time of the VM's QEMU process (user + system)",
            self.cpu,
        );
        registry.register(
            "labspan_vm_resident_memory_bytes",
            "Resident memory of the VM's QEMU process",
            self.resident,
        );
        registry.register(
            "labspan_vm_tap_bytes",
            "Bytes through a VM NIC's tap (from_guest: the tap received them)",
            self.tap_bytes,
        );
        registry.register(
            "labspan_vm_tap_packets",
            "Packets through a VM NIC's tap",
            self.tap_packets,
        );
        registry.register(
            "labspan_vm_tap_dropped",
            "Packets a VM NIC's tap dropped",
            self.tap_dropped,
        );
    }
}

/// The agent's metrics now, in the Prometheus text format. Reads `/proc`
/// and `/sys`: call it off the async runtime's threads.
pub fn render(agent: &Agent) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register(
        "labspan_plan_apply_seconds",
        "Time to apply a host plan (images, network, guests)",
        agent.metrics().plan_apply_seconds.clone(),
    );
    let received: Counter = Counter::default();
    received.inc_by(agent.image_bytes_received());
    registry.register(
        "labspan_image_received_bytes",
        "Image bytes received from other hosts (failed attempts included)",
        received,
    );
    // The nic names of each tap, from the plan the VMs were started from.
    let nics: BTreeMap<String, String> = agent
        .last_plan()
        .iter()
        .flat_map(|p| &p.labs)
        .flat_map(|l| &l.vms)
        .flat_map(|vm| &vm.nics)
        .map(|n| (n.tap.clone(), n.name.clone()))
        .collect();
    let families = VmFamilies::default();
    let vms = match agent.status() {
        Ok(vms) => vms,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot list this host's VMs");
            BTreeMap::new()
        }
    };
    let running: Gauge = Gauge::default();
    for ((lab, node), vm) in vms {
        let Some(vm) = vm else { continue };
        running.inc();
        let labels = VmLabels { lab, node };
        if let Some(figures) = vm_figures(vm.pid()) {
            families.add_vm(&labels, &figures);
        }
        for nic in &vm.record().spec.nics {
            let name = nics.get(&nic.tap).map_or(nic.tap.as_str(), String::as_str);
            if let Some(t) = tap_figures(Path::new("/sys/class/net"), &nic.tap) {
                families.add_tap(&labels, name, &nic.tap, &t);
            }
        }
    }
    registry.register("labspan_vms", "VMs whose QEMU runs on this host", running);
    families.register(&mut registry);
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// CPU time and resident memory of process `pid`; `None` once it is gone.
fn vm_figures(pid: u32) -> Option<VmFigures> {
    Some(VmFigures {
        cpu_seconds: crate::procfs::cpu_seconds(pid)?,
        resident_bytes: crate::procfs::resident_bytes(pid)?,
    })
}

/// A tap's counters from `net/TAP/statistics`; `None` when it is gone.
fn tap_figures(net: &Path, tap: &str) -> Option<TapFigures> {
    let dir = net.join(tap).join("statistics");
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(TapFigures {
        rx_bytes: read("rx_bytes")?,
        tx_bytes: read("tx_bytes")?,
        rx_packets: read("rx_packets")?,
        tx_packets: read("tx_packets")?,
        rx_dropped: read("rx_dropped")?,
        tx_dropped: read("tx_dropped")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_counters_are_read_and_a_missing_tap_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stats = dir.path().join("lst1/statistics");
        std::fs::create_dir_all(&stats).expect("mkdir");
        for (name, v) in [
            ("rx_bytes", 10),
            ("tx_bytes", 20),
            ("rx_packets", 1),
            ("tx_packets", 2),
            ("rx_dropped", 0),
            ("tx_dropped", 3),
        ] {
            std::fs::write(stats.join(name), format!("{v}\n")).expect("write");
        }
        let t = tap_figures(dir.path(), "lst1").expect("read");
        assert_eq!((t.rx_bytes, t.tx_bytes, t.tx_dropped), (10, 20, 3));
        assert!(tap_figures(dir.path(), "lst2").is_none());

        let families = VmFamilies::default();
        let vm = VmLabels {
            lab: "l".into(),
            node: "r1".into(),
        };
        families.add_tap(&vm, "eth0", "lst1", &t);
        let mut registry = Registry::default();
        families.register(&mut registry);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"labspan_vm_tap_bytes_total{lab="l",node="r1",nic="eth0",tap="lst1",direction="to_guest"} 20"#),
            "{text}"
        );
    }
}
