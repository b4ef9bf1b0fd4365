//! The twinfiler node.

pub mod config;
pub mod lab;
pub mod nfsclient;
pub mod node;
