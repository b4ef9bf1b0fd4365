//! `twinfiler demo [--dir DIR]`: an HA pair on one machine, two `twinfiler node` processes.
//!
//! Node `a` serves export `/a` on 127.0.0.11, node `b` serves `/b` on 127.0.0.12. Each has its
//! own aggregate of sparse disk files (4 data + 1 parity + 1 spare) under `DIR/a` / `DIR/b`,
//! an NVRAM region under /dev/shm, and mirrors its log to the other over loopback with the
//! pair key `DIR/pair.key`. Both run the console on their address, port 8080. The demo
//! generates the admin password (argon2 hash in the node configs) and an API token, writes
//! `DIR/credentials` (mode 0600) and `DIR/env`, prints what to do next, waits for both nodes
//! to serve and their mirrors to be in sync, and stops both cleanly (final CP) on Ctrl-C.
//! Running it again resumes the same pair: disks, logs, key and credentials persist in DIR.
//!
//! As root the nodes use the standard NFS ports (111, 20048, 2049); otherwise, or with
//! `--high-ports`, they use [`HIGH_PORTS`] and the printed mount commands name the ports.
//!
//! Not yet: takeover and giveback (the HA driver is not built; the console refuses them).

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tokio::signal::unix::{signal, SignalKind};
use twinfiler::lab::{ensure_pair_key_file, write_secret};
use web_ui::PairStatus;

/// Data disks of each aggregate (one parity disk and one spare are added).
const DATA_DISKS: usize = 4;
/// Size of each sparse disk file, MiB.
const DISK_MIB: u64 = 256;
/// NVRAM log half, MiB.
const NVRAM_HALF_MIB: u64 = 64;
/// Both nodes must print their serving line within this bound (first start makes the
/// aggregates).
const START_MS_MAX: u64 = 120_000;
/// Both mirrors must be in sync this long after both nodes serve.
const SYNC_MS_MAX: u64 = 30_000;
/// How often the demo asks the consoles while waiting.
const POLL_MS: u64 = 200;
/// A node must exit this long after SIGTERM; then it is killed.
const STOP_MS_MAX: u64 = 30_000;
/// One console request, at most.
const REQUEST_MS_MAX: u64 = 5_000;
/// Port of the console on each node's address.
const CONSOLE_PORT_DEFAULT: u16 = 8080;
/// NVRAM mirror port on each node's address.
const MIRROR_PORT: u16 = 7401;
/// Interconnect port on both node addresses.
const INTERCONNECT_PORT: u16 = 7400;
/// Ports (portmap, MOUNT, NFS) without root or with `--high-ports`.
pub const HIGH_PORTS: Ports = Ports {
    portmap: 10111,
    mount: 10048,
    nfs: 12049,
};
/// The standard ports, used as root.
const STANDARD_PORTS: Ports = Ports {
    portmap: 111,
    mount: 20048,
    nfs: 2049,
};
/// Bytes of the generated admin password (hex-encoded).
const PASSWORD_BYTES: usize = 12;

/// The RPC ports of both nodes.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// Portmapper.
    pub portmap: u16,
    /// MOUNT.
    pub mount: u16,
    /// NFS.
    pub nfs: u16,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps the pair's disks, configs and credentials; running again resumes.
    #[arg(long, default_value = "/tmp/twinfiler-demo")]
    dir: PathBuf,
    /// Use high ports even as root (10111 portmap, 10048 MOUNT, 12049 NFS).
    #[arg(long)]
    high_ports: bool,
    /// Console port on both node addresses.
    #[arg(long, default_value_t = CONSOLE_PORT_DEFAULT)]
    console_port: u16,
    /// Start, print, verify (both serving, mirrors in sync, status API), stop: for tests.
    #[arg(long)]
    exit_after_start: bool,
}

/// One node of the demo pair.
struct Member {
    id: u8,
    name: &'static str,
    partner_name: &'static str,
    addr: Ipv4Addr,
    partner_addr: Ipv4Addr,
}

