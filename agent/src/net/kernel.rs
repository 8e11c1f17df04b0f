//! `NetOps` over the kernel: rtnetlink for links and FDB entries, the tun
//! ioctls for taps, `tc` for impairments. Acts in the network namespace of
//! the thread that opened it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoTun, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVxlan};

use super::action::Action;
use super::ops::NetOps;
use super::state::{Link, LinkKind};
use super::{fdb, impairment, tap, NetError};

/// IFLA_TUN_TYPE, and its value for a tap (IFF_TAP).
const IFLA_TUN_TYPE: u16 = 3;
const TUN_TYPE_TAP: u8 = 2;

/// The kernel's interfaces, through one rtnetlink connection.
pub struct KernelNet {
    handle: Handle,
    /// Where the interface being created is written down first (see
    /// [`KernelNet::with_journal`]).
    journal: Option<PathBuf>,
}

impl KernelNet {
    /// Opens a netlink connection (needs a tokio runtime).
    pub fn connect() -> Result<KernelNet, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(conn);
        Ok(KernelNet {
            handle,
            journal: None,
        })
    }

    /// Writes each interface's name and alias to `path` before creating it
    /// and removes the file once it carries its alias. The kernel takes no
    /// alias at creation, so a process killed in between leaves an unmarked
    /// interface; [`KernelNet::recover`] finds it in the journal and marks
    /// it, instead of refusing it as foreign for ever.
    pub fn with_journal(mut self, path: PathBuf) -> KernelNet {
        self.journal = Some(path);
        self
    }

    /// Finishes a creation the journal says was cut short: an interface of
    /// that name without an alias gets the journal's alias. Returns its name.
    pub async fn recover(&self) -> Result<Option<String>, NetError> {
        let Some(path) = &self.journal else {
            return Ok(None);
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => return Err(journal_error("reading", path, cause)),
        };
        let mut recovered = None;
        if let Some((name, alias)) = text.trim_end_matches('\n').split_once('\t') {
            if self.index(name).await?.is_some() && self.alias_of(name).await?.is_none() {
                tracing::warn!(
                    interface = name,
                    "marking an interface whose creation was cut short"
                );
                self.set("setting alias of", name, |b| b.alias(alias))
                    .await?;
                recovered = Some(name.to_string());
            }
        }
        std::fs::remove_file(path).map_err(|cause| journal_error("removing", path, cause))?;
        Ok(recovered)
    }

    async fn alias_of(&self, name: &str) -> Result<Option<String>, NetError> {
        let mut found = self.handle.link().get().match_name(name).execute();
        let msg = found
            .try_next()
            .await
            .map_err(|e| NetError::netlink("looking up interface", name, e))?;
        Ok(msg.and_then(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfAlias(alias) => Some(alias),
                _ => None,
            })
        }))
    }

    /// Writes down (durably) that `name` is about to be created.
    fn intend(&self, name: &str, alias: &str) -> Result<(), NetError> {
        let Some(path) = &self.journal else {
            return Ok(());
        };
        labspan_proto::atomic::write(path, format!("{name}\t{alias}\n").as_bytes())
            .map_err(|cause| journal_error("writing", path, cause))
    }

    fn done(&self) {
        if let Some(path) = &self.journal {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The index of interface `name`, if there is one.
    async fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let mut found = self.handle.link().get().match_name(name).execute();
        match found.try_next().await {
            Ok(msg) => Ok(msg.map(|m| m.header.index)),
            Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENODEV => Ok(None),
            Err(e) => Err(NetError::netlink("looking up interface", name, e)),
        }
    }

    async fn require(&self, name: &str) -> Result<u32, NetError> {
        let missing = || NetError::Io {
            what: "looking up interface",
            object: name.to_string(),
            cause: std::io::Error::from_raw_os_error(libc::ENODEV),
        };
        self.index(name).await?.ok_or_else(missing)
    }

    /// RTM_SETLINK on `name` with what `build` adds to the message.
    async fn set(
        &self,
        what: &'static str,
        name: &str,
        build: impl FnOnce(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
    ) -> Result<(), NetError> {
        let index = self.require(name).await?;
        let msg = build(LinkUnspec::new_with_index(index)).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetError::netlink(what, name, e))
    }

    async fn create(
        &self,
        name: &str,
        kind: &LinkKind,
        alias: &str,
        mtu: u32,
    ) -> Result<(), NetError> {
        self.intend(name, alias)?;
        let made = self.create_marked(name, kind, alias, mtu).await;
        self.done();
        made
    }

    async fn create_marked(
        &self,
        name: &str,
        kind: &LinkKind,
        alias: &str,
        mtu: u32,
    ) -> Result<(), NetError> {
        match kind {
            LinkKind::Bridge => {
                self.add("creating bridge", name, LinkBridge::new(name).build())
                    .await?;
                // Set apart from the creation so that the kernel records it
                // as chosen (a bridge otherwise follows its smallest port).
                self.set("setting mtu of", name, |b| b.mtu(mtu)).await?;
            }
            LinkKind::Vxlan { vni, local, port } => {
                let b = LinkVxlan::new(name, *vni)
                    .port(*port)
                    .learning(false)
                    .mtu(mtu);
                let b = match local {
                    IpAddr::V4(v4) => b.local(*v4),
                    IpAddr::V6(v6) => b.local6(*v6),
                };
                self.add("creating VXLAN device", name, b.build()).await?;
            }
            LinkKind::Tap => {
                tap::create(name).map_err(|cause| NetError::Io {
                    what: "creating tap",
                    object: name.to_string(),
                    cause,
                })?;
                self.set("setting mtu of", name, |b| b.mtu(mtu)).await?;
            }
            LinkKind::Other(k) => {
                return Err(NetError::Io {
                    what: "creating",
                    object: name.to_string(),
                    cause: std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        format!("labspan does not create {k} interfaces"),
                    ),
                })
            }
        }
        // Lab segments are the guests' wire, not the host's: without this,
        // the host would send its own IPv6 link-local traffic (router and
        // neighbour solicitations) into every lab.
        disable_ipv6(name);
        // The kernel ignores an alias in RTM_NEWLINK, so it is set after; if
        // that fails, the unmarked interface is removed rather than left as
        // a "foreign" one that blocks the next reconcile.
        if let Err(e) = self.set("setting alias of", name, |b| b.alias(alias)).await {
            let _ = self.delete(name).await;
            return Err(e);
        }
        Ok(())
    }

    async fn add(&self, what: &'static str, name: &str, msg: LinkMessage) -> Result<(), NetError> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetError::netlink(what, name, e))
    }

    /// Deletes `name`; an interface already gone is not an error.
    async fn delete(&self, name: &str) -> Result<(), NetError> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENODEV => Ok(()),
            r => r.map_err(|e| NetError::netlink("deleting interface", name, e)),
        }
    }
}

