//! One module per `labspan` subcommand.

pub mod agent;
pub mod capture;
pub mod checkpoint;
pub mod cluster;
pub mod console;
pub mod coordinator;
pub mod docs;
pub mod down;
pub mod events;
pub mod exec;
pub mod graph;
pub mod image;
mod image_push;
pub mod import;
pub mod inspect;
pub mod moving;
pub mod place;
pub mod restart;
pub mod save;
pub mod up;
pub mod validate;
pub mod web;
