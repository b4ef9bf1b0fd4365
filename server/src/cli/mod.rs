//! Operator subcommands.

pub mod aggr;
pub mod api_client;
pub mod demo;
pub mod fsck;
pub mod node;
pub mod status;
pub mod takeover;