impl NetOps for KernelNet {
    async fn observe(&mut self) -> Result<Vec<Link>, NetError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetError::netlink("listing", "interfaces", e))?;
        let names: BTreeMap<u32, String> = msgs
            .iter()
            .filter_map(|m| Some((m.header.index, name_of(m)?)))
            .collect();
        let mut links: Vec<(u32, Link)> = msgs
            .iter()
            .filter_map(|m| Some((m.header.index, link_of(m, &names)?)))
            .collect();
        let vxlans: BTreeSet<u32> = links
            .iter()
            .filter(|(_, l)| l.is_owned() && matches!(l.kind, LinkKind::Vxlan { .. }))
            .map(|(i, _)| *i)
            .collect();
        let mut remotes = fdb::remotes(&self.handle, &vxlans)
            .await
            .map_err(|e| NetError::netlink("listing FDB entries of", "VXLAN devices", e))?;
        let mut impaired = impairment::observe_all().await?;
        for (index, link) in &mut links {
            link.fdb = remotes.remove(index).unwrap_or_default();
            if link.is_owned() && link.kind == LinkKind::Tap {
                link.impairment = impaired.remove(&link.name).unwrap_or_default();
            }
        }
        Ok(links.into_iter().map(|(_, l)| l).collect())
    }

    async fn apply(&mut self, action: &Action) -> Result<(), NetError> {
        match action {
            Action::Delete { name } => self.delete(name).await,
            Action::Create {
                name,
                kind,
                alias,
                mtu,
            } => self.create(name, kind, alias, *mtu).await,
            Action::SetAlias { name, alias } => {
                self.set("setting alias of", name, |b| b.alias(alias)).await
            }
            Action::SetMtu { name, mtu } => self.set("setting mtu of", name, |b| b.mtu(*mtu)).await,
            Action::SetMaster {
                name,
                master: Some(m),
            } => {
                let bridge = self.require(m).await?;
                self.set("attaching to its bridge", name, |b| b.controller(bridge))
                    .await
            }
            Action::SetMaster { name, master: None } => {
                self.set("detaching from its bridge", name, |b| b.nocontroller())
                    .await
            }
            Action::SetUp { name, up: true } => self.set("bringing up", name, |b| b.up()).await,
            Action::SetUp { name, up: false } => {
                self.set("bringing down", name, |b| b.down()).await
            }
            Action::FdbAppend { device, remote } => {
                let index = self.require(device).await?;
                let what = "appending an all-zeros FDB entry on";
                fdb::append(&self.handle, index, *remote)
                    .await
                    .map_err(|e| NetError::netlink(what, device, e))
            }
            Action::FdbDelete { device, remote } => {
                let index = self.require(device).await?;
                let what = "deleting an all-zeros FDB entry on";
                fdb::delete(&self.handle, index, *remote)
                    .await
                    .map_err(|e| NetError::netlink(what, device, e))
            }
            Action::SetImpairment {
                name,
                nic,
                impairment,
            } => impairment::apply(name, nic, impairment).await,
        }
    }
}

