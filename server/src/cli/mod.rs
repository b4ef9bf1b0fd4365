//! Operator subcommands.

pub mod aggr;
pub mod demo;
pub mod fsck;
pub mod node;
pub mod status;
