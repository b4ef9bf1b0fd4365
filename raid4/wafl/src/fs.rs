//! The file system: mount, the one entry point that applies `FsOp`s, and the reads.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use crate::alloc::Alloc;
use crate::cache::CacheStats;
use crate::codec::{name_hash, BlockPtr};
use crate::cp::{CpState, CpStats};
use crate::error::FsError;
use crate::op::{CreateAttr, CreateHow, Fid, FsOp, NewObj, SetAttr, Special, WRITE_BYTES_MAX};
use crate::store::{StripeStore, BLOCK_SIZE};
use crate::tree::{self, Content, Io, Key, Node, Slot, TreeMut, Value};
use crate::types::*;

/// Longest run of consecutive blocks read with one call (1 MiB).
const READ_RUN_BLOCKS_MAX: usize = 256;

/// Zeros that holes read as, shared by every reply.
static ZEROS: [u8; ZEROS_BYTES] = [0; ZEROS_BYTES];
/// Size of [`ZEROS`]: a hole longer than this takes several pieces.
const ZEROS_BYTES: usize = 64 * 1024;

/// The bytes of a read, in order, as pieces that share the file system's blocks: no copy
/// is made, and the blocks stay alive while a piece does. Holes are static zeros.
#[derive(Clone, Debug, Default)]
pub struct ReadData {
    /// The pieces, back to back.
    pub parts: Vec<Bytes>,
    /// Total bytes of `parts`.
    pub len: usize,
    /// Whether the read reached the end of the file.
    pub eof: bool,
}

impl ReadData {
    /// The bytes in one buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for p in &self.parts {
            v.extend_from_slice(p);
        }
        v
    }
}

/// Builds a [`ReadData`] for bytes `offset..end` from blocks given in increasing order;
/// the blocks in between that are not given are holes.
struct Parts {
    offset: u64,
    end: u64,
    /// Bytes placed so far (from `offset` on).
    done: u64,
    parts: Vec<Bytes>,
}

impl Parts {
    fn new(offset: u64, end: u64) -> Parts {
        assert!(offset < end);
        let blocks = (end - 1) / BLOCK_SIZE as u64 - offset / BLOCK_SIZE as u64 + 1;
        Parts {
            offset,
            end,
            done: 0,
            parts: Vec::with_capacity(blocks as usize),
        }
    }

    /// Zeros up to file offset `to`.
    fn hole_to(&mut self, to: u64) {
        while self.offset + self.done < to {
            let n = ((to - self.offset - self.done) as usize).min(ZEROS_BYTES);
            self.parts.push(Bytes::from_static(&ZEROS[..n]));
            self.done += n as u64;
        }
    }

    /// Block `bi` (whole, `BLOCK_SIZE` bytes): its part inside `offset..end`.
    fn block(&mut self, bi: u64, data: Bytes) {
        assert_eq!(data.len(), BLOCK_SIZE);
        let bs = BLOCK_SIZE as u64;
        let bstart = bi * bs;
        let from = self.offset.max(bstart);
        let to = self.end.min(bstart + bs);
        assert!(
            from < to && from >= self.offset + self.done,
            "blocks out of order"
        );
        self.hole_to(from);
        self.parts
            .push(data.slice((from - bstart) as usize..(to - bstart) as usize));
        self.done = to - self.offset;
    }

    fn finish(mut self, eof: bool) -> ReadData {
        self.hole_to(self.end);
        let len = self.done as usize;
        debug_assert_eq!(len, self.parts.iter().map(|p| p.len()).sum::<usize>());
        ReadData {
            parts: self.parts,
            len,
            eof,
        }
    }
}

/// Where `Fs::read` finds one block.
enum Src {
    /// Dirty in the tree, or in the data-block cache.
    Mem(Bytes),
    /// On disk, to be read and verified.
    Disk(BlockPtr),
}

/// Dirty data beyond `cp_dirty_bytes_max` times this makes the writing caller run a CP.
const DIRTY_THROTTLE_FACTOR: u64 = 2;
/// Deepest directory chain a directory RENAME walks to rule out moving a directory below
/// itself (a path of that depth is already far past PATH_MAX on a client); also what stops
/// the walk on a corrupt parent chain.
const DIR_DEPTH_MAX: u32 = 4096;

/// Tunables of a mounted file system.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// CP timer.
    pub cp_interval_ms: u64,
    /// Dirty bytes that trigger a CP.
    pub cp_dirty_bytes_max: u64,
    /// Largest single `write_stripes` call of a CP, bytes.
    pub cp_write_batch_bytes_max: usize,
    /// Clean tree nodes cached in memory, at most.
    pub nodes_cached_max: usize,
    /// Bytes of clean file data blocks cached in memory, at most (0: no data cache; see
    /// `CACHE_BYTES_MAX_DEFAULT` for the default's reasoning).
    pub data_cache_bytes_max: u64,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            cp_interval_ms: 10_000,
            cp_dirty_bytes_max: 256 << 20,
            cp_write_batch_bytes_max: 16 << 20,
            nodes_cached_max: crate::tree::NODES_CACHED_MAX_DEFAULT,
            data_cache_bytes_max: crate::cache::CACHE_BYTES_MAX_DEFAULT,
        }
    }
}

/// A snapshot pinned in memory.
#[derive(Clone)]
pub(crate) struct Snap {
    pub id: u32,
    pub name: String,
    pub gen: u64,
    pub created_ns: u64,
    pub root: Arc<Slot>,
}

/// Public description of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInfo {
    /// Id (handles use it).
    pub id: u32,
    /// Name under `.snapshot`.
    pub name: String,
    /// CP generation it pins.
    pub gen: u64,
    /// Creation time, ns.
    pub created_ns: u64,
}

/// File-system totals for FSSTAT/statfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Bytes in the aggregate.
    pub total_bytes: u64,
    /// Bytes free (allocatable once dirty data is written).
    pub free_bytes: u64,
    /// Inode numbers handed out so far.
    pub files_used: u64,
    /// Inode numbers left.
    pub files_free: u64,
    /// Checksum errors seen on reads since mount.
    pub checksum_errors: u64,
}

