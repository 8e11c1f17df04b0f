//! An in-memory host for tests: applies actions the way the kernel does,
//! refusing the ones the kernel would refuse.

use std::collections::BTreeMap;
use std::io;

use super::action::Action;
use super::ops::NetOps;
use super::state::{Link, LinkKind};
use super::NetError;

/// A host's interfaces, in memory.
#[derive(Debug, Default, Clone)]
pub struct FakeNet {
    /// The interfaces, by name.
    pub links: BTreeMap<String, Link>,
    /// Every action applied so far, in order.
    pub applied: Vec<Action>,
    /// Fail the action on this interface (once), to test error paths.
    pub fail_on: Option<String>,
}

impl FakeNet {
    /// A host with `links` on it.
    pub fn with(links: impl IntoIterator<Item = Link>) -> FakeNet {
        let links = links.into_iter().map(|l| (l.name.clone(), l)).collect();
        FakeNet {
            links,
            ..Default::default()
        }
    }

    fn refuse(action: &Action, why: &str) -> NetError {
        NetError::Io {
            what: "fake host",
            object: format!("{action}"),
            cause: io::Error::other(why.to_string()),
        }
    }

    fn change(&mut self, action: &Action) -> Result<(), NetError> {
        if let Action::Create {
            name,
            kind,
            alias,
            mtu,
        } = action
        {
            if self.links.contains_key(name) {
                return Err(Self::refuse(action, "exists"));
            }
            self.links
                .insert(name.clone(), Link::fresh(name, kind.clone(), alias, *mtu));
            return Ok(());
        }
        if let Action::SetMaster {
            master: Some(m), ..
        } = action
        {
            if self.links.get(m).is_none_or(|b| b.kind != LinkKind::Bridge) {
                return Err(Self::refuse(action, "no such bridge"));
            }
        }
        let Some(link) = self.links.get_mut(action.object()) else {
            return Err(Self::refuse(action, "no such device"));
        };
        match action {
            Action::Create { .. } => {}
            Action::Delete { name } => {
                let name = name.clone();
                self.links.remove(&name);
                for port in self
                    .links
                    .values_mut()
                    .filter(|l| l.master.as_ref() == Some(&name))
                {
                    port.master = None;
                }
            }
            Action::SetAlias { alias, .. } => link.alias = Some(alias.clone()),
            Action::SetMtu { mtu, .. } => link.mtu = *mtu,
            Action::SetMaster { master, .. } => link.master = master.clone(),
            Action::SetUp { up, .. } => link.up = *up,
            Action::FdbAppend { remote, .. } => {
                link.fdb.insert(*remote);
            }
            Action::FdbDelete { remote, .. } => {
                if !link.fdb.remove(remote) {
                    return Err(Self::refuse(action, "no such entry"));
                }
            }
            Action::SetImpairment { impairment, .. } => link.impairment = *impairment,
        }
        Ok(())
    }
}

impl NetOps for FakeNet {
    async fn observe(&mut self) -> Result<Vec<Link>, NetError> {
        Ok(self.links.values().cloned().collect())
    }

    async fn apply(&mut self, action: &Action) -> Result<(), NetError> {
        if self.fail_on.as_deref() == Some(action.object()) {
            self.fail_on = None;
            return Err(Self::refuse(action, "injected failure"));
        }
        self.change(action)?;
        self.applied.push(action.clone());
        Ok(())
    }
}
