//! Mailbox IO on real disk files: one node writes its slot, the other reads it.

use std::path::{Path, PathBuf};

use cluster::direct_io::{AlignedBlock, DirectDisk};
use cluster::mailbox::MailboxRecord;
use cluster::mailbox_io::{slot_block, MailboxDisks, MailboxIoError};
use cluster::takeover::StateCode;
use cluster::NodeId;

fn disks(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("disk{i}"));
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(1 << 20))
                .expect("create");
            p
        })
        .collect()
}

fn record(counter: u64, unmirrored: bool) -> MailboxRecord {
    MailboxRecord {
        node: NodeId(0),
        counter,
        state: StateCode::Normal,
        epoch: 2,
        unmirrored,
    }
}

#[test]
fn the_partner_reads_what_the_owner_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = disks(dir.path(), 3);
    let mut owner = MailboxDisks::open(&paths).expect("open");
    let partner = MailboxDisks::open(&paths).expect("open");
    assert_eq!(partner.read(NodeId(0)), None, "blank disks: no record");
    for counter in 1..=20 {
        owner
            .write(NodeId(0), &record(counter, counter % 2 == 0))
            .expect("write");
        assert_eq!(
            partner.read(NodeId(0)),
            Some(record(counter, counter % 2 == 0))
        );
    }
    // Node 1's slot is separate.
    assert_eq!(partner.read(NodeId(1)), None);
    assert!(matches!(
        owner.write(NodeId(1), &record(1, false)),
        Err(MailboxIoError::WrongSlot { .. })
    ));
}

#[test]
fn damaged_or_stale_copies_lose_to_good_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = disks(dir.path(), 3);
    let mut owner = MailboxDisks::open(&paths).expect("open");
    let partner = MailboxDisks::open(&paths).expect("open");
    owner.write(NodeId(0), &record(5, false)).expect("write");
    // Disk 0: a stale record (lower counter); disk 1: damaged; disk 2: current.
    let raw0 = DirectDisk::open(&paths[0]).expect("raw");
    raw0.write_block(
        slot_block(NodeId(0)),
        &AlignedBlock::with_prefix(&record(4, true).encode()),
    )
    .expect("stale");
    let raw1 = DirectDisk::open(&paths[1]).expect("raw");
    let mut bad = raw1.read_block(slot_block(NodeId(0))).expect("read");
    bad.as_mut()[9] ^= 0xff;
    raw1.write_block(slot_block(NodeId(0)), &bad)
        .expect("damage");
    assert_eq!(partner.read(NodeId(0)), Some(record(5, false)));
    // Everything damaged: unreadable, not a panic.
    raw0.write_block(slot_block(NodeId(0)), &bad)
        .expect("damage");
    let raw2 = DirectDisk::open(&paths[2]).expect("raw");
    raw2.write_block(slot_block(NodeId(0)), &bad)
        .expect("damage");
    assert_eq!(partner.read(NodeId(0)), None);
    // A record of node 0 in node 1's slot is refused.
    raw2.write_block(
        slot_block(NodeId(1)),
        &AlignedBlock::with_prefix(&record(9, false).encode()),
    )
    .expect("misplaced");
    assert_eq!(partner.read(NodeId(1)), None);
}

#[test]
fn a_disk_that_fails_writes_leaves_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = disks(dir.path(), 2);
    // /dev/full: every write fails with ENOSPC, reads return zeros (a blank slot).
    paths.insert(1, PathBuf::from("/dev/full"));
    let mut owner = MailboxDisks::open(&paths).expect("open");
    assert_eq!(owner.disks_in_service(), 3);
    owner
        .write(NodeId(0), &record(3, false))
        .expect("two disks still take it");
    assert_eq!(owner.disks_in_service(), 2);
    assert_eq!(owner.read(NodeId(0)), Some(record(3, false)));
    let mut only_bad = MailboxDisks::open(&[PathBuf::from("/dev/full")]).expect("open");
    assert!(matches!(
        only_bad.write(NodeId(0), &record(1, false)),
        Err(MailboxIoError::NoDisk { .. })
    ));
}
