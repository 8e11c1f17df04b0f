//! How much host memory a VM takes, and how sizes are written for people.

use std::fmt;

/// QEMU's own resident memory beyond guest RAM and page tables; KubeVirt
/// measures 30 MiB (`QemuOverhead` in virt-launcher's estimate).
pub const QEMU_PROCESS_MIB: u64 = 30;
/// One I/O thread (KubeVirt counts 8 MiB).
pub const IOTHREAD_MIB: u64 = 8;
/// Per-VM share of labspan's own host state (taps, bridge ports, QMP and
/// console buffers, the serial log); measured well under this, kept as margin.
pub const LABSPAN_PER_VM_MIB: u64 = 26;
/// Per vCPU: thread stacks and vCPU state (KubeVirt: 8 MiB per vCPU).
pub const PER_VCPU_MIB: u64 = 8;
/// Page tables: one byte per 512 bytes of guest RAM (KubeVirt's estimate).
pub const PAGE_TABLE_DIVISOR: u64 = 512;

/// Host memory a VM takes: guest RAM plus QEMU's overhead, in MiB.
///
/// `guest + ceil(guest / 512) + 30 + 8 + 26 + 8 × vcpus`; see
/// `docs/placement.md` for where each term comes from.
pub fn vm_memory_mib(guest_mib: u64, vcpus: u64) -> u64 {
    guest_mib
        .saturating_add(guest_mib.div_ceil(PAGE_TABLE_DIVISOR))
        .saturating_add(QEMU_PROCESS_MIB + IOTHREAD_MIB + LABSPAN_PER_VM_MIB)
        .saturating_add(PER_VCPU_MIB.saturating_mul(vcpus))
}

/// Formats a size in MiB the way errors and tables show it: `512 MiB`, `1.5 GiB`.
pub fn format_mib(mib: u64) -> String {
    if mib < 1024 {
        format!("{mib} MiB")
    } else {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    }
}

/// A needed and an available size, printed so that they never look equal
/// when the need is larger (`1.3 GiB` vs `0.9 GiB`, or MiB when too close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MibPair {
    /// What is needed, in MiB.
    pub need_mib: u64,
    /// What is free, in MiB.
    pub free_mib: u64,
}

impl MibPair {
    fn gib_tenths(&self) -> Option<(u64, u64)> {
        // Round the need up and the free size down, so "needs 1.0 GiB, free
        // 1.0 GiB" can never be printed.
        let need = (self.need_mib * 10).div_ceil(1024);
        let free = self.free_mib * 10 / 1024;
        (self.need_mib >= 512 && need > free).then_some((need, free))
    }

    /// The need, as printed.
    pub fn need(&self) -> Sized10 {
        match self.gib_tenths() {
            Some((n, _)) => Sized10::Gib(n),
            None => Sized10::Mib(self.need_mib),
        }
    }

    /// The free size, as printed.
    pub fn free(&self) -> Sized10 {
        match self.gib_tenths() {
            Some((_, f)) => Sized10::Gib(f),
            None => Sized10::Mib(self.free_mib),
        }
    }
}

/// A size printed in MiB or in tenths of GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sized10 {
    /// Whole MiB.
    Mib(u64),
    /// Tenths of a GiB.
    Gib(u64),
}

impl fmt::Display for Sized10 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sized10::Mib(m) => write!(f, "{m} MiB"),
            Sized10::Gib(t) => write!(f, "{}.{} GiB", t / 10, t % 10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_follows_the_documented_formula() {
        // 512 MiB, 1 vCPU: 512 + 1 + 30 + 8 + 26 + 8.
        assert_eq!(vm_memory_mib(512, 1), 585);
        assert_eq!(vm_memory_mib(4096, 2), 4096 + 8 + 64 + 16);
    }

    #[test]
    fn pairs_never_print_equal() {
        let p = MibPair {
            need_mib: 1331,
            free_mib: 921,
        };
        assert_eq!(
            (p.need().to_string(), p.free().to_string()),
            ("1.3 GiB".into(), "0.8 GiB".into())
        );
        let close = MibPair {
            need_mib: 1025,
            free_mib: 1024,
        };
        assert_ne!(close.need().to_string(), close.free().to_string());
        let small = MibPair {
            need_mib: 300,
            free_mib: 200,
        };
        assert_eq!(small.need().to_string(), "300 MiB");
    }
}
