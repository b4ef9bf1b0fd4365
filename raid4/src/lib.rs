//! Disks on io_uring and RAID-4 groups.
//!
//! A [`Group`] is N data disks (2..=27) plus one parity disk. The file system above writes
//! whole stripes ([`Group::write_stripes`]; parity computed in memory, no read-modify-write)
//! and reads logical blocks ([`Group::read_blocks`]), which are verified against per-block
//! crc32c checksums and reconstructed from parity when a disk failed or a block is bad.
//! One failed disk leaves the group DEGRADED; [`Group::rebuild`] restores redundancy onto a
//! spare while IO continues; [`Group::scrub`] verifies and repairs everything. The on-disk
//! format is specified byte by byte in `docs/format.md`.

#![warn(missing_docs)]

pub mod assemble;
pub mod buf;
pub mod crc;
pub mod csum;
pub mod disk;
pub mod engine;
pub mod error;
mod group;
pub mod label;
pub mod layout;
mod locks;
mod progress;
pub mod rebuild;
pub mod scrub;
pub mod status;
pub mod xor;

pub use assemble::{AssembleConfig, CreateConfig, DiskSource};
pub use buf::AlignedBuf;
pub use disk::Fault;
pub use error::{DiskRef, Raid4Error};
pub use group::{Group, Tuning};
pub use layout::{Geometry, BLOCK_SIZE, DEPTH_DEFAULT, HEADER_BYTES};
pub use progress::ProgressStatus;
pub use rebuild::RebuildReport;
pub use scrub::ScrubReport;
pub use status::{DiskState, DiskStatus, GroupState, GroupStatus};
