//! labspan coordinator.
