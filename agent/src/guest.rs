//! What the agent runs inside a guest to apply its part of the plan: NIC
//! names, MTUs and addresses. Pure: it only writes shell text, run through
//! the guest agent by the reconciler.
//!
//! The guest names its NICs in PCI order, which says nothing about the lab's
//! names; the plan's MAC is the stable identity, so each NIC is found by MAC
//! and renamed. Renames go through temporary names first so that swapping
//! `eth0` and `eth1` cannot collide. Every step is safe to run again.

use labspan_proto::names::mac_string;
use labspan_proto::plan::{NicPlan, VmPlan};

/// POSIX shell (busybox or Debian) that brings the guest's NICs to the plan.
pub fn network_script(vm: &VmPlan) -> String {
    let mut s = String::from("set -e\n");
    s.push_str(
        "dev_of() { for d in /sys/class/net/*; do \
         [ \"$(cat \"$d/address\")\" = \"$1\" ] && { basename \"$d\"; return 0; }; done; \
         echo \"no interface with MAC $1 in the guest\" >&2; return 1; }\n",
    );
    s.push_str(&format!("hostname {}\n", shell_quote(&vm.name)));
    for (i, nic) in vm.nics.iter().enumerate() {
        let mac = mac_string(&nic.mac);
        s.push_str(&format!(
            "d=$(dev_of {mac}); if [ \"$d\" != {name} ]; then ip link set dev \"$d\" down; \
             ip link set dev \"$d\" name lstmp{i}; fi\n",
            name = shell_quote(&nic.name),
        ));
    }
    for (i, nic) in vm.nics.iter().enumerate() {
        s.push_str(&nic_script(i, nic));
    }
    s
}

fn nic_script(i: usize, nic: &NicPlan) -> String {
    let name = shell_quote(&nic.name);
    let mut s = format!(
        "if [ -e /sys/class/net/lstmp{i} ]; then ip link set dev lstmp{i} name {name}; fi\n\
         ip link set dev {name} mtu {mtu}\n\
         ip link set dev {name} up\n",
        mtu = nic.mtu,
    );
    for addr in &nic.addrs {
        let family = if addr.addr().is_ipv4() { "-4" } else { "-6" };
        // `ip addr add` fails on an address already there; check first so
        // that a second run is a no-op rather than an error.
        s.push_str(&format!(
            "ip {family} addr show dev {name} | grep -q ' {addr} ' || ip {family} addr add {addr} dev {name}\n"
        ));
    }
    s
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use labspan_proto::lab::Impairment;
    use labspan_proto::plan::GuestConfig;

    fn vm() -> VmPlan {
        let nic = |name: &str, mac: u8, addrs: &[&str]| NicPlan {
            name: name.into(),
            segment: None,
            tap: format!("tap-{name}"),
            mac: [2, 0, 0, 0, 0, mac],
            mtu: 1450,
            addrs: addrs.iter().map(|a| a.parse().expect("cidr")).collect(),
            impairment: Impairment::default(),
        };
        VmPlan {
            name: "r1".into(),
            image: "tiny".into(),
            memory_mib: 256,
            cpus: 1,
            nics: vec![
                nic("eth0", 1, &["198.19.1.1/24", "2001:db8:1::1/64"]),
                nic("eth1", 2, &[]),
            ],
            config: GuestConfig::default(),
            restart: Default::default(),
            incoming: None,
            restore: None,
        }
    }

    #[test]
    fn nics_are_found_by_mac_renamed_and_addressed() {
        let s = network_script(&vm());
        assert!(
            s.contains("d=$(dev_of 02:00:00:00:00:01); if [ \"$d\" != eth0 ]"),
            "{s}"
        );
        assert!(s.contains("ip link set dev lstmp1 name eth1"), "{s}");
        assert!(s.contains("ip -4 addr add 198.19.1.1/24 dev eth0"), "{s}");
        assert!(
            s.contains("ip -6 addr add 2001:db8:1::1/64 dev eth0"),
            "{s}"
        );
        assert!(s.contains("ip link set dev eth1 mtu 1450"), "{s}");
        // Temporary renames all happen before any final name is taken.
        let last_tmp = s.rfind("name lstmp").expect("tmp rename");
        let first_final = s.find("name eth").expect("final rename");
        assert!(last_tmp < first_final, "{s}");
    }

    #[test]
    fn quoting_survives_hostile_strings() {
        assert_eq!(shell_quote("eth0"), "eth0");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
