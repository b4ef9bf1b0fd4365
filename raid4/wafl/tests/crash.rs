//! Crash consistency: power fails after the k-th stripe write of a CP, for every k; the
//! remount gives exactly the previous or the new CP, and fsck is clean every time.

mod common;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use wafl::*;

/// A busy workload: creates, big and small writes, renames, removes, truncates.
fn workload(c: &mut Client, rng: &mut StdRng, rounds: usize) {
    let root = c.fs.root();
    for r in 0..rounds {
        let dname = format!("d{}", rng.gen_range(0..4));
        let d = match c.fs.lookup(&root, dname.as_bytes()) {
            Ok(a) => a.handle,
            Err(_) => c.mkdir(&root, &dname).unwrap(),
        };
        let fname = format!("f{}", rng.gen_range(0..12));
        let f = match c.fs.lookup(&d, fname.as_bytes()) {
            Ok(a) => a.handle,
            Err(_) => c.create(&d, &fname).unwrap(),
        };
        let len = rng.gen_range(1..40_000);
        let off = rng.gen_range(0..100_000);
        c.write(&f, off, &vec![(r % 251) as u8; len]).unwrap();
        match rng.gen_range(0..6) {
            0 => {
                let _ = c.remove(&d, &format!("f{}", rng.gen_range(0..12)));
            }
            1 => {
                let t = c.now();
                let _ = c.apply(FsOp::Rename {
                    from_dir: Client::fid(&d),
                    from_name: fname.into_bytes(),
                    to_dir: Client::fid(&root),
                    to_name: format!("moved{}", rng.gen_range(0..5)).into_bytes(),
                    time_ns: t,
                });
            }
            2 => {
                let t = c.now();
                c.apply(FsOp::SetAttr {
                    target: Client::fid(&f),
                    attr: SetAttr {
                        size: Some(rng.gen_range(0..50_000)),
                        ..Default::default()
                    },
                    time_ns: t,
                })
                .unwrap();
            }
            _ => {}
        }
    }
}

