//! The file system on a real RAID-4 group (disk files, io_uring): mkfs, work, reassemble,
//! remount, fsck; and a failed disk under a mounted file system.

mod common;
use common::*;
use std::path::PathBuf;
use std::sync::Arc;
use wafl::*;

/// Data disks of the test group (plus one parity disk).
const DATA_DISKS: usize = 3;
/// Bytes per disk file.
const DISK_BYTES: u64 = 48 << 20;

fn make_disks(dir: &std::path::Path) -> Vec<PathBuf> {
    (0..=DATA_DISKS)
        .map(|i| {
            let p = dir.join(format!("disk{i}"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(DISK_BYTES)
                .unwrap();
            p
        })
        .collect()
}

#[test]
fn file_system_on_a_raid4_group() {
    let dir = tempfile::tempdir().unwrap();
    let disks = make_disks(dir.path());
    let group = Arc::new(raid4::Group::create(raid4::CreateConfig::new(disks.clone())).unwrap());
    let fs = Fs::mkfs(group.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    let d = c.mkdir(&root, "dir").unwrap();
    for i in 0..200 {
        let f = c.create(&d, &format!("f{i}")).unwrap();
        c.write(&f, (i * 777) as u64, &vec![i as u8; 3000 + i * 50])
            .unwrap();
    }
    c.fs.snapshot_create("before", 2).unwrap();
    for i in 0..50 {
        c.remove(&d, &format!("f{i}")).unwrap();
    }
    c.fs.cp().unwrap();
    let before = dump(&c.fs, &root);
    drop(c);
    drop(group);

    // Reassemble from the disks in another order, mount, compare, fsck.
    let mut shuffled = disks.clone();
    shuffled.reverse();
    let group = Arc::new(
        raid4::Group::assemble(raid4::AssembleConfig::new(raid4::DiskSource::List(
            shuffled,
        )))
        .unwrap(),
    );
    let fs = Fs::mount(group.clone(), FsConfig::default()).unwrap();
    assert_eq!(dump(&fs, &fs.root()), before);
    assert_eq!(fs.snapshot_list().len(), 1);
    let r = wafl::fsck::check(group.clone());
    assert!(r.is_clean(), "{r}");

    // One failed disk: reads reconstruct from parity, the file system does not notice.
    futures::executor::block_on(group.fail_disk(1, "test")).unwrap();
    let fs = Fs::mount(group.clone(), FsConfig::default()).unwrap();
    assert_eq!(dump(&fs, &fs.root()), before);
    let r = wafl::fsck::check(group);
    assert!(r.is_clean(), "{r}");
}