/// The mutable live state: the live tree and everything the next CP needs.
pub(crate) struct Live {
    pub root: Arc<Slot>,
    pub freed: Vec<Arc<Slot>>,
    pub next_ino: u64,
    pub next_gen: u64,
    pub applied_seq: u64,
    pub dirty_bytes: u64,
    pub snapshots: Vec<Snap>,
    pub next_snap_id: u32,
    pub offline: Option<String>,
    pub free_blocks: u64,
}

/// Wakes the CP driver.
pub(crate) struct CpSignal {
    pub wanted: bool,
    pub stop: bool,
}

/// A mounted file system.
pub struct Fs {
    pub(crate) io: Arc<Io>,
    pub(crate) live: Mutex<Live>,
    pub(crate) cp: Mutex<CpState>,
    pub(crate) config: FsConfig,
    pub(crate) signal: (Mutex<CpSignal>, Condvar),
    pub(crate) stats: Mutex<CpStats>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fs {
    pub(crate) fn from_parts(io: Arc<Io>, live: Live, mut cp: CpState, config: FsConfig) -> Fs {
        cp.buffers = crate::cp::prefaulted_batches(&*io.store, config.cp_write_batch_bytes_max);
        Fs {
            io,
            live: Mutex::new(live),
            cp: Mutex::new(cp),
            config,
            signal: (
                Mutex::new(CpSignal {
                    wanted: false,
                    stop: false,
                }),
                Condvar::new(),
            ),
            stats: Mutex::new(CpStats::default()),
        }
    }

    /// Creates an empty file system (root directory owned by root, mode 0755) and commits it.
    pub fn mkfs(
        store: Arc<dyn StripeStore>,
        time_ns: u64,
        config: FsConfig,
    ) -> Result<Fs, FsError> {
        let sdb = store.stripe_data_blocks() as u64;
        let stripes = store.stripe_count();
        if stripes < 8 {
            return Err(FsError::Invalid(format!(
                "{stripes} stripes: need at least 8"
            )));
        }
        // Old superblocks of an earlier file system must not win the next mount.
        let zero = vec![0u8; 2 * sdb as usize * BLOCK_SIZE];
        store
            .write_stripes(0, &zero)
            .map_err(|e| FsError::Io(e.to_string()))?;
        let root_inode = Inode {
            kind: FileType::Directory,
            gen: ROOT_GEN,
            mode: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: 0,
            blocks: 0,
            atime_ns: time_ns,
            mtime_ns: time_ns,
            ctime_ns: time_ns,
            change: 0,
            rdev: (0, 0),
            parent: ROOT_INO,
            next_entry: FIRST_ENTRY_ID,
            verifier: None,
            target: Vec::new(),
        };
        let root = Slot::dirty_node(Node::Leaf(vec![(
            Key::new(ROOT_INO, KIND_INODE, 0),
            Value::Bytes(root_inode.encode()),
        )]));
        // RandomState is seeded from the OS's random source: a random id without a new dep.
        let fs_id = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(time_ns);
            h.finish()
        };
        let alloc = Alloc::new(sdb, stripes);
        let free_blocks = alloc.free_blocks();
        let live = Live {
            root,
            freed: Vec::new(),
            next_ino: FIRST_INO,
            next_gen: ROOT_GEN + 1,
            applied_seq: 0,
            dirty_bytes: 0,
            snapshots: Vec::new(),
            next_snap_id: 1,
            offline: None,
            free_blocks,
        };
        let cp = CpState::new(alloc, fs_id);
        let io = Io::new(store).with_config(&config);
        let fs = Fs::from_parts(Arc::new(io), live, cp, config);
        fs.cp()?;
        Ok(fs)
    }

    /// Mounts the newest valid root of a store.
    pub fn mount(store: Arc<dyn StripeStore>, config: FsConfig) -> Result<Fs, FsError> {
        let io = Arc::new(Io::new(store).with_config(&config));
        let (live, cp) = crate::cp::load(&io)?;
        Ok(Fs::from_parts(io, live, cp, config))
    }

    /// Counters of the data-block cache.
    pub fn cache_stats(&self) -> CacheStats {
        self.io.cache.stats()
    }

    /// The configuration.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// Hands out an inode number and a never-used generation for a creating op.
    pub fn reserve_inode(&self) -> (u64, u64) {
        let mut l = lock(&self.live);
        let r = (l.next_ino, l.next_gen);
        l.next_ino += 1;
        l.next_gen += 1;
        r
    }

    /// Highest sequence number applied (replay skips records at or below the mounted root's).
    pub fn applied_seq(&self) -> u64 {
        lock(&self.live).applied_seq
    }

    /// Root directory handle.
    pub fn root(&self) -> Handle {
        Handle::live(ROOT_INO, ROOT_GEN)
    }

    /// Counts op `seq` as applied without running it: its outcome, a refusal, was logged
    /// when it happened, and replay answers from that record instead of running the op
    /// against what may be other free space. In `seq` order, like [`Fs::apply`].
    pub fn apply_refused(&self, seq: u64) {
        let mut l = lock(&self.live);
        l.applied_seq = l.applied_seq.max(seq);
    }

