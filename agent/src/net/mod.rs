//! The host's lab network: bridges, taps, VXLAN devices and their FDB
//! entries, brought to what a host plan asks for.
//!
//! Decided in pure code (`desired`, `diff`), carried out by a `NetOps`
//! (`KernelNet` on a host). Only interfaces whose alias carries
//! `names::OWNER_MARK` are ever changed or deleted.

mod action;
pub mod capabilities;
mod desired;
mod diff;
mod error;
mod fake;
mod fdb;
mod impairment;
mod kernel;
mod ops;
mod state;
mod tap;

use labspan_proto::plan::HostPlan;

pub use action::Action;
pub use desired::desired_links;
pub use diff::{diff, removal};
pub use error::NetError;
pub use fake::FakeNet;
pub use kernel::KernelNet;
pub use ops::NetOps;
pub use state::{same_impairment, Link, LinkKind};

/// What a reconcile or removal did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetReport {
    /// The actions carried out, in order (none when the host already matched).
    pub actions: Vec<Action>,
}

/// Brings this host's interfaces (in the calling thread's network
/// namespace) to `plan`.
pub async fn reconcile(plan: &HostPlan) -> Result<NetReport, NetError> {
    reconcile_with(&mut KernelNet::connect()?, plan).await
}

/// Brings the interfaces `ops` manages to `plan`: creates what is missing,
/// fixes what differs, deletes owned interfaces the plan does not have.
pub async fn reconcile_with<O: NetOps>(
    ops: &mut O,
    plan: &HostPlan,
) -> Result<NetReport, NetError> {
    let desired = desired_links(plan)?;
    let observed = ops.observe().await?;
    let actions = diff(&desired, &observed)?;
    apply_all(ops, actions).await
}

/// Deletes every interface labspan made for `lab` on this host.
pub async fn remove_lab(lab: &str) -> Result<NetReport, NetError> {
    remove_lab_with(&mut KernelNet::connect()?, lab).await
}

/// Deletes every interface labspan made for any lab on this host.
pub async fn remove_all() -> Result<NetReport, NetError> {
    remove_all_with(&mut KernelNet::connect()?).await
}

/// `remove_lab` through `ops`.
pub async fn remove_lab_with<O: NetOps>(ops: &mut O, lab: &str) -> Result<NetReport, NetError> {
    let observed = ops.observe().await?;
    apply_all(ops, removal(&observed, |l| l.belongs_to(lab))).await
}

/// `remove_all` through `ops`.
pub async fn remove_all_with<O: NetOps>(ops: &mut O) -> Result<NetReport, NetError> {
    let observed = ops.observe().await?;
    apply_all(ops, removal(&observed, |_| true)).await
}

async fn apply_all<O: NetOps>(ops: &mut O, actions: Vec<Action>) -> Result<NetReport, NetError> {
    for action in &actions {
        tracing::info!(%action, "net");
        ops.apply(action).await?;
    }
    Ok(NetReport { actions })
}
