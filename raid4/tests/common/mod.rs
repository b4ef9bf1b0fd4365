//! Shared helpers for the integration tests: disk files in a tempdir, data patterns.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raid4::{CreateConfig, Group, BLOCK_SIZE, HEADER_BYTES};
use rand::{RngCore, SeedableRng};

/// Creates `count` zero-filled disk files big enough for `stripes` stripes of `depth`.
pub fn disk_files(
    dir: &Path,
    prefix: &str,
    count: usize,
    stripes: u64,
    depth: usize,
) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let p = dir.join(format!("{prefix}{i}.img"));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&p)
                .expect("create disk file");
            f.set_len(HEADER_BYTES + stripes * (depth * BLOCK_SIZE) as u64)
                .expect("size disk file");
            p
        })
        .collect()
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// A group of `n` data disks + parity (+ `spares`) on fresh files.
pub fn new_group(
    dir: &Path,
    n: usize,
    spares: usize,
    stripes: u64,
    depth: usize,
) -> (Group, Vec<PathBuf>, Vec<PathBuf>) {
    let disks = disk_files(dir, "d", n + 1, stripes, depth);
    let sp = disk_files(dir, "s", spares, stripes, depth);
    let mut cfg = CreateConfig::new(disks.clone());
    cfg.spares = sp.clone();
    cfg.depth = depth;
    let g = Group::create(cfg).expect("create group");
    (g, disks, sp)
}

/// Writes every stripe with `pattern(…, seed)` and returns the data.
pub fn fill(g: &Group, seed: u64) -> Vec<u8> {
    let data = pattern(
        g.stripe_count() as usize * g.stripe_data_blocks() * BLOCK_SIZE,
        seed,
    );
    futures::executor::block_on(g.write_stripes(0, &data)).expect("write stripes");
    futures::executor::block_on(g.flush()).expect("flush");
    data
}

/// Reads the whole group back.
pub fn read_all(g: &Group) -> Result<Vec<u8>, raid4::Raid4Error> {
    let mut buf = vec![0u8; g.total_blocks() as usize * BLOCK_SIZE];
    futures::executor::block_on(g.read_blocks(0, &mut buf))?;
    Ok(buf)
}

/// Byte offset on a disk of (stripe, row) for a group of `depth`.
pub fn disk_offset(depth: usize, stripe: u64, row: usize) -> u64 {
    HEADER_BYTES + (stripe * depth as u64 + row as u64) * BLOCK_SIZE as u64
}

/// Flips one bit of a disk file (outside the group's IO path, like a bad sector would).
pub fn flip_bit(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for bit flip");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0x10;
    f.write_all_at(&b, offset).expect("write byte");
    f.sync_all().expect("sync");
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = OpenOptions::new().read(true).open(path).expect("open");
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, offset).expect("read");
    b
}

pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(data, offset).expect("write");
    f.sync_all().expect("sync");
}
