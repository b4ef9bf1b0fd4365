//! A lab for takeover tests and `twinfiler bench takeover`: node configurations (a single
//! node, or an HA pair with `[cluster]` sections), `twinfiler node` processes
//! ([`process`]), the console API ([`console`]) and network namespaces ([`netns`]).
//!
//! Two layouts of a pair: on loopback (data addresses 127.0.0.11/12, management and
//! interconnect addresses 127.0.0.21/22, kernel-free high ports; no root needed) and in
//! network namespaces (node a, node b and a client on a bridge, the interconnect on its own
//! veth pair between a and b so that it can be cut alone; root only).

pub mod console;
pub mod netns;
pub mod process;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Bytes of a generated pair key.
const PAIR_KEY_BYTES: usize = 32;
/// Ports of the RPC services in a namespace (the standard ones: each namespace is fresh).
pub const STANDARD_PORTS: Ports = Ports {
    portmap: 111,
    mount: 20048,
    nfs: 2049,
};
/// The interconnect port (node 1 listens, node 0 dials).
pub const INTERCONNECT_PORT: u16 = 7400;
/// The NVRAM mirror port.
pub const MIRROR_PORT: u16 = 7401;
/// The console port.
pub const CONSOLE_PORT: u16 = 8080;

/// What can go wrong building or running the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A command (ip, a node) failed or misbehaved.
    #[error("{0}")]
    Failed(String),
    /// The console answered something unexpected.
    #[error("console: {0}")]
    Console(String),
}

/// Shorthand for an I/O error with context.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// The RPC ports of a node (the taker serves the victim's identity on the victim's ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Portmapper.
    pub portmap: u16,
    /// MOUNT.
    pub mount: u16,
    /// NFS.
    pub nfs: u16,
}

/// Three ports free on `ip` right now (the kernel picks; fixed from then on, so that a
/// restarted node serves the same ports).
pub fn free_ports(ip: IpAddr) -> Result<Ports, LabError> {
    let mut held = Vec::new();
    for _ in 0..3 {
        let l = std::net::TcpListener::bind((ip, 0)).map_err(io_err(format!("bind {ip}:0")))?;
        held.push(l);
    }
    let port = |i: usize| -> Result<u16, LabError> {
        Ok(held[i]
            .local_addr()
            .map_err(io_err("local address"))?
            .port())
    };
    Ok(Ports {
        portmap: port(0)?,
        mount: port(1)?,
        nfs: port(2)?,
    })
}

/// One free TCP port on `ip`.
pub fn free_port(ip: IpAddr) -> Result<u16, LabError> {
    let l = std::net::TcpListener::bind((ip, 0)).map_err(io_err(format!("bind {ip}:0")))?;
    Ok(l.local_addr().map_err(io_err("local address"))?.port())
}

/// The `[cluster]` part of a pair member.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// 0 or 1.
    pub node_id: u8,
    /// The partner's config file name (relative to this node's config).
    pub partner_config: String,
    /// Interconnect links: (local, peer).
    pub links: Vec<(SocketAddr, SocketAddr)>,
    /// The interface data addresses are raised on (namespaces), or none (loopback).
    pub data_interface: Option<String>,
    /// Heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Heartbeat loss before a hard takeover, ms.
    pub heartbeat_loss_ms: u64,
    /// Default graceful countdown, ms.
    pub countdown_ms: u64,
    /// Give back by itself this long after the partner waits for it, ms; `None`: only
    /// when an operator asks.
    pub auto_giveback_delay_ms: Option<u64>,
}

/// Everything of one node's configuration the lab varies.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// Its directory: state, disks, log.
    pub dir: PathBuf,
    /// The config file to write.
    pub config_path: PathBuf,
    /// The data address (moves on takeover).
    pub data_ip: IpAddr,
    /// Its prefix length when the node raises it on an interface.
    pub data_prefix_len: Option<u8>,
    /// RPC ports on the data address.
    pub ports: Ports,
    /// NVRAM region file.
    pub region: PathBuf,
    /// Pair key file (shared by both nodes).
    pub pair_key_file: PathBuf,
    /// `[mirror]`: (listen, partner), or standalone.
    pub mirror: Option<(SocketAddr, SocketAddr)>,
    /// `[console]` listen address, API token hash and the partner's URL and token file.
    pub console: Option<ConsoleSpec>,
    /// `[cluster]`, or a node without takeover.
    pub cluster: Option<ClusterSpec>,
    /// Data disks of the aggregate.
    pub data_disks: usize,
    /// MiB per disk file.
    pub disk_mib: u64,
    /// NVRAM log half, MiB.
    pub half_mib: u64,
    /// CP timer, ms.
    pub cp_interval_ms: u64,
    /// Export rules of "/".
    pub export_rules: Vec<String>,
}

