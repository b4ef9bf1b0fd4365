//! Integration tests of the twinfiler node with real clients on loopback: one test binary
//! (one link of the whole node) with a module per area.
//!
//! Needs: the Debian package `libnfs-utils` (`nfs-cp`, `nfs-ls`, `nfs-cat`; the libnfs tests
//! skip loudly without it), /dev/shm for NVRAM regions, io_uring for the disks.
//! Longer runs: `TWINFILER_LONG_TESTS=1`.

mod browser;
mod cli_takeover;
mod client;
mod common;
mod config;
mod console;
mod libnfs;
mod lifecycle;
mod long;
mod mirror;
mod pair;
mod procedures;
mod restart;
