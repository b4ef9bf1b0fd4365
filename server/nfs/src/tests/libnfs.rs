//! A real client: Debian's libnfs tools (`nfs-cp`, `nfs-ls`) against H1's RPC
//! server on loopback. Skipped (with a message) when libnfs-utils is not installed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use twinfiler_proto::mount::MOUNT_PROGRAM;
use twinfiler_proto::nfs3::NFS_PROGRAM;
use twinfiler_rpc::{RpcServer, ServerConfig};

use super::*;

/// Bound on one libnfs command.
const COMMAND_TIMEOUT_S: u64 = 60;

fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new("timeout")
        .arg(COMMAND_TIMEOUT_S.to_string())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnfs_copy_in_list_and_copy_out() {
    if !Path::new("/usr/bin/nfs-cp").exists() {
        eprintln!("SKIPPED: libnfs-utils (nfs-cp, nfs-ls) not installed");
        return;
    }
    let env = Env::new();
    let server = RpcServer::new(ServerConfig::default()).unwrap();
    server.register(NFS_PROGRAM, env.svc.nfs_program());
    server.register(MOUNT_PROGRAM, env.svc.mount_program());
    let addr = server
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = |path: &str| {
        format!(
            "nfs://127.0.0.1{path}?version=3&nfsport={p}&mountport={p}",
            p = addr.port()
        )
    };
    let work = tempfile::tempdir().unwrap();
    // 5 MiB + an odd tail: several 1 MiB WRITEs and READs, one short.
    let data: Vec<u8> = (0..(5 << 20) + 1234u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let src = work.path().join("src");
    std::fs::write(&src, &data).unwrap();
    let back = work.path().join("back");
    let (src_s, back_s) = (
        src.to_str().unwrap().to_string(),
        back.to_str().unwrap().to_string(),
    );
    // libnfs takes the export from the URL's directory part: use the /sub export.
    env.svc.create_export_dirs().await.unwrap();
    let (to, from, dir) = (url("/sub/big.bin"), url("/sub/big.bin"), url("/sub/"));
    let listing = tokio::task::spawn_blocking(move || {
        run(&["nfs-cp", &src_s, &to]);
        run(&["nfs-cp", &from, &back_s]);
        String::from_utf8(run(&["nfs-ls", &dir]).stdout).unwrap()
    })
    .await
    .unwrap();
    let copied = std::fs::read(&back).unwrap();
    assert!(
        copied == data,
        "copied out ({} bytes) = copied in",
        copied.len()
    );
    assert!(listing.contains("big.bin"), "listing: {listing}");
    let sub = env.mount(&root(), "/sub").await.unwrap();
    let a = ok(env.lookup(&root(), &sub, "big.bin").await)
        .obj_attributes
        .unwrap();
    assert_eq!(a.size, data.len() as u64);
    server.stop(Duration::from_secs(2)).await;
}
