//! `twinfiler demo`: a guided run of the layers that have landed, on real disk files.
//!
//! Node `a`'s aggregate (4 data + 1 parity disk files and a hot spare, sparse) lives in
//! `DIR/a`; its NVRAM region is a file under `/dev/shm`, mirrored over loopback TCP to a
//! partner region for node `b`. The demo writes files through the NVRAM log into the
//! write-anywhere file system, takes a consistency point, fails a disk, reads everything back
//! from parity, rebuilds onto the spare, scrubs and runs fsck. Running it again resumes the
//! same aggregate (and replays whatever the log holds past the last consistency point).
//! The NFS service and the HA pair join this demo as they land.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use nvlog::{kind, Config, MirrorConfig, MirrorKey, MirrorState, Nvlog, SenderConfig};
use raid4::{AssembleConfig, CreateConfig, DiskSource, Group};
use wafl::{CreateHow, Fid, Fs, FsConfig, FsOp, NewObj, StripeStore};

const DATA_DISKS: usize = 4;
const DISK_BYTES: u64 = 256 << 20;
const FILES_PER_RUN: usize = 8;
const FILE_BYTES: usize = 3 << 20;
const WRITE_BYTES: usize = 1 << 20;
const MIRROR_SYNC_WAIT_MS_MAX: u64 = 5_000;
/// The demo's NVRAM halves are small: a few runs' worth of records between CPs.
const NVRAM_HALF_BYTES: u64 = 64 << 20;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its disks; running again resumes from it.
    #[arg(long, default_value = "/tmp/twinfiler-demo")]
    dir: PathBuf,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(demo(&args.dir))
}

async fn demo(dir: &Path) -> anyhow::Result<()> {
    let disks_dir = dir.join("a");
    std::fs::create_dir_all(&disks_dir)
        .with_context(|| format!("create {}", disks_dir.display()))?;

    step("aggregate");
    let group = Arc::new(open_or_create_aggregate(&disks_dir).await?);
    println!("{}", group.status());

    step("file system");
    let store: Arc<dyn StripeStore> = group.clone();
    let fs = tokio::task::block_in_place(|| match Fs::mount(store.clone(), FsConfig::default()) {
        Ok(fs) => Ok(fs),
        Err(e) => {
            println!("no file system yet ({e}): making one");
            Fs::mkfs(store.clone(), now_ns(), FsConfig::default())
        }
    })?;
    println!(
        "mounted: consistency point applied through log sequence {}",
        fs.applied_seq()
    );

    step("NVRAM log, mirrored to the partner over loopback");
    let (log_a, _log_b) = open_mirrored_pair(dir).await?;
    let replayed = replay_log(&fs, &log_a)?;
    println!(
        "{} — replayed {replayed} records past the last CP",
        log_a.status().persist_mode
    );

    step("write files: every op is logged and mirrored before it is applied");
    let run_no = fs.statfs().files_used;
    let started = Instant::now();
    let mut written = Vec::new();
    for i in 0..FILES_PER_RUN {
        let name = format!("demo-{run_no}-{i}.bin");
        let data = pattern(&name, FILE_BYTES);
        let fid = create_file(&fs, &log_a, &name).await?;
        // 1 MiB per op, like the largest NFS WRITE: one log record each.
        for (n, chunk) in data.chunks(WRITE_BYTES).enumerate() {
            let offset = (n * WRITE_BYTES) as u64;
            let op = FsOp::Write {
                target: fid,
                offset,
                data: chunk.to_vec(),
                time_ns: now_ns(),
            };
            log_and_apply(&fs, &log_a, op).await?;
        }
        written.push((name, data));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} files, {} MiB in {secs:.2} s; mirror {:?}",
        FILES_PER_RUN,
        (FILES_PER_RUN * FILE_BYTES) >> 20,
        log_a.status().mirror
    );

    step("consistency point");
    let report = tokio::task::block_in_place(|| fs.cp())?;
    log_a.release_through(fs.applied_seq());
    println!("{report:?}");

    step("fail data disk #1, read everything back from parity");
    group.fail_disk(1, "failed by the demo").await?;
    println!("{}", group.status().state);
    verify_files(&fs, &written)?;
    println!(
        "all {} files read back correctly while degraded",
        written.len()
    );

    step("rebuild onto the hot spare");
    // The spare named at creation first; later runs add a blank one.
    let spare = match group.status().spares.is_empty() {
        true => Some(fresh_spare(&disks_dir)?),
        false => None,
    };
    let rebuilt = group.rebuild(spare.as_deref()).await?;
    println!("{rebuilt:?}\n{}", group.status().state);

    step("scrub and fsck");
    println!("{}", group.scrub().await?);
    let fsck = tokio::task::block_in_place(|| wafl::fsck::check(store));
    print!("{fsck}");
    ensure!(fsck.is_clean(), "fsck found errors");
    verify_files(&fs, &written)?;

    step("what next");
    println!(
        "state kept in {}: run the demo again to resume the same aggregate",
        dir.display()
    );
    println!(
        "inspect it: twinfiler aggr status --dir {}",
        disks_dir.display()
    );
    println!("check it:   twinfiler fsck --dir {}", disks_dir.display());
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