#[test]
fn crash_at_every_write_of_a_cp_gives_old_or_new() {
    let sdb = SDB;
    let base = mem_store(1024);
    let fs = Fs::mkfs(base.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let mut rng = StdRng::seed_from_u64(7);
    workload(&mut c, &mut rng, 150);
    c.fs.cp().unwrap();
    let image_a = base.image();
    let dump_a = dump(&c.fs, &c.fs.root());
    let seq_a = c.seq;
    workload(&mut c, &mut rng, 150);
    let dump_b = dump(&c.fs, &c.fs.root());
    assert_ne!(dump_a, dump_b);
    let ops: Vec<(u64, FsOp)> = c.log.iter().filter(|(s, _)| *s > seq_a).cloned().collect();

    // Replays the second half on a fresh copy of image A and runs the CP with a crash limit.
    let run = |limit: u64| -> (Arc<CrashStore<MemStore>>, Result<CpReport, FsError>) {
        let store = Arc::new(CrashStore::new(
            MemStore::from_image(sdb, image_a.clone()),
            limit,
        ));
        let fs = Fs::mount(store.clone(), FsConfig::default()).unwrap();
        for (seq, op) in &ops {
            let _ = fs.apply(*seq, op);
        }
        assert_eq!(
            dump(&fs, &fs.root()),
            dump_b,
            "replay reproduces the workload"
        );
        let r = fs.cp();
        (store, r)
    };
    let (full, r) = run(u64::MAX);
    r.unwrap();
    let writes = full.stripes_written();
    assert!(writes > 10, "CP wrote {writes} stripes");
    let (mut old, mut new) = (0, 0);
    for k in 0..=writes {
        let (store, r) = run(k);
        assert_eq!(r.is_ok(), k >= writes, "k={k}");
        let media: Arc<MemStore> = Arc::new(MemStore::from_image(sdb, store.inner().image()));
        let fs = Fs::mount(media.clone(), FsConfig::default())
            .unwrap_or_else(|e| panic!("k={k}: mount: {e}"));
        let d = dump(&fs, &fs.root());
        if d == dump_a {
            old += 1;
            assert_eq!(fs.applied_seq(), seq_a);
        } else if d == dump_b {
            new += 1;
        } else {
            panic!("k={k}: remount gives neither the old nor the new CP");
        }
        let rep = wafl::fsck::check(media);
        assert!(rep.is_clean(), "k={k}: {rep}");
    }
    assert!(old > 0 && new > 0, "old {old} new {new}");
}

#[test]
fn ops_keep_flowing_during_a_cp() {
    // A CP on one thread while another applies ops: the ops land in the next CP.
    let store = mem_store(4096);
    let fs = Arc::new(Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap());
    let root = fs.root();
    let mut c = Client::new(Fs::mount(store.clone(), FsConfig::default()).unwrap());
    drop(c.fs.cp());
    // use the shared fs for the concurrent part
    let fs2 = fs.clone();
    let writer = std::thread::spawn(move || {
        let mut seq = 1000;
        for i in 0..300u64 {
            let (ino, gen) = fs2.reserve_inode();
            seq += 1;
            fs2.apply(
                seq,
                &FsOp::Create {
                    dir: Fid::ROOT,
                    name: format!("n{i}").into_bytes(),
                    new: NewObj {
                        ino,
                        gen,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                    how: CreateHow::Guarded,
                    attr: Default::default(),
                    time_ns: i,
                },
            )
            .unwrap();
            seq += 1;
            fs2.apply(
                seq,
                &FsOp::Write {
                    target: Fid { ino, gen },
                    offset: 0,
                    data: vec![i as u8; 20_000].into(),
                    time_ns: i,
                },
            )
            .unwrap();
        }
    });
    let mut cps = 0;
    while !writer.is_finished() && cps < 1000 {
        fs.cp().unwrap();
        cps += 1;
    }
    writer.join().unwrap();
    fs.cp().unwrap();
    let before = dump(&fs, &root);
    assert_eq!(before.len(), 300);
    drop(fs);
    c.fs = Fs::mount(store.clone(), FsConfig::default()).unwrap();
    assert_eq!(dump(&c.fs, &root), before);
    let r = wafl::fsck::check(store);
    assert!(r.is_clean(), "{r}");
}

#[test]
fn cp_driver_runs_on_timer_and_dirty_bound() {
    let store = mem_store(2048);
    let cfg = FsConfig {
        cp_interval_ms: 50,
        cp_dirty_bytes_max: 1 << 20,
        ..Default::default()
    };
    let fs = Arc::new(Fs::mkfs(store.clone(), 1, cfg).unwrap());
    let driver = CpDriver::start(fs.clone());
    let (ino, gen) = fs.reserve_inode();
    fs.apply(
        1,
        &FsOp::Create {
            dir: Fid::ROOT,
            name: b"x".to_vec(),
            new: NewObj {
                ino,
                gen,
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            how: CreateHow::Guarded,
            attr: Default::default(),
            time_ns: 1,
        },
    )
    .unwrap();
    let start = std::time::Instant::now();
    while fs.cp_stats().count < 1 && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(fs.cp_stats().count >= 1, "timer CP");
    driver.stop();
    let n = fs.cp_stats().count;
    let write = |i: u64, len: usize| {
        let op = FsOp::Write {
            target: Fid { ino, gen },
            offset: i << 20,
            data: vec![1; len].into(),
            time_ns: 2,
        };
        fs.apply(2 + i, &op).unwrap();
    };
    for i in 0..3u64 {
        write(i, 512 << 10);
    }
    assert_eq!(
        fs.cp_stats().count,
        n,
        "above the bound but no driver: no CP yet"
    );
    assert!(fs.dirty_bytes() >= 3 << 19);
    // Twice the bound: the writer itself pays for a CP (back-pressure).
    write(3, 1 << 20);
    assert_eq!(fs.cp_stats().count, n + 1, "throttling CP");
    assert_eq!(fs.dirty_bytes(), 0);
    write(4, 1 << 20);
    let driver = CpDriver::start(fs.clone());
    fs.request_cp();
    let start = std::time::Instant::now();
    while fs.dirty_bytes() > 0 && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(fs.dirty_bytes(), 0);
    drop(driver);
    assert!(wafl::fsck::check(store).is_clean());
}

#[test]
fn crash_during_snapshot_delete_gives_old_or_new() {
    let sdb = SDB;
    let base = mem_store(1024);
    let fs = Fs::mkfs(base.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let mut rng = StdRng::seed_from_u64(11);
    workload(&mut c, &mut rng, 80);
    c.fs.snapshot_create("s1", 1).unwrap();
    workload(&mut c, &mut rng, 80);
    c.fs.snapshot_create("s2", 2).unwrap();
    workload(&mut c, &mut rng, 80);
    c.fs.cp().unwrap();
    let image = base.image();
    let live = dump(&c.fs, &c.fs.root());
    let run = |limit: u64| {
        let store = Arc::new(CrashStore::new(
            MemStore::from_image(sdb, image.clone()),
            limit,
        ));
        let fs = Fs::mount(store.clone(), FsConfig::default()).unwrap();
        let r = fs.snapshot_delete("s1");
        (store, r)
    };
    let (full, r) = run(u64::MAX);
    r.unwrap();
    let writes = full.stripes_written();
    let (mut old, mut new) = (0, 0);
    for k in 0..=writes {
        let (store, r) = run(k);
        assert_eq!(r.is_ok(), k >= writes, "k={k}");
        let media = Arc::new(MemStore::from_image(sdb, store.inner().image()));
        let fs = Fs::mount(media.clone(), FsConfig::default()).unwrap();
        assert_eq!(dump(&fs, &fs.root()), live, "k={k}");
        let names: Vec<String> = fs.snapshot_list().into_iter().map(|s| s.name).collect();
        match names.len() {
            2 => old += 1,
            1 => new += 1,
            n => panic!("k={k}: {n} snapshots"),
        }
        let rep = wafl::fsck::check(media);
        assert!(rep.is_clean(), "k={k}: {rep}");
    }
    assert!(old > 0 && new > 0, "old {old} new {new}");
}

/// A store whose first stripe write waits until the test opens the gate.
struct GateStore {
    inner: MemStore,
    entered: std::sync::atomic::AtomicBool,
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl StripeStore for GateStore {
    fn stripe_data_blocks(&self) -> usize {
        self.inner.stripe_data_blocks()
    }
    fn stripe_count(&self) -> u64 {
        self.inner.stripe_count()
    }
    fn write_stripes(&self, first: u64, data: &[u8]) -> Result<(), StoreError> {
        self.entered
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let g = self.open.lock().unwrap();
        let (_g, timeout) = self
            .cv
            .wait_timeout_while(g, std::time::Duration::from_secs(20), |open| !*open)
            .unwrap();
        assert!(!timeout.timed_out(), "gate never opened");
        drop(_g);
        self.inner.write_stripes(first, data)
    }
    fn read_blocks(&self, block: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.inner.read_blocks(block, buf)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

#[test]
fn no_stop_the_world_while_a_cp_writes() {
    let store = Arc::new(GateStore {
        inner: MemStore::new(SDB, 1024),
        entered: false.into(),
        open: std::sync::Mutex::new(true),
        cv: std::sync::Condvar::new(),
    });
    let fs = Arc::new(Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap());
    let root = fs.root();
    let dir = Fid::ROOT;
    let mk = |fs: &Fs, seq: u64, name: &str| {
        let (ino, gen) = fs.reserve_inode();
        fs.apply(
            seq,
            &FsOp::Create {
                dir,
                name: name.into(),
                new: NewObj {
                    ino,
                    gen,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                },
                how: CreateHow::Guarded,
                attr: Default::default(),
                time_ns: seq,
            },
        )
        .unwrap();
    };
    mk(&fs, 1, "before");
    *store.open.lock().unwrap() = false;
    store
        .entered
        .store(false, std::sync::atomic::Ordering::SeqCst); // mkfs wrote already
    let fs2 = fs.clone();
    let cp = std::thread::spawn(move || fs2.cp());
    let start = std::time::Instant::now();
    while !store.entered.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(start.elapsed().as_secs() < 20, "CP never wrote");
        std::thread::yield_now();
    }
    // The CP is stuck in its write: operations and reads still complete.
    for i in 0..100 {
        mk(&fs, 2 + i, &format!("during-{i}"));
    }
    assert_eq!(fs.readdir(&root, 0, 1000).unwrap().0.len(), 101);
    assert!(!cp.is_finished());
    *store.open.lock().unwrap() = true;
    store.cv.notify_all();
    cp.join().unwrap().unwrap();
    // The CP held only what existed at its freeze; the next one takes the rest.
    let m = Fs::mount(store.clone(), FsConfig::default()).unwrap();
    assert_eq!(m.readdir(&m.root(), 0, 1000).unwrap().0.len(), 1);
    fs.cp().unwrap();
    let m = Fs::mount(store.clone(), FsConfig::default()).unwrap();
    assert_eq!(m.readdir(&m.root(), 0, 1000).unwrap().0.len(), 101);
}
