//! The HA pair: failover monitor, the takeover/giveback state machine (sans-IO), interconnect
//! messages, mailbox (disk heartbeat) and persisted takeover state, and a deterministic
//! simulation of a pair that checks the safety invariants over many seeds.
//!
//! The IO edges the node's driver uses to perform the machine's actions live beside them:
//! [`interconnect`] (authenticated TCP links), [`mailbox_io`] (the disk heartbeat slots),
//! [`reserve`] (SCSI-3 persistent reservations over SG_IO, or the on-disk reservation block)
//! and [`ipaddr`] (address takeover with gratuitous ARP); see `docs/io-edges.md`.

#![deny(missing_docs)]

pub mod config;
pub mod direct_io;
pub mod health;
pub mod interconnect;
pub mod ipaddr;
pub mod mailbox;
pub mod mailbox_io;
pub mod persist;
pub mod reserve;
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
