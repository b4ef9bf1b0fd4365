//! The data-block cache: clean, verified 4 KiB file data blocks kept in memory so a READ of
//! recently read or written data does not go to the disks.
//!
//! Filled on two paths: a read from disk (after the block's checksum matched its pointer)
//! and a CP (the blocks it just wrote from memory; they are clean from then on). Served
//! from memory after that without checking again: the bytes were verified, or they are the
//! bytes the checksum was computed from.
//!
//! Keying. An entry is found by block address and only returned if the pointer it is asked
//! for has the same birth generation and checksum as the one it was filled for. Blocks are
//! never overwritten in place while a tree or snapshot refers to them, but a freed address
//! is reused by a later CP, and every CP writes under a new, higher generation (a block
//! freed by the CP of generation G is released only after G commits, so its next content
//! is born at G+1 or later). So an entry of the old content can never match a pointer to
//! the new content, whatever path freed the block, with no coordination between the CP and
//! readers. The CP also drops the entries of the blocks it releases ([`BlockCache::forget`]),
//! but only to give the memory back early; correctness does not depend on it. Keying by
//! address alone (one entry per address) keeps the bound simple: a reused address
//! replaces its stale entry instead of adding a second one.
//!
//! Memory is bounded by `bytes_max` (block payloads; each entry has some 80 bytes of
//! bookkeeping on top). Eviction is CLOCK per shard: a hit sets the entry's reference bit,
//! the hand clears bits until it finds an unreferenced entry, which is replaced; each
//! insertion clears at most one pass of bits, and in amortised terms O(1). Shards (by runs
//! of consecutive block addresses) each have their own lock, so concurrent READs rarely
//! wait on each other; a lock is held only for a map lookup and a `Bytes` clone (a
//! reference count), never during IO.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::codec::BlockPtr;
use crate::store::BLOCK_SIZE;

/// Shards of the cache (locks). A power of two well above the cores of a filer head, so
/// two READs rarely pick the same shard; small enough that the bound per shard stays large.
pub const CACHE_SHARDS_MAX: usize = 64;

/// Default bound of cached data: 1 GiB. A fixed bound rather than a fraction of RAM: the
/// memory a node uses stays predictable on a head that also holds the NVRAM log, the tree
/// nodes and the network buffers, and several file systems in one process (tests, a takeover
/// that mounts the partner's aggregate) do not each claim a share of the machine. It is
/// filled lazily, so an idle file system costs nothing. Set it in `FsConfig` from the
/// node's memory in production; 0 disables the cache.
pub const CACHE_BYTES_MAX_DEFAULT: u64 = 1 << 30;

/// Counters of the data-block cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups served from memory.
    pub hits: u64,
    /// Lookups that went to the disks (including stale entries of a reused address).
    pub misses: u64,
    /// Blocks added (from disk reads and CPs).
    pub inserts: u64,
    /// Blocks dropped to stay within the bound.
    pub evictions: u64,
    /// Blocks dropped because the CP freed their address.
    pub forgotten: u64,
    /// Blocks held now.
    pub blocks: u64,
    /// Payload bytes held now.
    pub bytes: u64,
    /// Bound of `bytes`.
    pub bytes_max: u64,
}

/// Consecutive block addresses share a shard in runs of this many: a sequential READ
/// finds its blocks in one shard, next to each other (see [`AddrHasher`]).
const SHARD_RUN_BLOCKS: u64 = 64;
/// Runs a shard holds at least (a smaller cache has fewer shards): a file a small cache
/// can hold must not compete for one shard's share while the other shards sit empty.
const SHARD_RUNS_MIN: u64 = 4;

