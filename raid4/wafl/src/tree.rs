//! The copy-on-write B+tree that holds every object of the file system.
//!
//! Nodes live in `Slot`s. A slot is either clean (written by a CP: it has a `BlockPtr`, its
//! content may be evicted and reloaded) or dirty (content only). A node is changed in place
//! only when its slot is dirty and not shared with a tree that a running CP or a snapshot
//! holds (`Arc::get_mut`); otherwise the path is copied. So freezing the tree for a CP is one
//! `Arc` clone, and the CP writes while new operations build the next tree.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crate::cache::BlockCache;
use crate::codec::{block_checksum, BlockPtr, DecodeError, Reader, Writer, PTR_BYTES};
use crate::error::FsError;
use crate::store::{StripeStore, BLOCK_SIZE};

/// Bytes of an encoded key.
pub const KEY_BYTES: usize = 17;
/// Bytes of the node header.
pub const NODE_HEADER_BYTES: usize = 16;
/// Per-item overhead in a leaf besides the value: key, value type, value length.
const LEAF_ITEM_OVERHEAD_BYTES: usize = KEY_BYTES + 3;
/// Bytes of one internal-node entry: key and child pointer.
const INTERNAL_ITEM_BYTES: usize = KEY_BYTES + PTR_BYTES;
/// Children per internal node.
pub const FANOUT_MAX: usize = (BLOCK_SIZE - NODE_HEADER_BYTES) / INTERNAL_ITEM_BYTES;
/// Largest value in a leaf: three items always fit in a node, so a split always works.
pub const ITEM_VALUE_BYTES_MAX: usize = 1300;
/// Tree height limit; anything deeper on disk is corruption (fanout 110 gives 110^8 leaves).
pub const TREE_LEVELS_MAX: u8 = 8;
/// Node magic.
const NODE_MAGIC: &[u8; 4] = b"WNOD";

/// Key of an item: object (inode number), item kind, offset within the object.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct Key {
    /// Inode number.
    pub obj: u64,
    /// Item kind (`KIND_*` in `inode`).
    pub kind: u8,
    /// Kind-specific: entry id, name hash, block index.
    pub off: u64,
}

impl Key {
    /// Smallest key.
    pub const MIN: Key = Key {
        obj: 0,
        kind: 0,
        off: 0,
    };
    /// A key.
    pub const fn new(obj: u64, kind: u8, off: u64) -> Key {
        Key { obj, kind, off }
    }
    fn encode(&self, w: &mut Writer) {
        w.u64(self.obj);
        w.u8(self.kind);
        w.u64(self.off);
    }
    fn decode(r: &mut Reader) -> Result<Key, DecodeError> {
        Ok(Key {
            obj: r.u64()?,
            kind: r.u8()?,
            off: r.u64()?,
        })
    }
}

/// A leaf value: inline bytes, or a pointer to a 4 KiB data block.
#[derive(Clone)]
pub enum Value {
    /// Inline bytes (inode record, directory entry, name index).
    Bytes(Vec<u8>),
    /// A file data block.
    Data(Arc<Slot>),
}

impl Value {
    fn encoded_len(&self) -> usize {
        match self {
            Value::Bytes(b) => b.len(),
            Value::Data(_) => PTR_BYTES,
        }
    }
}

/// One tree node.
#[derive(Clone)]
pub enum Node {
    /// Items in key order.
    Leaf(Vec<(Key, Value)>),
    /// Children; `kids[i].0` is a lower bound of every key under child i.
    Internal {
        /// Height above the leaves (>= 1).
        level: u8,
        /// Lower bound and child.
        kids: Vec<(Key, Arc<Slot>)>,
    },
}

impl Node {
    /// Height above the leaves.
    pub fn level(&self) -> u8 {
        match self {
            Node::Leaf(_) => 0,
            Node::Internal { level, .. } => *level,
        }
    }
    fn len(&self) -> usize {
        match self {
            Node::Leaf(v) => v.len(),
            Node::Internal { kids, .. } => kids.len(),
        }
    }
    /// Encoded size in bytes.
    fn bytes(&self) -> usize {
        NODE_HEADER_BYTES
            + match self {
                Node::Leaf(v) => v
                    .iter()
                    .map(|(_, val)| LEAF_ITEM_OVERHEAD_BYTES + val.encoded_len())
                    .sum::<usize>(),
                Node::Internal { kids, .. } => kids.len() * INTERNAL_ITEM_BYTES,
            }
    }
}

