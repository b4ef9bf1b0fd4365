//! Hostile length fields must be rejected before anything is allocated. A counting global
//! allocator records the largest single allocation while hostile inputs are decoded.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use twinfiler_proto::mount::MountCall;
use twinfiler_proto::nfs3::{Nfs3Call, Nfs3Proc};
use twinfiler_proto::record::RecordDecoder;
use twinfiler_proto::rpc::decode_call;

struct Counting;

static LARGEST_ALLOC_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOC_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOC_BYTES.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Anything above this during a hostile decode means a length was trusted.
const HOSTILE_ALLOC_BYTES_MAX: usize = 4096;

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

#[test]
fn hostile_lengths_allocate_nothing_large() {
    let header = |prog: u32, proc_: u32| words(&[1, 0, 2, prog, 3, proc_, 0, 0, 0, 0]);
    let inputs: Vec<Vec<u8>> = vec![
        // WRITE: fh of 4 bytes, offset, count, stable, data length 4 GiB - 1.
        [header(100_003, 7), words(&[4, 0, 0, 0, 1, 2, u32::MAX])].concat(),
        // Handle length 4 GiB - 1.
        [header(100_003, 1), words(&[u32::MAX])].concat(),
        // LOOKUP name length 4 GiB - 1.
        [header(100_003, 3), words(&[0, u32::MAX])].concat(),
        // MNT path length 4 GiB - 1.
        [header(100_005, 1), words(&[u32::MAX])].concat(),
        // Credential body length 4 GiB - 1.
        words(&[1, 0, 2, 100_003, 3, 0, 1, u32::MAX]),
        // AUTH_SYS with 4 G gids inside a small body.
        [
            words(&[1, 0, 2, 100_003, 3, 0, 1, 20, 0, 0, 0, 0, u32::MAX]),
            vec![0; 4],
        ]
        .concat(),
        // READDIRPLUS reply-style list with endless TRUE markers is bounded by input size.
        [header(100_003, 17), words(&[1; 64])].concat(),
    ];
    LARGEST_ALLOC_BYTES.store(0, Ordering::Relaxed);
    for record in &inputs {
        match decode_call(record) {
            Ok((h, off)) => {
                if h.prog == 100_005 {
                    assert!(MountCall::decode(h.proc_, record, off).is_err());
                } else {
                    assert!(Nfs3Call::decode(h.proc_, record, off).is_err());
                }
            }
            Err(e) => assert!(e.reply().is_some()),
        }
        for p in Nfs3Proc::ALL {
            let _ = Nfs3Call::decode(*p as u32, record, 40);
        }
    }
    // A record mark claiming 2 GiB.
    let mut rec = RecordDecoder::default();
    assert!(rec.feed(&[0xff, 0xff, 0xff, 0xff]).is_err());
    let largest = LARGEST_ALLOC_BYTES.load(Ordering::Relaxed);
    assert!(
        largest <= HOSTILE_ALLOC_BYTES_MAX,
        "a hostile decode allocated {largest} bytes at once"
    );
}