/// Hashes a block address so that consecutive addresses of a shard land in consecutive
/// buckets. A cached sequential READ looks up hundreds of consecutive addresses, and with
/// a scattering hash each lookup missed the CPU caches two or three times (the profile of
/// a cached 1 MiB READ showed the lookup as the node's largest user-space cost). The low
/// bits (the bucket) are the address without the bits that pick its shard, so a shard's
/// addresses fill its buckets densely; the top 7 bits (hashbrown's tag on 64-bit targets)
/// are a multiplicative hash, so tags still tell keys apart. The keys come from our own
/// tree, not from clients, so the DoS resistance of the default SipHash buys nothing.
struct AddrHasher {
    shards: u64,
    state: u64,
}

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.state
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.state = (self.state.rotate_left(8) ^ b as u64).wrapping_mul(ADDR_HASH_MULTIPLIER);
        }
    }
    fn write_u64(&mut self, v: u64) {
        let run = v / SHARD_RUN_BLOCKS;
        let dense = (run / self.shards) * SHARD_RUN_BLOCKS + v % SHARD_RUN_BLOCKS;
        let tag = v.wrapping_mul(ADDR_HASH_MULTIPLIER) & TAG_BITS;
        self.state = tag | (dense & !TAG_BITS);
    }
}

/// Builds the [`AddrHasher`] of a cache with `shards` shards.
#[derive(Clone, Copy)]
struct AddrHashBuilder {
    shards: u64,
}

impl BuildHasher for AddrHashBuilder {
    type Hasher = AddrHasher;
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher {
            shards: self.shards,
            state: 0,
        }
    }
}

/// 2^64 divided by the golden ratio, odd: multiplicative (Fibonacci) hashing.
const ADDR_HASH_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;
/// The bits hashbrown takes its tag from.
const TAG_BITS: u64 = 0xFE00_0000_0000_0000;

/// One cached block.
struct Entry {
    addr: u64,
    birth: u64,
    csum: u32,
    referenced: bool,
    data: Bytes,
}

/// One lock's worth of the cache.
struct Shard {
    /// Address to index in `entries`.
    map: HashMap<u64, usize, AddrHashBuilder>,
    /// The CLOCK ring.
    entries: Vec<Entry>,
    /// Next candidate for eviction.
    hand: usize,
    hits: u64,
    misses: u64,
    inserts: u64,
    evictions: u64,
    forgotten: u64,
}

/// A bounded, sharded cache of verified data blocks (see the module docs).
pub struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    /// Entries per shard, at most.
    shard_blocks_max: usize,
    bytes_max: u64,
}

impl BlockCache {
    /// A cache of at most `bytes_max` bytes of blocks; 0 (or less than one block) disables it.
    pub fn new(bytes_max: u64) -> BlockCache {
        let blocks_max = (bytes_max / BLOCK_SIZE as u64).min(usize::MAX as u64) as usize;
        let shard_count =
            (blocks_max / (SHARD_RUNS_MIN * SHARD_RUN_BLOCKS) as usize).clamp(1, CACHE_SHARDS_MAX);
        let shard_blocks_max = blocks_max / shard_count;
        BlockCache {
            shards: (0..shard_count)
                .map(|_| Mutex::new(Shard::new(shard_count as u64)))
                .collect(),
            shard_blocks_max,
            bytes_max,
        }
    }

    /// Whether blocks are kept at all.
    pub fn enabled(&self) -> bool {
        self.shard_blocks_max > 0
    }

