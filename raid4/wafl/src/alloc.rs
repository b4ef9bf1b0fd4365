//! Block allocation: the persisted free map and the in-memory allocation map.
//!
//! `persisted` has a bit set for every block that a tree root or a snapshot references (and
//! the superblock stripes): it is what a CP writes. `inuse` adds the blocks of the free map
//! itself and of the snapshot table, and keeps blocks freed by a CP in use until that CP's
//! superblock is durable. The CP allocates whole free stripes from `inuse` only.

use std::collections::BTreeSet;

use crate::codec::BlockPtr;
use crate::error::FsError;
use crate::store::BLOCK_SIZE;

/// Blocks described by one free-map chunk (one 4 KiB bitmap block).
pub const CHUNK_BLOCKS: u64 = (BLOCK_SIZE * 8) as u64;
/// Stripes 0 and 1 hold the two superblocks.
pub const SUPERBLOCK_STRIPES: u64 = 2;

/// A fixed-size bitmap with a count of set bits.
#[derive(Clone)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u64,
    ones: u64,
}

impl Bitmap {
    /// `len` clear bits.
    pub fn new(len: u64) -> Bitmap {
        Bitmap {
            words: vec![0; len.div_ceil(64) as usize],
            len,
            ones: 0,
        }
    }
    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Number of set bits.
    pub fn ones(&self) -> u64 {
        self.ones
    }
    /// Bit `i`.
    pub fn get(&self, i: u64) -> bool {
        assert!(i < self.len);
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Sets bit `i`; true if it changed.
    pub fn set(&mut self, i: u64) -> bool {
        assert!(i < self.len, "block {i} beyond {}", self.len);
        let w = &mut self.words[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        let changed = *w & m == 0;
        *w |= m;
        self.ones += changed as u64;
        changed
    }
    /// Clears bit `i`; true if it changed.
    pub fn clear(&mut self, i: u64) -> bool {
        assert!(i < self.len, "block {i} beyond {}", self.len);
        let w = &mut self.words[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        let changed = *w & m != 0;
        *w &= !m;
        self.ones -= changed as u64;
        changed
    }
    /// Whether bits `from..from+n` are all clear.
    pub fn all_clear(&self, from: u64, n: u64) -> bool {
        (from..from + n).all(|i| !self.get(i))
    }
    /// The 4 KiB on-disk image of chunk `c`.
    pub fn chunk_bytes(&self, c: u64) -> Vec<u8> {
        let words_per_chunk = (CHUNK_BLOCKS / 64) as usize;
        let start = c as usize * words_per_chunk;
        let mut out = Vec::with_capacity(BLOCK_SIZE);
        for i in start..start + words_per_chunk {
            out.extend_from_slice(&self.words.get(i).copied().unwrap_or(0).to_le_bytes());
        }
        out
    }
    /// Loads chunk `c` from its on-disk image; bits beyond `len` must be clear.
    pub fn load_chunk(&mut self, c: u64, bytes: &[u8]) -> Result<(), FsError> {
        let words_per_chunk = (CHUNK_BLOCKS / 64) as usize;
        for (k, w8) in bytes.chunks_exact(8).enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(w8);
            let v = u64::from_le_bytes(a);
            let i = c as usize * words_per_chunk + k;
            if i >= self.words.len() {
                if v != 0 {
                    return Err(FsError::Corrupt(format!(
                        "free map chunk {c}: bits beyond the end"
                    )));
                }
                continue;
            }
            let valid = self.len - i as u64 * 64;
            if valid < 64 && v >> valid != 0 {
                return Err(FsError::Corrupt(format!(
                    "free map chunk {c}: bits beyond the end"
                )));
            }
            self.ones += v.count_ones() as u64;
            self.ones -= self.words[i].count_ones() as u64;
            self.words[i] = v;
        }
        Ok(())
    }
}

/// The allocator state owned by the CP.
pub struct Alloc {
    /// Data blocks per stripe.
    pub sdb: u64,
    /// Stripes.
    pub stripes: u64,
    /// Blocks referenced by roots and snapshots (written to disk).
    pub persisted: Bitmap,
    /// Blocks not available for allocation.
    pub inuse: Bitmap,
    /// Chunks of `persisted` changed since the last CP.
    dirty_chunks: BTreeSet<u64>,
    /// The chunk last added to `dirty_chunks` (allocation marks runs of blocks in one chunk).
    last_dirty_chunk: Option<u64>,
    /// Where each chunk of the committed free map is.
    pub chunk_ptrs: Vec<Option<BlockPtr>>,
    cursor: u64,
}

impl Alloc {
    /// An empty map for a store; the superblock stripes are marked used.
    pub fn new(sdb: u64, stripes: u64) -> Alloc {
        let total = sdb * stripes;
        let mut a = Alloc {
            sdb,
            stripes,
            persisted: Bitmap::new(total),
            inuse: Bitmap::new(total),
            dirty_chunks: BTreeSet::new(),
            last_dirty_chunk: None,
            chunk_ptrs: vec![None; total.div_ceil(CHUNK_BLOCKS) as usize],
            cursor: SUPERBLOCK_STRIPES,
        };
        for b in 0..SUPERBLOCK_STRIPES * sdb {
            a.mark_used(b, true);
        }
        a
    }

    /// Number of free-map chunks.
    pub fn chunks(&self) -> u64 {
        self.chunk_ptrs.len() as u64
    }

    /// Marks a block allocated (and referenced, if `persist`).
    pub fn mark_used(&mut self, b: u64, persist: bool) {
        self.inuse.set(b);
        if persist && self.persisted.set(b) {
            self.note_dirty(b / CHUNK_BLOCKS);
        }
    }

    /// Drops the reference to a block in the persisted map; true if it was referenced.
    /// The block stays in `inuse` until `release` after the CP commits.
    pub fn unreference(&mut self, b: u64) -> bool {
        let changed = self.persisted.clear(b);
        if changed {
            self.note_dirty(b / CHUNK_BLOCKS);
        }
        changed
    }

    fn note_dirty(&mut self, c: u64) {
        if self.last_dirty_chunk != Some(c) {
            self.dirty_chunks.insert(c);
            self.last_dirty_chunk = Some(c);
        }
    }

    /// The chunks changed since the last call, in order.
    pub fn take_dirty_chunks(&mut self) -> Vec<u64> {
        self.last_dirty_chunk = None;
        std::mem::take(&mut self.dirty_chunks).into_iter().collect()
    }

    /// Makes a block allocatable again (after the CP that freed it committed).
    pub fn release(&mut self, b: u64) {
        if !self.persisted.get(b) {
            self.inuse.clear(b);
        }
    }

    /// The next stripe with every block free, searching round-robin from the last one.
    pub fn next_free_stripe(&mut self) -> Result<u64, FsError> {
        let usable = self.stripes - SUPERBLOCK_STRIPES;
        for _ in 0..usable {
            let s = self.cursor;
            self.cursor = if s + 1 >= self.stripes {
                SUPERBLOCK_STRIPES
            } else {
                s + 1
            };
            if self.inuse.all_clear(s * self.sdb, self.sdb) {
                return Ok(s);
            }
        }
        Err(FsError::NoSpace)
    }

    /// Free blocks (allocatable now).
    pub fn free_blocks(&self) -> u64 {
        self.inuse.len() - self.inuse.ones()
    }
}
