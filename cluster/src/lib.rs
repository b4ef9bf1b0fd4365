//! The HA pair: failover monitor, the takeover/giveback state machine (sans-IO), interconnect
//! messages, mailbox (disk heartbeat) and persisted takeover state, and a deterministic
//! simulation of a pair that checks the safety invariants over many seeds.
//!
//! The interconnect transport, reservations over SG_IO, IP takeover and the node's driver
//! come on top of these pure parts.

#![deny(missing_docs)]

pub mod config;
pub mod health;
pub mod mailbox;
pub mod persist;
pub mod sim;
pub mod takeover;
pub mod time;
pub mod wire;

mod codec;

pub use config::TakeoverConfig;
pub use takeover::{Action, Event, Takeover};
pub use time::Time;

/// A node of the pair: 0 or 1. A node's *identity* (aggregate, addresses, exports, name) is
/// named by the node it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u8);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node{}", self.0)
    }
}
