//! `fsck`: walks every tree (the active file system and each snapshot), verifies every block
//! checksum, the tree structure, link counts, reachability, directory indexes and the free
//! map. It reports and repairs nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::alloc::{Bitmap, SUPERBLOCK_STRIPES};
use crate::codec::{name_hash, BlockPtr};
use crate::cp::{decode_snaptable, load_chunk_ptrs, read_blob, read_superblocks};
use crate::error::FsError;
use crate::fs::{lock, Fs};
use crate::store::StripeStore;
use crate::tree::{decode_node, Io, Key, Node, Value};
use crate::types::*;

/// Errors listed in full; beyond this only counted.
const ERRORS_LISTED_MAX: usize = 200;

/// What fsck found.
#[derive(Debug, Default)]
pub struct FsckReport {
    /// Generation of the root checked.
    pub gen: u64,
    /// Inconsistencies, each naming the object or block.
    pub errors: Vec<String>,
    /// Errors beyond `ERRORS_LISTED_MAX`.
    pub errors_not_listed: u64,
    /// Informational notes (e.g. the older superblock).
    pub notes: Vec<String>,
    /// Inodes in the active file system.
    pub inodes: u64,
    /// Directory entries in the active file system.
    pub entries: u64,
    /// Blocks referenced by all trees.
    pub blocks_referenced: u64,
    /// Snapshots checked.
    pub snapshots: usize,
}

impl FsckReport {
    /// True when no error was found.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
    fn err(&mut self, e: String) {
        if self.errors.len() < ERRORS_LISTED_MAX {
            self.errors.push(e);
        } else {
            self.errors_not_listed += 1;
        }
    }
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fsck: generation {}, {} inodes, {} entries, {} blocks referenced, {} snapshots: {}",
            self.gen,
            self.inodes,
            self.entries,
            self.blocks_referenced,
            self.snapshots,
            if self.is_clean() {
                "clean".to_string()
            } else {
                format!(
                    "{} errors",
                    self.errors.len() as u64 + self.errors_not_listed
                )
            }
        )?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        if self.errors_not_listed > 0 {
            writeln!(f, "error: ... and {} more", self.errors_not_listed)?;
        }
        Ok(())
    }
}

/// An item collected from the active tree.
enum Item {
    Bytes(Vec<u8>),
    Data,
}

struct Walker<'a> {
    io: &'a Io,
    total_blocks: u64,
    seen: HashSet<u64>,
    report: &'a mut FsckReport,
}