/// The console part of a node's config.
#[derive(Debug, Clone)]
pub struct ConsoleSpec {
    /// Listen address.
    pub listen: SocketAddr,
    /// BLAKE3 hex of the API token.
    pub token_hash: String,
    /// The partner's console URL and the file holding a token it accepts.
    pub partner: Option<(String, PathBuf)>,
}

impl NodeSpec {
    /// The config text.
    pub fn config_text(&self) -> String {
        let mut t = format!(
            "# Written by the twinfiler takeover lab.\nname = \"{}\"\nstate_dir = \"{}\"\npair_key_file = \"{}\"\ncp_interval_ms = {}\n\n[aggregate]\ndisks_dir = \"{}\"\n[aggregate.create]\ndata_disks = {}\ndisk_mib = {}\nspares = 0\n\n[nvram]\nregion_path = \"{}\"\nhalf_mib = {}\n\n",
            self.name,
            self.dir.join("state").display(),
            self.pair_key_file.display(),
            self.cp_interval_ms,
            self.dir.join("disks").display(),
            self.data_disks,
            self.disk_mib,
            self.region.display(),
            self.half_mib,
        );
        if let Some((listen, partner)) = self.mirror {
            t.push_str(&format!(
                "[mirror]\nlisten = \"{listen}\"\npartner = \"{partner}\"\ndegraded_after_ms = 2000\n\n"
            ));
        }
        t.push_str(&format!("[nfs]\nbind = \"{}\"\n", self.data_ip));
        if let Some(p) = self.data_prefix_len {
            t.push_str(&format!("bind_prefix_len = {p}\n"));
        }
        t.push_str(&format!(
            "portmap_port = {}\nmount_port = {}\nnfs_port = {}\nstop_grace_ms = 5000\n\n",
            self.ports.portmap, self.ports.mount, self.ports.nfs
        ));
        let rules: Vec<String> = self
            .export_rules
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect();
        t.push_str(&format!(
            "[[export]]\npath = \"/\"\nrules = [{}]\n\n",
            rules.join(", ")
        ));
        if let Some(c) = &self.console {
            t.push_str(&format!(
                "[console]\nlisten = \"{}\"\napi_tokens = [{{ name = \"lab\", blake3_hex = \"{}\" }}]\n",
                c.listen, c.token_hash
            ));
            if let Some((url, file)) = &c.partner {
                t.push_str(&format!(
                    "partner_url = \"{url}\"\npartner_token_file = \"{}\"\n",
                    file.display()
                ));
            }
            t.push('\n');
        }
        if let Some(c) = &self.cluster {
            let links: Vec<String> = c
                .links
                .iter()
                .map(|(l, p)| format!("{{ local = \"{l}\", peer = \"{p}\" }}"))
                .collect();
            t.push_str(&format!(
                "[cluster]\nnode_id = {}\npartner_config = \"{}\"\nlinks = [{}]\nheartbeat_interval_ms = {}\nheartbeat_loss_ms = {}\ncountdown_ms = {}\nauto_giveback = {}\nhard_takeover = true\n",
                c.node_id,
                c.partner_config,
                links.join(", "),
                c.heartbeat_interval_ms,
                c.heartbeat_loss_ms,
                c.countdown_ms,
                c.auto_giveback_delay_ms.is_some(),
            ));
            if let Some(ms) = c.auto_giveback_delay_ms {
                t.push_str(&format!("auto_giveback_delay_ms = {ms}\n"));
            }
            if let Some(i) = &c.data_interface {
                t.push_str(&format!("data_interface = \"{i}\"\n"));
            }
        }
        t
    }

    /// Creates the node's directory and writes its config (mode 0600: the partner token
    /// file is named in it, and the pair key next to it).
    pub fn write(&self) -> Result<(), LabError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(io_err(format!("create {}", self.dir.display())))?;
        write_secret(&self.config_path, self.config_text().as_bytes())
    }

    /// The node's log file (its stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
}

