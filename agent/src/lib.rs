//! labspan host agent.

pub mod daemon;
pub mod guest;
pub mod image;
pub mod image_service;
pub mod net;
pub mod paths;
pub mod reconcile;
pub mod stream;
pub mod verify;
pub mod vm;
