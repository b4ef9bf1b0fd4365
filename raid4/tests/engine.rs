//! The io_uring engine on its own: bounded in-flight requests, per-disk injected faults,
//! cancelled futures, and decoders that never panic on arbitrary bytes.

use std::future::Future;
use std::sync::Arc;

use futures::executor::block_on;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use proptest::prelude::*;
use raid4::buf::BufPool;
use raid4::csum::{self, ChunkId};
use raid4::disk::{Disk, Fault};
use raid4::engine::{Engine, Segment};
use raid4::label::Label;
use raid4::BLOCK_SIZE;

fn disk_file(dir: &std::path::Path, name: &str, bytes: u64) -> Arc<Disk> {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .expect("create")
        .set_len(bytes)
        .expect("size");
    Arc::new(Disk::open(&p).expect("open disk"))
}

fn seg(block: u64) -> [Segment; 1] {
    [Segment {
        disk_offset: block * BLOCK_SIZE as u64,
        slot_offset: 0,
        len: BLOCK_SIZE,
    }]
}

#[test]
fn many_more_requests_than_the_inflight_bound_all_complete_in_order_of_data() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let disk = disk_file(dir.path(), "d", 1 << 20);
    assert!(disk.is_direct(), "ext4 supports O_DIRECT");
    // 8 slots, at most 4 SQEs in flight, 256 block writes then reads.
    let engine = Engine::new(BufPool::new(BLOCK_SIZE, 8), 4).expect("engine");
    block_on(async {
        let mut ios = FuturesUnordered::new();
        for b in 0..256u64 {
            let (engine, disk) = (&engine, &disk);
            ios.push(async move {
                let mut slot = engine.pool().acquire(1).await.pop().expect("slot");
                slot.bytes_mut().fill(b as u8);
                engine.write(disk, slot, &seg(b)).await.result
            });
        }
        while let Some(r) = ios.next().await {
            r.expect("write");
        }
        engine.flush(&disk).await.expect("flush");
        for b in 0..256u64 {
            let slot = engine.pool().acquire(1).await.pop().expect("slot");
            let done = engine.read(&disk, slot, &seg(b)).await;
            done.result.expect("read");
            assert!(
                done.slot
                    .expect("slot back")
                    .bytes()
                    .iter()
                    .all(|&x| x == b as u8),
                "block {b}"
            );
        }
    });
}

#[test]
fn injected_faults_fail_only_their_disk_and_direction() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let a = disk_file(dir.path(), "a", 1 << 20);
    let b = disk_file(dir.path(), "b", 1 << 20);
    let engine = Engine::new(BufPool::new(BLOCK_SIZE, 4), 8).expect("engine");
    let io = |d: &Arc<Disk>, write: bool| {
        block_on(async {
            let slot = engine.pool().acquire(1).await.pop().expect("slot");
            if write {
                engine.write(d, slot, &seg(0)).await.result
            } else {
                engine.read(d, slot, &seg(0)).await.result
            }
        })
    };
    a.inject_fault(Fault::Writes);
    assert!(io(&a, true).is_err());
    assert!(io(&a, false).is_ok());
    assert!(io(&b, true).is_ok());
    a.inject_fault(Fault::Reads);
    assert!(io(&a, false).is_err() && io(&a, true).is_ok());
    a.inject_fault(Fault::None);
    assert!(io(&a, false).is_ok());
    // A read past the end of the file is a short read: an error, not silent zeros.
    let short = block_on(async {
        let slot = engine.pool().acquire(1).await.pop().expect("slot");
        engine.read(&a, slot, &seg(1 << 10)).await.result
    });
    assert!(short.is_err());
}

#[test]
fn dropping_a_future_mid_flight_returns_its_slot_after_completion() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let disk = disk_file(dir.path(), "d", 1 << 20);
    let engine = Engine::new(BufPool::new(BLOCK_SIZE, 2), 8).expect("engine");
    for round in 0..50 {
        let slot = block_on(engine.pool().acquire(1)).pop().expect("slot");
        let s = seg(round);
        let fut = engine.read(&disk, slot, &s);
        drop(fut); // never polled: the request may not even be queued
        let mut f2 = Box::pin(async {
            let slot = engine.pool().acquire(1).await.pop().expect("slot");
            engine.read(&disk, slot, &seg(round)).await
        });
        // Poll once (submits), then cancel while the kernel may still be reading.
        let waker = futures::task::noop_waker();
        let _ = f2
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        drop(f2);
    }
    // Every slot comes back once the kernel is done with it.
    assert_eq!(block_on(engine.pool().acquire(2)).len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4200), magic in any::<bool>()) {
        let mut b = bytes.clone();
        b.resize(BLOCK_SIZE, 0);
        if magic {
            b[0..8].copy_from_slice(b"TWF-R4LB");
        }
        let _ = Label::decode(&b);
        let _ = Label::decode(&bytes);
        if magic {
            b[0..8].copy_from_slice(b"TWF-R4CK");
        }
        let id = ChunkId { aggregate: uuid::Uuid::nil(), position: 0, stripe: 0, depth: 256 };
        let _ = csum::decode(&b, &id);
        let _ = csum::decode(&bytes, &id);
    }
}