const MEMBERS: [Member; 2] = [
    Member {
        id: 0,
        name: "a",
        partner_name: "b",
        addr: Ipv4Addr::new(127, 0, 0, 11),
        partner_addr: Ipv4Addr::new(127, 0, 0, 12),
    },
    Member {
        id: 1,
        name: "b",
        partner_name: "a",
        addr: Ipv4Addr::new(127, 0, 0, 12),
        partner_addr: Ipv4Addr::new(127, 0, 0, 11),
    },
];

/// The operator's credentials (plain text in `DIR/credentials`, hashes in the configs).
struct Credentials {
    user: String,
    password: String,
    token: String,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(demo(args))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    // Signal handlers first: a Ctrl-C during the start still stops both nodes.
    let mut sigterm = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolve {}", args.dir.display()))?;
    let ports = if is_root() && !args.high_ports {
        STANDARD_PORTS
    } else {
        HIGH_PORTS
    };
    ensure_pair_key_file(&dir.join("pair.key"))?;
    let creds = load_or_make_credentials(&dir)?;
    let mut configs = Vec::new();
    for m in &MEMBERS {
        configs.push(write_node_config(
            &dir,
            m,
            ports,
            args.console_port,
            &creds,
        )?);
    }
    let urls: Vec<String> = MEMBERS
        .iter()
        .map(|m| format!("http://{}:{}", m.addr, args.console_port))
        .collect();
    write_env(&dir, &urls[0], &creds.token)?;
    // Each node shows the other's card by polling its console with this token.
    write_secret(&dir.join("api.token"), creds.token.as_bytes())?;

    println!(
        "starting nodes a (127.0.0.11) and b (127.0.0.12) from {}",
        dir.display()
    );
    let mut pair = Pair::spawn(&dir, &configs)?;
    let started = tokio::select! {
        r = pair.wait_serving() => r,
        _ = sigterm.recv() => Err(anyhow::anyhow!("SIGTERM during start")),
        _ = sigint.recv() => Err(anyhow::anyhow!("SIGINT during start")),
    };
    if let Err(e) = started {
        if let Err(stop) = pair.stop() {
            eprintln!("{stop:#}");
        }
        return Err(e);
    }
    let synced = wait_in_sync(&urls, &creds.token).await;
    print_next_steps(&dir, ports, &urls, &creds, synced.is_ok());
    if let Err(e) = &synced {
        eprintln!("warning: {e:#}");
    }
    let outcome = if args.exit_after_start {
        let verified = match synced {
            Ok(()) => verify(&urls, &creds.token, ports).await,
            Err(e) => Err(e),
        };
        if verified.is_ok() {
            println!("demo verified: both nodes serve, mirrors in sync, status API answers");
        }
        verified
    } else {
        println!("Ctrl-C stops both nodes (final CP); run the demo again to resume the pair.");
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
            _ = pair.watch_exits() => eprintln!("both nodes exited"),
        }
        Ok(())
    };
    let stopped = pair.stop();
    outcome?;
    stopped
}

/// Reads `DIR/credentials`, or makes new credentials and writes it.
fn load_or_make_credentials(dir: &Path) -> anyhow::Result<Credentials> {
    let path = dir.join("credentials");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().to_string())
        };
        if let (Some(user), Some(password), Some(token)) =
            (field("user"), field("password"), field("token"))
        {
            return Ok(Credentials {
                user,
                password,
                token,
            });
        }
        eprintln!("{} is incomplete: making new credentials", path.display());
    }
    let mut pw = vec![0u8; PASSWORD_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut pw);
    let creds = Credentials {
        user: "admin".into(),
        password: pw.iter().map(|b| format!("{b:02x}")).collect(),
        token: web_ui::generate_token(),
    };
    write_secret(
        &path,
        format!(
            "# twinfiler demo console credentials\nuser={}\npassword={}\ntoken={}\n",
            creds.user, creds.password, creds.token
        )
        .as_bytes(),
    )?;
    Ok(creds)
}

/// Writes `DIR/env`, shell-sourceable (mode 0600: it holds the token).
fn write_env(dir: &Path, url: &str, token: &str) -> anyhow::Result<()> {
    write_secret(
        &dir.join("env"),
        format!("export TWINFILER_URL={url}\nexport TWINFILER_TOKEN={token}\n").as_bytes(),
    )?;
    Ok(())
}

