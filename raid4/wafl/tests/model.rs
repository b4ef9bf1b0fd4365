//! Random FsOp sequences against an in-memory model; trees compared after every CP and
//! after every remount. Seeded: a failure prints its seed (`WAFL_MODEL_SEED` reruns one).

mod common;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use wafl::*;

#[derive(Clone)]
enum MKind {
    File(Vec<u8>),
    Dir(BTreeMap<String, u64>),
    Symlink(String),
    Special(FileType, (u32, u32)),
}

#[derive(Clone)]
struct MObj {
    kind: MKind,
    mode: u32,
    gen: u64,
}

#[derive(Default)]
struct Model {
    objs: BTreeMap<u64, MObj>,
}

impl Model {
    fn dir(&self, ino: u64) -> &BTreeMap<String, u64> {
        match &self.objs[&ino].kind {
            MKind::Dir(d) => d,
            _ => panic!("not a dir"),
        }
    }
    fn dir_mut(&mut self, ino: u64) -> &mut BTreeMap<String, u64> {
        match &mut self.objs.get_mut(&ino).unwrap().kind {
            MKind::Dir(d) => d,
            _ => panic!("not a dir"),
        }
    }
    fn is_dir(&self, ino: u64) -> bool {
        matches!(self.objs[&ino].kind, MKind::Dir(_))
    }
    fn links(&self, ino: u64) -> u32 {
        self.objs
            .values()
            .filter_map(|o| match &o.kind {
                MKind::Dir(d) => Some(d.values().filter(|&&x| x == ino).count() as u32),
                _ => None,
            })
            .sum()
    }
    fn dirs(&self) -> Vec<u64> {
        self.objs
            .iter()
            .filter(|(_, o)| matches!(o.kind, MKind::Dir(_)))
            .map(|(i, _)| *i)
            .collect()
    }
    fn files(&self) -> Vec<u64> {
        self.objs
            .iter()
            .filter(|(_, o)| matches!(o.kind, MKind::File(_)))
            .map(|(i, _)| *i)
            .collect()
    }
    fn is_ancestor(&self, a: u64, mut d: u64) -> bool {
        // walk up via search (model has no parent pointers)
        for _ in 0..1000 {
            if d == a {
                return true;
            }
            if d == ROOT_INO {
                return false;
            }
            d = *self
                .objs
                .iter()
                .find(|(_, o)| matches!(&o.kind, MKind::Dir(m) if m.values().any(|&x| x == d)))
                .unwrap()
                .0;
        }
        panic!("cycle")
    }
    fn drop_if_unlinked(&mut self, ino: u64) {
        if self.links(ino) == 0 {
            self.objs.remove(&ino);
        }
    }
    fn dump(&self) -> Dump {
        let mut out = Dump::new();
        self.dump_dir(ROOT_INO, "", &mut out);
        out
    }
    fn dump_dir(&self, ino: u64, path: &str, out: &mut Dump) {
        for (name, &c) in self.dir(ino) {
            let p = format!("{path}/{name}");
            let o = &self.objs[&c];
            let desc = match &o.kind {
                MKind::File(data) => {
                    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                    for &x in data {
                        h ^= x as u64;
                        h = h.wrapping_mul(0x0100_0000_01b3);
                    }
                    format!(
                        "file mode={:o} nlink={} size={} sum={h:x}",
                        o.mode,
                        self.links(c),
                        data.len()
                    )
                }
                MKind::Dir(d) => format!(
                    "dir mode={:o} nlink={}",
                    o.mode,
                    2 + d.values().filter(|&&x| self.is_dir(x)).count()
                ),
                MKind::Symlink(t) => format!("symlink -> {t}"),
                MKind::Special(k, rdev) => format!("{k:?} mode={:o} rdev={rdev:?}", o.mode),
            };
            out.insert(p.clone(), desc);
            if let MKind::Dir(_) = o.kind {
                self.dump_dir(c, &p, out);
            }
        }
    }
}

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

