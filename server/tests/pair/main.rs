//! Real-process tests of takeover: `twinfiler node` processes and a hard-mount NFS client
//! that keeps writing and verifying files.
//!
//!   cargo test -p twinfiler --test pair
//!
//! - `restart`: one node on loopback, kill -9 and clean restarts (no root needed).
//! - `takeover`: an HA pair in network namespaces (node a, node b, client on a bridge; the
//!   interconnect on its own link): graceful takeover asked at the victim and at the partner,
//!   a hung victim (countdown expires), kill -9, interconnect cut, giveback.
//!   Needs root and `ip` (iproute2); skipped with a message otherwise. Whole node logs of a
//!   failing pair test are kept in $TMPDIR/twinfiler-pair-logs-<tag>/.

mod harness;
mod restart;
mod takeover;