    /// Applies one modifying operation with log sequence number `seq`. Applying the same op
    /// again changes nothing. Returns the attributes of the created or changed object.
    ///
    /// Ops must be applied in increasing `seq` order (the log's order): a CP records the
    /// highest `seq` applied at its freeze as `applied_seq`, and replay after a crash or
    /// takeover starts after it.
    pub fn apply(&self, seq: u64, op: &FsOp) -> Result<Option<Attr>, FsError> {
        let mut l = lock(&self.live);
        if let Some(why) = &l.offline {
            return Err(FsError::Offline(why.clone()));
        }
        let dirty_est = match op {
            FsOp::Write { data, .. } => data.len() as u64 + 512,
            _ => 512,
        };
        // Keep room for the CP that will write this: refuse new data when nearly full.
        if (l.dirty_bytes + dirty_est) / BLOCK_SIZE as u64 * 2 + 64 > l.free_blocks
            && !matches!(op, FsOp::Remove { .. } | FsOp::Rmdir { .. })
        {
            // The refusal is this record's outcome: it is applied in sequence like any
            // other, so a CP after it records it and replay does not re-run it (and,
            // perhaps with more room then, reach another outcome than the client saw).
            l.applied_seq = l.applied_seq.max(seq);
            return Err(FsError::NoSpace);
        }
        let Live { root, freed, .. } = &mut *l;
        let mut ctx = Ctx {
            t: TreeMut {
                io: &self.io,
                freed,
                mutations: 0,
                replaced: false,
            },
            root,
            seq,
        };
        let res = ctx.apply(op);
        if let Err(e) = &res {
            // Every op checks before it changes anything; an error after a change (an IO
            // error on a node read half-way) would leave a half-applied op: stop instead.
            if ctx.t.mutations > 0 {
                let why = format!("op {seq} failed half-way: {e}");
                tracing::error!(%why, "file system offline; remount and replay the log");
                l.offline = Some(why);
                return res;
            }
        }
        if let Ok(Some(a)) = &res {
            l.next_ino = l.next_ino.max(a.fileid + 1);
            l.next_gen = l.next_gen.max(a.gen + 1);
        }
        l.applied_seq = l.applied_seq.max(seq);
        l.dirty_bytes += dirty_est;
        let dirty = l.dirty_bytes;
        drop(l);
        if dirty >= self.config.cp_dirty_bytes_max {
            self.request_cp();
        }
        if dirty
            >= self
                .config
                .cp_dirty_bytes_max
                .saturating_mul(DIRTY_THROTTLE_FACTOR)
        {
            // Back-to-back CP: the writer outpaces the CP, so it pays for one. This bounds
            // memory to about two CPs' worth of dirty data (frozen + live).
            if let Err(e) = self.cp() {
                tracing::error!(error = %e, "throttling CP failed");
            }
        }
        res
    }

    /// Asks the CP driver (if running) to start a CP now.
    pub fn request_cp(&self) {
        let (m, c) = &self.signal;
        lock(m).wanted = true;
        c.notify_all();
    }

    /// Dirty bytes waiting for the next CP.
    pub fn dirty_bytes(&self) -> u64 {
        lock(&self.live).dirty_bytes
    }

    fn view_root(&self, l: &Live, view: View) -> Result<Arc<Slot>, FsError> {
        match view {
            View::Live | View::SnapDir => Ok(l.root.clone()),
            View::Snap(id) => l
                .snapshots
                .iter()
                .find(|s| s.id == id)
                .map(|s| s.root.clone())
                .ok_or(FsError::Stale),
        }
    }

    fn snapdir_attr(&self, dir: &Attr) -> Attr {
        let mut a = dir.clone();
        a.handle = Handle {
            view: View::SnapDir,
            ino: dir.fileid,
            gen: dir.gen,
        };
        a.mode = 0o555;
        a.nlink = 2;
        a.fileid = dir.fileid | (1 << 62);
        a
    }

    /// Attributes of an object.
    pub fn getattr(&self, h: &Handle) -> Result<Attr, FsError> {
        let l = lock(&self.live);
        let root = self.view_root(&l, h.view)?;
        let view = if h.view == View::SnapDir {
            View::Live
        } else {
            h.view
        };
        let i = checked_inode(&self.io, &root, h.ino, h.gen)?;
        let a = Attr::from_inode(view, h.ino, &i);
        if h.view == View::SnapDir {
            return Ok(self.snapdir_attr(&a));
        }
        Ok(a)
    }

    /// Looks a name up in a directory (`.`, `..` and `.snapshot` included).
    pub fn lookup(&self, dir: &Handle, name: &[u8]) -> Result<Attr, FsError> {
        let l = lock(&self.live);
        let root = self.view_root(&l, dir.view)?;
        let d = checked_inode(&self.io, &root, dir.ino, dir.gen)?;
        if d.kind != FileType::Directory {
            return Err(FsError::NotDir);
        }
        if dir.view == View::SnapDir {
            let live_dir = Attr::from_inode(View::Live, dir.ino, &d);
            if name == b"." {
                return Ok(self.snapdir_attr(&live_dir));
            }
            if name == b".." {
                return Ok(live_dir);
            }
            let s = l
                .snapshots
                .iter()
                .find(|s| s.name.as_bytes() == name)
                .ok_or(FsError::NotFound)?;
            let i = inode(&self.io, &s.root, dir.ino)?.ok_or(FsError::NotFound)?;
            if i.gen != dir.gen {
                return Err(FsError::NotFound);
            }
            return Ok(Attr::from_inode(View::Snap(s.id), dir.ino, &i));
        }
        if name == b"." {
            return Ok(Attr::from_inode(dir.view, dir.ino, &d));
        }
        if name == b".." {
            let p = inode(&self.io, &root, d.parent)?.ok_or(FsError::Stale)?;
            return Ok(Attr::from_inode(dir.view, d.parent, &p));
        }
        if name == SNAPSHOT_DIR_NAME && dir.view == View::Live {
            return Ok(self.snapdir_attr(&Attr::from_inode(View::Live, dir.ino, &d)));
        }
        let (_, rec) = find_entry(&self.io, &root, dir.ino, name)?.ok_or(FsError::NotFound)?;
        let i = checked_inode(&self.io, &root, rec.ino, rec.gen)
            .map_err(|_| FsError::Corrupt(format!("entry {:?} points to a missing inode", rec)))?;
        Ok(Attr::from_inode(dir.view, rec.ino, &i))
    }

    /// Reads up to `len` bytes at `offset`; returns the bytes and whether EOF was reached.
    /// (One copy of the data; [`Fs::read_parts`] shares the blocks instead.)
    pub fn read(&self, h: &Handle, offset: u64, len: usize) -> Result<(Vec<u8>, bool), FsError> {
        let d = self.read_parts(h, offset, len)?;
        Ok((d.to_vec(), d.eof))
    }

