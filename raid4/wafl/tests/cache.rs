//! The data-block cache seen through the file system: hits return the bytes on disk, a
//! reused address never returns the old content, memory stays bounded, corruption is still
//! found on a miss, and concurrent readers agree.

mod common;
use common::*;
use std::sync::Arc;
use wafl::*;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn config(cache_bytes: u64) -> FsConfig {
    FsConfig {
        data_cache_bytes_max: cache_bytes,
        ..FsConfig::default()
    }
}

#[test]
fn a_hit_returns_the_same_bytes_as_the_disk() {
    let store = mem_store(256);
    let mut c = Client::new(Fs::mkfs(store.clone(), 1, config(1 << 20)).unwrap());
    let root = c.fs.root();
    let f = c.create(&root, "f").unwrap();
    let data = pattern(3, 10 * BLOCK_SIZE + 123);
    c.write(&f, 0, &data).unwrap();
    c.fs.cp().unwrap(); // the CP keeps what it wrote, clean
    let after_cp = c.fs.cache_stats();
    assert_eq!(after_cp.blocks, 11, "{after_cp:?}");
    assert_eq!(c.fs.read(&f, 0, 1 << 20).unwrap(), (data.clone(), true));
    let st = c.fs.cache_stats();
    assert_eq!(st.hits - after_cp.hits, 11, "{st:?}");
    assert_eq!(st.misses, after_cp.misses);

    // A fresh mount: misses fill the cache, the second read hits, both equal the data.
    let fs = Fs::mount(store, config(1 << 20)).unwrap();
    let miss = fs.read(&f, 100, 5 * BLOCK_SIZE).unwrap();
    let hit = fs.read(&f, 100, 5 * BLOCK_SIZE).unwrap();
    assert_eq!(miss, hit);
    assert_eq!(miss.0, data[100..100 + 5 * BLOCK_SIZE]);
    let st = fs.cache_stats();
    assert_eq!((st.misses, st.hits, st.blocks), (6, 6, 6), "{st:?}");
}

#[test]
fn a_freed_and_reused_address_never_returns_the_old_data() {
    // Small enough that B must land on addresses A used.
    let store = mem_store(48);
    let mut c = Client::new(Fs::mkfs(store.clone(), 1, config(8 << 20)).unwrap());
    let root = c.fs.root();
    let mut old_addrs = std::collections::HashSet::new();
    let mut reused = 0;
    for round in 0..6u8 {
        let a = c.create(&root, "a").unwrap();
        let a_data = pattern(round, 24 * BLOCK_SIZE);
        c.write(&a, 0, &a_data).unwrap();
        c.fs.cp().unwrap();
        assert_eq!(c.fs.read(&a, 0, 1 << 20).unwrap().0, a_data); // cached now
        old_addrs.extend(fsck::data_blocks_of(&c.fs, a.ino).unwrap());
        c.remove(&root, "a").unwrap();
        c.fs.cp().unwrap();
        c.fs.cp().unwrap(); // the freed blocks are allocatable after the CP that freed them

        let b = c.create(&root, "b").unwrap();
        let b_data = pattern(round.wrapping_add(100), 24 * BLOCK_SIZE);
        c.write(&b, 0, &b_data).unwrap();
        c.fs.cp().unwrap();
        let b_addrs = fsck::data_blocks_of(&c.fs, b.ino).unwrap();
        reused += b_addrs.iter().filter(|x| old_addrs.contains(x)).count();
        assert_eq!(
            c.fs.read(&b, 0, 1 << 20).unwrap().0,
            b_data,
            "round {round}"
        );
        c.remove(&root, "b").unwrap();
        c.fs.cp().unwrap();
        c.fs.cp().unwrap();
    }
    assert!(reused > 0, "the test never reused an address");
    let st = c.fs.cache_stats();
    assert!(st.forgotten > 0, "{st:?}");
    assert!(fsck::check(store).is_clean());
}