    fn shard(&self, addr: u64) -> MutexGuard<'_, Shard> {
        let i = (addr / SHARD_RUN_BLOCKS % self.shards.len() as u64) as usize;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The block `ptr` points to, if cached for exactly that pointer (address, birth and
    /// checksum).
    pub fn get(&self, ptr: &BlockPtr) -> Option<Bytes> {
        if !self.enabled() {
            return None;
        }
        let mut s = self.shard(ptr.addr);
        let found = s.map.get(&ptr.addr).copied();
        match found {
            Some(i) if s.entries[i].birth == ptr.birth && s.entries[i].csum == ptr.csum => {
                s.hits += 1;
                let e = &mut s.entries[i];
                e.referenced = true;
                Some(e.data.clone())
            }
            _ => {
                s.misses += 1;
                None
            }
        }
    }

    /// Keeps `data`, the verified content of the block at `ptr` (exactly one block).
    pub fn insert(&self, ptr: &BlockPtr, data: Bytes) {
        assert_eq!(data.len(), BLOCK_SIZE, "the cache holds whole blocks");
        if !self.enabled() {
            return;
        }
        let entry = Entry {
            addr: ptr.addr,
            birth: ptr.birth,
            csum: ptr.csum,
            referenced: false,
            data,
        };
        let max = self.shard_blocks_max;
        let mut s = self.shard(ptr.addr);
        s.inserts += 1;
        if let Some(&i) = s.map.get(&ptr.addr) {
            // The same block again, or a reused address: the newest content wins.
            s.entries[i] = entry;
            return;
        }
        if s.entries.len() < max {
            let i = s.entries.len();
            s.entries.push(entry);
            s.map.insert(ptr.addr, i);
            return;
        }
        let victim = s.clock_victim();
        let old = s.entries[victim].addr;
        s.map.remove(&old);
        s.entries[victim] = entry;
        s.map.insert(ptr.addr, victim);
        s.evictions += 1;
        debug_assert_eq!(s.map.len(), s.entries.len());
    }

    /// Drops the block at `addr` (the CP freed it); a no-op if it is not cached.
    pub fn forget(&self, addr: u64) {
        if !self.enabled() {
            return;
        }
        let mut s = self.shard(addr);
        let Some(i) = s.map.remove(&addr) else {
            return;
        };
        s.entries.swap_remove(i);
        if i < s.entries.len() {
            let moved = s.entries[i].addr;
            s.map.insert(moved, i);
        }
        if s.hand >= s.entries.len() {
            s.hand = 0;
        }
        s.forgotten += 1;
        debug_assert_eq!(s.map.len(), s.entries.len());
    }

    /// Counters summed over the shards.
    pub fn stats(&self) -> CacheStats {
        let mut st = CacheStats {
            bytes_max: self.bytes_max,
            ..CacheStats::default()
        };
        for m in &self.shards {
            let s = m.lock().unwrap_or_else(|e| e.into_inner());
            st.hits += s.hits;
            st.misses += s.misses;
            st.inserts += s.inserts;
            st.evictions += s.evictions;
            st.forgotten += s.forgotten;
            st.blocks += s.entries.len() as u64;
        }
        st.bytes = st.blocks * BLOCK_SIZE as u64;
        assert!(st.bytes <= self.bytes_max, "cache over its bound");
        st
    }
}

impl Shard {
    fn new(shards: u64) -> Shard {
        Shard {
            map: HashMap::with_hasher(AddrHashBuilder { shards }),
            entries: Vec::new(),
            hand: 0,
            hits: 0,
            misses: 0,
            inserts: 0,
            evictions: 0,
            forgotten: 0,
        }
    }

