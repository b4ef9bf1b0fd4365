//! `twinfiler bench nfs`: a node served over loopback (with a partner node mirroring its
//! NVRAM log), measured by our NFSv3 client in the same run: sequential 1 MiB writes (+COMMIT)
//! and reads, random 4 KiB reads and writes at 1 and 16 in flight, and create/stat/remove of
//! 2,000 files (the median of three passes). With `--server` the same client measures another
//! server instead (e.g. nfs-ganesha: scripts/bench-vs-ganesha.sh).
//!
//! Every phase works in a fresh directory under the export root and removes it afterwards.
//! Writes are UNSTABLE followed by one COMMIT inside the timed phase, as the Linux client
//! does for buffered writes: a server that replies FILE_SYNC (ours: the data is in mirrored
//! NVRAM) pays nothing for the COMMIT, one that caches pays it there.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt, TryStreamExt};
use twinfiler::nfsclient::{self, NfsClient, ServerAddr};
use twinfiler_proto::nfs3::{NfsFh3, StableHow};

use super::report;

/// Bytes per sequential READ/WRITE request.
const SEQ_REQUEST_BYTES: usize = 1 << 20;
/// Sequential requests in flight (a Linux client's readahead/writeback keeps several going).
const SEQ_INFLIGHT_REQUESTS: usize = 8;
/// Bytes per random READ/WRITE request.
const RAND_REQUEST_BYTES: usize = 4096;
/// Files of the metadata phase (the issue's figure).
const META_FILES: usize = 2_000;
/// Passes of create, stat and remove over those files; each figure is the median pass. One
/// pass at 16 in flight lasts under 100 ms, short enough for one scheduling hiccup of this
/// shared machine to halve it.
const META_PASSES: usize = 3;
/// In-flight levels of the random and metadata phases.
const INFLIGHT_LEVELS: [usize; 2] = [1, 16];
/// Bound on a node's start (aggregate creation included) and stop.
const NODE_READY_WAIT_MS: u64 = 60_000;
const NODE_STOP_WAIT_MS: u64 = 30_000;
const POLL_INTERVAL_MS: u64 = 50;
/// What the node logs once its NVRAM log is mirrored by the partner (nvlog's mirror module).
const MIRROR_IN_SYNC_LOG: &str = "in sync with partner";
/// Ports of the benchmark nodes on loopback (high, so no root is needed and 111/2049 stay
/// free): the measured node and its partner get one block each.
const NODE_PORT_BASE: u16 = 21_100;
const PARTNER_PORT_BASE: u16 = 21_200;
/// Data disks and size of each benchmark node's aggregate.
const NODE_DATA_DISKS: usize = 3;
const NODE_DISK_MIB_FULL: u64 = 2048;
const NODE_DISK_MIB_QUICK: u64 = 768;
/// NVRAM log half of each benchmark node, MiB.
const NODE_NVRAM_HALF_MIB: u64 = 64;
/// What a benchmark node exports (its root: a fresh file system has no other directory).
const NODE_EXPORT: &str = "/";

/// Options of `twinfiler bench nfs`.
#[derive(clap::Args)]
pub struct NfsArgs {
    /// Measure the NFSv3 server at this address instead of starting a node.
    #[arg(long)]
    server: Option<IpAddr>,
    /// Its portmapper port (asked for the ports not given below).
    #[arg(long, default_value_t = nfsclient::PORTMAP_PORT)]
    portmap_port: u16,
    /// Its MOUNT port (default: ask the portmapper).
    #[arg(long)]
    mount_port: Option<u16>,
    /// Its NFS port (default: ask the portmapper).
    #[arg(long)]
    nfs_port: Option<u16>,
    /// The export to mount with --server (a node started here exports its root).
    #[arg(long, default_value = "/export")]
    export: String,
    /// Prefix of the figure names.
    #[arg(long, default_value = "nfs")]
    label: String,
    /// AUTH_SYS uid of the client.
    #[arg(long, default_value_t = 0)]
    uid: u32,
    /// AUTH_SYS gid of the client.
    #[arg(long, default_value_t = 0)]
    gid: u32,
}