impl Walker<'_> {
    /// Walks one tree. Blocks already seen (shared with a tree walked before) are skipped;
    /// items are collected only when `items` is given.
    fn walk(
        &mut self,
        ptr: BlockPtr,
        level: Option<u8>,
        lo: Key,
        hi: Option<Key>,
        tree: &str,
        items: &mut Option<Vec<(Key, Item)>>,
    ) {
        if ptr.addr >= self.total_blocks || ptr.addr < SUPERBLOCK_STRIPES {
            self.report.err(format!(
                "{tree}: node pointer to block {} out of range",
                ptr.addr
            ));
            return;
        }
        if !self.seen.insert(ptr.addr) {
            if items.is_some() {
                self.report
                    .err(format!("{tree}: block {} referenced twice", ptr.addr));
            }
            return;
        }
        let buf = match self.io.read_verified(&ptr, "tree node") {
            Ok(b) => b,
            Err(e) => return self.report.err(format!("{tree}: {e}")),
        };
        let node = match decode_node(&buf, ptr.birth) {
            Ok(n) => n,
            Err(e) => {
                return self
                    .report
                    .err(format!("{tree}: node at block {}: {e}", ptr.addr))
            }
        };
        if let Some(l) = level {
            if node.level() != l {
                self.report.err(format!(
                    "{tree}: node at block {} has level {}, expected {l}",
                    ptr.addr,
                    node.level()
                ));
            }
        }
        let in_range = |k: &Key| *k >= lo && hi.is_none_or(|h| *k < h);
        match node {
            Node::Leaf(v) => {
                for (k, val) in v {
                    if !in_range(&k) {
                        self.report.err(format!(
                            "{tree}: key {k:?} in block {} outside its parent's range",
                            ptr.addr
                        ));
                    }
                    let item = match val {
                        Value::Bytes(b) => Item::Bytes(b),
                        Value::Data(s) => {
                            let dp = s.ptr().expect("decoded data pointers are set");
                            self.data(dp, ptr.birth, tree, items.is_some());
                            Item::Data
                        }
                    };
                    if let Some(items) = items.as_mut() {
                        items.push((k, item));
                    }
                }
            }
            Node::Internal { level, kids } => {
                for (i, (k, s)) in kids.iter().enumerate() {
                    let child_lo = if i == 0 { lo.max(*k) } else { *k };
                    if i > 0 && !in_range(k) {
                        self.report.err(format!(
                            "{tree}: separator {k:?} in block {} outside its range",
                            ptr.addr
                        ));
                    }
                    let child_hi = kids.get(i + 1).map(|e| e.0).or(hi);
                    let cp = s.ptr().expect("decoded child pointers are set");
                    self.walk(cp, Some(level - 1), child_lo, child_hi, tree, items);
                }
            }
        }
    }

    fn data(&mut self, p: BlockPtr, parent_birth: u64, tree: &str, first_tree: bool) {
        if p.addr >= self.total_blocks || p.addr < SUPERBLOCK_STRIPES {
            return self.report.err(format!(
                "{tree}: data pointer to block {} out of range",
                p.addr
            ));
        }
        if p.birth > parent_birth {
            self.report
                .err(format!("{tree}: data block {} newer than its leaf", p.addr));
        }
        if !self.seen.insert(p.addr) {
            if first_tree {
                self.report
                    .err(format!("{tree}: data block {} referenced twice", p.addr));
            }
            return;
        }
        if let Err(e) = self.io.read_verified(&p, "data block") {
            self.report.err(format!("{tree}: {e}"));
        }
    }
}

