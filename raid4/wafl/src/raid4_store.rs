//! `StripeStore` for a RAID-4 group of the `raid4` crate: the file system's real disks.
//!
//! The group's methods are async (completions come from its io_uring thread); the file
//! system calls them from its own threads (the CP, the op path), so each call is driven to
//! completion with `futures::executor::block_on`. Do not call the file system from inside a
//! single-threaded async executor that the group's futures would need.
//!
//! The CP hands over its batches in 4 KiB-aligned buffers (`raid4::AlignedBuf`), so the
//! group writes their rows to the disks without copying them into its registered buffers.

use crate::store::{StoreError, StripeStore, BLOCK_SIZE};

const _: () = assert!(
    raid4::BLOCK_SIZE == BLOCK_SIZE,
    "raid4 and wafl block sizes differ"
);

fn io(e: raid4::Raid4Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl StripeStore for raid4::Group {
    fn stripe_data_blocks(&self) -> usize {
        raid4::Group::stripe_data_blocks(self)
    }
    fn stripe_count(&self) -> u64 {
        raid4::Group::stripe_count(self)
    }
    fn write_stripes(&self, first_stripe: u64, data: &[u8]) -> Result<(), StoreError> {
        futures::executor::block_on(raid4::Group::write_stripes(self, first_stripe, data))
            .map_err(io)
    }
    fn read_blocks(&self, block: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        futures::executor::block_on(raid4::Group::read_blocks(self, block, buf)).map_err(io)
    }
    fn flush(&self) -> Result<(), StoreError> {
        futures::executor::block_on(raid4::Group::flush(self)).map_err(io)
    }
}