/// Sizes of one run.
struct Plan {
    seq_mib: u64,
    rand_phase: Duration,
}

pub fn run(args: NfsArgs, quick: bool, bench_dir: &Path) -> anyhow::Result<()> {
    let plan = if quick {
        Plan {
            seq_mib: 256,
            rand_phase: Duration::from_secs(2),
        }
    } else {
        Plan {
            seq_mib: 1024,
            rand_phase: Duration::from_secs(5),
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.server {
        Some(ip) => {
            let server = ServerAddr {
                ip,
                portmap_port: args.portmap_port,
                mount_port: args.mount_port,
                nfs_port: args.nfs_port,
            };
            measure_on_worker(&rt, server, args, plan)
        }
        None => {
            let disk_mib = if quick {
                NODE_DISK_MIB_QUICK
            } else {
                NODE_DISK_MIB_FULL
            };
            let pair = NodePair::start(bench_dir, disk_mib)?;
            let server = pair.server();
            let args = NfsArgs {
                export: NODE_EXPORT.to_string(),
                ..args
            };
            let result = measure_on_worker(&rt, server, args, plan);
            pair.stop()?;
            result
        }
    }
}

/// Runs [`measure`] as a task on a worker thread. Awaited by `block_on` directly, it would run
/// on this thread, which the worker that reads the replies wakes for every reply: a futex
/// wake-up and two context switches added to every call, which weigh most in the
/// one-at-a-time figures (about a tenth of a NULL round trip here).
fn measure_on_worker(
    rt: &tokio::runtime::Runtime,
    server: ServerAddr,
    args: NfsArgs,
    plan: Plan,
) -> anyhow::Result<()> {
    rt.block_on(async move {
        tokio::spawn(async move { measure(&server, &args, &plan).await })
            .await
            .context("measurement task")?
    })
}

/// All phases against one server.
async fn measure(server: &ServerAddr, args: &NfsArgs, plan: &Plan) -> anyhow::Result<()> {
    let cred = nfsclient::auth_sys(args.uid, args.gid);
    let client = Arc::new(
        NfsClient::connect(server, &args.export, cred)
            .await
            .with_context(|| format!("mount {} from {:?}", args.export, server))?,
    );
    let root = *client.root();
    // Unique per run, so runs against one server never meet each other's leftovers.
    let dir_name = format!("bench-nfs-{}-{}", std::process::id(), now_ns());
    let dir = client.mkdir(&root, &dir_name, 0o777).await?;
    let label = &args.label;

    // The round trip alone (NULL: no file system), and the cheapest file-system call
    // (GETATTR of the root), one at a time: the floor under every qd1 figure below.
    let rate = null_rate(&client, plan.rand_phase / 2).await?;
    report(&format!("{label}.null_qd1_per_s"), rate, "ops/s");
    let rate = getattr_rate(&client, &root, plan.rand_phase / 2).await?;
    report(&format!("{label}.getattr_qd1_per_s"), rate, "ops/s");

    // Sequential.
    let file = client.create(&dir, "seq", 0o644, false).await?;
    let chunks = plan.seq_mib;
    let t = Instant::now();
    stream::iter(0..chunks)
        .map(|i| {
            let c = client.clone();
            let f = file;
            async move {
                let head = chunk_head(i);
                let data = [&head[..], &chunk_pattern()[head.len()..]];
                let (n, _) = c
                    .write_parts(&f, i * SEQ_REQUEST_BYTES as u64, &data, StableHow::Unstable)
                    .await?;
                if n as usize != SEQ_REQUEST_BYTES {
                    bail!("short WRITE at chunk {i}: {n} bytes");
                }
                Ok(())
            }
        })
        .buffer_unordered(SEQ_INFLIGHT_REQUESTS)
        .try_collect::<()>()
        .await?;
    client.commit(&file).await?;
    report(&format!("{label}.seq_write_MBps"), mbps(chunks, t), "MB/s");

    let t = Instant::now();
    stream::iter(0..chunks)
        .map(|i| {
            let c = client.clone();
            let f = file;
            async move {
                let (data, _) = c
                    .read(&f, i * SEQ_REQUEST_BYTES as u64, SEQ_REQUEST_BYTES as u32)
                    .await?;
                if data.len() != SEQ_REQUEST_BYTES || data[..16] != chunk_head(i) {
                    bail!(
                        "READ of chunk {i} returned {} bytes or wrong data",
                        data.len()
                    );
                }
                Ok(())
            }
        })
        .buffer_unordered(SEQ_INFLIGHT_REQUESTS)
        .try_collect::<()>()
        .await?;
    report(&format!("{label}.seq_read_MBps"), mbps(chunks, t), "MB/s");

    // Random 4 KiB within the sequential file.
    let blocks = chunks * (SEQ_REQUEST_BYTES / RAND_REQUEST_BYTES) as u64;
    for inflight in INFLIGHT_LEVELS {
        let iops = random_io(&client, &file, blocks, inflight, plan.rand_phase, false).await?;
        report(
            &format!("{label}.rand_read_4k_qd{inflight}_iops"),
            iops,
            "IOPS",
        );
    }
    for inflight in INFLIGHT_LEVELS {
        let iops = random_io(&client, &file, blocks, inflight, plan.rand_phase, true).await?;
        report(
            &format!("{label}.rand_write_4k_qd{inflight}_iops"),
            iops,
            "IOPS",
        );
    }
    client.remove(&dir, "seq").await?;

    // Metadata.
    for inflight in INFLIGHT_LEVELS {
        let suffix = if inflight == 1 {
            String::new()
        } else {
            format!("_qd{inflight}")
        };
        let meta = client
            .mkdir(&dir, &format!("meta-{inflight}"), 0o755)
            .await?;
        let ops = [
            (MetaOp::Create, "create"),
            (MetaOp::Stat, "stat"),
            (MetaOp::Remove, "remove"),
        ];
        let mut rates = ops.map(|_| Vec::with_capacity(META_PASSES));
        for _ in 0..META_PASSES {
            for ((op, _), r) in ops.iter().zip(&mut rates) {
                r.push(meta_phase(&client, &meta, inflight, *op).await?);
            }
        }
        for ((_, name), r) in ops.iter().zip(&mut rates) {
            report(&format!("{label}.{name}_per_s{suffix}"), median(r), "ops/s");
        }
        client.rmdir(&dir, &format!("meta-{inflight}")).await?;
    }
    client.rmdir(&root, &dir_name).await?;
    Ok(())
}

/// The median of `v` (the upper one of an even count); `v` must not be empty.
fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn mbps(chunks: u64, t: Instant) -> f64 {
    chunks as f64 * SEQ_REQUEST_BYTES as f64 / 1e6 / t.elapsed().as_secs_f64()
}

/// The first bytes of sequential chunk `i`: its index, so a misplaced chunk is caught.
fn chunk_head(i: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&i.to_le_bytes());
    h[8..].copy_from_slice(&(!i).to_le_bytes());
    h
}

/// The bytes of every sequential chunk after its head: ones that do not compress to nothing.
///
/// Why one pattern for all chunks: computing a megabyte per request cost the client about
/// a millisecond, a third of a core at the rates measured, taken from the server under test
/// on this two-core machine. A chunk is sent as its head followed by the pattern's tail,
/// two iovecs of one write, so the client copies nothing per request.
fn chunk_pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..SEQ_REQUEST_BYTES)
            .map(|j| (j as u64).wrapping_mul(2_654_435_761) as u8)
            .collect()
    })
}

