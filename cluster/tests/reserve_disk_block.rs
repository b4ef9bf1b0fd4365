//! The on-disk reservation block on real files: two nodes (two handles on the same files)
//! contend, preempt, self-fence; damaged blocks give errors, never panics.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster::direct_io::{AlignedBlock, DirectDisk};
use cluster::reserve::disk_block::{
    DiskBlockReservation, DiskBlockTiming, ReservationRecord, RESERVATION_AREA_BLOCK,
};
use cluster::reserve::{
    HoldLoss, HoldMonitor, HoldStatus, ReservationKey, ReservationSet, Reservations, ReserveError,
};
use cluster::NodeId;

const DISK_BYTES: u64 = 1 << 20;
/// Short delays for tests; the settle time still leaves room for a slow O_DSYNC write on a
/// loaded shared host (an acquisition slower than it gives up with `SlowIo`).
const FAST: DiskBlockTiming = DiskBlockTiming {
    settle_ms: 100,
    fence_wait_ms: 120,
};

fn disks(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("disk{i}"));
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(DISK_BYTES))
                .expect("create disk file");
            p
        })
        .collect()
}

fn node(path: &Path, n: u8) -> DiskBlockReservation {
    DiskBlockReservation::open(path, ReservationKey::for_node(NodeId(n)), FAST).expect("open")
}

fn set(paths: &[PathBuf], n: u8) -> ReservationSet {
    ReservationSet::new(
        paths
            .iter()
            .map(|p| Box::new(node(p, n)) as Box<dyn Reservations>)
            .collect(),
    )
}

#[test]
fn second_node_conflicts_until_the_first_releases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = &disks(dir.path(), 1)[0];
    let (mut a, mut b) = (node(p, 0), node(p, 1));
    let ga = a.reserve().expect("a reserves a blank disk");
    assert!(matches!(a.check_held(), Ok(HoldStatus::Held { generation }) if generation == ga));
    assert_eq!(a.reserve().expect("idempotent"), ga);
    match b.reserve() {
        Err(ReserveError::Conflict { holder, .. }) => assert_eq!(holder, a.key()),
        other => panic!("b must conflict, got {other:?}"),
    }
    let state = b.read_reservation().expect("read");
    assert_eq!(state.holder, Some(a.key()));
    assert_eq!(b.read_keys().expect("keys").keys, vec![a.key()]);
    b.release()
        .expect("releasing what another holds is a no-op");
    assert_eq!(b.read_reservation().expect("read").holder, Some(a.key()));
    a.release().expect("release");
    assert!(matches!(
        a.check_held(),
        Ok(HoldStatus::Lost { holder: None })
    ));
    let gb = b.reserve().expect("b reserves after the release");
    assert!(gb > ga, "generations only grow");
}

#[test]
fn preemption_is_seen_by_the_old_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = &disks(dir.path(), 1)[0];
    let (mut a, mut b) = (node(p, 0), node(p, 1));
    a.reserve().expect("a reserves");
    b.register().expect("b registers");
    let gb = b.preempt(a.key()).expect("b preempts a");
    assert_eq!(
        a.check_held().expect("check"),
        HoldStatus::Lost {
            holder: Some(b.key())
        }
    );
    assert_eq!(
        b.check_held().expect("check"),
        HoldStatus::Held { generation: gb }
    );
    let keys = b.read_keys().expect("keys").keys;
    assert!(!keys.contains(&a.key()), "the victim's key is removed");
    // The old holder cannot take it back by reserving.
    assert!(matches!(a.reserve(), Err(ReserveError::Conflict { .. })));
}

#[test]
fn reacquiring_after_a_foreign_hold_changes_the_generation() {
    // regression guard for VerifyReservations: a hold that went away and came back is not the
    // same hold.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = &disks(dir.path(), 1)[0];
    let (mut a, mut b) = (node(p, 0), node(p, 1));
    let first = a.reserve().expect("a reserves");
    b.preempt(a.key()).expect("b preempts");
    b.release().expect("b releases");
    let mut a2 = node(p, 0);
    let second = a2.reserve().expect("a reserves again");
    assert_ne!(first, second);
    assert!(matches!(a.check_held(), Ok(HoldStatus::Lost { .. })));
}

#[test]
fn monitor_fences_the_preempted_holder_within_its_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = disks(dir.path(), 3);
    let mut a = set(&paths, 0);
    a.reserve_all().expect("a reserves all disks");
    let check_interval_ms = 20;
    let (tx, rx) = mpsc::channel();
    let monitor = HoldMonitor::start(a, check_interval_ms, move |loss| {
        let _ = tx.send((loss, Instant::now()));
    });
    assert!(monitor.is_held());
    let flag = monitor.held_flag();
    let mut b = set(&paths, 1);
    let victim = ReservationKey::for_node(NodeId(0));
    b.preempt_all(victim).expect("b preempts all disks");
    // preempt_all returned after the fence wait (60 ms > 20 ms interval): the old holder
    // must already have stopped.
    let (loss, _at) = rx
        .recv_timeout(Duration::from_millis(500))
        .expect("the monitor reports the loss");
    assert!(
        !flag.load(std::sync::atomic::Ordering::Acquire),
        "flag cleared before preempt returned"
    );
    assert_eq!(
        loss,
        HoldLoss::Preempted {
            holder: Some(ReservationKey::for_node(NodeId(1)))
        }
    );
    let mut a = monitor.stop();
    a.release_all()
        .expect("release of a preempted set is a no-op");
    assert!(matches!(b.check_held(), Ok(HoldStatus::Held { .. })));
}

