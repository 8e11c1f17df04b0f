//! labspan host agent.

pub mod daemon;
pub mod guest;
pub mod paths;
pub mod reconcile;
pub mod verify;
pub mod net;
pub mod image;
pub mod vm;