fn journal_error(what: &'static str, path: &Path, cause: std::io::Error) -> NetError {
    NetError::Io {
        what,
        object: format!("interface journal {}", path.display()),
        cause,
    }
}

fn name_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The link a dump message describes; `names` resolves its master's index.
fn link_of(msg: &LinkMessage, names: &BTreeMap<u32, String>) -> Option<Link> {
    let mut link = Link::fresh(&name_of(msg)?, LinkKind::Other(String::new()), "", 0);
    link.alias = None;
    link.up = msg.header.flags.contains(LinkFlags::Up);
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(i) => link.master = names.get(i).cloned(),
            LinkAttribute::LinkInfo(infos) => link.kind = kind_of(infos),
            _ => {}
        }
    }
    Some(link)
}

fn kind_of(infos: &[LinkInfo]) -> LinkKind {
    let kind = infos.iter().find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k),
        _ => None,
    });
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(d) => Some(d),
        _ => None,
    });
    match (kind, data) {
        (Some(InfoKind::Bridge), _) => LinkKind::Bridge,
        (Some(InfoKind::Tun), Some(InfoData::Tun(tun))) if is_tap(tun) => LinkKind::Tap,
        (Some(InfoKind::Vxlan), Some(InfoData::Vxlan(vx))) => vxlan_kind(vx),
        (Some(k), _) => LinkKind::Other(k.to_string()),
        (None, _) => LinkKind::Other(String::new()),
    }
}

fn is_tap(tun: &[InfoTun]) -> bool {
    tun.iter().any(|info| {
        let InfoTun::Other(nla) = info else {
            return false;
        };
        let mut value = vec![0u8; nla.value_len()];
        nla.emit_value(&mut value);
        nla.kind() == IFLA_TUN_TYPE && value.first() == Some(&TUN_TYPE_TAP)
    })
}

fn vxlan_kind(infos: &[InfoVxlan]) -> LinkKind {
    let (mut vni, mut local, mut port) = (0, IpAddr::from([0u8; 4]), 0);
    for info in infos {
        match info {
            InfoVxlan::Id(id) => vni = *id,
            InfoVxlan::Local(v4) => local = IpAddr::V4(*v4),
            InfoVxlan::Local6(v6) => local = IpAddr::V6(*v6),
            InfoVxlan::Port(p) => port = *p,
            _ => {}
        }
    }
    LinkKind::Vxlan { vni, local, port }
}

/// Turns off the host's IPv6 on a lab interface. Best effort: a host with
/// IPv6 disabled altogether has no such file, and nothing to turn off.
fn disable_ipv6(name: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(%path, %e, "could not disable IPv6 on a lab interface");
    }
}
