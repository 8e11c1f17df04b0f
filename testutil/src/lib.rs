//! What labspan's tests share and nothing of labspan itself: network
//! namespaces made and removed by a test ([`netns`]), signals through a pidfd
//! to daemons a test knows by pidfile ([`process`]), and [`wait_until`],
//! the one way a test waits for something to happen.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

pub mod netns;
pub mod process;
mod wait;

pub use wait::{described, wait_until, wait_until_async};