/// Writes `path` with mode 0600 (replacing it), synced.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("create {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("write {}", path.display())))?;
    // The open mode is filtered by the umask and ignored for an existing file.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod 600 {}", path.display())))
}

/// Creates a random pair key at `path` (mode 0600) unless one is there.
pub fn ensure_pair_key_file(path: &Path) -> Result<(), LabError> {
    if path.exists() {
        return Ok(());
    }
    let mut key = vec![0u8; PAIR_KEY_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    write_secret(path, &key)
}

/// Where the pair lives and how it is addressed.
#[derive(Debug, Clone)]
pub struct PairSpec {
    /// Node a (node_id 0) and b (node_id 1).
    pub nodes: [NodeSpec; 2],
    /// The API token both consoles accept.
    pub token: String,
    /// Console URLs of a and b.
    pub urls: [String; 2],
}

/// The addresses of a pair layout.
#[derive(Debug, Clone)]
pub struct PairAddrs {
    /// Data addresses of a and b.
    pub data: [IpAddr; 2],
    /// Prefix length of the data addresses when the nodes raise them (namespaces).
    pub data_prefix_len: Option<u8>,
    /// Interface the data addresses go on (namespaces).
    pub data_interface: Option<String>,
    /// Management addresses (console) of a and b.
    pub mgmt: [IpAddr; 2],
    /// Interconnect addresses of a and b (mirror and heartbeat).
    pub interconnect: [IpAddr; 2],
    /// RPC ports of a and b.
    pub ports: [Ports; 2],
    /// Console, mirror and interconnect ports of a and b.
    pub service_ports: [(u16, u16, u16); 2],
    /// Export rule of both nodes.
    pub export_rule: String,
}

impl PairAddrs {
    /// Everything on loopback: data 127.0.0.11/12, management and interconnect
    /// 127.0.0.21/22, free ports picked now.
    pub fn loopback() -> Result<PairAddrs, LabError> {
        let data = [
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12)),
        ];
        let mgmt = [
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 22)),
        ];
        let sp = |ip: IpAddr| -> Result<(u16, u16, u16), LabError> {
            Ok((free_port(ip)?, free_port(ip)?, free_port(ip)?))
        };
        Ok(PairAddrs {
            data,
            data_prefix_len: None,
            data_interface: None,
            mgmt,
            interconnect: mgmt,
            ports: [free_ports(data[0])?, free_ports(data[1])?],
            service_ports: [sp(mgmt[0])?, sp(mgmt[1])?],
            export_rule: "127.0.0.0/8(rw,no_root_squash,insecure)".into(),
        })
    }

    /// The namespace layout of [`netns::NetLab`]: standard ports everywhere.
    pub fn netns() -> PairAddrs {
        let sp = (CONSOLE_PORT, MIRROR_PORT, INTERCONNECT_PORT);
        PairAddrs {
            data: [netns::DATA_A.into(), netns::DATA_B.into()],
            data_prefix_len: Some(netns::PREFIX_LEN),
            data_interface: Some(netns::LAN_IF.into()),
            mgmt: [netns::MGMT_A.into(), netns::MGMT_B.into()],
            interconnect: [netns::IC_A.into(), netns::IC_B.into()],
            ports: [STANDARD_PORTS, STANDARD_PORTS],
            service_ports: [sp, sp],
            export_rule: format!("{}.0/24(rw,no_root_squash,insecure)", netns::LAN_NET),
        }
    }
}

/// Options of the nodes of a pair.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// Data disks per aggregate.
    pub data_disks: usize,
    /// MiB per disk file.
    pub disk_mib: u64,
    /// NVRAM log half, MiB.
    pub half_mib: u64,
    /// CP timer, ms.
    pub cp_interval_ms: u64,
    /// Heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Heartbeat loss before a hard takeover, ms.
    pub heartbeat_loss_ms: u64,
    /// Default graceful countdown, ms.
    pub countdown_ms: u64,
    /// Automatic giveback after this delay, ms (`None`: off, as in the lab's default).
    pub auto_giveback_delay_ms: Option<u64>,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            data_disks: 3,
            disk_mib: 256,
            half_mib: 32,
            cp_interval_ms: 5_000,
            heartbeat_interval_ms: 100,
            heartbeat_loss_ms: 1_000,
            countdown_ms: 30_000,
            auto_giveback_delay_ms: None,
        }
    }
}