/// The NVRAM region of a node: under /dev/shm, named after the demo dir so two demos in
/// different dirs do not share regions, and stable so a rerun resumes the log.
fn nvram_path(dir: &Path, name: &str) -> PathBuf {
    let tag = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
    PathBuf::from(format!(
        "/dev/shm/twinfiler-demo-{}-{name}.nvram",
        &tag[..12]
    ))
}

/// Writes `DIR/<name>/node.toml` (rewritten every run: ports and the password hash may
/// change, the state does not).
fn write_node_config(
    dir: &Path,
    m: &Member,
    ports: Ports,
    console_port: u16,
    creds: &Credentials,
) -> anyhow::Result<PathBuf> {
    let node_dir = dir.join(m.name);
    std::fs::create_dir_all(&node_dir).with_context(|| format!("create {}", node_dir.display()))?;
    let hash = web_ui::hash_password(&creds.password).context("hash the admin password")?;
    let text = format!(
        r#"# Written by `twinfiler demo`; rewritten on every run.
name = "{name}"
state_dir = "{state}"
pair_key_file = "{key}"
cp_interval_ms = 5000

[aggregate]
disks_dir = "{disks}"
[aggregate.create]
data_disks = {DATA_DISKS}
disk_mib = {DISK_MIB}
spares = 1

[nvram]
region_path = "{nvram}"
half_mib = {NVRAM_HALF_MIB}

[mirror]
listen = "{addr}:{MIRROR_PORT}"
partner = "{partner}:{MIRROR_PORT}"

[nfs]
bind = "{addr}"
portmap_port = {pm}
mount_port = {mnt}
nfs_port = {nfs}
stop_grace_ms = 5000
create_export_dirs = true

[[export]]
path = "/{name}"
rules = ["127.0.0.0/8(rw,no_root_squash,insecure)"]

[cluster]
node_id = {id}
partner_config = "{partner_config}"
links = [{{ local = "{addr}:{INTERCONNECT_PORT}", peer = "{partner}:{INTERCONNECT_PORT}" }}]
takeover_log = "{takeover_log}"

[console]
listen = "{addr}:{console_port}"
admin_user = "{user}"
admin_password_argon2 = "{hash}"
api_tokens = [{{ name = "demo", blake3_hex = "{token_hash}" }}]
partner_url = "http://{partner}:{console_port}"
partner_token_file = "{token_file}"
"#,
        name = m.name,
        id = m.id,
        partner_config = dir.join(m.partner_name).join("node.toml").display(),
        takeover_log = nvram_path(dir, &format!("{}-partner", m.name)).display(),
        state = node_dir.join("state").display(),
        key = dir.join("pair.key").display(),
        disks = node_dir.join("disks").display(),
        nvram = nvram_path(dir, m.name).display(),
        addr = m.addr,
        partner = m.partner_addr,
        pm = ports.portmap,
        mnt = ports.mount,
        nfs = ports.nfs,
        user = creds.user,
        token_hash = web_ui::hash_token(&creds.token),
        token_file = dir.join("api.token").display(),
    );
    let path = node_dir.join("node.toml");
    write_secret(&path, text.as_bytes())?;
    // Catch a broken config here, with the file named, not in a child's log.
    twinfiler::config::NodeConfig::load(&path)?;
    Ok(path)
}

