//! The twinfiler node.

pub mod config;
pub mod nfsclient;
pub mod node;
