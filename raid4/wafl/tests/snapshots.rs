//! Snapshots: frozen while the live file system changes, visible under `.snapshot/<name>`
//! in every directory, survive remount, and deleting one returns its space.

mod common;
use common::*;
use wafl::*;

fn read_all(fs: &Fs, h: &Handle) -> Vec<u8> {
    let a = fs.getattr(h).unwrap();
    fs.read(h, 0, a.size as usize).unwrap().0
}

#[test]
fn snapshot_is_frozen_and_deleting_returns_space() {
    let store = mem_store(2048);
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let d = c.mkdir(&root, "data").unwrap();
    let f = c.create(&d, "big").unwrap();
    c.write(&f, 0, &vec![1u8; 1 << 20]).unwrap();
    let g = c.create(&d, "small").unwrap();
    c.write(&g, 0, b"version one").unwrap();
    c.fs.cp().unwrap();
    let free0 = c.fs.statfs().free_bytes;
    let frozen = dump(&c.fs, &root);
    let s1 = c.fs.snapshot_create("s1", 5).unwrap();
    assert_eq!(c.fs.snapshot_list().len(), 1);

    // Change everything in the live file system.
    c.write(&f, 0, &vec![2u8; 1 << 20]).unwrap();
    c.write(&g, 0, b"version two").unwrap();
    c.remove(&d, "small").unwrap();
    c.create(&d, "new").unwrap();
    c.fs.cp().unwrap();
    assert_ne!(dump(&c.fs, &root), frozen);

    // `.snapshot/s1` from the root and from a subdirectory.
    let sd = c.fs.lookup(&root, b".snapshot").unwrap();
    let (list, eof) = c.fs.readdir(&sd.handle, 0, 10).unwrap();
    assert!(eof);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, b"s1");
    let snap_root = c.fs.lookup(&sd.handle, b"s1").unwrap();
    assert_eq!(snap_root.handle.view, View::Snap(s1.id));
    assert_eq!(dump(&c.fs, &snap_root.handle), frozen);
    let sub =
        c.fs.lookup(&c.fs.lookup(&d, b".snapshot").unwrap().handle, b"s1")
            .unwrap();
    let old_small = c.fs.lookup(&sub.handle, b"small").unwrap();
    assert_eq!(read_all(&c.fs, &old_small.handle), b"version one");
    assert_eq!(
        read_all(&c.fs, &c.fs.lookup(&sub.handle, b"big").unwrap().handle),
        vec![1u8; 1 << 20]
    );
    // Read-only: writes through a snapshot handle are refused before they reach the log.
    assert_eq!(old_small.handle.writable(), Err(FsError::ReadOnly));
    assert_eq!(
        Handle::from_bytes(&old_small.handle.to_bytes()).unwrap(),
        old_small.handle
    );

    // Space: the snapshot holds the old 1 MiB and more.
    let unique = c.fs.snapshot_unique_bytes("s1").unwrap();
    assert!(unique >= 1 << 20, "unique {unique}");
    let free1 = c.fs.statfs().free_bytes;
    assert!(
        free1 + (1 << 20) <= free0,
        "snapshot pins the old data: {free0} -> {free1}"
    );
    assert!(wafl::fsck::check(store.clone()).is_clean());

    // Remount keeps it.
    drop(c);
    let fs = Fs::mount(store.clone(), FsConfig::default()).unwrap();
    let sd = fs.lookup(&fs.root(), b".snapshot").unwrap();
    let snap_root = fs.lookup(&sd.handle, b"s1").unwrap();
    assert_eq!(dump(&fs, &snap_root.handle), frozen);
    let before_delete = fs.statfs().free_bytes;
    fs.snapshot_delete("s1").unwrap();
    let after = fs.statfs().free_bytes;
    assert!(
        after >= before_delete + unique,
        "{before_delete} + {unique} > {after}"
    );
    assert_eq!(fs.getattr(&snap_root.handle), Err(FsError::Stale));
    let r = wafl::fsck::check(store.clone());
    assert!(r.is_clean(), "{r}");
}

#[test]
fn deleting_a_middle_snapshot_keeps_the_others() {
    let store = mem_store(2048);
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let f = c.create(&root, "f").unwrap();
    let mut dumps = Vec::new();
    for i in 0..4u8 {
        c.write(&f, 0, &vec![i; 300_000]).unwrap();
        c.create(&root, &format!("g{i}")).unwrap();
        c.fs.snapshot_create(&format!("s{i}"), i as u64).unwrap();
        dumps.push(dump(&c.fs, &root));
    }
    c.write(&f, 0, &vec![9; 300_000]).unwrap();
    c.fs.cp().unwrap();
    for victim in ["s1", "s2"] {
        c.fs.snapshot_delete(victim).unwrap();
        let r = wafl::fsck::check(store.clone());
        assert!(r.is_clean(), "after deleting {victim}: {r}");
    }
    let sd = c.fs.lookup(&root, b".snapshot").unwrap().handle;
    for (i, name) in [(0, "s0"), (3, "s3")] {
        let h = c.fs.lookup(&sd, name.as_bytes()).unwrap().handle;
        assert_eq!(dump(&c.fs, &h), dumps[i], "{name}");
    }
    assert_eq!(c.fs.lookup(&sd, b"s1"), Err(FsError::NotFound));
    for name in ["s0", "s3"] {
        c.fs.snapshot_delete(name).unwrap();
    }
    // With no snapshot left, the map holds just the live tree.
    let r = wafl::fsck::check(store.clone());
    assert!(r.is_clean(), "{r}");
    assert!(c.fs.snapshot_list().is_empty());
}

#[test]
fn scheduled_policy_creates_and_expires() {
    use wafl::schedule::{Every, Schedule, SnapshotPolicy};
    let store = mem_store(1024);
    let fs = Fs::mkfs(store.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let policy = SnapshotPolicy {
        schedules: vec![Schedule {
            every: Every::Hourly,
            keep: 3,
        }],
    };
    let f = c.create(&root, "f").unwrap();
    for h in 0..6u64 {
        c.write(&f, 0, &vec![h as u8; 50_000]).unwrap();
        let now_ns = (1_700_000_000 + h * 3600) * 1_000_000_000;
        let plan = c.fs.run_snapshot_policy(&policy, now_ns).unwrap();
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.delete.len(), usize::from(h >= 3));
    }
    let names: Vec<String> = c.fs.snapshot_list().into_iter().map(|s| s.name).collect();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| n.starts_with("hourly.")), "{names:?}");
    let r = wafl::fsck::check(store);
    assert!(r.is_clean(), "{r}");
}