/// What a slot holds in memory.
#[derive(Clone)]
pub enum Content {
    /// A tree node.
    Node(Arc<Node>),
    /// A 4 KiB file data block.
    Data(Bytes),
}

/// A place in the tree: a node or data block, in memory, on disk, or both.
pub struct Slot {
    ptr: OnceLock<BlockPtr>,
    content: Mutex<Option<Content>>,
}

impl Slot {
    /// A slot for a block on disk, loaded on first use.
    pub fn clean(ptr: BlockPtr) -> Arc<Slot> {
        let s = Slot {
            ptr: OnceLock::new(),
            content: Mutex::new(None),
        };
        let _ = s.ptr.set(ptr);
        Arc::new(s)
    }
    /// A new dirty node.
    pub fn dirty_node(node: Node) -> Arc<Slot> {
        Arc::new(Slot {
            ptr: OnceLock::new(),
            content: Mutex::new(Some(Content::Node(Arc::new(node)))),
        })
    }
    /// A new dirty data block (exactly `BLOCK_SIZE` bytes).
    pub fn dirty_data(data: Vec<u8>) -> Arc<Slot> {
        assert_eq!(data.len(), BLOCK_SIZE);
        Arc::new(Slot {
            ptr: OnceLock::new(),
            content: Mutex::new(Some(Content::Data(Bytes::from(data)))),
        })
    }
    /// Where the block is on disk, once a CP wrote it.
    pub fn ptr(&self) -> Option<BlockPtr> {
        self.ptr.get().copied()
    }
    /// Records where a CP wrote this slot (once).
    pub(crate) fn set_ptr(&self, p: BlockPtr) {
        let fresh = self.ptr.set(p).is_ok();
        assert!(fresh, "a slot is written by exactly one CP");
    }
    /// The in-memory content, if any (dirty slots always have it).
    pub(crate) fn content(&self) -> Option<Content> {
        self.content
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// Drops cached content of a clean slot (it is reloaded from disk on use).
    pub(crate) fn evict(&self) {
        if self.ptr.get().is_some() {
            *self.content.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
    /// After the CP that wrote this slot: takes the content out if it is a file data block
    /// (it moves to the data-block cache, which bounds it) and tells what the slot holds.
    /// One lock per slot: the CP runs this for every block it wrote.
    pub(crate) fn evict_data(&self) -> Written {
        let mut c = self.content.lock().unwrap_or_else(|e| e.into_inner());
        match (&*c, self.ptr.get()) {
            (Some(Content::Data(_)), Some(p)) => {
                let p = *p;
                match c.take() {
                    Some(Content::Data(d)) => Written::Data(p, d),
                    _ => unreachable!("matched as data above"),
                }
            }
            (Some(Content::Node(_)), _) => Written::Node,
            _ => Written::Other,
        }
    }
    /// The node in this slot, read and verified from disk if not in memory.
    pub fn node(self: &Arc<Self>, io: &Io) -> Result<Arc<Node>, FsError> {
        let mut c = self.content.lock().unwrap_or_else(|e| e.into_inner());
        match &*c {
            Some(Content::Node(n)) => return Ok(n.clone()),
            Some(Content::Data(_)) => {
                return Err(FsError::Corrupt("data block used as node".into()))
            }
            None => {}
        }
        let ptr = self
            .ptr
            .get()
            .ok_or_else(|| FsError::Corrupt("slot without content or pointer".into()))?;
        let buf = io.read_verified(ptr, "tree node")?;
        let node = decode_node(&buf, ptr.birth).map_err(|e| {
            io.count_bad(ptr, &e.0);
            FsError::Io(format!("tree node at block {}: {e}", ptr.addr))
        })?;
        let node = Arc::new(node);
        *c = Some(Content::Node(node.clone()));
        drop(c); // never hold a slot lock while taking the cache lock
        io.note_cached(self);
        Ok(node)
    }
    /// The data block in this slot: its dirty content, else from the data-block cache, else
    /// read and verified from disk (and then cached; the slot itself keeps only dirty data,
    /// so the cache's bound is the bound of clean data in memory).
    pub fn data(&self, io: &Io) -> Result<Bytes, FsError> {
        let c = self.content.lock().unwrap_or_else(|e| e.into_inner());
        match &*c {
            Some(Content::Data(d)) => return Ok(d.clone()),
            Some(Content::Node(_)) => return Err(FsError::Corrupt("node used as data".into())),
            None => {}
        }
        drop(c);
        let ptr = self
            .ptr
            .get()
            .ok_or_else(|| FsError::Corrupt("slot without content or pointer".into()))?;
        io.read_data(ptr)
    }
}

/// What a CP-written slot held (see [`Slot::evict_data`]).
pub(crate) enum Written {
    /// A node: it stays in the slot, bounded by the node cache.
    Node,
    /// A data block, taken out of the slot, and where it now is on disk.
    Data(BlockPtr, Bytes),
    /// Nothing in memory.
    Other,
}

/// Default bound of clean tree nodes kept in memory (about 4-8 KiB each); older ones are
/// dropped and read again on use.
pub const NODES_CACHED_MAX_DEFAULT: usize = 131_072;

thread_local! {
    /// Set while this thread runs a memory-only call ([`resident_only`]).
    static RESIDENT_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every disk read refused as [`FsError::WouldBlock`]: what needs only
/// memory (dirty or cached blocks, loaded tree nodes) completes, anything else fails
/// before touching the disks, so an async caller can retry it on a thread that may block.
pub(crate) fn resident_only<T>(f: impl FnOnce() -> T) -> T {
    /// Restores the flag even if `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            RESIDENT_ONLY.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(RESIDENT_ONLY.with(|r| r.replace(true)));
    f()
}

/// `Err(WouldBlock)` inside [`resident_only`].
fn may_read_disk() -> Result<(), FsError> {
    if RESIDENT_ONLY.with(|r| r.get()) {
        Err(FsError::WouldBlock)
    } else {
        Ok(())
    }
}

/// Reads from the layer below, verifying checksums and counting failures, and bounds the
/// memory of clean nodes.
pub struct Io {
    /// The layer below.
    pub store: Arc<dyn StripeStore>,
    /// Clean node slots with content, oldest first (FIFO eviction).
    cached: Mutex<std::collections::VecDeque<std::sync::Weak<Slot>>>,
    /// Bound of `cached`.
    pub nodes_cached_max: usize,
    /// Checksum (or decode) failures seen on read.
    pub checksum_errors: AtomicU64,
    /// Blocks read.
    pub blocks_read: AtomicU64,
    /// Clean file data blocks (disabled unless set up by the mount).
    pub cache: BlockCache,
}

impl Io {
    /// Wraps a store.
    pub fn new(store: Arc<dyn StripeStore>) -> Io {
        Io {
            store,
            cached: Mutex::new(std::collections::VecDeque::new()),
            nodes_cached_max: NODES_CACHED_MAX_DEFAULT,
            checksum_errors: AtomicU64::new(0),
            blocks_read: AtomicU64::new(0),
            cache: BlockCache::new(0),
        }
    }

    /// Applies the cache bounds of a mount.
    pub fn with_config(mut self, config: &crate::fs::FsConfig) -> Io {
        self.nodes_cached_max = config.nodes_cached_max;
        self.cache = BlockCache::new(config.data_cache_bytes_max);
        self
    }

    /// One data block by its pointer: from the cache, else read, verified and cached.
    pub fn read_data(&self, ptr: &BlockPtr) -> Result<Bytes, FsError> {
        if let Some(d) = self.cache.get(ptr) {
            return Ok(d);
        }
        let d = Bytes::from(self.read_verified(ptr, "data block")?);
        self.cache.insert(ptr, d.clone());
        Ok(d)
    }

    /// Reads one block and checks it against its pointer; a mismatch is an IO error for
    /// this object, logged and counted.
    pub fn read_verified(&self, ptr: &BlockPtr, what: &str) -> Result<Vec<u8>, FsError> {
        may_read_disk()?;
        let mut buf = vec![0u8; BLOCK_SIZE];
        self.store
            .read_blocks(ptr.addr, &mut buf)
            .map_err(|e| FsError::Io(format!("{what} at block {}: {e}", ptr.addr)))?;
        self.blocks_read.fetch_add(1, Ordering::Relaxed);
        let got = block_checksum(ptr.addr, &buf);
        if got != ptr.csum {
            self.count_bad(ptr, "checksum mismatch");
            return Err(FsError::Io(format!(
                "{what} at block {}: checksum mismatch (expected {:08x}, got {got:08x})",
                ptr.addr, ptr.csum
            )));
        }
        Ok(buf)
    }

    /// Reads blocks at consecutive addresses with one call and checks each against its
    /// pointer; returns their bytes back to back.
    pub fn read_verified_run(&self, ptrs: &[BlockPtr], what: &str) -> Result<Vec<u8>, FsError> {
        may_read_disk()?;
        let first = ptrs.first().map(|p| p.addr).unwrap_or(0);
        assert!(ptrs
            .iter()
            .enumerate()
            .all(|(i, p)| p.addr == first + i as u64));
        let mut buf = vec![0u8; ptrs.len() * BLOCK_SIZE];
        if buf.is_empty() {
            return Ok(buf);
        }
        self.store
            .read_blocks(first, &mut buf)
            .map_err(|e| FsError::Io(format!("{what}s at blocks {first}+{}: {e}", ptrs.len())))?;
        self.blocks_read
            .fetch_add(ptrs.len() as u64, Ordering::Relaxed);
        for (p, b) in ptrs.iter().zip(buf.chunks_exact(BLOCK_SIZE)) {
            let got = block_checksum(p.addr, b);
            if got != p.csum {
                self.count_bad(p, "checksum mismatch");
                return Err(FsError::Io(format!(
                    "{what} at block {}: checksum mismatch (expected {:08x}, got {got:08x})",
                    p.addr, p.csum
                )));
            }
        }
        Ok(buf)
    }

    /// Records a clean node slot with content; evicts the oldest beyond `nodes_cached_max`.
    pub(crate) fn note_cached(&self, slot: &Arc<Slot>) {
        let mut q = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(Arc::downgrade(slot));
        while q.len() > self.nodes_cached_max {
            if let Some(old) = q.pop_front().and_then(|w| w.upgrade()) {
                old.evict(); // only clean slots: dirty content is never dropped
            }
        }
    }

    fn count_bad(&self, ptr: &BlockPtr, why: &str) {
        self.checksum_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(block = ptr.addr, birth = ptr.birth, why, "bad block read");
    }
}

/// Encodes a node whose children all have pointers into one block.
pub fn encode_node(node: &Node, birth: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(NODE_MAGIC);
    w.u8(node.level());
    w.u8(matches!(node, Node::Internal { .. }) as u8);
    w.u16(node.len() as u16);
    w.u64(birth);
    match node {
        Node::Leaf(items) => {
            for (k, v) in items {
                k.encode(&mut w);
                match v {
                    Value::Bytes(b) => {
                        w.u8(0);
                        w.bytes16(b);
                    }
                    Value::Data(s) => {
                        w.u8(1);
                        w.u16(PTR_BYTES as u16);
                        w.ptr(&s.ptr().expect("children are written before parents"));
                    }
                }
            }
        }
        Node::Internal { kids, .. } => {
            for (k, s) in kids {
                k.encode(&mut w);
                w.ptr(&s.ptr().expect("children are written before parents"));
            }
        }
    }
    assert!(w.buf.len() <= BLOCK_SIZE, "node of {} bytes", w.buf.len());
    w.buf.resize(BLOCK_SIZE, 0);
    w.buf
}

/// Decodes and validates a node block (magic, birth, counts, key order).
pub fn decode_node(buf: &[u8], birth: u64) -> Result<Node, DecodeError> {
    let mut r = Reader::new(buf);
    if r.take(4)? != NODE_MAGIC {
        return Err(DecodeError("bad node magic".into()));
    }
    let level = r.u8()?;
    let internal = r.u8()?;
    let n = r.u16()? as usize;
    let b = r.u64()?;
    if b != birth {
        return Err(DecodeError(format!("node birth {b}, pointer says {birth}")));
    }
    if level > TREE_LEVELS_MAX || (internal == 1) != (level > 0) || internal > 1 {
        return Err(DecodeError(format!(
            "bad node level {level} / type {internal}"
        )));
    }
    let mut prev: Option<Key> = None;
    let mut check_order = |k: Key| -> Result<(), DecodeError> {
        if prev.is_some_and(|p| p >= k) {
            return Err(DecodeError("node keys out of order".into()));
        }
        prev = Some(k);
        Ok(())
    };
    if level == 0 {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let k = Key::decode(&mut r)?;
            check_order(k)?;
            let vt = r.u8()?;
            let len = r.u16()? as usize;
            let v = match vt {
                0 if len <= ITEM_VALUE_BYTES_MAX => Value::Bytes(r.take(len)?.to_vec()),
                1 if len == PTR_BYTES => Value::Data(Slot::clean(r.ptr()?)),
                _ => return Err(DecodeError(format!("bad value type {vt} length {len}"))),
            };
            items.push((k, v));
        }
        Ok(Node::Leaf(items))
    } else {
        if n == 0 || n > FANOUT_MAX {
            return Err(DecodeError(format!("internal node with {n} children")));
        }
        let mut kids = Vec::with_capacity(n);
        for _ in 0..n {
            let k = Key::decode(&mut r)?;
            check_order(k)?;
            let p = r.ptr()?;
            if p.birth > birth {
                return Err(DecodeError("child newer than parent".into()));
            }
            kids.push((k, Slot::clean(p)));
        }
        Ok(Node::Internal { level, kids })
    }
}

/// Index of the child whose range holds `key`.
fn child_index(kids: &[(Key, Arc<Slot>)], key: &Key) -> usize {
    kids.partition_point(|(k, _)| k <= key).saturating_sub(1)
}

/// Loads a child and checks that it sits one level below its parent.
fn child_node(io: &Io, slot: &Arc<Slot>, parent_level: u8) -> Result<Arc<Node>, FsError> {
    let n = slot.node(io)?;
    if n.level() + 1 != parent_level {
        return Err(FsError::Io(format!(
            "tree node at {:?}: level {} under level {parent_level}",
            slot.ptr().map(|p| p.addr),
            n.level()
        )));
    }
    Ok(n)
}

/// The value under `key`.
pub fn get(io: &Io, root: &Arc<Slot>, key: &Key) -> Result<Option<Value>, FsError> {
    let mut node = root.node(io)?;
    loop {
        let next = match &*node {
            Node::Leaf(items) => {
                return Ok(items
                    .binary_search_by(|e| e.0.cmp(key))
                    .ok()
                    .map(|i| items[i].1.clone()))
            }
            Node::Internal { level, kids } => {
                child_node(io, &kids[child_index(kids, key)].1, *level)?
            }
        };
        node = next;
    }
}

/// Calls `f` for each item with `from <= key < to` in key order until it returns false.
pub fn scan(
    io: &Io,
    root: &Arc<Slot>,
    from: &Key,
    to: &Key,
    f: &mut dyn FnMut(&Key, &Value) -> Result<bool, FsError>,
) -> Result<(), FsError> {
    let node = root.node(io)?;
    scan_node(io, &node, from, to, f).map(|_| ())
}

fn scan_node(
    io: &Io,
    node: &Node,
    from: &Key,
    to: &Key,
    f: &mut dyn FnMut(&Key, &Value) -> Result<bool, FsError>,
) -> Result<bool, FsError> {
    match node {
        Node::Leaf(items) => {
            let start = items.partition_point(|e| e.0 < *from);
            for (k, v) in &items[start..] {
                if k >= to || !f(k, v)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Node::Internal { level, kids } => {
            for (k, s) in &kids[child_index(kids, from)..] {
                if k >= to {
                    return Ok(false);
                }
                let child = child_node(io, s, *level)?;
                if !scan_node(io, &child, from, to, f)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// Mutations of a live tree. Slots that leave the tree are pushed to `freed`: their blocks
/// (once written) are released at the next CP unless a snapshot still holds them.
pub struct TreeMut<'a> {
    /// Reads.
    pub io: &'a Io,
    /// Slots removed from the tree that were written (or are being written) by a CP.
    pub freed: &'a mut Vec<Arc<Slot>>,
    /// Inserts and removes done so far (an op that fails after one left partial changes).
    pub mutations: u64,
    /// Whether the last insert replaced an item.
    pub replaced: bool,
}

impl TreeMut<'_> {
    fn drop_slot(&mut self, slot: Arc<Slot>) {
        if slot.ptr().is_some() || Arc::strong_count(&slot) > 1 {
            self.freed.push(slot);
        }
    }

    fn drop_value(&mut self, v: Value) {
        if let Value::Data(s) = v {
            self.drop_slot(s);
        }
    }

    /// Makes the node in `slot` private to the live tree (copying it if shared or written).
    fn make_mut<'s>(&mut self, slot: &'s mut Arc<Slot>) -> Result<&'s mut Node, FsError> {
        let in_place = slot.ptr().is_none() && Arc::get_mut(slot).is_some();
        if !in_place {
            let node = slot.node(self.io)?;
            let old = std::mem::replace(slot, Slot::dirty_node((*node).clone()));
            self.drop_slot(old);
        }
        let s = Arc::get_mut(slot).expect("slot made private above");
        match s.content.get_mut().unwrap_or_else(|e| e.into_inner()) {
            Some(Content::Node(n)) => Ok(Arc::make_mut(n)),
            _ => Err(FsError::Corrupt("dirty slot without a node".into())),
        }
    }

    /// Inserts or replaces the value under `key`; true if it replaced one.
    pub fn insert(&mut self, root: &mut Arc<Slot>, key: Key, val: Value) -> Result<bool, FsError> {
        self.mutations += 1;
        self.replaced = false;
        if let Value::Bytes(b) = &val {
            assert!(b.len() <= ITEM_VALUE_BYTES_MAX, "item of {} bytes", b.len());
        }
        if let Some((sep, right)) = self.insert_rec(root, key, val)? {
            let level = root.node(self.io)?.level() + 1;
            assert!(level <= TREE_LEVELS_MAX);
            let left = root.clone();
            *root = Slot::dirty_node(Node::Internal {
                level,
                kids: vec![(Key::MIN, left), (sep, right)],
            });
        }
        Ok(self.replaced)
    }

    fn insert_rec(
        &mut self,
        slot: &mut Arc<Slot>,
        key: Key,
        val: Value,
    ) -> Result<Option<(Key, Arc<Slot>)>, FsError> {
        let io = self.io;
        let node = self.make_mut(slot)?;
        match &mut *node {
            Node::Leaf(items) => {
                match items.binary_search_by(|e| e.0.cmp(&key)) {
                    Ok(i) => {
                        let old = std::mem::replace(&mut items[i].1, val);
                        self.drop_value(old);
                        self.replaced = true;
                    }
                    Err(i) => items.insert(i, (key, val)),
                }
                if node.bytes() <= BLOCK_SIZE {
                    return Ok(None);
                }
                let Node::Leaf(items) = node else {
                    unreachable!()
                };
                let total: usize = items
                    .iter()
                    .map(|e| LEAF_ITEM_OVERHEAD_BYTES + e.1.encoded_len())
                    .sum();
                let mut acc = 0;
                let mut mid = items.len() / 2;
                for (i, e) in items.iter().enumerate() {
                    acc += LEAF_ITEM_OVERHEAD_BYTES + e.1.encoded_len();
                    if acc * 2 >= total {
                        mid = i;
                        break;
                    }
                }
                let mid = mid.clamp(1, items.len() - 1);
                let right = items.split_off(mid);
                let sep = right[0].0;
                Ok(Some((sep, Slot::dirty_node(Node::Leaf(right)))))
            }
            Node::Internal { level, kids } => {
                let i = child_index(kids, &key);
                let _ = child_node(io, &kids[i].1, *level)?;
                let split = self.insert_rec(&mut kids[i].1, key, val)?;
                if key < kids[i].0 {
                    kids[i].0 = key;
                }
                if let Some(entry) = split {
                    kids.insert(i + 1, entry);
                }
                if kids.len() <= FANOUT_MAX {
                    return Ok(None);
                }
                let right = kids.split_off(kids.len() / 2);
                let sep = right[0].0;
                Ok(Some((
                    sep,
                    Slot::dirty_node(Node::Internal {
                        level: *level,
                        kids: right,
                    }),
                )))
            }
        }
    }

    /// Removes the item under `key`, returning its value.
    pub fn remove(&mut self, root: &mut Arc<Slot>, key: &Key) -> Result<Option<Value>, FsError> {
        if get(self.io, root, key)?.is_none() {
            return Ok(None); // no path copy for a miss
        }
        self.mutations += 1;
        let v = self.remove_rec(root, key)?;
        if let Some(Value::Data(s)) = &v {
            // counted before any clone: >1 means a CP or snapshot tree still holds it
            if s.ptr().is_some() || Arc::strong_count(s) > 1 {
                self.freed.push(s.clone());
            }
        }
        // Collapse a root with a single child.
        loop {
            let node = root.node(self.io)?;
            match &*node {
                Node::Internal { kids, .. } if kids.len() == 1 => {
                    let child = kids[0].1.clone();
                    drop(node);
                    let old = std::mem::replace(root, child);
                    self.drop_slot(old);
                }
                _ => break,
            }
        }
        Ok(v)
    }

    fn remove_rec(&mut self, slot: &mut Arc<Slot>, key: &Key) -> Result<Option<Value>, FsError> {
        let io = self.io;
        let node = self.make_mut(slot)?;
        match node {
            Node::Leaf(items) => match items.binary_search_by(|e| e.0.cmp(key)) {
                Ok(i) => Ok(Some(items.remove(i).1)),
                Err(_) => Ok(None),
            },
            Node::Internal { level, kids } => {
                let i = child_index(kids, key);
                let _ = child_node(io, &kids[i].1, *level)?;
                let v = self.remove_rec(&mut kids[i].1, key)?;
                let child = kids[i].1.node(io)?;
                if child.len() == 0 {
                    let (_, s) = kids.remove(i);
                    drop(child);
                    self.drop_slot(s);
                } else if child.bytes() < BLOCK_SIZE / 4 && kids.len() > 1 {
                    drop(child);
                    self.merge_neighbours(kids, i)?;
                }
                Ok(v)
            }
        }
    }

    /// Merges child `i` with a neighbour when both fit comfortably in one node.
    fn merge_neighbours(
        &mut self,
        kids: &mut Vec<(Key, Arc<Slot>)>,
        i: usize,
    ) -> Result<(), FsError> {
        let j = if i + 1 < kids.len() { i } else { i - 1 };
        let a = kids[j].1.node(self.io)?;
        let b = kids[j + 1].1.node(self.io)?;
        if a.bytes() + b.bytes() - NODE_HEADER_BYTES > BLOCK_SIZE * 3 / 4 || a.level() != b.level()
        {
            return Ok(());
        }
        drop(a);
        let (_, right) = kids.remove(j + 1);
        let rnode = right.node(self.io)?;
        let left = self.make_mut(&mut kids[j].1)?;
        match (left, &*rnode) {
            (Node::Leaf(l), Node::Leaf(r)) => l.extend(r.iter().cloned()),
            (Node::Internal { kids: l, .. }, Node::Internal { kids: r, .. }) => {
                l.extend(r.iter().cloned())
            }
            _ => return Err(FsError::Corrupt("sibling nodes of different kinds".into())),
        }
        drop(rnode);
        self.drop_slot(right);
        Ok(())
    }

    /// Removes every item with `lo <= key < hi`; calls `f` on each removed value.
    pub fn remove_range(
        &mut self,
        root: &mut Arc<Slot>,
        lo: &Key,
        hi: &Key,
        f: &mut dyn FnMut(&Key, &Value),
    ) -> Result<(), FsError> {
        const BATCH_ITEMS: usize = 512;
        loop {
            let mut keys = Vec::new();
            scan(self.io, root, lo, hi, &mut |k, _| {
                keys.push(*k);
                Ok(keys.len() < BATCH_ITEMS)
            })?;
            if keys.is_empty() {
                return Ok(());
            }
            for k in keys {
                if let Some(v) = self.remove(root, &k)? {
                    f(&k, &v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoders never panic: random bytes, and every truncation/bit flip of a valid node.
    #[test]
    fn node_decoder_survives_garbage() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut b: Vec<u8> = (0..BLOCK_SIZE).map(|_| next() as u8).collect();
            b[..4].copy_from_slice(NODE_MAGIC);
            b[4] = (next() % 3) as u8;
            b[5] = (b[4] > 0) as u8;
            let _ = decode_node(&b, u64::from_le_bytes(b[8..16].try_into().unwrap()));
        }
        let leaf = Node::Leaf(vec![
            (Key::new(2, 1, 0), Value::Bytes(vec![1, 2, 3])),
            (
                Key::new(2, 4, 7),
                Value::Data(Slot::clean(BlockPtr {
                    addr: 9,
                    birth: 3,
                    csum: 1,
                })),
            ),
        ]);
        let good = encode_node(&leaf, 5);
        assert!(decode_node(&good, 5).is_ok());
        assert!(decode_node(&good, 6).is_err());
        for i in 0..64 {
            let mut b = good.clone();
            b[i] ^= 1 << (next() % 8);
            let _ = decode_node(&b, 5);
            let _ = decode_node(&good[..i], 5);
        }
    }

    #[test]
    fn superblock_decoder_survives_garbage() {
        for seed in 0..500u32 {
            let b: Vec<u8> = (0..BLOCK_SIZE as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
                .collect();
            assert!(crate::superblock::Superblock::decode(&b).is_err());
        }
    }
}