/// The NVRAM region path of node `name` of the lab in `dir` (unique per lab directory).
fn region_path(dir: &Path, name: &str) -> PathBuf {
    let tag = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
    PathBuf::from(format!(
        "/dev/shm/twinfiler-lab-{}-{name}.nvram",
        &tag[..12]
    ))
}

impl PairSpec {
    /// Writes the pair key, the API token file and both node configs (a.toml, b.toml) under
    /// `dir`.
    pub fn write(dir: &Path, addrs: &PairAddrs, o: &PairOptions) -> Result<PairSpec, LabError> {
        let key_file = ensure_pair_key(dir)?;
        let token = web_ui::generate_token();
        let token_file = dir.join("api.token");
        write_secret(&token_file, token.as_bytes())?;
        let names = ["a", "b"];
        let urls = [0, 1].map(|i| format!("http://{}:{}", addrs.mgmt[i], addrs.service_ports[i].0));
        let node = |i: usize| -> NodeSpec {
            let j = 1 - i;
            let (console_port, mirror_port, ic_port) = addrs.service_ports[i];
            let (_, partner_mirror, partner_ic) = addrs.service_ports[j];
            NodeSpec {
                name: names[i].into(),
                dir: dir.join(names[i]),
                config_path: dir.join(format!("{}.toml", names[i])),
                data_ip: addrs.data[i],
                data_prefix_len: addrs.data_prefix_len,
                ports: addrs.ports[i],
                region: region_path(dir, names[i]),
                pair_key_file: key_file.clone(),
                mirror: Some((
                    SocketAddr::new(addrs.interconnect[i], mirror_port),
                    SocketAddr::new(addrs.interconnect[j], partner_mirror),
                )),
                console: Some(ConsoleSpec {
                    listen: SocketAddr::new(addrs.mgmt[i], console_port),
                    token_hash: web_ui::hash_token(&token),
                    partner: Some((urls[j].clone(), token_file.clone())),
                }),
                cluster: Some(ClusterSpec {
                    node_id: i as u8,
                    partner_config: format!("{}.toml", names[j]),
                    links: vec![(
                        SocketAddr::new(addrs.interconnect[i], ic_port),
                        SocketAddr::new(addrs.interconnect[j], partner_ic),
                    )],
                    data_interface: addrs.data_interface.clone(),
                    heartbeat_interval_ms: o.heartbeat_interval_ms,
                    heartbeat_loss_ms: o.heartbeat_loss_ms,
                    countdown_ms: o.countdown_ms,
                    auto_giveback_delay_ms: o.auto_giveback_delay_ms,
                }),
                data_disks: o.data_disks,
                disk_mib: o.disk_mib,
                half_mib: o.half_mib,
                cp_interval_ms: o.cp_interval_ms,
                export_rules: vec![addrs.export_rule.clone()],
            }
        };
        let nodes = [node(0), node(1)];
        for n in &nodes {
            n.write()?;
        }
        Ok(PairSpec { nodes, token, urls })
    }

    /// Removes the NVRAM regions (the directory is the caller's).
    pub fn remove_regions(&self) {
        for n in &self.nodes {
            let _ = std::fs::remove_file(&n.region);
        }
    }
}

/// Creates `dir` and a random pair key in it unless one is there; returns the key's path.
fn ensure_pair_key(dir: &Path) -> Result<PathBuf, LabError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    let key_file = dir.join("pair.key");
    ensure_pair_key_file(&key_file)?;
    Ok(key_file)
}

/// A standalone node (no mirror, no console, no cluster) on `ip` with fixed free ports, for
/// restart tests.
pub fn single_node(dir: &Path, ip: IpAddr, disk_mib: u64) -> Result<NodeSpec, LabError> {
    let key_file = ensure_pair_key(dir)?;
    let spec = NodeSpec {
        name: "s".into(),
        dir: dir.join("s"),
        config_path: dir.join("s.toml"),
        data_ip: ip,
        data_prefix_len: None,
        ports: free_ports(ip)?,
        region: region_path(dir, "s"),
        pair_key_file: key_file,
        mirror: None,
        console: None,
        cluster: None,
        data_disks: 3,
        disk_mib,
        half_mib: 16,
        cp_interval_ms: 2_000,
        export_rules: vec!["127.0.0.0/8(rw,no_root_squash,insecure)".into()],
    };
    spec.write()?;
    Ok(spec)
}
