//! Applies 1 MiB writes to an in-memory file system without CPs and prints the rate: the
//! floor of the single-stream write path above the log (`cargo run --release --example
//! apply_rate [MiB]`).

use std::sync::Arc;
use std::time::Instant;

use wafl::{CreateHow, Fid, Fs, FsConfig, FsOp, MemStore, NewObj};

/// Default data written, MiB.
const DATA_MIB_DEFAULT: u64 = 512;

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(DATA_MIB_DEFAULT);
    // Room for the data twice over; no CP runs during the timed part.
    let stripes = (mib << 20) * 3 / (4 * 4096) + 64;
    let store = Arc::new(MemStore::new(4, stripes));
    let config = FsConfig {
        cp_dirty_bytes_max: u64::MAX / 4,
        ..FsConfig::default()
    };
    let fs = Fs::mkfs(store, 1, config).expect("mkfs");
    let (ino, gen) = fs.reserve_inode();
    let new = NewObj {
        ino,
        gen,
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    let create = FsOp::Create {
        dir: Fid::ROOT,
        name: b"data".to_vec(),
        new,
        how: CreateHow::Guarded,
        attr: Default::default(),
        time_ns: 1,
    };
    fs.apply(1, &create).expect("create");
    let chunk: bytes::Bytes = (0..1usize << 20)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let target = Fid { ino, gen };
    let t = Instant::now();
    for i in 0..mib {
        let op = FsOp::Write {
            target,
            offset: i << 20,
            data: chunk.clone(),
            time_ns: 2 + i,
        };
        fs.apply(2 + i, &op).expect("write");
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "apply_write_MBps {:.1} MB/s ({mib} MiB in {s:.3} s)",
        mib as f64 * 1.048576 / s
    );
}