fn handle(m: &Model, ino: u64) -> Handle {
    Handle::live(ino, m.objs[&ino].gen)
}

/// One random op; applies it to both and checks they agree on success.
fn step(rng: &mut StdRng, c: &mut Client, m: &mut Model) {
    let dirs = m.dirs();
    let dir = dirs[rng.gen_range(0..dirs.len())];
    let name = NAMES[rng.gen_range(0..NAMES.len())].to_string();
    let t = c.now();
    let dfid = Fid {
        ino: dir,
        gen: m.objs[&dir].gen,
    };
    let exists = m.dir(dir).get(&name).copied();
    match rng.gen_range(0..100) {
        0..=14 => {
            let new = c.new_obj(0o640);
            let r = c.apply(FsOp::Create {
                dir: dfid,
                name: name.clone().into_bytes(),
                new,
                how: CreateHow::Guarded,
                attr: Default::default(),
                time_ns: t,
            });
            assert_eq!(r.is_ok(), exists.is_none(), "create {name}: {r:?}");
            if r.is_ok() {
                m.objs.insert(
                    new.ino,
                    MObj {
                        kind: MKind::File(Vec::new()),
                        mode: 0o640,
                        gen: new.gen,
                    },
                );
                m.dir_mut(dir).insert(name, new.ino);
            }
        }
        15..=24 => {
            let new = c.new_obj(0o750);
            let r = c.apply(FsOp::Mkdir {
                dir: dfid,
                name: name.clone().into_bytes(),
                new,
                time_ns: t,
            });
            assert_eq!(r.is_ok(), exists.is_none(), "mkdir: {r:?}");
            if r.is_ok() {
                m.objs.insert(
                    new.ino,
                    MObj {
                        kind: MKind::Dir(BTreeMap::new()),
                        mode: 0o750,
                        gen: new.gen,
                    },
                );
                m.dir_mut(dir).insert(name, new.ino);
            }
        }
        25..=26 => {
            let new = c.new_obj(0o600);
            let (special, kind, rdev) = match rng.gen_range(0..4) {
                0 => (Special::Fifo, FileType::Fifo, (0, 0)),
                1 => (Special::Socket, FileType::Socket, (0, 0)),
                2 => (Special::Char(1, 3), FileType::CharDev, (1, 3)),
                _ => (Special::Block(8, 1), FileType::BlockDev, (8, 1)),
            };
            let r = c.apply(FsOp::Mknod {
                dir: dfid,
                name: name.clone().into_bytes(),
                new,
                special,
                time_ns: t,
            });
            assert_eq!(r.is_ok(), exists.is_none());
            if r.is_ok() {
                m.objs.insert(
                    new.ino,
                    MObj {
                        kind: MKind::Special(kind, rdev),
                        mode: 0o600,
                        gen: new.gen,
                    },
                );
                m.dir_mut(dir).insert(name, new.ino);
            }
        }
        27..=29 => {
            let new = c.new_obj(0o777);
            let target = format!("t{}", rng.gen_range(0..1000));
            let r = c.apply(FsOp::Symlink {
                dir: dfid,
                name: name.clone().into_bytes(),
                new,
                target: target.clone().into_bytes(),
                time_ns: t,
            });
            assert_eq!(r.is_ok(), exists.is_none());
            if r.is_ok() {
                m.objs.insert(
                    new.ino,
                    MObj {
                        kind: MKind::Symlink(target),
                        mode: 0o777,
                        gen: new.gen,
                    },
                );
                m.dir_mut(dir).insert(name, new.ino);
            }
        }
        30..=54 => {
            let files = m.files();
            if files.is_empty() {
                return;
            }
            let f = files[rng.gen_range(0..files.len())];
            let off: u64 = if rng.gen_bool(0.1) {
                rng.gen_range(0..200_000)
            } else {
                rng.gen_range(0..20_000)
            };
            let len = if rng.gen_bool(0.2) {
                4096 * rng.gen_range(1..6)
            } else {
                rng.gen_range(1..9000)
            };
            let byte: u8 = rng.gen();
            let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
            c.apply(FsOp::Write {
                target: Fid {
                    ino: f,
                    gen: m.objs[&f].gen,
                },
                offset: off,
                data: data.clone().into(),
                time_ns: t,
            })
            .unwrap();
            let MKind::File(v) = &mut m.objs.get_mut(&f).unwrap().kind else {
                unreachable!()
            };
            let end = off as usize + len;
            if v.len() < end {
                v.resize(end, 0);
            }
            v[off as usize..end].copy_from_slice(&data);
        }
        55..=61 => {
            let files = m.files();
            if files.is_empty() {
                return;
            }
            let f = files[rng.gen_range(0..files.len())];
            let size: u64 = rng.gen_range(0..30_000);
            let mode = if rng.gen_bool(0.5) {
                Some(rng.gen_range(0..0o777))
            } else {
                None
            };
            c.apply(FsOp::SetAttr {
                target: Fid {
                    ino: f,
                    gen: m.objs[&f].gen,
                },
                attr: SetAttr {
                    size: Some(size),
                    mode,
                    ..Default::default()
                },
                time_ns: t,
            })
            .unwrap();
            let o = m.objs.get_mut(&f).unwrap();
            if let Some(md) = mode {
                o.mode = md;
            }
            let MKind::File(v) = &mut o.kind else {
                unreachable!()
            };
            v.resize(size as usize, 0);
        }
        62..=73 => {
            let r = c.apply(FsOp::Remove {
                dir: dfid,
                name: name.clone().into_bytes(),
                time_ns: t,
            });
            let ok = exists.is_some_and(|i| !m.is_dir(i));
            assert_eq!(r.is_ok(), ok, "remove: {r:?}");
            if ok {
                let i = m.dir_mut(dir).remove(&name).unwrap();
                m.drop_if_unlinked(i);
            }
        }
        74..=79 => {
            let r = c.apply(FsOp::Rmdir {
                dir: dfid,
                name: name.clone().into_bytes(),
                time_ns: t,
            });
            let ok = exists.is_some_and(|i| m.is_dir(i) && m.dir(i).is_empty());
            assert_eq!(r.is_ok(), ok, "rmdir: {r:?}");
            if ok {
                let i = m.dir_mut(dir).remove(&name).unwrap();
                m.objs.remove(&i);
            }
        }
        80..=91 => {
            let to = dirs[rng.gen_range(0..dirs.len())];
            let tname = NAMES[rng.gen_range(0..NAMES.len())].to_string();
            let tfid = Fid {
                ino: to,
                gen: m.objs[&to].gen,
            };
            let r = c.apply(FsOp::Rename {
                from_dir: dfid,
                from_name: name.clone().into_bytes(),
                to_dir: tfid,
                to_name: tname.clone().into_bytes(),
                time_ns: t,
            });
            let Some(src) = exists else {
                assert!(r.is_err());
                return;
            };
            let dst = m.dir(to).get(&tname).copied();
            let ok = if dir == to && name == tname {
                true
            } else if m.is_dir(src) && m.is_ancestor(src, to) {
                false
            } else {
                match dst {
                    None => true,
                    Some(d) if d == src => true,
                    Some(d) => {
                        m.is_dir(src) == m.is_dir(d) && (!m.is_dir(d) || m.dir(d).is_empty())
                    }
                }
            };
            assert_eq!(r.is_ok(), ok, "rename {dir}/{name} -> {to}/{tname}: {r:?}");
            if ok && !(dir == to && name == tname) && dst != Some(src) {
                m.dir_mut(dir).remove(&name);
                if let Some(d) = m.dir_mut(to).insert(tname, src) {
                    m.drop_if_unlinked(d);
                }
            }
        }
        _ => {
            let files = m.files();
            if files.is_empty() {
                return;
            }
            let f = files[rng.gen_range(0..files.len())];
            let r = c.apply(FsOp::Link {
                target: Fid {
                    ino: f,
                    gen: m.objs[&f].gen,
                },
                dir: dfid,
                name: name.clone().into_bytes(),
                time_ns: t,
            });
            assert_eq!(
                r.is_ok(),
                exists.is_none() || exists == Some(f),
                "link: {r:?}"
            );
            if r.is_ok() {
                m.dir_mut(dir).insert(name, f);
            }
        }
    }
}

