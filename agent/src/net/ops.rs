//! The thin layer that reads and changes the host's interfaces.

use std::future::Future;

use super::action::Action;
use super::state::Link;
use super::NetError;

/// Reads and changes a host's interfaces; the kernel (`KernelNet`) or a
/// fake (`FakeNet`) for tests of the logic above it.
pub trait NetOps {
    /// Every interface of the host, with the FDB entries and impairments
    /// of those labspan owns.
    fn observe(&mut self) -> impl Future<Output = Result<Vec<Link>, NetError>> + Send;
    /// Carries out one action.
    fn apply(&mut self, action: &Action) -> impl Future<Output = Result<(), NetError>> + Send;
}
