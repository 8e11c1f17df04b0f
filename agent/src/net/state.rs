//! What a host interface looks like, as labspan wants it or as the kernel has it.
//!
//! The same type describes both sides so that the diff is a field-by-field
//! comparison.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use labspan_proto::lab::Impairment;
use labspan_proto::names::OWNER_MARK;

/// The kind of an interface, with the attributes that can only be set when
/// it is created (changing them means deleting and re-creating it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// A Linux bridge.
    Bridge,
    /// A persistent tap device (a `tun` link in tap mode).
    Tap,
    /// A VXLAN device with learning off.
    Vxlan { vni: u32, local: IpAddr, port: u16 },
    /// Anything else, by its rtnetlink kind (`veth`, `tun` in tun mode, ...).
    Other(String),
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkKind::Bridge => write!(f, "bridge"),
            LinkKind::Tap => write!(f, "tap"),
            LinkKind::Vxlan { vni, local, port } => {
                write!(f, "vxlan id {vni} local {local} dstport {port}")
            }
            LinkKind::Other(k) if k.is_empty() => write!(f, "device"),
            LinkKind::Other(k) => write!(f, "{k}"),
        }
    }
}

/// One interface and everything labspan manages on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    /// Interface alias; labspan's carry the ownership marker.
    pub alias: Option<String>,
    /// Name of the bridge it is a port of.
    pub master: Option<String>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// VXLAN only: destinations of the all-zeros FDB entries (`self`).
    pub fdb: BTreeSet<IpAddr>,
    /// Tap only: the impairment applied on its root qdisc.
    pub impairment: Impairment,
}

impl Link {
    /// A link as it is right after labspan created it.
    pub fn fresh(name: &str, kind: LinkKind, alias: &str, mtu: u32) -> Link {
        Link {
            name: name.to_string(),
            kind,
            alias: Some(alias.to_string()),
            master: None,
            mtu,
            up: false,
            fdb: BTreeSet::new(),
            impairment: Impairment::default(),
        }
    }

    /// True when labspan made this interface (its alias carries the marker).
    pub fn is_owned(&self) -> bool {
        self.alias
            .as_deref()
            .is_some_and(|a| a.starts_with(OWNER_MARK))
    }

    /// True when labspan made this interface for `lab`.
    pub fn belongs_to(&self, lab: &str) -> bool {
        let prefix = labspan_proto::names::alias(lab, "");
        self.alias
            .as_deref()
            .is_some_and(|a| a.starts_with(&prefix))
    }
}

/// Two impairments that the kernel would apply identically. Loss goes
/// through a 32-bit fixed-point encoding, so it is compared with a tolerance
/// (`tc` prints it with six significant digits).
pub fn same_impairment(a: &Impairment, b: &Impairment) -> bool {
    let loss = |i: &Impairment| i.loss_percent.filter(|l| *l > 0.0);
    let same_loss = match (loss(a), loss(b)) {
        (None, None) => true,
        (Some(x), Some(y)) => (x - y).abs() < 1e-4,
        _ => false,
    };
    let nz = |v: Option<u64>| v.filter(|v| *v > 0);
    same_loss
        && nz(a.delay_us) == nz(b.delay_us)
        && nz(a.jitter_us) == nz(b.jitter_us)
        && nz(a.rate_kbit) == nz(b.rate_kbit)
}
