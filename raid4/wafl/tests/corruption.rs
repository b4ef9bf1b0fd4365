//! Random corruption of a valid image: mount, reads and fsck return errors, never panic.

mod common;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use wafl::*;

/// Walks everything reachable through the API, ignoring errors.
fn walk(fs: &Fs, dir: &Handle, depth: usize) -> usize {
    let mut n = 0;
    let mut cookie = 0;
    for _ in 0..1000 {
        let Ok((entries, eof)) = fs.readdir(dir, cookie, 50) else {
            return n;
        };
        for e in &entries {
            n += 1;
            cookie = e.cookie;
            if let Ok(a) = fs.getattr(&e.handle) {
                match a.kind {
                    FileType::Directory if depth < 8 => n += walk(fs, &e.handle, depth + 1),
                    FileType::Regular => {
                        let _ = fs.read(&e.handle, 0, 1 << 20);
                    }
                    FileType::Symlink => {
                        let _ = fs.readlink(&e.handle);
                    }
                    _ => {}
                }
            }
            let _ = fs.lookup(dir, &e.name);
        }
        if eof {
            break;
        }
    }
    n
}

#[test]
fn corrupted_images_never_panic() {
    let base = mem_store(512);
    let fs = Fs::mkfs(base.clone(), 1, FsConfig::default()).unwrap();
    let mut c = Client::new(fs);
    let root = c.fs.root();
    for d in 0..4 {
        let dh = c.mkdir(&root, &format!("d{d}")).unwrap();
        for f in 0..60 {
            let fh = c
                .create(&dh, &format!("file-with-a-longer-name-{f}"))
                .unwrap();
            c.write(&fh, (f * 1000) as u64, &vec![f as u8; 5000])
                .unwrap();
        }
    }
    c.fs.snapshot_create("snap", 1).unwrap();
    c.remove(
        &c.fs.lookup(&root, b"d0").unwrap().handle,
        "file-with-a-longer-name-3",
    )
    .unwrap();
    c.fs.cp().unwrap();
    let used: Vec<u64> = (0..512 * SDB as u64).collect();
    let image = base.image();
    let mut rng = StdRng::seed_from_u64(99);
    let (mut mounted, mut dirty) = (0, 0);
    for _ in 0..60 {
        let store = Arc::new(MemStore::from_image(SDB, image.clone()));
        for _ in 0..rng.gen_range(1..4) {
            // Mostly blocks in use (superblocks included), sometimes anywhere.
            let b = if rng.gen_bool(0.8) {
                used[rng.gen_range(0..200.min(used.len()))]
            } else {
                rng.gen_range(0..512 * SDB as u64)
            };
            store.corrupt_block(b, rng.gen_range(0..BLOCK_SIZE));
        }
        if let Ok(fs) = Fs::mount(
            store.clone(),
            FsConfig {
                nodes_cached_max: 8,
                ..FsConfig::default()
            },
        ) {
            mounted += 1;
            walk(&fs, &fs.root(), 0);
            if let Ok(sd) = fs.lookup(&fs.root(), b".snapshot") {
                if let Ok(s) = fs.lookup(&sd.handle, b"snap") {
                    walk(&fs, &s.handle, 0);
                }
            }
        }
        let r = wafl::fsck::check(store);
        dirty += !r.is_clean() as usize;
    }
    assert!(
        mounted > 0 && dirty > 0,
        "mounted {mounted}, fsck found damage in {dirty}"
    );
}