/// Checks the newest valid root of a store and everything it references.
pub fn check(store: Arc<dyn StripeStore>) -> FsckReport {
    let io = Io::new(store);
    let mut report = FsckReport::default();
    let (sb, notes) = read_superblocks(&io);
    report.notes = notes;
    let Some(sb) = sb else {
        report.err("no valid superblock".into());
        return report;
    };
    report.gen = sb.gen;
    let sdb = io.store.stripe_data_blocks() as u64;
    let total = sdb * io.store.stripe_count();
    if sb.total_blocks != total || sb.stripe_data_blocks as u64 != sdb {
        report.err(format!(
            "superblock geometry {}x{} does not match the store {total}x{sdb}",
            sb.total_blocks, sb.stripe_data_blocks
        ));
        return report;
    }
    // The free map as written.
    let mut map = Bitmap::new(total);
    let mut meta: Vec<(u64, &str)> = sb
        .fmap_index
        .ptrs
        .iter()
        .map(|p| (p.addr, "free-map index"))
        .collect();
    meta.extend(sb.snaptable.ptrs.iter().map(|p| (p.addr, "snapshot table")));
    match load_chunk_ptrs(&io, &sb) {
        Ok(ptrs) => {
            if ptrs.len() as u64 != total.div_ceil(crate::alloc::CHUNK_BLOCKS) {
                report.err(format!(
                    "free map has {} chunks for {total} blocks",
                    ptrs.len()
                ));
            }
            for (c, p) in ptrs.iter().enumerate() {
                let Some(p) = p else { continue };
                meta.push((p.addr, "free-map chunk"));
                match io.read_verified(p, "free-map chunk") {
                    Ok(b) => {
                        if let Err(e) = map.load_chunk(c as u64, &b) {
                            report.err(e.to_string());
                        }
                    }
                    Err(e) => report.err(format!("free-map chunk {c}: {e}")),
                }
            }
        }
        Err(e) => report.err(format!("free-map index: {e}")),
    }
    if map.ones() != sb.used_blocks {
        report.err(format!(
            "free map marks {} blocks used, superblock says {}",
            map.ones(),
            sb.used_blocks
        ));
    }
    let snaps =
        match read_blob(&io, &sb.snaptable, "snapshot table").and_then(|b| decode_snaptable(&b)) {
            Ok(s) => s,
            Err(e) => {
                report.err(format!("snapshot table: {e}"));
                Vec::new()
            }
        };
    report.snapshots = snaps.len();

    // Every tree: the active one first (with items for the semantic checks).
    let mut w = Walker {
        io: &io,
        total_blocks: total,
        seen: HashSet::new(),
        report: &mut report,
    };
    let mut items = Some(Vec::new());
    if sb.root.birth > sb.gen {
        w.report.err("root newer than its superblock".into());
    }
    w.walk(sb.root, None, Key::MIN, None, "active", &mut items);
    let mut prev_gen = 0;
    for s in &snaps {
        if s.gen <= prev_gen || s.gen > sb.gen || s.root.birth > s.gen {
            w.report.err(format!(
                "snapshot {:?}: generation {} out of order",
                s.name, s.gen
            ));
        }
        prev_gen = s.gen;
        w.walk(
            s.root,
            None,
            Key::MIN,
            None,
            &format!("snapshot {:?}", s.name),
            &mut None,
        );
    }
    let seen = std::mem::take(&mut w.seen);
    report.blocks_referenced = seen.len() as u64;

    // The free map must be exactly: superblock stripes + every referenced block.
    let mut missing = 0u64;
    let mut leaked = 0u64;
    for b in 0..total {
        let want = b < SUPERBLOCK_STRIPES * sdb || seen.contains(&b);
        let have = map.get(b);
        if want && !have {
            missing += 1;
            if missing <= 10 {
                report.err(format!("block {b} is referenced but free in the free map"));
            }
        } else if have && !want {
            leaked += 1;
            if leaked <= 10 {
                report.err(format!(
                    "block {b} is marked used but nothing references it (leak)"
                ));
            }
        }
    }
    if missing > 10 || leaked > 10 {
        report.err(format!(
            "free map: {missing} referenced blocks free, {leaked} leaked blocks in total"
        ));
    }
    let mut meta_seen = HashSet::new();
    for (b, what) in meta {
        if b >= total
            || b < SUPERBLOCK_STRIPES * sdb
            || seen.contains(&b)
            || map.get(b)
            || !meta_seen.insert(b)
        {
            report.err(format!(
                "{what} block {b} overlaps other data or is out of range"
            ));
        }
    }
    if let Some(items) = items {
        check_semantics(&items, &mut report, "active");
        // Counters must be ahead of every number in use, or a new object would reuse one.
        for (k, it) in &items {
            if let (KIND_INODE, Item::Bytes(b)) = (k.kind, it) {
                if k.obj >= sb.next_ino && k.obj >= FIRST_INO {
                    report.err(format!(
                        "inode {} at or above the next inode number {}",
                        k.obj, sb.next_ino
                    ));
                }
                if let Ok(i) = Inode::decode(b) {
                    if i.gen >= sb.next_gen {
                        report.err(format!(
                            "inode {}: generation {} at or above the next generation {}",
                            k.obj, i.gen, sb.next_gen
                        ));
                    }
                }
            }
        }
    }
    // Snapshots are whole trees too: the same semantic checks (their blocks were verified
    // above; nodes shared with other trees are read again here).
    for s in &snaps {
        let label = format!("snapshot {:?}", s.name);
        let root = crate::tree::Slot::clean(s.root);
        let mut items = Vec::new();
        let end = Key::new(u64::MAX, u8::MAX, u64::MAX);
        let scanned = crate::tree::scan(&io, &root, &Key::MIN, &end, &mut |k, v| {
            items.push((
                *k,
                match v {
                    Value::Bytes(b) => Item::Bytes(b.clone()),
                    Value::Data(_) => Item::Data,
                },
            ));
            Ok(true)
        });
        match scanned {
            Ok(()) => check_semantics(&items, &mut report, &label),
            Err(e) => report.err(format!("{label}: {e}")),
        }
    }
    report
}

