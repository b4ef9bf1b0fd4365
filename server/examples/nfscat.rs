//! `nfscat`: reads a file (or lists a directory) over NFSv3 with twinfiler's own client, for
//! host-side checks in tests (tests/vm/nfs-kernel.sh compares checksums with it).
//!
//! usage: nfscat [--ls] [--portmap-port P] [--uid U --gid G] SERVER EXPORT PATH
//!   prints the file's bytes on stdout, or with --ls the directory's names, one per line.
//! MOUNT and NFS ports come from the server's portmapper.

use std::io::Write;

use anyhow::{bail, Context};
use twinfiler::nfsclient::{auth_sys, NfsClient, ServerAddr, PORTMAP_PORT};

/// Bytes per READ request.
const READ_CHUNK_BYTES: u32 = 1 << 20;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut ls, mut portmap_port, mut uid, mut gid) = (false, PORTMAP_PORT, 0u32, 0u32);
    let mut positional = Vec::new();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--ls" => ls = true,
            "--portmap-port" => portmap_port = value("--portmap-port")?.parse()?,
            "--uid" => uid = value("--uid")?.parse()?,
            "--gid" => gid = value("--gid")?.parse()?,
            _ => positional.push(a),
        }
    }
    let [server, export, path] = positional.as_slice() else {
        bail!("usage: nfscat [--ls] [--portmap-port P] [--uid U --gid G] SERVER EXPORT PATH");
    };
    let server = ServerAddr {
        ip: server
            .parse()
            .with_context(|| format!("server address {server:?}"))?,
        portmap_port,
        mount_port: None,
        nfs_port: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = NfsClient::connect(&server, export, auth_sys(uid, gid))
            .await
            .with_context(|| format!("mount {export}"))?;
        let fh = client
            .lookup_path(path)
            .await
            .with_context(|| format!("lookup {path}"))?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        if ls {
            for name in client.readdir_names(&fh).await? {
                out.write_all(&name)?;
                out.write_all(b"\n")?;
            }
        } else {
            client
                .read_all(&fh, READ_CHUNK_BYTES, |d| out.write_all(d))
                .await
                .with_context(|| format!("read {path}"))?;
        }
        out.flush()?;
        anyhow::Ok(())
    })
}