/// The two node processes.
struct Pair {
    children: Vec<(&'static str, Child)>,
    /// Serving lines (node name) from the stdout readers.
    serving: mpsc::Receiver<&'static str>,
}

impl Pair {
    fn spawn(dir: &Path, configs: &[PathBuf]) -> anyhow::Result<Pair> {
        let exe = std::env::current_exe().context("find the twinfiler binary")?;
        let (tx, serving) = mpsc::channel();
        let mut pair = Pair {
            children: Vec::new(),
            serving,
        };
        for (m, config) in MEMBERS.iter().zip(configs) {
            let log_path = dir.join(m.name).join("node.log");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("open {}", log_path.display()))?;
            let spawned = Command::new(&exe)
                .args(["node", "--config"])
                .arg(config)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn();
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    pair.stop().ok();
                    return Err(e).with_context(|| format!("start {}", exe.display()));
                }
            };
            let stdout = child.stdout.take().context("child stdout")?;
            let tx = tx.clone();
            let name = m.name;
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.contains(" serving ") {
                        let _ = tx.send(name);
                    }
                }
            });
            println!(
                "node {} started (pid {}), log {}",
                m.name,
                child.id(),
                log_path.display()
            );
            pair.children.push((m.name, child));
        }
        Ok(pair)
    }

    /// Waits (bounded) for both serving lines; a node that exits first is an error.
    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(START_MS_MAX);
        let mut serving = Vec::new();
        while serving.len() < self.children.len() {
            while let Ok(name) = self.serving.try_recv() {
                println!("node {name} serving");
                serving.push(name);
            }
            for (name, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "node {name} exited during start ({status}); see its log {}",
                        format_args!("DIR/{name}/node.log")
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!("the nodes did not serve within {START_MS_MAX} ms; see DIR/a/node.log and DIR/b/node.log");
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        Ok(())
    }

    /// Reports nodes that exit by themselves (a crash: the partner takes the identity over)
    /// and resolves when none is left.
    async fn watch_exits(&mut self) {
        let mut reported = Vec::new();
        while reported.len() < self.children.len() {
            for (name, child) in &mut self.children {
                if reported.contains(name) {
                    continue;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!(
                        "node {name} exited ({status}); its partner takes its identity over. \
                         Restart it with `twinfiler node --config DIR/{name}/node.toml`: it \
                         waits for giveback"
                    );
                    reported.push(name);
                }
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    /// SIGTERM both (clean shutdown: final CP), wait bounded, then SIGKILL what is left.
    fn stop(&mut self) -> anyhow::Result<()> {
        for (_, child) in &self.children {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill with a pid we spawned and a valid signal.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_MS_MAX);
        let mut unclean = Vec::new();
        for (name, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => {
                        println!("node {name} stopped cleanly");
                        break;
                    }
                    Ok(Some(status)) => {
                        unclean.push(format!("node {name} exited with {status}"));
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(POLL_MS / 4));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        unclean.push(format!(
                            "node {name} did not stop within {STOP_MS_MAX} ms and was killed \
                             (nothing is lost: the next start replays its NVRAM log)"
                        ));
                        break;
                    }
                }
            }
        }
        self.children.clear();
        ensure!(unclean.is_empty(), "{}", unclean.join("; "));
        Ok(())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            let _ = self.stop();
        }
    }
}

/// GET /api/v1/status of one console.
async fn get_status(url: &str, token: &str) -> anyhow::Result<PairStatus> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(REQUEST_MS_MAX))
        .build()?;
    let r = client
        .get(format!("{url}/api/v1/status"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("reach the console {url}"))?;
    ensure!(r.status().is_success(), "{url}: HTTP {}", r.status());
    r.json()
        .await
        .with_context(|| format!("{url}: parse status"))
}