/// Link counts, reachability, directory entries and indexes, extents of the active tree.
fn check_semantics(items: &[(Key, Item)], report: &mut FsckReport, tree: &str) {
    let mut inodes: HashMap<u64, Inode> = HashMap::new();
    let mut dirents: Vec<(u64, u64, DirRecord)> = Vec::new();
    let mut nameidx: HashMap<(u64, u64), Vec<u64>> = HashMap::new();
    let mut extents: HashMap<u64, (u64, u64)> = HashMap::new(); // count, max index
    for (k, it) in items {
        match (k.kind, it) {
            (KIND_INODE, Item::Bytes(b)) if k.off == 0 => match Inode::decode(b) {
                Ok(i) => {
                    inodes.insert(k.obj, i);
                }
                Err(e) => report.err(format!("{tree}: inode {}: {e}", k.obj)),
            },
            (KIND_DIRENT, Item::Bytes(b)) => match DirRecord::decode(b) {
                Ok(r) => dirents.push((k.obj, k.off, r)),
                Err(e) => report.err(format!("{tree}: dir {} entry {}: {e}", k.obj, k.off)),
            },
            (KIND_NAMEIDX, Item::Bytes(b)) => match decode_ids(b) {
                Ok(ids) => {
                    nameidx.insert((k.obj, k.off), ids);
                }
                Err(e) => report.err(format!("{tree}: dir {} name index {:x}: {e}", k.obj, k.off)),
            },
            (KIND_EXTENT, Item::Data) => {
                let e = extents.entry(k.obj).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(k.off);
            }
            _ => report.err(format!("{tree}: unexpected item {k:?}")),
        }
    }
    if tree == "active" {
        report.inodes = inodes.len() as u64;
        report.entries = dirents.len() as u64;
    }
    match inodes.get(&ROOT_INO) {
        Some(r) if r.kind == FileType::Directory => {}
        _ => report.err(format!("{tree}: root directory missing or not a directory")),
    }
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut parent_of: HashMap<u64, u64> = HashMap::new();
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut indexed: HashSet<(u64, u64)> = HashSet::new();
    for ((dir, _), ids) in &nameidx {
        for id in ids {
            indexed.insert((*dir, *id));
        }
    }
    let mut entry_hash: HashMap<(u64, u64), u64> = HashMap::new();
    for (dir, id, rec) in &dirents {
        entry_hash.insert((*dir, *id), name_hash(&rec.name));
        let Some(d) = inodes.get(dir) else {
            report.err(format!(
                "entry {id} {:?} in missing directory {dir}",
                String::from_utf8_lossy(&rec.name)
            ));
            continue;
        };
        if d.kind != FileType::Directory {
            report.err(format!("{tree}: entry {id} in non-directory {dir}"));
        }
        if *id < FIRST_ENTRY_ID || *id >= d.next_entry {
            report.err(format!(
                "dir {dir}: entry id {id} outside [{FIRST_ENTRY_ID}, {})",
                d.next_entry
            ));
        }
        if check_name(&rec.name).is_err() {
            report.err(format!("{tree}: dir {dir}: bad name in entry {id}"));
        }
        if !indexed.contains(&(*dir, *id)) {
            report.err(format!(
                "{tree}: dir {dir}: entry {id} missing from the name index"
            ));
        }
        match inodes.get(&rec.ino) {
            None => report.err(format!(
                "dir {dir}: entry {:?} points to missing inode {}",
                String::from_utf8_lossy(&rec.name),
                rec.ino
            )),
            Some(t) => {
                if t.gen != rec.gen || t.kind != rec.kind {
                    report.err(format!(
                        "dir {dir}: entry {:?} has generation/type {}/{:?}, inode {} has {}/{:?}",
                        String::from_utf8_lossy(&rec.name),
                        rec.gen,
                        rec.kind,
                        rec.ino,
                        t.gen,
                        t.kind
                    ));
                }
                *links.entry(rec.ino).or_default() += 1;
                children.entry(*dir).or_default().push(rec.ino);
                if t.kind == FileType::Directory {
                    *subdirs.entry(*dir).or_default() += 1;
                    if parent_of.insert(rec.ino, *dir).is_some() {
                        report.err(format!(
                            "{tree}: directory {} has more than one name",
                            rec.ino
                        ));
                    }
                }
            }
        }
    }
    for ((dir, hash), ids) in &nameidx {
        for id in ids {
            if entry_hash.get(&(*dir, *id)) != Some(hash) {
                report.err(format!("{tree}: dir {dir}: name index {hash:x} names entry {id} which is missing or hashes elsewhere"));
            }
        }
    }
    // Reachability from the root.
    let mut reached: HashSet<u64> = HashSet::new();
    let mut stack = vec![ROOT_INO];
    while let Some(d) = stack.pop() {
        if !reached.insert(d) {
            continue;
        }
        if let Some(kids) = children.get(&d) {
            stack.extend(kids.iter().copied());
        }
    }
    let mut inos: Vec<&u64> = inodes.keys().collect();
    inos.sort();
    for &ino in inos {
        let i = &inodes[&ino];
        if !reached.contains(&ino) {
            report.err(format!(
                "{tree}: inode {ino} is not reachable from the root"
            ));
        }
        let want = if i.kind == FileType::Directory {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            links.get(&ino).copied().unwrap_or(0)
        };
        if i.nlink != want {
            report.err(format!(
                "inode {ino}: link count {} but {want} found",
                i.nlink
            ));
        }
        if i.kind == FileType::Directory {
            let p = if ino == ROOT_INO {
                Some(&ROOT_INO)
            } else {
                parent_of.get(&ino)
            };
            if p != Some(&i.parent) {
                report.err(format!(
                    "directory {ino}: parent field {} but named in {:?}",
                    i.parent, p
                ));
            }
        }
        let (n, maxi) = extents.get(&ino).copied().unwrap_or((0, 0));
        if n > 0 && i.kind != FileType::Regular {
            report.err(format!(
                "{tree}: inode {ino} ({:?}) holds data blocks",
                i.kind
            ));
        }
        if n != i.blocks {
            report.err(format!(
                "inode {ino}: {n} data blocks, inode says {}",
                i.blocks
            ));
        }
        if n > 0 && maxi * crate::store::BLOCK_SIZE as u64 >= i.size {
            report.err(format!(
                "inode {ino}: data block {maxi} beyond size {}",
                i.size
            ));
        }
        if i.kind == FileType::Symlink && (i.target.is_empty() || i.size != i.target.len() as u64) {
            report.err(format!("{tree}: symlink {ino}: bad target"));
        }
    }
    for ino in extents.keys().chain(nameidx.keys().map(|k| &k.0)) {
        if !inodes.contains_key(ino) {
            report.err(format!("{tree}: items of missing inode {ino}"));
        }
    }
}

