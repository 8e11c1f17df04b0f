//! The labspan coordinator: placement, host plans, and the replicated
//! cluster state.

#![forbid(unsafe_code)]

pub mod hosts;
pub mod images;
pub mod metrics;
pub mod placement;
pub mod plan;
pub mod raft;
pub mod service;