/// NULL calls per second, one at a time, for `phase`.
async fn null_rate(client: &NfsClient, phase: Duration) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut ops = 0u64;
    while t.elapsed() < phase {
        client.null().await?;
        ops += 1;
    }
    Ok(ops as f64 / t.elapsed().as_secs_f64())
}

/// GETATTRs of `fh` per second, one at a time, for `phase`.
async fn getattr_rate(client: &NfsClient, fh: &NfsFh3, phase: Duration) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut ops = 0u64;
    while t.elapsed() < phase {
        client.getattr(fh).await?;
        ops += 1;
    }
    Ok(ops as f64 / t.elapsed().as_secs_f64())
}

/// A small xorshift generator: random offsets without a dependency, reproducible per task.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `inflight` tasks doing random 4 KiB reads (or UNSTABLE writes, then one COMMIT) in
/// `blocks` blocks of `file` for `phase`; returns operations per second.
async fn random_io(
    client: &Arc<NfsClient>,
    file: &NfsFh3,
    blocks: u64,
    inflight: usize,
    phase: Duration,
    write: bool,
) -> anyhow::Result<f64> {
    assert!(blocks > 0);
    let t = Instant::now();
    let deadline = t + phase;
    let mut tasks = Vec::with_capacity(inflight);
    for task in 0..inflight {
        let c = client.clone();
        let f = *file;
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift(
                0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93),
            );
            let data = vec![task as u8; RAND_REQUEST_BYTES];
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let off = (rng.next() % blocks) * RAND_REQUEST_BYTES as u64;
                if write {
                    c.write(&f, off, &data, StableHow::Unstable).await?;
                } else {
                    let (d, _) = c.read(&f, off, RAND_REQUEST_BYTES as u32).await?;
                    if d.len() != RAND_REQUEST_BYTES {
                        bail!("short READ at {off}: {} bytes", d.len());
                    }
                }
                ops += 1;
            }
            anyhow::Ok(ops)
        }));
    }
    let mut ops = 0;
    for t in tasks {
        ops += t.await??;
    }
    if write {
        client.commit(file).await?;
    }
    Ok(ops as f64 / t.elapsed().as_secs_f64())
}

