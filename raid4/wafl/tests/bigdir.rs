//! A large directory: create, lookup, READDIR with cookies across inserts, removes, a CP and
//! a remount: 100,000 and 1,000,000 entries (the latter about 20 s and 2 GB of memory).

mod common;
use common::*;
use std::collections::{BTreeSet, HashSet};
use std::time::Instant;
use wafl::*;

fn big_directory(n: u64) {
    let store = mem_store(65_536); // 1 GiB with 4 blocks per stripe
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let d = c.mkdir(&root, "big").unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        c.create(&d, &format!("entry-{i:08}")).unwrap();
        if i == n / 2 {
            c.fs.cp().unwrap();
        }
    }
    let create_s = t0.elapsed().as_secs_f64();
    c.fs.cp().unwrap();
    let t1 = Instant::now();
    for i in (0..n).step_by(97) {
        let a = c.fs.lookup(&d, format!("entry-{i:08}").as_bytes()).unwrap();
        assert_eq!(a.kind, FileType::Regular);
    }
    assert_eq!(c.fs.lookup(&d, b"entry-x"), Err(FsError::NotFound));
    let lookup_s = t1.elapsed().as_secs_f64();

    // List in pages; between pages remove some entries and add new ones. Every entry that
    // exists for the whole listing must appear exactly once; a CP and a remount happen midway.
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut removed: BTreeSet<u64> = BTreeSet::new();
    let mut cookie = 0;
    let mut pages = 0u64;
    let page = 1000;
    loop {
        let (entries, eof) = c.fs.readdir(&d, cookie, page).unwrap();
        for e in &entries {
            assert!(
                seen.insert(e.name.clone()),
                "entry {:?} listed twice",
                String::from_utf8_lossy(&e.name)
            );
            assert!(e.cookie > cookie);
            cookie = e.cookie;
        }
        pages += 1;
        // churn: remove an entry far ahead, add a new one
        let victim = (pages * 7919) % n;
        if removed.insert(victim) {
            c.remove(&d, &format!("entry-{victim:08}")).unwrap();
        }
        c.create(&d, &format!("new-{pages}")).unwrap();
        if pages == 10 {
            c.fs.cp().unwrap();
        }
        if pages == 20 {
            c.fs.cp().unwrap();
            let fs = Fs::mount(store.clone(), FsConfig::default()).unwrap();
            c = Client::new(fs);
        }
        if eof {
            break;
        }
        assert!(pages < n, "readdir does not end");
    }
    for i in 0..n {
        if !removed.contains(&i) {
            assert!(
                seen.contains(format!("entry-{i:08}").as_bytes()),
                "entry {i} skipped"
            );
        }
    }
    eprintln!("{n} entries: create {create_s:.1} s, lookups {lookup_s:.2} s");
    c.fs.cp().unwrap();
    let r = wafl::fsck::check(store);
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.entries, n + 1 - removed.len() as u64 + pages);
}

#[test]
fn directory_of_100k_entries() {
    big_directory(100_000);
}

#[test]
fn directory_of_1m_entries() {
    big_directory(1_000_000);
}
