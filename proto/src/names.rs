//! The one place for names: the rules for the names users give
//! ([`valid`]), and the names labspan gives host interfaces and guest MACs.
//!
//! Names must fit IFNAMSIZ (15 bytes), be the same every time for the same
//! lab object (so a restarted agent finds what it made), and differ between
//! labs on one host. A short hash of the object's identity does all three.
//! The interface alias carries the ownership marker (`labspan:...`) that tells
//! the agent which interfaces are its own.

use sha2::{Digest, Sha256};

pub mod valid;

/// Prefix of every alias labspan sets; interfaces without it are never touched.
pub const OWNER_MARK: &str = "labspan:";

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Bridge of one segment of one lab: `lsb` + 12 hex digits.
pub fn bridge(lab: &str, segment_key: &str) -> String {
    format!("lsb{}", short_hash(&["bridge", lab, segment_key]))
}

/// Tap of one guest NIC: `lst` + 12 hex digits.
pub fn tap(lab: &str, node: &str, nic: &str) -> String {
    format!("lst{}", short_hash(&["tap", lab, node, nic]))
}

/// VXLAN device of a segment, named by its cluster-wide VNI: `lsx` + VNI.
pub fn vxlan(vni: u32) -> String {
    format!("lsx{vni}")
}

/// A capability probe's throw-away interface: `lsp` + `kind` + this
/// process's id in hex (agents sharing a namespace do not collide). It
/// carries no ownership marker, so no agent's clean-up touches it; the
/// probe deletes it at once.
pub fn probe(kind: &str) -> String {
    format!("lsp{kind}{:x}", std::process::id())
}

/// Alias (ownership marker) of an interface made for `lab`, describing `what`.
pub fn alias(lab: &str, what: &str) -> String {
    format!("{OWNER_MARK}{lab}/{what}")
}

/// Stable, locally administered, unicast MAC of one guest NIC.
pub fn mac(lab: &str, node: &str, nic: &str) -> [u8; 6] {
    let mut h = Sha256::new();
    for p in ["mac", lab, node, nic] {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    [0x02, d[0], d[1], d[2], d[3], d[4]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_are_stable() {
        let b = bridge("a-very-long-lab-name-of-32-chars", "link:x:eth0--y:eth0");
        let t = tap("a-very-long-lab-name-of-32-chars", "node", "eth0");
        assert!(b.len() <= 15 && t.len() <= 15 && vxlan(16_777_215).len() <= 15);
        assert_eq!(
            b,
            bridge("a-very-long-lab-name-of-32-chars", "link:x:eth0--y:eth0")
        );
        assert_ne!(tap("l1", "a", "eth0"), tap("l2", "a", "eth0"));
    }

    #[test]
    fn macs_are_unicast_and_local() {
        let m = mac("lab", "a", "eth0");
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
    }
}
