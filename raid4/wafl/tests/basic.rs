//! Basic operations, remount, idempotent replay, big offsets, bad checksums.

mod common;
use common::*;
use wafl::*;

#[test]
fn create_write_read_remount() {
    let store = mem_store(256);
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let d = c.mkdir(&root, "dir").unwrap();
    let f = c.create(&d, "file").unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    c.write(&f, 100, &data).unwrap();
    let (back, eof) = c.fs.read(&f, 100, 10_000).unwrap();
    assert!(eof);
    assert_eq!(back, data);
    let before = dump(&c.fs, &root);
    c.fs.cp().unwrap();
    assert_eq!(dump(&c.fs, &root), before);
    drop(c);
    let fs = Fs::mount(store.clone(), FsConfig::default()).unwrap();
    assert_eq!(dump(&fs, &fs.root()), before);
    let a = fs.lookup(&fs.root(), b"dir").unwrap();
    assert_eq!(a.nlink, 2);
    let fa = fs.lookup(&a.handle, b"file").unwrap();
    assert_eq!(fa.size, 10_100);
    assert_eq!(fa.used, 3 * 4096);
    let report = wafl::fsck::check(store.clone());
    assert!(report.is_clean(), "{report}");
}

#[test]
fn replay_of_applied_ops_changes_nothing() {
    let store = mem_store(256);
    let fs = Fs::mkfs(store, 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let d = c.mkdir(&root, "a").unwrap();
    let f = c.create(&d, "f").unwrap();
    c.write(&f, 5000, b"hello").unwrap();
    let t = c.now();
    c.apply(FsOp::Rename {
        from_dir: Client::fid(&d),
        from_name: b"f".to_vec(),
        to_dir: Client::fid(&root),
        to_name: b"g".to_vec(),
        time_ns: t,
    })
    .unwrap();
    c.remove(&root, "g").err();
    let before = dump(&c.fs, &root);
    let attrs_before = c.fs.getattr(&d).unwrap();
    // Replay the whole log again, in order: everything is a no-op or a benign error.
    let log = c.log.clone();
    for (seq, op) in &log {
        let _ = c.fs.apply(*seq, op);
    }
    assert_eq!(dump(&c.fs, &root), before);
    assert_eq!(c.fs.getattr(&d).unwrap(), attrs_before);
}

#[test]
fn sparse_file_beyond_16_tib() {
    let store = mem_store(256);
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let f = c.create(&root, "sparse").unwrap();
    let off = (16u64 << 40) + 12345;
    c.write(&f, off, b"far away").unwrap();
    c.fs.cp().unwrap();
    let a = c.fs.getattr(&f).unwrap();
    assert_eq!(a.size, off + 8);
    assert_eq!(a.used, 4096);
    let (b, _) = c.fs.read(&f, off - 4, 12).unwrap();
    assert_eq!(&b, b"\0\0\0\0far away");
    let (z, _) = c.fs.read(&f, 1 << 30, 100).unwrap();
    assert!(z.iter().all(|&x| x == 0));
    assert!(wafl::fsck::check(store).is_clean());
}

#[test]
fn special_objects_links_and_handles() {
    let store = mem_store(256);
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let f = c.create(&root, "f").unwrap();
    let t = c.now();
    c.apply(FsOp::Link {
        target: Client::fid(&f),
        dir: Client::fid(&root),
        name: b"hard".to_vec(),
        time_ns: t,
    })
    .unwrap();
    assert_eq!(c.fs.getattr(&f).unwrap().nlink, 2);
    let new = c.new_obj(0o777);
    c.apply(FsOp::Symlink {
        dir: Client::fid(&root),
        name: b"sl".to_vec(),
        new,
        target: b"f".to_vec(),
        time_ns: t,
    })
    .unwrap();
    for (name, sp) in [
        ("fifo", Special::Fifo),
        ("sock", Special::Socket),
        ("chr", Special::Char(1, 3)),
        ("blk", Special::Block(8, 0)),
    ] {
        let new = c.new_obj(0o600);
        c.apply(FsOp::Mknod {
            dir: Client::fid(&root),
            name: name.into(),
            new,
            special: sp,
            time_ns: t,
        })
        .unwrap();
    }
    assert_eq!(c.fs.lookup(&root, b"chr").unwrap().rdev, (1, 3));
    assert_eq!(
        c.fs.readlink(&c.fs.lookup(&root, b"sl").unwrap().handle)
            .unwrap(),
        b"f"
    );
    c.remove(&root, "f").unwrap();
    assert_eq!(c.fs.getattr(&f).unwrap().nlink, 1);
    c.remove(&root, "hard").unwrap();
    assert_eq!(c.fs.getattr(&f), Err(FsError::Stale));
    // A new file never matches the old handle.
    let g = c.create(&root, "f").unwrap();
    assert_ne!(g.gen, f.gen);
    // Exclusive create: a retransmission with the same verifier succeeds.
    let new = c.new_obj(0o644);
    let op = FsOp::Create {
        dir: Client::fid(&root),
        name: b"x".to_vec(),
        new,
        how: CreateHow::Exclusive(42),
        time_ns: t,
    };
    let a = c.apply(op).unwrap().unwrap();
    let new2 = c.new_obj(0o644);
    let a2 = c
        .apply(FsOp::Create {
            dir: Client::fid(&root),
            name: b"x".to_vec(),
            new: new2,
            how: CreateHow::Exclusive(42),
            time_ns: t,
        })
        .unwrap()
        .unwrap();
    assert_eq!(a.handle, a2.handle);
    let new3 = c.new_obj(0o644);
    assert_eq!(
        c.apply(FsOp::Create {
            dir: Client::fid(&root),
            name: b"x".to_vec(),
            new: new3,
            how: CreateHow::Exclusive(7),
            time_ns: t
        }),
        Err(FsError::Exists)
    );
    c.fs.cp().unwrap();
    let r = wafl::fsck::check(store);
    assert!(r.is_clean(), "{r}");
}

#[test]
fn bad_checksum_is_an_io_error_not_a_panic() {
    let store = mem_store(256);
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let f = c.create(&root, "victim").unwrap();
    c.write(&f, 0, &[7u8; 8192]).unwrap();
    c.fs.cp().unwrap();
    drop(c);
    // Find the file's first data block by reading through a fresh mount, then corrupt it.
    let fs = Fs::mount(store.clone(), FsConfig::default()).unwrap();
    let target = wafl::fsck::data_blocks_of(&fs, f.ino).unwrap();
    assert_eq!(target.len(), 2);
    store.corrupt_block(target[0], 17);
    let fs = Fs::mount(store.clone(), FsConfig::default()).unwrap();
    match fs.read(&f, 0, 4096) {
        Err(FsError::Io(msg)) => assert!(msg.contains("checksum"), "{msg}"),
        other => panic!("expected an IO error, got {other:?}"),
    }
    assert_eq!(fs.statfs().checksum_errors, 1);
    // The other block still reads.
    assert_eq!(fs.read(&f, 4096, 4096).unwrap().0, vec![7u8; 4096]);
    let r = wafl::fsck::check(store);
    assert!(!r.is_clean());
    assert!(r.to_string().contains("checksum"), "{r}");
}

#[test]
fn ops_decoder_rejects_garbage() {
    for len in 0..64 {
        for seed in 0..50u8 {
            let b: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect();
            let _ = FsOp::decode(&b);
        }
    }
    let op = FsOp::Write {
        target: Fid { ino: 20, gen: 3 },
        offset: 9,
        data: vec![1; 100],
        time_ns: 5,
    };
    let e = op.encode();
    for cut in 0..e.len() {
        assert!(FsOp::decode(&e[..cut]).is_err());
    }
}

#[test]
fn full_aggregate_refuses_writes_but_stays_consistent() {
    let store = mem_store(128); // 2 MiB
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let mut full = false;
    'outer: for i in 0..100 {
        let f = match c.create(&root, &format!("f{i}")) {
            Ok(f) => f,
            Err(FsError::NoSpace) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        };
        for k in 0..8u64 {
            match c.write(&f, k * 16384, &[i as u8; 16384]) {
                Ok(()) => {}
                Err(FsError::NoSpace) => {
                    full = true;
                    break 'outer;
                }
                Err(e) => panic!("{e}"),
            }
        }
        c.fs.cp().unwrap();
    }
    assert!(full, "never ran out of space");
    c.fs.cp().unwrap();
    assert!(wafl::fsck::check(store.clone()).is_clean());
    // Removing files returns space; writes work again.
    for i in 0..3 {
        c.remove(&root, &format!("f{i}")).unwrap();
    }
    c.fs.cp().unwrap();
    let g = c.create(&root, "again").unwrap();
    c.write(&g, 0, &[1; 8192]).unwrap();
    c.fs.cp().unwrap();
    let r = wafl::fsck::check(store);
    assert!(r.is_clean(), "{r}");
}