async fn open_or_create_aggregate(dir: &Path) -> anyhow::Result<Group> {
    let members: Vec<PathBuf> = (0..=DATA_DISKS)
        .map(|i| dir.join(format!("disk{i}.img")))
        .collect();
    if members[0].exists() {
        let mut cfg = AssembleConfig::new(DiskSource::Dir(dir.to_path_buf()));
        cfg.allow_degraded = true;
        return Group::assemble_async(cfg)
            .await
            .context("assemble the demo aggregate");
    }
    for path in &members {
        sparse_file(path)?;
    }
    let mut cfg = CreateConfig::new(members);
    cfg.spares = vec![fresh_spare(dir)?];
    Group::create_async(cfg)
        .await
        .context("create the demo aggregate")
}

/// A new blank spare file: each run of the demo fails a disk and consumes a spare.
fn fresh_spare(dir: &Path) -> anyhow::Result<PathBuf> {
    let n = (0..)
        .find(|n| !dir.join(format!("spare{n}.img")).exists())
        .unwrap_or(0);
    let path = dir.join(format!("spare{n}.img"));
    sparse_file(&path)?;
    Ok(path)
}

fn sparse_file(path: &Path) -> anyhow::Result<()> {
    let f =
        std::fs::File::create_new(path).with_context(|| format!("create {}", path.display()))?;
    f.set_len(DISK_BYTES)?;
    Ok(())
}

/// Node a's log mirrored into node b's region over loopback, as the pair will run it.
async fn open_mirrored_pair(dir: &Path) -> anyhow::Result<(Nvlog, Nvlog)> {
    let tag = format!("{:x}", crc32c::crc32c(dir.as_os_str().as_encoded_bytes()));
    let region = |node: &str| PathBuf::from(format!("/dev/shm/twinfiler-demo-{tag}-{node}.nvram"));
    let key = MirrorKey::from_passphrase("twinfiler-demo");
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let b = Nvlog::open(Config {
        region_path: region("b"),
        half_bytes: NVRAM_HALF_BYTES,
        mirror: Some(MirrorConfig {
            partner_addr: None,
            listen_addr: Some(loopback),
            key: key.clone(),
            sender: SenderConfig::default(),
        }),
        ..Config::default()
    })?;
    let b_addr = b.mirror_listen_addr().context("partner mirror listener")?;
    let a = Nvlog::open(Config {
        region_path: region("a"),
        half_bytes: NVRAM_HALF_BYTES,
        mirror: Some(MirrorConfig {
            partner_addr: Some(b_addr),
            listen_addr: None,
            key,
            sender: SenderConfig::default(),
        }),
        ..Config::default()
    })?;
    let deadline = Instant::now() + Duration::from_millis(MIRROR_SYNC_WAIT_MS_MAX);
    while a.status().mirror != MirrorState::InSync {
        ensure!(
            Instant::now() < deadline,
            "mirror not in sync: {:?}",
            a.status().mirror
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((a, b))
}

/// Re-applies logged ops newer than the mounted CP; applying one twice changes nothing.
fn replay_log(fs: &Fs, log: &Nvlog) -> anyhow::Result<usize> {
    let mut n = 0;
    for record in log.replay_own(fs.applied_seq() + 1)?.records {
        if record.kind == kind::OP {
            fs.apply(record.seq, &FsOp::decode(&record.payload)?)?;
            n += 1;
        }
    }
    Ok(n)
}

async fn log_and_apply(fs: &Fs, log: &Nvlog, op: FsOp) -> anyhow::Result<()> {
    let seq = log.append(kind::OP, &op.encode()).await?;
    tokio::task::block_in_place(|| fs.apply(seq, &op))?;
    Ok(())
}

async fn create_file(fs: &Fs, log: &Nvlog, name: &str) -> anyhow::Result<Fid> {
    let (ino, gen) = fs.reserve_inode();
    let op = FsOp::Create {
        dir: Fid::ROOT,
        name: name.as_bytes().to_vec(),
        new: NewObj {
            ino,
            gen,
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        how: CreateHow::Guarded,
        time_ns: now_ns(),
    };
    log_and_apply(fs, log, op).await?;
    Ok(Fid { ino, gen })
}

fn verify_files(fs: &Fs, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    tokio::task::block_in_place(|| {
        for (name, data) in files {
            let attr = fs.lookup(&fs.root(), name.as_bytes())?;
            let (read, _eof) = fs.read(&attr.handle, 0, data.len())?;
            ensure!(&read == data, "{name}: contents differ");
        }
        Ok(())
    })
}

/// Content that differs per file and per block, so a misplaced block cannot pass.
fn pattern(name: &str, len: usize) -> Vec<u8> {
    let seed = crc32c::crc32c(name.as_bytes());
    (0..len / 4)
        .flat_map(|i| (seed ^ i as u32).to_le_bytes())
        .collect()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