#[derive(Clone, Copy)]
enum MetaOp {
    Create,
    Stat,
    Remove,
}

/// One metadata operation on each of [`META_FILES`] names in `dir`, `inflight` at a time;
/// returns operations per second. "stat" is LOOKUP (which returns the attributes), what a
/// client without cached handles sends for stat(2).
async fn meta_phase(
    client: &Arc<NfsClient>,
    dir: &NfsFh3,
    inflight: usize,
    op: MetaOp,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    stream::iter(0..META_FILES)
        .map(|i| {
            let c = client.clone();
            let d = *dir;
            async move {
                let name = format!("f{i:05}");
                match op {
                    MetaOp::Create => {
                        c.create(&d, &name, 0o644, false).await?;
                    }
                    MetaOp::Stat => {
                        let (_, attrs) = c.lookup(&d, &name).await?;
                        if attrs.is_none() {
                            bail!("LOOKUP {name} without attributes");
                        }
                    }
                    MetaOp::Remove => c.remove(&d, &name).await?,
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(inflight)
        .try_collect::<()>()
        .await?;
    Ok(META_FILES as f64 / t.elapsed().as_secs_f64())
}

// ---- the nodes under test --------------------------------------------------------------

/// The measured node and its partner (which holds the mirror of the measured node's NVRAM
/// log), both child processes of this binary on loopback, in a scratch directory.
struct NodePair {
    node: Child,
    partner: Child,
    dir: PathBuf,
}

impl NodePair {
    fn start(bench_dir: &Path, disk_mib: u64) -> anyhow::Result<Self> {
        let dir = bench_dir.join(format!("nfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let exe = std::env::current_exe().context("locate the twinfiler binary")?;
        // Both nodes share the pair key: the mirror is authenticated with it.
        let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let key_path = dir.join("pair.key");
        std::fs::write(&key_path, &key)?;
        // The node refuses (warns about) a key others can read.
        std::fs::set_permissions(
            &key_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        let partner_mirror = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), PARTNER_PORT_BASE + 3);
        let node_mirror = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), NODE_PORT_BASE + 3);
        let partner = spawn_node(
            &exe,
            &dir,
            "partner",
            PARTNER_PORT_BASE,
            disk_mib,
            partner_mirror,
            node_mirror,
        )?;
        let node = spawn_node(
            &exe,
            &dir,
            "node",
            NODE_PORT_BASE,
            disk_mib,
            node_mirror,
            partner_mirror,
        );
        let node = match node {
            Ok(n) => n,
            Err(e) => {
                stop_child(partner, "partner");
                return Err(e);
            }
        };
        let pair = NodePair { node, partner, dir };
        pair.wait_ready()?;
        Ok(pair)
    }

    fn server(&self) -> ServerAddr {
        ServerAddr {
            ip: Ipv4Addr::LOCALHOST.into(),
            portmap_port: NODE_PORT_BASE,
            mount_port: Some(NODE_PORT_BASE + 1),
            nfs_port: Some(NODE_PORT_BASE + 2),
        }
    }

    /// Waits (bounded) until the measured node listens for NFS and its log is mirrored:
    /// figures taken before the mirror is in sync would not include the mirror round trip.
    /// The node has no status query yet, so "in sync" is read from its log.
    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(NODE_READY_WAIT_MS);
        let nfs = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), NODE_PORT_BASE + 2);
        let log = self.dir.join("node.log");
        loop {
            let listening =
                std::net::TcpStream::connect_timeout(&nfs, Duration::from_millis(POLL_INTERVAL_MS))
                    .is_ok();
            let in_sync =
                std::fs::read_to_string(&log).is_ok_and(|l| l.contains(MIRROR_IN_SYNC_LOG));
            if listening && in_sync {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node not ready within {NODE_READY_WAIT_MS} ms (listening on {nfs}: {listening}, mirror in sync: {in_sync}); logs in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        stop_child(self.node, "node");
        stop_child(self.partner, "partner");
        for name in ["node", "partner"] {
            let _ = std::fs::remove_file(nvram_path(name));
        }
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("remove {}", self.dir.display()))?;
        Ok(())
    }
}

/// Writes a node's configuration and starts it; its log goes to `<dir>/<name>.log`.
fn spawn_node(
    exe: &Path,
    dir: &Path,
    name: &str,
    port_base: u16,
    disk_mib: u64,
    mirror_listen: SocketAddr,
    mirror_partner: SocketAddr,
) -> anyhow::Result<Child> {
    let state = dir.join(name);
    std::fs::create_dir_all(&state)?;
    let config = node_config(
        dir,
        name,
        port_base,
        disk_mib,
        mirror_listen,
        mirror_partner,
    );
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {} node", exe.display()))?;
    Ok(child)
}

/// The TOML of one benchmark node (see server/node.example.toml).
fn node_config(
    dir: &Path,
    name: &str,
    port_base: u16,
    disk_mib: u64,
    mirror_listen: SocketAddr,
    mirror_partner: SocketAddr,
) -> String {
    let state = dir.join(name);
    format!(
        r#"# Written by `twinfiler bench nfs`.
name = "bench-{name}"
state_dir = "{state}/state"
pair_key_file = "{key}"

[aggregate]
disks_dir = "{state}/disks"

[aggregate.create]
data_disks = {NODE_DATA_DISKS}
disk_mib = {disk_mib}

[nvram]
region_path = "{nvram}"
half_mib = {NODE_NVRAM_HALF_MIB}

[mirror]
listen = "{mirror_listen}"
partner = "{mirror_partner}"

[nfs]
bind = "127.0.0.1"
portmap_port = {pm}
mount_port = {mnt}
nfs_port = {nfs}

[[export]]
path = "{NODE_EXPORT}"
rules = ["127.0.0.1(rw,no_root_squash,insecure)"]
"#,
        state = state.display(),
        key = dir.join("pair.key").display(),
        nvram = nvram_path(name).display(),
        pm = port_base,
        mnt = port_base + 1,
        nfs = port_base + 2,
    )
}

/// The NVRAM stand-in of a benchmark node: memory under /dev/shm, as the node example has it.
fn nvram_path(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "/dev/shm/twinfiler-bench-nfs-{}-{name}.nvram",
        std::process::id()
    ))
}

/// SIGTERM, a bounded wait, then SIGKILL.
fn stop_child(mut child: Child, what: &str) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_millis(NODE_STOP_WAIT_MS);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS))
            }
            _ => {
                tracing::warn!("{what} ignored SIGTERM for {NODE_STOP_WAIT_MS} ms; killing it");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}
