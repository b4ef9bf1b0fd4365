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
        attr: Default::default(),
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
            attr: Default::default(),
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
            attr: Default::default(),
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
        data: vec![1; 100].into(),
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

// regression: a write refused for space did not count as applied, so a CP after it
// recorded an older applied_seq and replay re-ran the refused op (maybe succeeding then).
#[test]
fn refused_op_is_applied_in_sequence() {
    let store = mem_store(128); // 2 MiB
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let f = c.create(&root, "big").unwrap();
    let mut refused = None;
    for k in 0..200u64 {
        match c.write(&f, k * 65536, &[7; 65536]) {
            Ok(()) => {}
            Err(FsError::NoSpace) => {
                refused = Some(c.seq);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let seq = refused.expect("never ran out of space");
    assert_eq!(
        c.fs.applied_seq(),
        seq,
        "the refused op is applied in sequence"
    );
    c.fs.cp().unwrap();
    let fs = Fs::mount(store, FsConfig::default()).unwrap();
    assert_eq!(fs.applied_seq(), seq, "a CP after the refusal records it");
}

#[test]
fn create_sets_size_and_times_and_unchecked_sizes_existing() {
    let store = mem_store(256);
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let attr = CreateAttr {
        size: Some(10_000),
        atime_ns: Some(111),
        mtime_ns: Some(222),
    };
    let new = c.new_obj(0o640);
    let t = c.now();
    let op = FsOp::Create {
        dir: Client::fid(&root),
        name: b"sized".to_vec(),
        new,
        how: CreateHow::Guarded,
        attr,
        time_ns: t,
    };
    let a = c.apply(op.clone()).unwrap().unwrap();
    assert_eq!(
        (a.size, a.atime_ns, a.mtime_ns, a.mode),
        (10_000, 111, 222, 0o640)
    );
    let (data, eof) = c.fs.read(&a.handle, 0, 20_000).unwrap();
    assert_eq!((data.len(), eof), (10_000, true));
    assert!(
        data.iter().all(|&b| b == 0),
        "a created size reads as a hole"
    );
    // Replaying the op after a later change changes nothing.
    c.write(&a.handle, 0, b"later").unwrap();
    let again = c.fs.apply(c.seq - 1, &op).unwrap().unwrap();
    assert_eq!(again.size, 10_000);
    assert_eq!(&c.fs.read(&a.handle, 0, 5).unwrap().0, b"later");
    // UNCHECKED on the existing file applies only the size.
    let new = c.new_obj(0o600);
    let t = c.now();
    let e = c
        .apply(FsOp::Create {
            dir: Client::fid(&root),
            name: b"sized".to_vec(),
            new,
            how: CreateHow::Unchecked,
            attr: CreateAttr {
                size: Some(3),
                atime_ns: Some(5),
                mtime_ns: None,
            },
            time_ns: t,
        })
        .unwrap()
        .unwrap();
    assert_eq!((e.handle, e.size, e.mode), (a.handle, 3, 0o640));
    assert_ne!(e.atime_ns, 5, "times are not set on an existing file");
    assert_eq!(c.fs.read(&a.handle, 0, 100).unwrap().0, b"lat");
    // A size past the largest file is refused before anything changes.
    let new = c.new_obj(0o600);
    let t = c.now();
    let big = c.apply(FsOp::Create {
        dir: Client::fid(&root),
        name: b"huge".to_vec(),
        new,
        how: CreateHow::Guarded,
        attr: CreateAttr {
            size: Some(FILE_SIZE_MAX + 1),
            ..Default::default()
        },
        time_ns: t,
    });
    assert!(matches!(big, Err(FsError::FileTooBig)), "{big:?}");
    c.fs.cp().unwrap();
    assert!(wafl::fsck::check(store).is_clean());
}

#[test]
fn resident_reads_refuse_the_disks_and_share_blocks() {
    let store = mem_store(256);
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let f = c.create(&root, "f").unwrap();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    c.write(&f, 100, &data).unwrap();
    // Dirty blocks are memory: a resident read works, in pieces, hole first.
    let d = c.fs.read_resident(&f, 0, 30_000).unwrap();
    assert_eq!((d.len, d.eof), (20_100, true));
    let mut want = vec![0u8; 100];
    want.extend_from_slice(&data);
    assert_eq!(d.to_vec(), want);
    assert!(d.parts.len() > 1, "pieces of blocks, not one copy");
    c.fs.cp().unwrap();
    let fs = Fs::mount(store, FsConfig::default()).unwrap();
    // A fresh mount has nothing in memory: refused without reading, then read for real.
    let blocks_read = fs.cache_stats().misses;
    assert!(matches!(
        fs.read_resident(&f, 0, 4096),
        Err(FsError::WouldBlock)
    ));
    assert_eq!(fs.cache_stats().misses, blocks_read);
    let d = fs.read_parts(&f, 50, 10_000).unwrap();
    assert_eq!(d.to_vec(), want[50..10_050]);
    // Now cached (and the tree path loaded): resident again, and the same bytes.
    let d = fs.read_resident(&f, 50, 10_000).unwrap();
    assert_eq!(d.to_vec(), want[50..10_050]);
    assert_eq!(
        fs.read(&f, 20_000, 500).unwrap(),
        (want[20_000..].to_vec(), true)
    );
}