/// The committed block addresses of a live file's data (for tests that corrupt them).
pub fn data_blocks_of(fs: &Fs, ino: u64) -> Result<Vec<u64>, FsError> {
    let root = lock(&fs.live).root.clone();
    let mut out = Vec::new();
    crate::tree::scan(
        &fs.io,
        &root,
        &Key::new(ino, KIND_EXTENT, 0),
        &Key::new(ino, KIND_EXTENT + 1, 0),
        &mut |_, v| {
            if let Value::Data(s) = v {
                out.push(
                    s.ptr()
                        .ok_or_else(|| FsError::Invalid("uncommitted block".into()))?
                        .addr,
                );
            }
            Ok(true)
        },
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{CreateHow, Fid, FsOp, NewObj};
    use crate::store::MemStore;
    use crate::tree::TreeMut;
    use crate::FsConfig;

    fn fs_with_file() -> (Arc<MemStore>, Fs, u64) {
        let store = Arc::new(MemStore::new(4, 256));
        let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
        let (ino, gen) = fs.reserve_inode();
        let new = NewObj {
            ino,
            gen,
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let dir = Fid::ROOT;
        fs.apply(
            1,
            &FsOp::Create {
                dir,
                name: b"f".to_vec(),
                new,
                how: CreateHow::Guarded,
                attr: Default::default(),
                time_ns: 1,
            },
        )
        .unwrap();
        fs.apply(
            2,
            &FsOp::Write {
                target: Fid { ino, gen },
                offset: 0,
                data: vec![5; 9000].into(),
                time_ns: 2,
            },
        )
        .unwrap();
        fs.cp().unwrap();
        assert!(check(store.clone()).is_clean());
        (store, fs, ino)
    }

    /// Rewrites an inode record behind the API's back, then commits it.
    fn tamper(fs: &Fs, ino: u64, f: impl FnOnce(&mut Inode)) {
        {
            let mut l = lock(&fs.live);
            let crate::fs::Live { root, freed, .. } = &mut *l;
            let mut i = crate::fs::inode(&fs.io, root, ino).unwrap().unwrap();
            f(&mut i);
            let mut t = TreeMut {
                io: &fs.io,
                freed,
                mutations: 0,
                replaced: false,
            };
            t.insert(root, Key::new(ino, KIND_INODE, 0), Value::Bytes(i.encode()))
                .unwrap();
            l.dirty_bytes += 1;
        }
        fs.cp().unwrap();
    }

    #[test]
    fn reports_a_wrong_link_count() {
        let (store, fs, ino) = fs_with_file();
        tamper(&fs, ino, |i| i.nlink = 3);
        let r = check(store);
        assert!(
            r.to_string()
                .contains(&format!("inode {ino}: link count 3 but 1 found")),
            "{r}"
        );
    }

    #[test]
    fn reports_wrong_block_count_and_unreachable_inodes() {
        let (store, fs, ino) = fs_with_file();
        tamper(&fs, ino, |i| i.blocks = 1);
        tamper(&fs, ROOT_INO, |i| i.nlink = 2);
        {
            // an inode no directory names
            let mut l = lock(&fs.live);
            let crate::fs::Live { root, freed, .. } = &mut *l;
            let mut i = crate::fs::inode(&fs.io, root, ino).unwrap().unwrap();
            i.gen = 99;
            let mut t = TreeMut {
                io: &fs.io,
                freed,
                mutations: 0,
                replaced: false,
            };
            t.insert(root, Key::new(500, KIND_INODE, 0), Value::Bytes(i.encode()))
                .unwrap();
        }
        fs.cp().unwrap();
        let r = check(store).to_string();
        assert!(
            r.contains(&format!("inode {ino}: 3 data blocks, inode says 1")),
            "{r}"
        );
        assert!(
            r.contains("inode 500 is not reachable from the root"),
            "{r}"
        );
    }

    #[test]
    fn reports_a_free_map_that_misses_a_block() {
        let (store, fs, _) = fs_with_file();
        {
            let mut cps = lock(&fs.cp);
            let b = lock(&fs.live).root.ptr().unwrap().addr;
            cps.alloc.unreference(b);
        }
        lock(&fs.live).dirty_bytes += 1;
        fs.cp().unwrap();
        let r = check(store).to_string();
        assert!(r.contains("is referenced but free in the free map"), "{r}");
    }
}
