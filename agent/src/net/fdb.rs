//! All-zeros FDB entries of VXLAN devices: one per remote VTEP, which is how
//! the kernel floods broadcast and unknown unicast to every remote host.
//!
//! rtnetlink's neighbour builder always sends NLM_F_EXCL, which refuses a
//! second entry for the same MAC; `bridge fdb append` sends NLM_F_APPEND.
//! So the requests are built here, from the neighbour message.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Error, Handle};

const ZERO_MAC: [u8; 6] = [0; 6];

/// The all-zeros entry of `ifindex` towards `remote`, as the device's own
/// (NTF_SELF) entry rather than the bridge's.
fn entry(ifindex: u32, remote: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(ZERO_MAC.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(match remote {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    msg
}

/// `bridge fdb append 00:00:00:00:00:00 dev DEV dst REMOTE self`.
pub async fn append(handle: &Handle, ifindex: u32, remote: IpAddr) -> Result<(), Error> {
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(entry(ifindex, remote)));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
    send(handle, req).await
}

/// `bridge fdb del 00:00:00:00:00:00 dev DEV dst REMOTE self`: removes only
/// the entry towards `remote`.
pub async fn delete(handle: &Handle, ifindex: u32, remote: IpAddr) -> Result<(), Error> {
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(entry(ifindex, remote)));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    send(handle, req).await
}

async fn send(handle: &Handle, req: NetlinkMessage<RouteNetlinkMessage>) -> Result<(), Error> {
    let mut responses = handle.clone().request(req)?;
    while let Some(msg) = responses.next().await {
        if let NetlinkPayload::Error(err) = msg.payload {
            if err.code.is_some() {
                return Err(Error::NetlinkError(err));
            }
        }
    }
    Ok(())
}

/// The remotes of the all-zeros `self` entries of the devices in `ifindexes`.
pub async fn remotes(
    handle: &Handle,
    ifindexes: &BTreeSet<u32>,
) -> Result<BTreeMap<u32, BTreeSet<IpAddr>>, Error> {
    let mut out: BTreeMap<u32, BTreeSet<IpAddr>> = BTreeMap::new();
    if ifindexes.is_empty() {
        return Ok(out);
    }
    let mut dump = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(msg) = dump.try_next().await? {
        if !ifindexes.contains(&msg.header.ifindex) {
            continue;
        }
        if let Some(remote) = zero_entry_remote(&msg) {
            out.entry(msg.header.ifindex).or_default().insert(remote);
        }
    }
    Ok(out)
}

/// The remote of an all-zeros `self` entry; `None` for any other entry.
fn zero_entry_remote(msg: &NeighbourMessage) -> Option<IpAddr> {
    if !msg.header.flags.contains(NeighbourFlags::Own) {
        return None;
    }
    let mut zero = false;
    let mut remote = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(mac) => zero = mac.as_slice() == ZERO_MAC,
            NeighbourAttribute::Destination(dst) => remote = ip_of(dst),
            _ => {}
        }
    }
    remote.filter(|_| zero)
}

/// An NDA_DST as an address. In an AF_BRIDGE message the parser cannot
/// tell its family and keeps the raw bytes: 4 of them are IPv4, 16 IPv6.
fn ip_of(dst: &NeighbourAddress) -> Option<IpAddr> {
    match dst {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(raw) => match raw.len() {
            4 => <[u8; 4]>::try_from(raw.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(raw.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_the_dump_parser() {
        let remote = IpAddr::from([198, 18, 0, 2]);
        let msg = entry(7, remote);
        assert_eq!(zero_entry_remote(&msg), Some(remote));
        let mut bridge_entry = entry(7, remote);
        bridge_entry.header.flags = NeighbourFlags::Controller;
        assert_eq!(
            zero_entry_remote(&bridge_entry),
            None,
            "bridge's own entries are not ours"
        );
        // As a dump parses it: the address's family is unknown, bytes remain.
        let mut dumped = entry(7, remote);
        dumped.attributes[1] =
            NeighbourAttribute::Destination(NeighbourAddress::Other(vec![198, 18, 0, 2]));
        assert_eq!(zero_entry_remote(&dumped), Some(remote));
        let v6 = IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);
        let IpAddr::V6(raw) = v6 else {
            panic!("{v6} is not an IPv6 address")
        };
        dumped.attributes[1] =
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw.octets().to_vec()));
        assert_eq!(zero_entry_remote(&dumped), Some(v6));
    }
}