/// Waits (bounded) until both consoles report their own mirror in sync and show the
/// partner's card.
async fn wait_in_sync(urls: &[String], token: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(SYNC_MS_MAX);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut all = true;
        for url in urls {
            match get_status(url, token).await {
                Ok(s) => {
                    let local = s.nodes.iter().find(|n| n.name == s.local);
                    // The partner's card comes from polling its console (once a second).
                    let partner_seen = s
                        .nodes
                        .iter()
                        .any(|n| n.name != s.local && n.state == web_ui::NodeState::Normal);
                    if !local.is_some_and(|n| n.mirror.in_sync) {
                        all = false;
                        last = format!("{url}: mirror not in sync yet");
                    } else if !partner_seen {
                        all = false;
                        last = format!("{url}: the partner's console not seen yet");
                    }
                }
                Err(e) => {
                    all = false;
                    last = format!("{e:#}");
                }
            }
        }
        if all {
            println!("both mirrors in sync; each console shows its partner");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    bail!("mirrors not in sync within {SYNC_MS_MAX} ms ({last})")
}

/// What the check writes into each export (and reads back).
const CHECK_FILE: &str = "twinfiler-demo-check";

/// The non-interactive check: each console answers for its node, serving its export, and
/// each export takes a write (through the portmapper, MOUNT and NFS) and reads it back.
async fn verify(urls: &[String], token: &str, ports: Ports) -> anyhow::Result<()> {
    for (m, url) in MEMBERS.iter().zip(urls) {
        let s = get_status(url, token).await?;
        ensure!(
            s.local == m.name,
            "{url} answers as {:?}, not {}",
            s.local,
            m.name
        );
        let node = s
            .nodes
            .iter()
            .find(|n| n.name == m.name)
            .context("the status lacks the local node")?;
        let want = format!("/{}", m.name);
        ensure!(
            node.exports
                .iter()
                .any(|e| e.path == want
                    && e.address.parse::<IpAddr>().ok() == Some(IpAddr::V4(m.addr))),
            "node {} does not report export {want} on {}",
            m.name,
            m.addr
        );
        let partner = MEMBERS
            .iter()
            .find(|p| p.name != m.name)
            .context("two members")?;
        ensure!(
            s.nodes
                .iter()
                .any(|n| n.name == partner.name && n.state == web_ui::NodeState::Normal),
            "node {} does not show its partner {} as normal",
            m.name,
            partner.name
        );
        nfs_round_trip(m, ports, &want)
            .await
            .with_context(|| format!("NFS check of {}:{want}", m.addr))?;
    }
    Ok(())
}

/// Mounts `export` of `m` as root, writes [`CHECK_FILE`] (FILE_SYNC) and reads it back.
async fn nfs_round_trip(m: &Member, ports: Ports, export: &str) -> anyhow::Result<()> {
    use twinfiler::nfsclient::{auth_sys, NfsClient, ServerAddr};
    let server = ServerAddr {
        ip: IpAddr::V4(m.addr),
        portmap_port: ports.portmap,
        mount_port: None,
        nfs_port: None,
    };
    let client = NfsClient::connect(&server, export, auth_sys(0, 0)).await?;
    let fh = client
        .create(client.root(), CHECK_FILE, 0o644, true)
        .await?;
    let data = format!("written by twinfiler demo to node {}\n", m.name);
    client
        .write(
            &fh,
            0,
            data.as_bytes(),
            twinfiler_proto::nfs3::StableHow::FileSync,
        )
        .await?;
    let (back, _) = client.read(&fh, 0, 4096).await?;
    ensure!(
        back == data.as_bytes(),
        "read back {} bytes that differ",
        back.len()
    );
    println!(
        "node {}: wrote and read back {export}/{CHECK_FILE} over NFS",
        m.name
    );
    Ok(())
}

fn print_next_steps(dir: &Path, ports: Ports, urls: &[String], creds: &Credentials, synced: bool) {
    let port_note = if ports.nfs == STANDARD_PORTS.nfs {
        "standard NFS ports (111, 20048, 2049)".to_string()
    } else {
        format!(
            "high ports (portmap {}, MOUNT {}, NFS {}): not root, or --high-ports",
            ports.portmap, ports.mount, ports.nfs
        )
    };
    let opts = if ports.nfs == STANDARD_PORTS.nfs {
        "vers=3".to_string()
    } else {
        format!(
            "vers=3,proto=tcp,port={},mountproto=tcp,mountport={}",
            ports.nfs, ports.mount
        )
    };
    println!();
    println!("twinfiler demo pair is up ({port_note})");
    println!(
        "  mirrors: {}",
        if synced {
            "in sync"
        } else {
            "NOT in sync (see warning)"
        }
    );
    println!("  console: {} (node a)   {} (node b)", urls[0], urls[1]);
    println!(
        "  login:   user {}  password {}",
        creds.user, creds.password
    );
    println!("  API token: {}", creds.token);
    println!(
        "  (also in {}, mode 0600)",
        dir.join("credentials").display()
    );
    println!(
        "  status:  . {}; twinfiler status",
        dir.join("env").display()
    );
    println!("  mount (as root):");
    for m in &MEMBERS {
        println!(
            "    mkdir -p /mnt/{n} && mount -t nfs -o {opts} {addr}:/{n} /mnt/{n}",
            n = m.name,
            addr = m.addr
        );
    }
    println!("  takeover: the Takeover button on a node's card, or");
    println!(
        "    . DIR/env; twinfiler takeover --of a      (b serves /a too; a waits for giveback)"
    );
    println!("    . DIR/env; twinfiler giveback --to a");
    println!();
}