fn run_seed(seed: u64, ops: usize) {
    let store = mem_store(2048);
    // Odd seeds keep almost no clean nodes in memory: reads go to disk all the time.
    let config = || FsConfig {
        nodes_cached_max: if seed % 2 == 1 { 4 } else { 100_000 },
        ..FsConfig::default()
    };
    let fs = Fs::mkfs(store.clone(), 1, config()).unwrap();
    let mut c = Client::new(fs);
    let mut m = Model::default();
    m.objs.insert(
        ROOT_INO,
        MObj {
            kind: MKind::Dir(BTreeMap::new()),
            mode: 0o755,
            gen: 1,
        },
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let _ = handle;
    let mut snaps: Vec<(String, Dump)> = Vec::new();
    for i in 0..ops {
        step(&mut rng, &mut c, &mut m);
        if rng.gen_bool(0.05) {
            // Replay of the op just applied (as after a crash between apply and CP) is a no-op.
            if let Some((seq, op)) = c.log.last().cloned() {
                let before = dump(&c.fs, &c.fs.root());
                let _ = c.fs.apply(seq, &op);
                assert_eq!(
                    dump(&c.fs, &c.fs.root()),
                    before,
                    "seed {seed} op {i}: replay of {op:?}"
                );
            }
        }
        if i % 50 == 49 {
            c.fs.cp().unwrap();
            assert_eq!(
                dump(&c.fs, &c.fs.root()),
                m.dump(),
                "seed {seed} after CP at op {i}"
            );
            // Snapshots stay frozen whatever the live tree does; old ones are deleted.
            let sd = c.fs.lookup(&c.fs.root(), b".snapshot").unwrap().handle;
            for (name, frozen) in &snaps {
                let h = c.fs.lookup(&sd, name.as_bytes()).unwrap().handle;
                assert_eq!(
                    &dump(&c.fs, &h),
                    frozen,
                    "seed {seed} op {i}: snapshot {name}"
                );
            }
            if i % 150 == 149 {
                let name = format!("s{i}");
                c.fs.snapshot_create(&name, i as u64).unwrap();
                snaps.push((name, m.dump()));
            }
            if snaps.len() > 3 {
                let victim = snaps.remove(rng.gen_range(0..snaps.len()));
                c.fs.snapshot_delete(&victim.0).unwrap();
                let r = wafl::fsck::check(store.clone());
                assert!(
                    r.is_clean(),
                    "seed {seed} op {i}: after deleting {}: {r}",
                    victim.0
                );
            }
        }
        if i % 200 == 199 {
            c.fs.cp().unwrap();
            let seq = c.seq;
            let fs = Fs::mount(store.clone(), config()).unwrap();
            assert_eq!(fs.applied_seq(), seq);
            c = Client::new(fs);
            assert_eq!(
                dump(&c.fs, &c.fs.root()),
                m.dump(),
                "seed {seed} after remount at op {i}"
            );
            let r = wafl::fsck::check(store.clone());
            assert!(r.is_clean(), "seed {seed} op {i}: {r}");
        }
    }
}

#[test]
fn random_ops_match_the_model() {
    if let Ok(s) = std::env::var("WAFL_MODEL_SEED") {
        run_seed(s.parse().unwrap(), 2000);
        return;
    }
    for seed in 0..12 {
        run_seed(seed, 1000);
    }
}
