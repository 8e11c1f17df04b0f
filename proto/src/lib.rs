//! Types every labspan component shares: the lab model and its validation,
//! host plans, and the names labspan gives to host interfaces.

pub mod lab;
pub mod names;
pub mod plan;
