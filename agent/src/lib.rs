//! labspan host agent.