    /// The index of the entry to replace: the first unreferenced one from the hand on,
    /// clearing reference bits on the way (at most one full turn, then the hand's entry).
    fn clock_victim(&mut self) -> usize {
        let n = self.entries.len();
        assert!(n > 0, "eviction from an empty shard");
        for _ in 0..n {
            let i = self.hand;
            self.hand = (self.hand + 1) % n;
            if !self.entries[i].referenced {
                return i;
            }
            self.entries[i].referenced = false;
        }
        // Every bit was set and is now clear: the hand's entry goes.
        let i = self.hand;
        self.hand = (self.hand + 1) % n;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr(addr: u64, birth: u64, data: &[u8]) -> BlockPtr {
        BlockPtr {
            addr,
            birth,
            csum: crate::codec::block_checksum(addr, data),
        }
    }

    fn block(fill: u8) -> Bytes {
        Bytes::from(vec![fill; BLOCK_SIZE])
    }

    #[test]
    fn hit_returns_the_bytes_inserted() {
        let c = BlockCache::new(1 << 20);
        let d = block(7);
        let p = ptr(100, 3, &d);
        assert!(c.get(&p).is_none());
        c.insert(&p, d.clone());
        assert_eq!(c.get(&p).as_deref(), Some(&*d));
        let st = c.stats();
        assert_eq!((st.hits, st.misses, st.blocks), (1, 1, 1));
    }

    #[test]
    fn a_reused_address_never_returns_the_old_content() {
        let c = BlockCache::new(1 << 20);
        let old = block(1);
        c.insert(&ptr(42, 5, &old), old);
        // The address was freed without `forget` and rewritten by a later CP.
        let new = block(2);
        let p_new = ptr(42, 9, &new);
        assert!(c.get(&p_new).is_none(), "stale entry served");
        c.insert(&p_new, new.clone());
        assert_eq!(c.get(&p_new).as_deref(), Some(&*new));
        assert!(c.get(&ptr(42, 5, &block(1))).is_none());
        assert_eq!(c.stats().blocks, 1);
    }

    #[test]
    fn memory_stays_within_the_bound_and_hot_blocks_survive() {
        // The most shards, each of the fewest blocks; every block below goes to shard 0.
        let per_shard = SHARD_RUNS_MIN * SHARD_RUN_BLOCKS;
        let stride = SHARD_RUN_BLOCKS * CACHE_SHARDS_MAX as u64;
        let bytes_max = per_shard * CACHE_SHARDS_MAX as u64 * BLOCK_SIZE as u64;
        let c = BlockCache::new(bytes_max);
        let hot = block(9);
        let hot_ptr = ptr(0, 1, &hot);
        c.insert(&hot_ptr, hot);
        for a in 1..10_000u64 {
            assert!(c.get(&hot_ptr).is_some(), "hot block evicted at {a}");
            let d = block(a as u8);
            c.insert(&ptr(a * stride, 1, &d), d);
            assert!(c.stats().bytes <= bytes_max);
        }
        let st = c.stats();
        assert_eq!(st.blocks, per_shard);
        assert!(st.evictions > 9_000 - per_shard);
    }

    #[test]
    fn forget_drops_and_keeps_the_ring_consistent() {
        let c = BlockCache::new(4 * BLOCK_SIZE as u64 * CACHE_SHARDS_MAX as u64);
        let ptrs: Vec<_> = (0..4u64)
            .map(|i| {
                let d = block(i as u8);
                let p = ptr(i * SHARD_RUN_BLOCKS * CACHE_SHARDS_MAX as u64, 1, &d);
                c.insert(&p, d);
                p
            })
            .collect();
        c.forget(ptrs[1].addr);
        c.forget(12345); // not cached
        assert!(c.get(&ptrs[1]).is_none());
        for (i, p) in ptrs.iter().enumerate().filter(|(i, _)| *i != 1) {
            assert_eq!(c.get(p).map(|d| d[0]), Some(i as u8));
        }
        assert_eq!(c.stats().forgotten, 1);
    }

    #[test]
    fn a_run_of_consecutive_blocks_that_fits_stays_whole() {
        // Caches of every shard layout (one shard up to the most): a file of half the
        // cache's size, written at consecutive addresses, is all there when read back.
        for blocks in [1u64, 3, 10, 100, 256, 1_000, 5_000, 20_000, 100_000] {
            let c = BlockCache::new(blocks * BLOCK_SIZE as u64);
            let n = (blocks / 2).max(1);
            let base = 1_000_003;
            let content = |a: u64| Bytes::from((a as u32).to_le_bytes().repeat(BLOCK_SIZE / 4));
            for a in base..base + n {
                c.insert(&ptr(a, 1, &content(a)), content(a));
            }
            for a in base..base + n {
                let got = c.get(&ptr(a, 1, &content(a)));
                assert_eq!(
                    got,
                    Some(content(a)),
                    "address {a}, cache of {blocks} blocks"
                );
            }
            assert_eq!(c.stats().evictions, 0, "cache of {blocks} blocks");
        }
    }

    #[test]
    fn zero_bytes_disables() {
        let c = BlockCache::new(0);
        let d = block(1);
        let p = ptr(1, 1, &d);
        c.insert(&p, d);
        assert!(c.get(&p).is_none());
        assert_eq!(c.stats().blocks, 0);
    }
}