#[test]
fn memory_stays_bounded() {
    let store = mem_store(1024);
    let bound = 16 * CACHE_SHARDS_MAX as u64 * BLOCK_SIZE as u64; // 4 MiB
    let mut c = Client::new(Fs::mkfs(store.clone(), 1, config(bound)).unwrap());
    let root = c.fs.root();
    let f = c.create(&root, "big").unwrap();
    let data = pattern(5, 2 << 20);
    for i in 0..4u64 {
        c.write(&f, i * (2 << 20), &data).unwrap();
        c.fs.cp().unwrap();
        assert!(c.fs.cache_stats().bytes <= bound);
    }
    let fs = Fs::mount(store.clone(), config(bound)).unwrap();
    for i in 0..4u64 {
        assert_eq!(fs.read(&f, i * (2 << 20), 2 << 20).unwrap().0, data);
        let st = fs.cache_stats();
        assert!(st.bytes <= bound, "{st:?}");
    }
    let st = fs.cache_stats();
    assert!(st.evictions > 0 && st.blocks > 0, "{st:?}");

    // 0 disables the cache.
    let off = Fs::mount(store, config(0)).unwrap();
    assert_eq!(off.read(&f, 0, 1 << 20).unwrap().0, data[..1 << 20]);
    assert_eq!(off.cache_stats().blocks, 0);
}

#[test]
fn corruption_on_disk_is_found_on_a_miss() {
    let store = mem_store(256);
    let mut c = Client::new(Fs::mkfs(store.clone(), 1, config(1 << 20)).unwrap());
    let root = c.fs.root();
    let f = c.create(&root, "f").unwrap();
    let data = pattern(9, 2 * BLOCK_SIZE);
    c.write(&f, 0, &data).unwrap();
    c.fs.cp().unwrap();
    let target = fsck::data_blocks_of(&c.fs, f.ino).unwrap();
    store.corrupt_block(target[1], 99);
    // The running file system holds the verified bytes it wrote: still served.
    assert_eq!(c.fs.read(&f, 0, 1 << 20).unwrap().0, data);
    // A new mount has to go to the disk: the checksum catches it, every time.
    let fs = Fs::mount(store, config(1 << 20)).unwrap();
    for _ in 0..2 {
        match fs.read(&f, 0, 1 << 20) {
            Err(FsError::Io(msg)) => assert!(msg.contains("checksum"), "{msg}"),
            other => panic!("corrupt block read as {other:?}"),
        }
    }
    assert_eq!(fs.read(&f, 0, BLOCK_SIZE).unwrap().0, data[..BLOCK_SIZE]);
    assert_eq!(fs.statfs().checksum_errors, 2);
}

#[test]
fn concurrent_readers_agree_with_the_disk() {
    let store = mem_store(1024);
    let mut c = Client::new(Fs::mkfs(store.clone(), 1, config(1 << 20)).unwrap());
    let root = c.fs.root();
    let files: Vec<(Handle, Vec<u8>)> = (0..8u8)
        .map(|i| {
            let f = c.create(&root, &format!("f{i}")).unwrap();
            let d = pattern(i, 64 * BLOCK_SIZE);
            c.write(&f, 0, &d).unwrap();
            (f, d)
        })
        .collect();
    c.fs.cp().unwrap();
    // A cache smaller than the data: hits, misses and evictions race.
    let fs = Arc::new(Fs::mount(store, config(128 * BLOCK_SIZE as u64)).unwrap());
    let files = Arc::new(files);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (fs, files) = (fs.clone(), files.clone());
            std::thread::spawn(move || {
                for n in 0..400u64 {
                    let (f, d) = &files[((n * 7 + t) % 8) as usize];
                    let off = ((n * 13 + t * 5) % 60) as usize * BLOCK_SIZE + (n % 100) as usize;
                    let len = 3 * BLOCK_SIZE;
                    let (got, _) = fs.read(f, off as u64, len).unwrap();
                    assert_eq!(got, d[off..off + len], "thread {t} read {n}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = fs.cache_stats();
    assert!(st.hits > 0 && st.misses > 0 && st.evictions > 0, "{st:?}");
    assert!(st.bytes <= st.bytes_max);
}
