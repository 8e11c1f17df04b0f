//! The lab file: its model, parser and validation.

mod model;

pub use model::*;