#[test]
fn half_acquisition_is_undone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = disks(dir.path(), 3);
    // b holds only the last disk: a's reserve_all must fail there and release the first two.
    node(&paths[2], 1).reserve().expect("b holds disk 2");
    let mut a = set(&paths, 0);
    assert!(matches!(
        a.reserve_all(),
        Err(ReserveError::Conflict { .. })
    ));
    for p in &paths[..2] {
        assert_eq!(node(p, 1).read_reservation().expect("read").holder, None);
    }
}

#[test]
fn concurrent_reservers_never_both_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = disks(dir.path(), 1).remove(0);
    let rounds = 20;
    let mut wins = 0;
    for round in 0..rounds {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = (0..2u8)
            .map(|n| {
                let (p, barrier) = (p.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // A short settle time on purpose: on a loaded host many acquisitions are
                    // slower than it and must give up (SlowIo) rather than both win.
                    let timing = DiskBlockTiming {
                        settle_ms: 10,
                        fence_wait_ms: 10,
                    };
                    let mut r =
                        DiskBlockReservation::open(&p, ReservationKey::for_node(NodeId(n)), timing)
                            .expect("open");
                    barrier.wait();
                    r.reserve().map(|g| (n, g))
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert!(winners.len() <= 1, "round {round}: both won: {results:?}");
        wins += winners.len();
        // Clean up for the next round: whoever holds releases.
        let holder = node(&p, 0).read_reservation().expect("read").holder;
        for n in 0..2u8 {
            let mut r = node(&p, n);
            if holder == Some(r.key()) {
                assert_eq!(
                    winners.len(),
                    1,
                    "round {round}: holder on disk but no winner"
                );
                r.release().expect("release");
            }
        }
    }
    println!("disk_block.contended_rounds {rounds} won {wins}");
}

#[test]
fn damaged_blocks_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = &disks(dir.path(), 1)[0];
    let mut a = node(p, 0);
    a.reserve().expect("reserve");
    let raw = DirectDisk::open(p).expect("open raw");
    let good = raw.read_block(RESERVATION_AREA_BLOCK).expect("read");
    let rec_len = ReservationRecord::decode(good.as_ref())
        .expect("valid")
        .encode()
        .len();
    // A torn write: the first half of the record is new, the second half old (zeros).
    let mut torn = AlignedBlock::with_prefix(&good.as_ref()[..rec_len / 2]);
    torn.as_mut()[0] = good.as_ref()[0];
    raw.write_block(RESERVATION_AREA_BLOCK, &torn)
        .expect("write torn");
    for result in [
        a.check_held().map(drop),
        a.reserve().map(drop),
        a.read_keys().map(drop),
        a.release(),
    ] {
        assert!(
            matches!(result, Err(ReserveError::Corrupt { .. })),
            "{result:?}"
        );
    }
    // Foreign bytes.
    let mut junk = AlignedBlock::zeroed();
    junk.as_mut()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    raw.write_block(RESERVATION_AREA_BLOCK, &junk)
        .expect("write junk");
    assert!(matches!(
        node(p, 1).preempt(a.key()),
        Err(ReserveError::Corrupt { .. })
    ));
    // The operator's way out.
    a.reinitialise(100).expect("reinitialise");
    assert_eq!(node(p, 1).read_reservation().expect("read").generation, 101);
}

#[test]
fn a_too_short_disk_is_an_io_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("tiny");
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(4096))
        .expect("create");
    assert!(matches!(
        node(&p, 0).reserve(),
        Err(ReserveError::Io { .. })
    ));
}

#[test]
fn a_record_naming_us_is_reacquired_not_trusted() {
    // regression (the suspected cause of one double win seen under load, not reproduced since):
    // a retry after an abandoned (slow) acquisition found its own leftover record
    // and claimed it without the settle-and-read-back, letting two reservers both win.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = &disks(dir.path(), 1)[0];
    let mut first = node(p, 0);
    let g1 = first.reserve().expect("reserve");
    assert_eq!(first.reserve().expect("same handle: idempotent"), g1);
    let mut restarted = node(p, 0);
    let g2 = restarted.reserve().expect("a new handle re-acquires");
    assert!(g2 > g1, "re-acquisition writes a new generation");
    assert!(matches!(first.check_held(), Ok(HoldStatus::Lost { .. })));
    assert_eq!(
        restarted.check_held().expect("check"),
        HoldStatus::Held { generation: g2 }
    );
}
