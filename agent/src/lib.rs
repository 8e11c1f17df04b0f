//! labspan host agent.

pub mod daemon;
pub mod fence;
pub mod guest;
pub mod liveness;
pub mod metrics;
pub mod net;
pub mod paths;
pub mod procfs;
pub mod progress;
pub mod reconcile;
pub mod stream;
pub mod supervise;
pub mod vm;
