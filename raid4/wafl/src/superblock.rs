//! The superblock: the root of everything, two copies in stripes 0 and 1, alternating by
//! generation. The valid copy with the highest generation is the file system.

use crate::codec::{BlockPtr, DecodeError, Reader, Writer};
use crate::store::BLOCK_SIZE;

/// Superblock magic.
pub const SUPER_MAGIC: &[u8; 8] = b"WAFLSUPR";
/// Format version.
pub const FORMAT_VERSION: u32 = 1;
/// Pointer slots for free-map index blocks.
pub const FMAP_INDEX_PTRS_MAX: usize = 64;
/// Pointer slots for snapshot-table blocks.
pub const SNAPTABLE_PTRS_MAX: usize = 16;
/// Offset of the fixed pointer arrays.
const PTR_ARRAYS_OFFSET: usize = 128;
/// Offset of the checksum: the last 4 bytes of the block.
const CSUM_OFFSET: usize = BLOCK_SIZE - 4;

/// A byte string stored in whole blocks (free-map index, snapshot table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blob {
    /// Length in bytes.
    pub len: u32,
    /// Blocks, in order.
    pub ptrs: Vec<BlockPtr>,
}

/// The superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// CP generation.
    pub gen: u64,
    /// Highest operation sequence number included.
    pub applied_seq: u64,
    /// Time of the CP, ns.
    pub time_ns: u64,
    /// Blocks in the store.
    pub total_blocks: u64,
    /// Data blocks per stripe.
    pub stripe_data_blocks: u32,
    /// Next snapshot id.
    pub next_snap_id: u32,
    /// Next inode number.
    pub next_ino: u64,
    /// Next inode generation.
    pub next_gen: u64,
    /// Blocks set in the persisted free map.
    pub used_blocks: u64,
    /// Root of the object tree.
    pub root: BlockPtr,
    /// Free-map chunks.
    pub fmap_chunks: u32,
    /// File-system id (random at mkfs).
    pub fs_id: u64,
    /// Free-map index: one `BlockPtr` per chunk.
    pub fmap_index: Blob,
    /// Snapshot table.
    pub snaptable: Blob,
}

impl Superblock {
    /// Encodes into one block, checksum last.
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.fmap_index.ptrs.len() <= FMAP_INDEX_PTRS_MAX);
        assert!(self.snaptable.ptrs.len() <= SNAPTABLE_PTRS_MAX);
        let mut w = Writer::new();
        w.raw(SUPER_MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32(BLOCK_SIZE as u32);
        w.u64(self.gen);
        w.u64(self.applied_seq);
        w.u64(self.time_ns);
        w.u64(self.total_blocks);
        w.u32(self.stripe_data_blocks);
        w.u32(self.next_snap_id);
        w.u64(self.next_ino);
        w.u64(self.next_gen);
        w.u64(self.used_blocks);
        w.ptr(&self.root);
        w.u32(self.fmap_chunks);
        w.u32(self.fmap_index.len);
        w.u16(self.fmap_index.ptrs.len() as u16);
        w.u16(self.snaptable.ptrs.len() as u16);
        w.u32(self.snaptable.len);
        w.u64(self.fs_id);
        w.buf.resize(PTR_ARRAYS_OFFSET, 0);
        for i in 0..FMAP_INDEX_PTRS_MAX {
            w.ptr(&self.fmap_index.ptrs.get(i).copied().unwrap_or(ZERO_PTR));
        }
        for i in 0..SNAPTABLE_PTRS_MAX {
            w.ptr(&self.snaptable.ptrs.get(i).copied().unwrap_or(ZERO_PTR));
        }
        w.buf.resize(CSUM_OFFSET, 0);
        let c = crc32c::crc32c(&w.buf);
        w.u32(c);
        assert_eq!(w.buf.len(), BLOCK_SIZE);
        w.buf
    }

    /// Decodes and validates a superblock block.
    pub fn decode(b: &[u8]) -> Result<Superblock, DecodeError> {
        if b.len() != BLOCK_SIZE {
            return Err(DecodeError("superblock of wrong size".into()));
        }
        let mut c = [0u8; 4];
        c.copy_from_slice(&b[CSUM_OFFSET..]);
        if crc32c::crc32c(&b[..CSUM_OFFSET]) != u32::from_le_bytes(c) {
            return Err(DecodeError("superblock checksum mismatch".into()));
        }
        let mut r = Reader::new(b);
        if r.take(8)? != SUPER_MAGIC {
            return Err(DecodeError("not a superblock (magic)".into()));
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(DecodeError(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            )));
        }
        let bs = r.u32()?;
        if bs as usize != BLOCK_SIZE {
            return Err(DecodeError(format!("block size {bs}")));
        }
        let gen = r.u64()?;
        let applied_seq = r.u64()?;
        let time_ns = r.u64()?;
        let total_blocks = r.u64()?;
        let stripe_data_blocks = r.u32()?;
        let next_snap_id = r.u32()?;
        let next_ino = r.u64()?;
        let next_gen = r.u64()?;
        let used_blocks = r.u64()?;
        let root = r.ptr()?;
        let fmap_chunks = r.u32()?;
        let fmap_len = r.u32()?;
        let fmap_n = r.u16()? as usize;
        let snap_n = r.u16()? as usize;
        let snap_len = r.u32()?;
        let fs_id = r.u64()?;
        if fmap_n > FMAP_INDEX_PTRS_MAX || snap_n > SNAPTABLE_PTRS_MAX {
            return Err(DecodeError("superblock pointer counts out of range".into()));
        }
        if fmap_len as usize > fmap_n * BLOCK_SIZE || snap_len as usize > snap_n * BLOCK_SIZE {
            return Err(DecodeError("superblock blob lengths out of range".into()));
        }
        let mut r = Reader::new(&b[PTR_ARRAYS_OFFSET..CSUM_OFFSET]);
        let all_f = (0..FMAP_INDEX_PTRS_MAX)
            .map(|_| r.ptr())
            .collect::<Result<Vec<_>, _>>()?;
        let all_s = (0..SNAPTABLE_PTRS_MAX)
            .map(|_| r.ptr())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Superblock {
            gen,
            applied_seq,
            time_ns,
            total_blocks,
            stripe_data_blocks,
            next_snap_id,
            next_ino,
            next_gen,
            used_blocks,
            root,
            fmap_chunks,
            fs_id,
            fmap_index: Blob {
                len: fmap_len,
                ptrs: all_f[..fmap_n].to_vec(),
            },
            snaptable: Blob {
                len: snap_len,
                ptrs: all_s[..snap_n].to_vec(),
            },
        })
    }
}

const ZERO_PTR: BlockPtr = BlockPtr {
    addr: 0,
    birth: 0,
    csum: 0,
};
