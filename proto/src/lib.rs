//! Types every labspan component shares: the lab model and its validation,
//! host plans, and the names labspan gives to host interfaces.

#![forbid(unsafe_code)]

pub mod atomic;
pub mod checkpoint;
pub mod clab;
pub mod codec;
pub mod files;
pub mod health;
pub mod image;
pub mod lab;
pub mod msg;
pub mod names;
pub mod plan;
pub mod progress;
pub mod suggest;
pub mod yaml;
