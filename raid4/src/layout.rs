//! On-disk geometry: the header area, chunks, stripes and the logical block map.
//! `docs/format.md` is the prose version of this file.

/// Bytes per block, everywhere.
pub const BLOCK_SIZE: usize = 4096;
/// The header area at the start of every disk: labels and reserved areas. Data starts after.
pub const HEADER_BYTES: u64 = 1 << 20;
/// [`HEADER_BYTES`] in blocks.
pub const HEADER_BLOCKS: u64 = HEADER_BYTES / BLOCK_SIZE as u64;
/// Blocks holding the two label copies (A, B).
pub const LABEL_BLOCKS: [u64; 2] = [0, 1];
/// First block of the area reserved for the cluster's on-disk reservation block.
pub const RESERVATION_AREA_BLOCK: u64 = 8;
/// Length of the reservation area in blocks (32 KiB).
pub const RESERVATION_AREA_BLOCKS: u64 = 8;
/// First block of the area reserved for the cluster's heartbeat mailbox.
pub const HEARTBEAT_MAILBOX_BLOCK: u64 = 16;
/// Length of the heartbeat mailbox in blocks (256 KiB).
pub const HEARTBEAT_MAILBOX_BLOCKS: u64 = 64;
/// Fewest data disks in a group.
pub const DATA_DISKS_MIN: usize = 2;
/// Most data disks in a group (the label's member table has room for 28 positions).
pub const DATA_DISKS_MAX: usize = 27;
/// Positions in the label's member tables (data disks + parity).
pub const POSITIONS_MAX: usize = DATA_DISKS_MAX + 1;
/// Smallest chunk depth (one data block + the checksum block).
pub const DEPTH_MIN: usize = 2;
/// Largest chunk depth: the checksum block holds at most this many - 1 crcs (and 1 MiB IOs).
pub const DEPTH_MAX: usize = 256;
/// Default chunk depth: 128 KiB per disk per stripe, 31 data blocks + 1 checksum block.
pub const DEPTH_DEFAULT: usize = 32;

// The reserved areas fit in the header, without overlap.
const _: () = assert!(RESERVATION_AREA_BLOCK + RESERVATION_AREA_BLOCKS <= HEARTBEAT_MAILBOX_BLOCK);
const _: () = assert!(HEARTBEAT_MAILBOX_BLOCK + HEARTBEAT_MAILBOX_BLOCKS <= HEADER_BLOCKS);
const _: () = assert!(LABEL_BLOCKS[1] < RESERVATION_AREA_BLOCK);

/// The shape of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// N, the number of data disks; parity is position N.
    pub data_disks: usize,
    /// Blocks per disk per stripe (data rows + 1 checksum block).
    pub depth: usize,
    /// Stripes usable for data.
    pub stripe_count: u64,
}

/// Where a logical block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Stripe number.
    pub stripe: u64,
    /// Data disk position.
    pub disk: usize,
    /// Row inside the chunk (0..rows).
    pub row: usize,
}

impl Geometry {
    /// Checks the parameters are in range.
    pub fn validate(&self) -> Result<(), String> {
        if !(DATA_DISKS_MIN..=DATA_DISKS_MAX).contains(&self.data_disks) {
            return Err(format!(
                "{} data disks; a group has {DATA_DISKS_MIN}..={DATA_DISKS_MAX} data disks plus one parity disk",
                self.data_disks
            ));
        }
        if !(DEPTH_MIN..=DEPTH_MAX).contains(&self.depth) {
            return Err(format!(
                "depth {} outside {DEPTH_MIN}..={DEPTH_MAX}",
                self.depth
            ));
        }
        if self.stripe_count == 0 {
            return Err("the disks are too small for a single stripe".into());
        }
        Ok(())
    }

    /// Positions in the group: N data + 1 parity.
    pub fn positions(&self) -> usize {
        self.data_disks + 1
    }

    /// Position of the parity disk.
    pub fn parity(&self) -> usize {
        self.data_disks
    }

    /// Data rows per chunk (the last block of a chunk is its checksum block).
    pub fn rows(&self) -> usize {
        self.depth - 1
    }

    /// Bytes per chunk (one disk's part of one stripe).
    pub fn chunk_bytes(&self) -> usize {
        self.depth * BLOCK_SIZE
    }

    /// Bytes of data rows per chunk.
    pub fn chunk_data_bytes(&self) -> usize {
        self.rows() * BLOCK_SIZE
    }

    /// Data blocks per stripe.
    pub fn stripe_data_blocks(&self) -> usize {
        self.data_disks * self.rows()
    }

    /// Data bytes per stripe.
    pub fn stripe_data_bytes(&self) -> usize {
        self.stripe_data_blocks() * BLOCK_SIZE
    }

    /// Logical data blocks in the group.
    pub fn total_blocks(&self) -> u64 {
        self.stripe_count * self.stripe_data_blocks() as u64
    }

    /// Disk byte offset of `stripe`'s chunk (same on every disk).
    pub fn chunk_offset(&self, stripe: u64) -> u64 {
        HEADER_BYTES + stripe * self.chunk_bytes() as u64
    }

    /// Where logical block `block` lives. Blocks fill a stripe disk by disk, so consecutive
    /// blocks are contiguous on one disk (large sequential IOs).
    pub fn locate(&self, block: u64) -> Location {
        let sdb = self.stripe_data_blocks() as u64;
        let idx = (block % sdb) as usize;
        Location {
            stripe: block / sdb,
            disk: idx / self.rows(),
            row: idx % self.rows(),
        }
    }

    /// Stripes that fit on a disk of `size_bytes` with chunks of `depth` blocks.
    pub fn stripes_fitting(size_bytes: u64, depth: usize) -> u64 {
        size_bytes.saturating_sub(HEADER_BYTES) / (depth * BLOCK_SIZE) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_is_disk_major_within_a_stripe() {
        let g = Geometry {
            data_disks: 3,
            depth: 4,
            stripe_count: 10,
        };
        assert_eq!(g.stripe_data_blocks(), 9);
        assert_eq!(
            g.locate(0),
            Location {
                stripe: 0,
                disk: 0,
                row: 0
            }
        );
        assert_eq!(
            g.locate(2),
            Location {
                stripe: 0,
                disk: 0,
                row: 2
            }
        );
        assert_eq!(
            g.locate(3),
            Location {
                stripe: 0,
                disk: 1,
                row: 0
            }
        );
        assert_eq!(
            g.locate(9 + 8),
            Location {
                stripe: 1,
                disk: 2,
                row: 2
            }
        );
        assert_eq!(g.chunk_offset(1), HEADER_BYTES + 4 * 4096);
    }
}
