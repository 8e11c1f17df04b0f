//! labspan host agent.

pub mod daemon;
pub mod guest;
pub mod image;
pub mod net;
pub mod paths;
pub mod reconcile;
pub mod verify;
pub mod vm;