    /// Reads up to `len` bytes at `offset` as shared pieces of the blocks holding them
    /// (dirty blocks, the data-block cache, blocks just read), without copying them.
    pub fn read_parts(&self, h: &Handle, offset: u64, len: usize) -> Result<ReadData, FsError> {
        self.read_parts_inner(h, offset, len)
    }

    /// [`Fs::read_parts`] from memory only: `Err(FsError::WouldBlock)` (having read
    /// nothing from the disks) when a block or tree node is not in memory. An async server
    /// answers cached reads on its own thread and moves only these misses to one that may
    /// block.
    pub fn read_resident(&self, h: &Handle, offset: u64, len: usize) -> Result<ReadData, FsError> {
        tree::resident_only(|| self.read_parts_inner(h, offset, len))
    }

    fn read_parts_inner(&self, h: &Handle, offset: u64, len: usize) -> Result<ReadData, FsError> {
        let l = lock(&self.live);
        let root = self.view_root(&l, h.view)?;
        drop(l);
        let i = checked_inode(&self.io, &root, h.ino, h.gen)?;
        match i.kind {
            FileType::Regular => {}
            FileType::Directory => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("read of a special file".into())),
        }
        if offset >= i.size {
            return Ok(ReadData {
                eof: true,
                ..ReadData::default()
            });
        }
        let end = i
            .size
            .min(offset.saturating_add(len.min(WRITE_BYTES_MAX) as u64));
        let bs = BLOCK_SIZE as u64;
        let (first, last) = (offset / bs, (end - 1) / bs);
        let mut blocks = Vec::new();
        tree::scan(
            &self.io,
            &root,
            &Key::new(h.ino, KIND_EXTENT, first),
            &Key::new(h.ino, KIND_EXTENT, last + 1),
            &mut |k, v| {
                if let Value::Data(s) = v {
                    blocks.push((k.off, s.clone()));
                }
                Ok(true)
            },
        )?;
        // Where each block comes from: memory (dirty or cached) or the disks.
        let mut srcs = Vec::with_capacity(blocks.len());
        for (bi, s) in &blocks {
            let src = match (s.content(), s.ptr()) {
                (Some(Content::Data(d)), _) => Src::Mem(d),
                (_, Some(p)) => match self.io.cache.get(&p) {
                    Some(d) => Src::Mem(d),
                    None => Src::Disk(p),
                },
                _ => {
                    return Err(FsError::Corrupt(format!(
                        "inode {}: data block without content or address",
                        h.ino
                    )))
                }
            };
            srcs.push((*bi, src));
        }
        let mut out = Parts::new(offset, end);
        // Blocks a CP wrote together sit at consecutive addresses: read each such run with
        // one call instead of one round trip per 4 KiB.
        let mut k = 0;
        while k < srcs.len() {
            let (bi, ptr) = match &srcs[k] {
                (bi, Src::Mem(d)) => {
                    out.block(*bi, d.clone());
                    k += 1;
                    continue;
                }
                (bi, Src::Disk(p)) => (*bi, *p),
            };
            let mut ptrs = vec![ptr];
            while k + ptrs.len() < srcs.len() && ptrs.len() < READ_RUN_BLOCKS_MAX {
                let n = ptrs.len() as u64;
                match &srcs[k + ptrs.len()] {
                    (nbi, Src::Disk(p)) if p.addr == ptr.addr + n && *nbi == bi + n => {
                        ptrs.push(*p)
                    }
                    _ => break,
                }
            }
            let run = Bytes::from(self.io.read_verified_run(&ptrs, "data block")?);
            for (n, p) in ptrs.iter().enumerate() {
                let data = run.slice(n * BLOCK_SIZE..(n + 1) * BLOCK_SIZE);
                if self.io.cache.enabled() {
                    self.io.cache.insert(p, Bytes::copy_from_slice(&data));
                }
                out.block(bi + n as u64, data);
            }
            k += ptrs.len();
        }
        Ok(out.finish(end == i.size))
    }

    /// Lists entries after `cookie` (0 = start), at most `max`; returns them and EOF.
    pub fn readdir(
        &self,
        dir: &Handle,
        cookie: u64,
        max: usize,
    ) -> Result<(Vec<DirEntry>, bool), FsError> {
        let l = lock(&self.live);
        let root = self.view_root(&l, dir.view)?;
        let d = checked_inode(&self.io, &root, dir.ino, dir.gen)?;
        if d.kind != FileType::Directory {
            return Err(FsError::NotDir);
        }
        if dir.view == View::SnapDir {
            let mut out = Vec::new();
            let mut snaps: Vec<&Snap> = l
                .snapshots
                .iter()
                .filter(|s| s.id as u64 > cookie)
                .collect();
            snaps.sort_by_key(|s| s.id);
            for s in snaps {
                if out.len() >= max {
                    return Ok((out, false));
                }
                if let Some(i) = inode(&self.io, &s.root, dir.ino)? {
                    if i.gen == dir.gen {
                        out.push(DirEntry {
                            cookie: s.id as u64,
                            name: s.name.as_bytes().to_vec(),
                            handle: Handle {
                                view: View::Snap(s.id),
                                ino: dir.ino,
                                gen: i.gen,
                            },
                            kind: FileType::Directory,
                        });
                    }
                }
            }
            return Ok((out, true));
        }
        drop(l);
        let mut out = Vec::new();
        let mut eof = true;
        let mut err = None;
        tree::scan(
            &self.io,
            &root,
            &Key::new(dir.ino, KIND_DIRENT, cookie.saturating_add(1)),
            &Key::new(dir.ino, KIND_DIRENT + 1, 0),
            &mut |k, v| {
                if out.len() >= max {
                    eof = false;
                    return Ok(false);
                }
                match value_bytes(v).and_then(|b| DirRecord::decode(b).map_err(corrupt)) {
                    Ok(r) => out.push(DirEntry {
                        cookie: k.off,
                        name: r.name,
                        handle: Handle {
                            view: dir.view,
                            ino: r.ino,
                            gen: r.gen,
                        },
                        kind: r.kind,
                    }),
                    Err(e) => {
                        err = Some(e);
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        if let Some(e) = err {
            return Err(e);
        }
        Ok((out, eof))
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, h: &Handle) -> Result<Vec<u8>, FsError> {
        let l = lock(&self.live);
        let root = self.view_root(&l, h.view)?;
        let i = checked_inode(&self.io, &root, h.ino, h.gen)?;
        if i.kind != FileType::Symlink {
            return Err(FsError::Invalid("not a symlink".into()));
        }
        Ok(i.target)
    }

    /// Totals.
    pub fn statfs(&self) -> StatFs {
        let l = lock(&self.live);
        let total = self.io.store.stripe_count() * self.io.store.stripe_data_blocks() as u64;
        let dirty_blocks = l.dirty_bytes / BLOCK_SIZE as u64;
        StatFs {
            total_bytes: total * BLOCK_SIZE as u64,
            free_bytes: l.free_blocks.saturating_sub(dirty_blocks) * BLOCK_SIZE as u64,
            files_used: l.next_ino - FIRST_INO,
            files_free: u64::MAX / 2 - l.next_ino,
            checksum_errors: self.io.checksum_errors.load(Ordering::Relaxed),
        }
    }

    /// Snapshots, oldest first.
    pub fn snapshot_list(&self) -> Vec<SnapInfo> {
        lock(&self.live)
            .snapshots
            .iter()
            .map(|s| SnapInfo {
                id: s.id,
                name: s.name.clone(),
                gen: s.gen,
                created_ns: s.created_ns,
            })
            .collect()
    }

    /// The root pointer of the last committed CP (tests, fsck).
    pub fn committed_root(&self) -> Option<BlockPtr> {
        lock(&self.live).root.ptr()
    }
}

pub(crate) fn corrupt(e: crate::codec::DecodeError) -> FsError {
    FsError::Corrupt(e.0)
}

fn value_bytes(v: &Value) -> Result<&[u8], FsError> {
    match v {
        Value::Bytes(b) => Ok(b),
        Value::Data(_) => Err(FsError::Corrupt(
            "data pointer where a record was expected".into(),
        )),
    }
}

/// The inode record of `ino` in a tree.
pub(crate) fn inode(io: &Io, root: &Arc<Slot>, ino: u64) -> Result<Option<Inode>, FsError> {
    match tree::get(io, root, &Key::new(ino, KIND_INODE, 0))? {
        None => Ok(None),
        Some(v) => Ok(Some(Inode::decode(value_bytes(&v)?).map_err(corrupt)?)),
    }
}

/// The inode record of `ino` if its generation is `gen`, else `Stale`.
fn checked_inode(io: &Io, root: &Arc<Slot>, ino: u64, gen: u64) -> Result<Inode, FsError> {
    match inode(io, root, ino)? {
        Some(i) if i.gen == gen => Ok(i),
        _ => Err(FsError::Stale),
    }
}

/// The entry id and record of `name` in directory `dir`.
pub(crate) fn find_entry(
    io: &Io,
    root: &Arc<Slot>,
    dir: u64,
    name: &[u8],
) -> Result<Option<(u64, DirRecord)>, FsError> {
    let Some(v) = tree::get(io, root, &Key::new(dir, KIND_NAMEIDX, name_hash(name)))? else {
        return Ok(None);
    };
    for id in decode_ids(value_bytes(&v)?).map_err(corrupt)? {
        let e = tree::get(io, root, &Key::new(dir, KIND_DIRENT, id))?.ok_or_else(|| {
            FsError::Corrupt(format!("dir {dir}: name index names missing entry {id}"))
        })?;
        let rec = DirRecord::decode(value_bytes(&e)?).map_err(corrupt)?;
        if rec.name == name {
            return Ok(Some((id, rec)));
        }
    }
    Ok(None)
}

/// One operation being applied to the live tree.
struct Ctx<'a> {
    t: TreeMut<'a>,
    root: &'a mut Arc<Slot>,
    seq: u64,
}

impl Ctx<'_> {
    fn get_inode(&self, ino: u64) -> Result<Option<Inode>, FsError> {
        inode(self.t.io, self.root, ino)
    }
    fn checked(&self, f: &Fid) -> Result<Inode, FsError> {
        checked_inode(self.t.io, self.root, f.ino, f.gen)
    }
    fn checked_dir(&self, f: &Fid) -> Result<Inode, FsError> {
        let d = self.checked(f)?;
        if d.kind != FileType::Directory {
            return Err(FsError::NotDir);
        }
        Ok(d)
    }
    fn put_inode(&mut self, ino: u64, i: &Inode) -> Result<(), FsError> {
        self.t
            .insert(
                self.root,
                Key::new(ino, KIND_INODE, 0),
                Value::Bytes(i.encode()),
            )
            .map(|_| ())
    }
    fn attr(&self, ino: u64) -> Result<Attr, FsError> {
        let i = self.get_inode(ino)?.ok_or(FsError::Stale)?;
        Ok(Attr::from_inode(View::Live, ino, &i))
    }
    fn find(&self, dir: u64, name: &[u8]) -> Result<Option<(u64, DirRecord)>, FsError> {
        find_entry(self.t.io, self.root, dir, name)
    }

    /// Marks a directory changed: times, change counter, link count delta.
    fn touch_dir(&mut self, dir: u64, nlink_delta: i32, time_ns: u64) -> Result<(), FsError> {
        let mut d = self.get_inode(dir)?.ok_or(FsError::Stale)?;
        d.nlink = d
            .nlink
            .checked_add_signed(nlink_delta)
            .ok_or_else(|| FsError::Corrupt(format!("dir {dir} link count")))?;
        d.mtime_ns = time_ns;
        d.ctime_ns = time_ns;
        d.change = d.change.max(self.seq);
        self.put_inode(dir, &d)
    }

    fn add_entry(
        &mut self,
        dir: u64,
        name: &[u8],
        ino: u64,
        gen: u64,
        kind: FileType,
    ) -> Result<u64, FsError> {
        let mut d = self.get_inode(dir)?.ok_or(FsError::Stale)?;
        let id = d.next_entry;
        d.next_entry += 1;
        self.put_inode(dir, &d)?;
        let rec = DirRecord {
            ino,
            gen,
            kind,
            name: name.to_vec(),
        };
        self.t.insert(
            self.root,
            Key::new(dir, KIND_DIRENT, id),
            Value::Bytes(rec.encode()),
        )?;
        let hk = Key::new(dir, KIND_NAMEIDX, name_hash(name));
        let mut ids = match tree::get(self.t.io, self.root, &hk)? {
            Some(v) => decode_ids(value_bytes(&v)?).map_err(corrupt)?,
            None => Vec::new(),
        };
        if ids.len() >= HASH_COLLISIONS_MAX {
            return Err(FsError::NoSpace);
        }
        ids.push(id);
        self.t
            .insert(self.root, hk, Value::Bytes(encode_ids(&ids)))?;
        Ok(id)
    }

    fn remove_entry(&mut self, dir: u64, id: u64, name: &[u8]) -> Result<(), FsError> {
        self.t.remove(self.root, &Key::new(dir, KIND_DIRENT, id))?;
        let hk = Key::new(dir, KIND_NAMEIDX, name_hash(name));
        let mut ids = match tree::get(self.t.io, self.root, &hk)? {
            Some(v) => decode_ids(value_bytes(&v)?).map_err(corrupt)?,
            None => {
                return Err(FsError::Corrupt(format!(
                    "dir {dir}: entry {id} not in name index"
                )))
            }
        };
        ids.retain(|&x| x != id);
        if ids.is_empty() {
            self.t.remove(self.root, &hk)?;
        } else {
            self.t
                .insert(self.root, hk, Value::Bytes(encode_ids(&ids)))?;
        }
        Ok(())
    }

    /// Removes an object and everything it holds.
    fn destroy(&mut self, ino: u64) -> Result<(), FsError> {
        self.t.remove_range(
            self.root,
            &Key::new(ino, 0, 0),
            &Key::new(ino + 1, 0, 0),
            &mut |_, _| {},
        )
    }

    fn dir_is_empty(&self, dir: u64) -> Result<bool, FsError> {
        let mut empty = true;
        tree::scan(
            self.t.io,
            self.root,
            &Key::new(dir, KIND_DIRENT, 0),
            &Key::new(dir, KIND_DIRENT + 1, 0),
            &mut |_, _| {
                empty = false;
                Ok(false)
            },
        )?;
        Ok(empty)
    }

    fn apply(&mut self, op: &FsOp) -> Result<Option<Attr>, FsError> {
        match op {
            FsOp::Create {
                dir,
                name,
                new,
                how,
                attr,
                time_ns,
            } => self
                .create_file(dir, name, new, *how, attr, *time_ns)
                .map(Some),
            FsOp::Mkdir {
                dir,
                name,
                new,
                time_ns,
            } => self
                .create(
                    dir,
                    name,
                    new,
                    FileType::Directory,
                    CreateHow::Guarded,
                    (0, 0),
                    &[],
                    *time_ns,
                )
                .map(Some),
            FsOp::Symlink {
                dir,
                name,
                new,
                target,
                time_ns,
            } => {
                if target.is_empty() || target.len() > SYMLINK_BYTES_MAX {
                    return Err(FsError::Invalid(format!(
                        "symlink target of {} bytes",
                        target.len()
                    )));
                }
                self.create(
                    dir,
                    name,
                    new,
                    FileType::Symlink,
                    CreateHow::Guarded,
                    (0, 0),
                    target,
                    *time_ns,
                )
                .map(Some)
            }
            FsOp::Mknod {
                dir,
                name,
                new,
                special,
                time_ns,
            } => {
                let (kind, rdev) = match special {
                    Special::Fifo => (FileType::Fifo, (0, 0)),
                    Special::Socket => (FileType::Socket, (0, 0)),
                    Special::Char(a, b) => (FileType::CharDev, (*a, *b)),
                    Special::Block(a, b) => (FileType::BlockDev, (*a, *b)),
                };
                self.create(
                    dir,
                    name,
                    new,
                    kind,
                    CreateHow::Guarded,
                    rdev,
                    &[],
                    *time_ns,
                )
                .map(Some)
            }
            FsOp::Link {
                target,
                dir,
                name,
                time_ns,
            } => self.link(target, dir, name, *time_ns).map(Some),
            FsOp::Remove { dir, name, time_ns } => {
                self.remove(dir, name, false, *time_ns).map(|_| None)
            }
            FsOp::Rmdir { dir, name, time_ns } => {
                self.remove(dir, name, true, *time_ns).map(|_| None)
            }
            FsOp::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                time_ns,
            } => self
                .rename(from_dir, from_name, to_dir, to_name, *time_ns)
                .map(|_| None),
            FsOp::SetAttr {
                target,
                attr,
                time_ns,
            } => self.setattr(target, attr, *time_ns).map(Some),
            FsOp::Write {
                target,
                offset,
                data,
                time_ns,
            } => self.write(target, *offset, data, *time_ns).map(Some),
        }
    }

    /// CREATE of a regular file: a new file gets `attr` whole, an existing one an UNCHECKED
    /// create returns gets only its size.
    fn create_file(
        &mut self,
        dir: &Fid,
        name: &[u8],
        new: &NewObj,
        how: CreateHow,
        attr: &CreateAttr,
        time_ns: u64,
    ) -> Result<Attr, FsError> {
        if attr.size.is_some_and(|s| s > FILE_SIZE_MAX) {
            return Err(FsError::FileTooBig);
        }
        let a = self.create(dir, name, new, FileType::Regular, how, (0, 0), &[], time_ns)?;
        let made_now = (a.fileid, a.gen) == (new.ino, new.gen);
        if made_now {
            if attr.is_empty()
                || self
                    .get_inode(new.ino)?
                    .is_some_and(|i| i.change != self.seq)
            {
                return Ok(a); // nothing to set, or a replay of an op applied before
            }
            let set = SetAttr {
                size: attr.size,
                atime_ns: attr.atime_ns,
                mtime_ns: attr.mtime_ns,
                ..SetAttr::default()
            };
            return self.setattr(
                &Fid {
                    ino: a.fileid,
                    gen: a.gen,
                },
                &set,
                time_ns,
            );
        }
        match (how, attr.size) {
            (CreateHow::Unchecked, Some(size)) => {
                let set = SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                };
                self.setattr(
                    &Fid {
                        ino: a.fileid,
                        gen: a.gen,
                    },
                    &set,
                    time_ns,
                )
            }
            _ => Ok(a),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        dir: &Fid,
        name: &[u8],
        new: &NewObj,
        kind: FileType,
        how: CreateHow,
        rdev: (u32, u32),
        target: &[u8],
        time_ns: u64,
    ) -> Result<Attr, FsError> {
        check_name(name)?;
        self.checked_dir(dir)?;
        if let Some((_, rec)) = self.find(dir.ino, name)? {
            if rec.ino == new.ino && rec.gen == new.gen {
                return self.attr(rec.ino); // replay of this very op
            }
            let existing = self.get_inode(rec.ino)?.ok_or(FsError::Stale)?;
            return match how {
                CreateHow::Unchecked
                    if kind == FileType::Regular && rec.kind == FileType::Regular =>
                {
                    self.attr(rec.ino)
                }
                CreateHow::Exclusive(v) if existing.verifier == Some(v) => self.attr(rec.ino),
                _ => Err(FsError::Exists),
            };
        }
        if new.ino < FIRST_INO {
            return Err(FsError::Invalid(format!(
                "inode number {} is reserved",
                new.ino
            )));
        }
        if let Some(i) = self.get_inode(new.ino)? {
            if i.gen == new.gen {
                return self.attr(new.ino); // created, then renamed: replay is a no-op
            }
            return Err(FsError::Invalid(format!("inode {} is in use", new.ino)));
        }
        let is_dir = kind == FileType::Directory;
        let i = Inode {
            kind,
            gen: new.gen,
            mode: new.mode & 0o7777,
            uid: new.uid,
            gid: new.gid,
            nlink: if is_dir { 2 } else { 1 },
            size: target.len() as u64,
            blocks: 0,
            atime_ns: time_ns,
            mtime_ns: time_ns,
            ctime_ns: time_ns,
            change: self.seq,
            rdev,
            parent: if is_dir { dir.ino } else { 0 },
            next_entry: FIRST_ENTRY_ID,
            verifier: match how {
                CreateHow::Exclusive(v) => Some(v),
                _ => None,
            },
            target: target.to_vec(),
        };
        self.put_inode(new.ino, &i)?;
        self.add_entry(dir.ino, name, new.ino, new.gen, kind)?;
        self.touch_dir(dir.ino, is_dir as i32, time_ns)?;
        Ok(Attr::from_inode(View::Live, new.ino, &i))
    }

    fn link(
        &mut self,
        target: &Fid,
        dir: &Fid,
        name: &[u8],
        time_ns: u64,
    ) -> Result<Attr, FsError> {
        check_name(name)?;
        let mut t = self.checked(target)?;
        if t.kind == FileType::Directory {
            return Err(FsError::IsDir);
        }
        self.checked_dir(dir)?;
        if let Some((_, rec)) = self.find(dir.ino, name)? {
            if rec.ino == target.ino && rec.gen == target.gen {
                return self.attr(target.ino);
            }
            return Err(FsError::Exists);
        }
        self.add_entry(dir.ino, name, target.ino, target.gen, t.kind)?;
        t.nlink += 1;
        t.ctime_ns = time_ns;
        t.change = t.change.max(self.seq);
        self.put_inode(target.ino, &t)?;
        self.touch_dir(dir.ino, 0, time_ns)?;
        Ok(Attr::from_inode(View::Live, target.ino, &t))
    }

    /// Drops one link to `ino` (entry already removed); destroys the object at zero.
    fn unlink_inode(&mut self, ino: u64, time_ns: u64) -> Result<(), FsError> {
        let mut t = self
            .get_inode(ino)?
            .ok_or_else(|| FsError::Corrupt(format!("entry names missing inode {ino}")))?;
        if t.kind == FileType::Directory || t.nlink <= 1 {
            return self.destroy(ino);
        }
        t.nlink -= 1;
        t.ctime_ns = time_ns;
        t.change = t.change.max(self.seq);
        self.put_inode(ino, &t)
    }

    fn remove(
        &mut self,
        dir: &Fid,
        name: &[u8],
        want_dir: bool,
        time_ns: u64,
    ) -> Result<(), FsError> {
        if name == b"." || name == b".." {
            return Err(FsError::Invalid("cannot remove . or ..".into()));
        }
        self.checked_dir(dir)?;
        let (id, rec) = self.find(dir.ino, name)?.ok_or(FsError::NotFound)?;
        self.check_removable(&rec, want_dir)?;
        self.drop_entry(dir.ino, id, name, &rec, time_ns)
    }

    /// Whether an entry may go away for an op that expects a directory (`want_dir`) or
    /// not: REMOVE/RMDIR, and the target of a RENAME (expecting the source's kind).
    fn check_removable(&self, rec: &DirRecord, want_dir: bool) -> Result<(), FsError> {
        let is_dir = rec.kind == FileType::Directory;
        if is_dir && !want_dir {
            return Err(FsError::IsDir);
        }
        if !is_dir && want_dir {
            return Err(FsError::NotDir);
        }
        if is_dir && !self.dir_is_empty(rec.ino)? {
            return Err(FsError::NotEmpty);
        }
        Ok(())
    }

    /// Removes entry `id` (`name` → `rec`) of directory `dir` and the link it held.
    fn drop_entry(
        &mut self,
        dir: u64,
        id: u64,
        name: &[u8],
        rec: &DirRecord,
        time_ns: u64,
    ) -> Result<(), FsError> {
        let is_dir = rec.kind == FileType::Directory;
        self.remove_entry(dir, id, name)?;
        self.unlink_inode(rec.ino, time_ns)?;
        self.touch_dir(dir, -(is_dir as i32), time_ns)
    }

    fn rename(
        &mut self,
        fd: &Fid,
        fname: &[u8],
        td: &Fid,
        tname: &[u8],
        time_ns: u64,
    ) -> Result<(), FsError> {
        check_name(fname)?;
        check_name(tname)?;
        self.checked_dir(fd)?;
        self.checked_dir(td)?;
        let (sid, src) = self.find(fd.ino, fname)?.ok_or(FsError::NotFound)?;
        if fd.ino == td.ino && fname == tname {
            return Ok(());
        }
        let src_dir = src.kind == FileType::Directory;
        if src_dir && fd.ino != td.ino {
            // A directory cannot move below itself: walk up from the target to the root.
            let mut cur = td.ino;
            let mut depth = 0;
            while cur != ROOT_INO {
                if cur == src.ino {
                    return Err(FsError::Invalid("rename of a directory into itself".into()));
                }
                depth += 1;
                if depth > DIR_DEPTH_MAX {
                    return Err(FsError::Invalid(format!(
                        "directory tree deeper than {DIR_DEPTH_MAX} levels above the rename target"
                    )));
                }
                cur = self.get_inode(cur)?.ok_or(FsError::Stale)?.parent;
            }
        }
        if let Some((did, dst)) = self.find(td.ino, tname)? {
            if dst.ino == src.ino {
                return Ok(()); // two links to one file: POSIX says do nothing
            }
            self.check_removable(&dst, src_dir)?;
            self.drop_entry(td.ino, did, tname, &dst, time_ns)?;
        }
        self.remove_entry(fd.ino, sid, fname)?;
        self.add_entry(td.ino, tname, src.ino, src.gen, src.kind)?;
        let mut s = self.get_inode(src.ino)?.ok_or(FsError::Stale)?;
        s.ctime_ns = time_ns;
        s.change = s.change.max(self.seq);
        if src_dir {
            s.parent = td.ino;
        }
        self.put_inode(src.ino, &s)?;
        let moved_dir = (src_dir && fd.ino != td.ino) as i32;
        self.touch_dir(fd.ino, -moved_dir, time_ns)?;
        self.touch_dir(td.ino, moved_dir, time_ns)
    }

    fn setattr(&mut self, target: &Fid, a: &SetAttr, time_ns: u64) -> Result<Attr, FsError> {
        let mut i = self.checked(target)?;
        if let Some(size) = a.size {
            match i.kind {
                FileType::Regular => {}
                FileType::Directory => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("size of a special file".into())),
            }
            if size > FILE_SIZE_MAX {
                return Err(FsError::FileTooBig);
            }
            if size != i.size {
                self.truncate(target.ino, &mut i, size)?;
                i.mtime_ns = time_ns;
            }
        }
        if let Some(m) = a.mode {
            i.mode = m & 0o7777;
        }
        if let Some(u) = a.uid {
            i.uid = u;
        }
        if let Some(g) = a.gid {
            i.gid = g;
        }
        if let Some(t) = a.atime_ns {
            i.atime_ns = t;
        }
        if let Some(t) = a.mtime_ns {
            i.mtime_ns = t;
        }
        i.ctime_ns = time_ns;
        i.verifier = None;
        i.change = i.change.max(self.seq);
        self.put_inode(target.ino, &i)?;
        Ok(Attr::from_inode(View::Live, target.ino, &i))
    }

    fn truncate(&mut self, ino: u64, i: &mut Inode, size: u64) -> Result<(), FsError> {
        let bs = BLOCK_SIZE as u64;
        if size < i.size {
            let mut removed = 0u64;
            self.t.remove_range(
                self.root,
                &Key::new(ino, KIND_EXTENT, size.div_ceil(bs)),
                &Key::new(ino, KIND_EXTENT + 1, 0),
                &mut |_, _| removed += 1,
            )?;
            i.blocks -= removed;
            if !size.is_multiple_of(bs) {
                // Zero the tail of the last block, so a later extension reads zeros.
                let k = Key::new(ino, KIND_EXTENT, size / bs);
                if let Some(Value::Data(s)) = tree::get(self.t.io, self.root, &k)? {
                    let mut b = s.data(self.t.io)?.to_vec();
                    b[(size % bs) as usize..].fill(0);
                    self.t
                        .insert(self.root, k, Value::Data(Slot::dirty_data(b)))?;
                }
            }
        }
        i.size = size;
        Ok(())
    }

    fn write(
        &mut self,
        target: &Fid,
        offset: u64,
        data: &[u8],
        time_ns: u64,
    ) -> Result<Attr, FsError> {
        let mut i = self.checked(target)?;
        match i.kind {
            FileType::Regular => {}
            FileType::Directory => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("write to a special file".into())),
        }
        if data.len() > WRITE_BYTES_MAX {
            return Err(FsError::Invalid(format!("write of {} bytes", data.len())));
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::FileTooBig)?;
        if end > FILE_SIZE_MAX {
            return Err(FsError::FileTooBig);
        }
        let bs = BLOCK_SIZE as u64;
        let mut pos = offset;
        while pos < end {
            let bi = pos / bs;
            let in_off = (pos % bs) as usize;
            let n = ((bs - pos % bs) as usize).min((end - pos) as usize);
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            let k = Key::new(target.ino, KIND_EXTENT, bi);
            let block = if n == BLOCK_SIZE {
                src.to_vec()
            } else {
                let mut b = match tree::get(self.t.io, self.root, &k)? {
                    Some(Value::Data(s)) => s.data(self.t.io)?.to_vec(),
                    Some(Value::Bytes(_)) => {
                        return Err(FsError::Corrupt(format!(
                            "inode {}: bad extent",
                            target.ino
                        )))
                    }
                    None => vec![0u8; BLOCK_SIZE],
                };
                b[in_off..in_off + n].copy_from_slice(src);
                b
            };
            let replaced = self
                .t
                .insert(self.root, k, Value::Data(Slot::dirty_data(block)))?;
            if !replaced {
                i.blocks += 1;
            }
            pos += n as u64;
        }
        i.size = i.size.max(end);
        i.mtime_ns = time_ns;
        i.ctime_ns = time_ns;
        i.change = i.change.max(self.seq);
        self.put_inode(target.ino, &i)?;
        Ok(Attr::from_inode(View::Live, target.ino, &i))
    }
}
