//! A real third-party client: the libnfs tools from Debian (`nfs-cp`, `nfs-ls`, `nfs-cat`,
//! package `libnfs-utils`) against an in-process node on loopback.

use std::path::Path;
use std::time::Duration;

use twinfiler::node::Listeners;

use crate::common::{pattern, Opts, Setup};

/// One libnfs tool run must finish within this bound (64 MiB over loopback included).
const TOOL_RUN_MS_MAX: u64 = 60_000;
const TOOLS: [&str; 3] = ["nfs-cp", "nfs-ls", "nfs-cat"];

fn tools_present() -> bool {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| {
            !std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         SKIPPED: libnfs client tests: {} not found. Install the Debian package\n\
         `libnfs-utils` (apt-get install -y libnfs-utils) to run them.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
        missing.join(", ")
    );
    false
}

/// A libnfs URL for `name` in the root export ("//" separates the export "/" from the
/// path: libnfs takes everything before the last path component as the export).
fn url(l: &Listeners, name: &str) -> String {
    format!(
        "nfs://127.0.0.1//{name}?version=3&nfsport={}&mountport={}",
        l.nfs_tcp.port(),
        l.mount_tcp.port()
    )
}

fn dir_url(l: &Listeners) -> String {
    format!(
        "nfs://127.0.0.1/?version=3&nfsport={}&mountport={}",
        l.nfs_tcp.port(),
        l.mount_tcp.port()
    )
}

async fn tool(args: &[&str]) -> Vec<u8> {
    let run = tokio::process::Command::new(args[0])
        .args(&args[1..])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_millis(TOOL_RUN_MS_MAX), run)
        .await
        .unwrap_or_else(|_| panic!("{args:?} took over {TOOL_RUN_MS_MAX} ms"))
        .expect("run libnfs tool");
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

async fn copy_in(l: &Listeners, local: &Path, name: &str) {
    tool(&["nfs-cp", local.to_str().expect("utf-8 path"), &url(l, name)]).await;
}

async fn copy_out(l: &Listeners, name: &str, local: &Path) {
    tool(&["nfs-cp", &url(l, name), local.to_str().expect("utf-8 path")]).await;
}

fn big_opts() -> Opts {
    Opts {
        disk_mib: 160,
        ..Opts::default()
    }
}

/// Copy in and out (contents equal), `nfs-cat`, `nfs-ls` shows every name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnfs_copy_in_out_and_list() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let node = s.start(&Opts::default()).await;
    let l = node.listeners();
    let local = s.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let mut names = Vec::new();
    for (i, len) in [0usize, 1, 4095, 4096, 100_000, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let name = format!("file-{i}.bin");
        let data = pattern(i as u32, len);
        std::fs::write(local.join(&name), &data).unwrap();
        copy_in(&l, &local.join(&name), &name).await;
        let back = local.join(format!("{name}.back"));
        copy_out(&l, &name, &back).await;
        assert_eq!(
            std::fs::read(&back).unwrap(),
            data,
            "{name} differs after a round trip"
        );
        names.push(name);
    }
    let text = pattern(99, 1000);
    std::fs::write(local.join("cat.txt"), &text).unwrap();
    copy_in(&l, &local.join("cat.txt"), "cat.txt").await;
    assert_eq!(tool(&["nfs-cat", &url(&l, "cat.txt")]).await, text);
    names.push("cat.txt".into());

    let listing = String::from_utf8(tool(&["nfs-ls", &dir_url(&l)]).await).unwrap();
    for name in &names {
        assert!(
            listing
                .lines()
                .any(|line| line.split_whitespace().last() == Some(name)),
            "{name} missing from nfs-ls:\n{listing}"
        );
    }
    node.shutdown().await.expect("clean shutdown");
}

/// A 64 MiB file: many 1 MiB-class WRITEs, log halves fill and CPs release them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnfs_large_file() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let node = s.start(&big_opts()).await;
    let l = node.listeners();
    let data = pattern(64, 64 << 20);
    let src = s.path().join("big.bin");
    std::fs::write(&src, &data).unwrap();
    copy_in(&l, &src, "big.bin").await;
    let back = s.path().join("big.back");
    copy_out(&l, "big.bin", &back).await;
    assert!(
        std::fs::read(&back).unwrap() == data,
        "64 MiB file differs after a round trip"
    );
    let st = node.status();
    assert!(
        st.cp_count > 0,
        "64 MiB through {} MiB log halves must have triggered CPs: {st}",
        Opts::default().half_mib
    );
    node.shutdown().await.expect("clean shutdown");
}

/// A sparse local file (data, a 24 MiB hole, data) keeps its contents; the hole reads back
/// as zeros.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnfs_sparse_file() {
    if !tools_present() {
        return;
    }
    let s = Setup::new();
    let node = s.start(&big_opts()).await;
    let l = node.listeners();
    let src = s.path().join("sparse.bin");
    let head = pattern(1, 300_000);
    let tail = pattern(2, 123_457);
    let hole_end = 300_000 + (24 << 20);
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::File::create(&src).unwrap();
        f.write_all_at(&head, 0).unwrap();
        f.write_all_at(&tail, hole_end as u64).unwrap();
    }
    copy_in(&l, &src, "sparse.bin").await;
    let back = s.path().join("sparse.back");
    copy_out(&l, "sparse.bin", &back).await;
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), hole_end + tail.len());
    assert!(got[..head.len()] == head[..], "head differs");
    assert!(
        got[head.len()..hole_end].iter().all(|&b| b == 0),
        "hole is not zeros"
    );
    assert!(got[hole_end..] == tail[..], "tail differs");
    node.shutdown().await.expect("clean shutdown");
}
