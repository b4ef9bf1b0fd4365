//! Longer runs, only with `TWINFILER_LONG_TESTS=1` (each takes minutes): many crash and
//! restart cycles with data checked after each, and a 512 MiB file through the Rust client.

use crate::client::*;
use crate::common::{pattern, Opts, Setup};

const LONG_ENV: &str = "TWINFILER_LONG_TESTS";
/// Crash/restart cycles of the long restart run.
const RESTART_CYCLES: u32 = 20;
/// Files written per cycle.
const FILES_PER_CYCLE: u32 = 20;

fn long_enabled(test: &str) -> bool {
    let on = std::env::var_os(LONG_ENV).is_some_and(|v| v == "1");
    if !on {
        eprintln!("{test}: skipped (set {LONG_ENV}=1 to run it)");
    }
    on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_restart_cycles_keep_every_file() {
    if !long_enabled("long_restart_cycles_keep_every_file") {
        return;
    }
    let s = Setup::new();
    let o = Opts {
        cp_interval_ms: 1_000,
        disk_mib: 256,
        ..Opts::default()
    };
    let mut written: Vec<(String, Vec<u8>)> = Vec::new();
    for cycle in 0..RESTART_CYCLES {
        let p = s.spawn(&o);
        let root = mount(p.mount, LOCAL, "/", &Cred::root())
            .await
            .expect("MNT");
        let mut c = nfs(p.nfs, LOCAL, &Cred::root()).await;
        for (n, data) in &written {
            let fh = lookup(&mut c, &root, n)
                .await
                .unwrap_or_else(|e| panic!("{n} lost after cycle {cycle}: {e}"));
            assert!(
                read_all(&mut c, &fh, 0, data.len()).await.unwrap() == *data,
                "{n} differs"
            );
        }
        for i in 0..FILES_PER_CYCLE {
            let n = format!("c{cycle}-f{i}");
            let data = pattern(cycle * 1000 + i, 50_000 + (i as usize) * 9_000);
            let fh = create(&mut c, &root, &n, 0o644).await.unwrap();
            write_all(&mut c, &fh, 0, &data).await.unwrap();
            written.push((n, data));
        }
        drop(c);
        if cycle % 2 == 0 {
            p.kill9();
        } else {
            assert!(p.stop().success());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_half_gib_file_through_the_rust_client() {
    if !long_enabled("long_half_gib_file_through_the_rust_client") {
        return;
    }
    const FILE_BYTES: usize = 512 << 20;
    let s = Setup::new();
    let node = s
        .start(&Opts {
            disk_mib: 768,
            ..Opts::default()
        })
        .await;
    let l = node.listeners();
    let root = mount(l.mount_tcp, LOCAL, "/", &Cred::root()).await.unwrap();
    let mut c = nfs(l.nfs_tcp, LOCAL, &Cred::root()).await;
    let fh = create(&mut c, &root, "half-gib", 0o644).await.unwrap();
    let data = pattern(512, FILE_BYTES);
    write_all(&mut c, &fh, 0, &data).await.unwrap();
    assert!(read_all(&mut c, &fh, 0, FILE_BYTES).await.unwrap() == data);
    node.shutdown().await.expect("shutdown");
}
