//! Helpers shared by the integration tests: a client that builds ops, and a tree dump.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use wafl::*;

/// Small geometry: 4 data blocks per stripe.
pub const SDB: usize = 4;

pub fn mem_store(stripes: u64) -> Arc<MemStore> {
    Arc::new(MemStore::new(SDB, stripes))
}

/// Builds and applies ops with increasing sequence numbers and times.
pub struct Client {
    pub fs: Fs,
    pub seq: u64,
    pub log: Vec<(u64, FsOp)>,
}

impl Client {
    pub fn new(fs: Fs) -> Client {
        let seq = fs.applied_seq();
        Client {
            fs,
            seq,
            log: Vec::new(),
        }
    }
    pub fn now(&self) -> u64 {
        1_700_000_000_000_000_000 + self.seq * 1000
    }
    pub fn fid(h: &Handle) -> Fid {
        Fid {
            ino: h.ino,
            gen: h.gen,
        }
    }
    pub fn new_obj(&self, mode: u32) -> NewObj {
        let (ino, gen) = self.fs.reserve_inode();
        NewObj {
            ino,
            gen,
            mode,
            uid: 1000,
            gid: 100,
        }
    }
    pub fn apply(&mut self, op: FsOp) -> Result<Option<Attr>, FsError> {
        self.seq += 1;
        self.log.push((self.seq, op.clone()));
        // Every op must survive its own encoding (it is the NVRAM record payload).
        let decoded = FsOp::decode(&op.encode()).expect("decode");
        assert_eq!(decoded, op);
        self.fs.apply(self.seq, &op)
    }
    pub fn create(&mut self, dir: &Handle, name: &str) -> Result<Handle, FsError> {
        let new = self.new_obj(0o644);
        let t = self.now();
        self.apply(FsOp::Create {
            dir: Self::fid(dir),
            name: name.into(),
            new,
            how: CreateHow::Guarded,
            attr: Default::default(),
            time_ns: t,
        })
        .map(|a| a.expect("attr").handle)
    }
    pub fn mkdir(&mut self, dir: &Handle, name: &str) -> Result<Handle, FsError> {
        let new = self.new_obj(0o755);
        let t = self.now();
        self.apply(FsOp::Mkdir {
            dir: Self::fid(dir),
            name: name.into(),
            new,
            time_ns: t,
        })
        .map(|a| a.expect("attr").handle)
    }
    pub fn write(&mut self, h: &Handle, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let t = self.now();
        self.apply(FsOp::Write {
            target: Self::fid(h),
            offset,
            data: data.to_vec().into(),
            time_ns: t,
        })
        .map(|_| ())
    }
    pub fn remove(&mut self, dir: &Handle, name: &str) -> Result<(), FsError> {
        let t = self.now();
        self.apply(FsOp::Remove {
            dir: Self::fid(dir),
            name: name.into(),
            time_ns: t,
        })
        .map(|_| ())
    }
}

/// A canonical dump of a tree: path -> description (type, mode, nlink, size, content).
pub type Dump = BTreeMap<String, String>;

pub fn dump(fs: &Fs, root: &Handle) -> Dump {
    let mut out = Dump::new();
    dump_dir(fs, root, "", &mut out);
    out
}

fn dump_dir(fs: &Fs, dir: &Handle, path: &str, out: &mut Dump) {
    let mut cookie = 0;
    for _ in 0..1_000_000 {
        let (entries, eof) = fs.readdir(dir, cookie, 7).expect("readdir");
        for e in &entries {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let p = format!("{path}/{name}");
            let a = fs.getattr(&e.handle).expect("getattr");
            let desc = match a.kind {
                FileType::Regular => {
                    let (data, _) = fs.read(&e.handle, 0, a.size as usize).expect("read");
                    format!(
                        "file mode={:o} nlink={} size={} sum={:x}",
                        a.mode,
                        a.nlink,
                        a.size,
                        crc(&data)
                    )
                }
                FileType::Directory => format!("dir mode={:o} nlink={}", a.mode, a.nlink),
                FileType::Symlink => format!(
                    "symlink -> {}",
                    String::from_utf8_lossy(&fs.readlink(&e.handle).expect("readlink"))
                ),
                k => format!("{k:?} mode={:o} rdev={:?}", a.mode, a.rdev),
            };
            out.insert(p.clone(), desc);
            if a.kind == FileType::Directory {
                dump_dir(fs, &e.handle, &p, out);
            }
            cookie = e.cookie;
        }
        if eof {
            return;
        }
    }
    panic!("readdir did not end");
}

fn crc(b: &[u8]) -> u64 {
    // FNV-1a over the content: enough to compare trees.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
