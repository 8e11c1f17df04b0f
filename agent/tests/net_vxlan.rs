//! A segment stretched over VXLAN between two "hosts" (network namespaces
//! joined by a veth pair on 198.18.0.0/16), against the real kernel.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

mod net_support;

use std::net::UdpSocket;
use std::time::Duration;

use labspan_agent::net::{self, Action};
use labspan_proto::names;
use labspan_proto::plan::HostPlan;
use net_support::netns::Netns;
use net_support::*;

const VNI: u32 = 4100;

/// Host `i` (1 or 2) of the pair: the segment, stretched to `remotes`.
fn side(i: u8, remotes: &[std::net::IpAddr]) -> HostPlan {
    let mut l = lab("x");
    vx_segment(&mut l, "lan", 1450, VNI, ip(0, i), remotes);
    host(vec![l])
}

/// Two namespaces joined by a veth pair, 198.18.0.1 and 198.18.0.2.
fn underlay() -> (Netns, Netns) {
    let (a, b) = (Netns::new("net-vx-a"), Netns::new("net-vx-b"));
    a.ip(&[
        "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &b.name,
    ]);
    for (ns, addr) in [(&a, "198.18.0.1/16"), (&b, "198.18.0.2/16")] {
        ns.ip(&["addr", "add", addr, "dev", "ul0"]);
        ns.ip(&["link", "set", "ul0", "up"]);
    }
    (a, b)
}

#[test]
fn a_vxlan_segment_carries_traffic_and_its_fdb_follows_the_remotes() {
    let (a, b) = underlay();
    let dev = names::vxlan(VNI);
    let bridge = names::bridge("x", "lan");
    // Host 1 also floods to a third VTEP (198.18.0.3, absent): two entries.
    let plan_a = side(1, &[ip(0, 2), ip(0, 3)]);
    a.block_on(|| async { net::reconcile(&plan_a).await })
        .expect("reconcile host 1");
    b.block_on(|| async { net::reconcile(&side(2, &[ip(0, 1)])).await })
        .expect("reconcile host 2");
    assert_eq!(
        a.zero_fdb(&dev),
        vec!["198.18.0.2", "198.18.0.3"],
        "APPEND keeps both remotes"
    );
    assert_eq!(b.zero_fdb(&dev), vec!["198.18.0.1"]);
    let vx = a.link(&dev).expect("vxlan device");
    assert_eq!(vx["master"], bridge.as_str());
    assert_eq!(vx["mtu"], 1450);
    assert_eq!(vx["linkinfo"]["info_data"]["id"], VNI);
    assert_eq!(vx["linkinfo"]["info_data"]["local"], "198.18.0.1");
    assert_eq!(vx["linkinfo"]["info_data"]["port"], 4789);
    assert_eq!(vx["linkinfo"]["info_data"]["learning"], false);

    // Test-only addresses on the bridges (lab addresses live in guests).
    a.ip(&["addr", "add", "198.19.0.1/24", "dev", &bridge]);
    b.ip(&["addr", "add", "198.19.0.2/24", "dev", &bridge]);
    assert!(
        echo(&a, &b),
        "a datagram crosses the VXLAN and its echo comes back"
    );

    let again = a
        .block_on(|| async { net::reconcile(&plan_a).await })
        .expect("again");
    assert_eq!(again.actions, vec![]);

    // Dropping a remote deletes its entry only.
    let fewer = a
        .block_on(|| async { net::reconcile(&side(1, &[ip(0, 2)])).await })
        .expect("fewer remotes");
    assert_eq!(
        fewer.actions,
        vec![Action::FdbDelete {
            device: dev.clone(),
            remote: ip(0, 3)
        }]
    );
    assert_eq!(a.zero_fdb(&dev), vec!["198.18.0.2"]);
    assert!(echo(&a, &b), "the segment still carries traffic");

    a.block_on(|| async { net::remove_lab("x").await })
        .expect("remove");
    assert_eq!(a.labspan_names(), Vec::<String>::new());
}

/// A UDP echo from 198.19.0.1 in `a` to 198.19.0.2 in `b` (a ping that needs
/// no program): true when an echo comes back. The first datagrams may wait
/// on ARP, so a few are sent.
fn echo(a: &Netns, b: &Netns) -> bool {
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            b.run_in(|| {
                let sock = UdpSocket::bind("198.19.0.2:7007").expect("bind in host 2");
                sock.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut buf = [0u8; 64];
                let (n, from) = sock.recv_from(&mut buf).ok()?;
                sock.send_to(&buf[..n], from).ok()
            })
        });
        let got = a.run_in(|| {
            let sock = UdpSocket::bind("198.19.0.1:0").expect("bind in host 1");
            sock.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            (0..30).any(|_| {
                let _ = sock.send_to(b"labspan", "198.19.0.2:7007");
                matches!(sock.recv_from(&mut buf), Ok((7, _))) && &buf[..7] == b"labspan"
            })
        });
        let served = server.join().expect("echo server");
        got && served.is_some()
    })
}
