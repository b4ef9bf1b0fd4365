//! Exports and their client rules, in the words admins know from `/etc/exports`.
//!
//! ```toml
//! [[export]]
//! path = "/data"
//! id = 7                      # optional; default: a stable hash of the path
//! rules = ["127.0.0.0/8(rw,no_root_squash,insecure)", "10.1.2.3(ro)", "*(ro)"]
//! ```
//!
//! A rule is `CLIENT(OPTIONS)`: CLIENT is a host IP (v4 or v6), a CIDR (`10.0.0.0/8`,
//! `fd00::/64`) or `*`; OPTIONS is a comma-separated list of `ro`/`rw`, `root_squash`
//! (default) / `no_root_squash` / `all_squash`, `anonuid=N`, `anongid=N` (default 65534),
//! `sec=sys`, `secure` (default: the client's source port must be below 1024) / `insecure`.
//! The first rule whose client matches wins; no match means no access. Host *names* are
//! not accepted: resolving them needs DNS, which a filer must not depend on to serve.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// Default anonymous uid and gid (`nobody`/`nogroup` on Linux).
pub const ANON_ID_DEFAULT: u32 = 65534;
/// Most exports per service.
pub const EXPORTS_MAX: usize = 256;
/// Most rules per export.
pub const RULES_PER_EXPORT_MAX: usize = 64;
/// Longest export path, bytes (MOUNT's `dirpath` bound).
pub const EXPORT_PATH_BYTES_MAX: usize = 1024;
/// Most supplementary groups an identity carries (AUTH_SYS sends at most 16).
pub const GROUPS_MAX: usize = 16;
/// Source ports below this are "privileged" (the `secure` option).
const PRIVILEGED_PORT_END: u16 = 1024;

/// One `[[export]]` table of the node's config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Path of the exported directory inside the aggregate's file system (`/` = the root).
    pub path: String,
    /// Export id carried in file handles; default: a stable hash of the path. Changing it
    /// makes every handle of the export stale.
    #[serde(default)]
    pub id: Option<u32>,
    /// Client rules, first match wins.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// Why an export configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// The path is not absolute, has empty/`.`/`..` components, or is too long.
    #[error("export {path:?}: bad path: {why}")]
    BadPath {
        /// The path.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Two exports with one path or one id.
    #[error("export {path:?}: duplicate {what}")]
    Duplicate {
        /// The path.
        path: String,
        /// "path" or "id".
        what: &'static str,
    },
    /// A rule does not parse.
    #[error("export {path:?}: rule {rule:?}: {why}")]
    BadRule {
        /// The export path.
        path: String,
        /// The rule text.
        rule: String,
        /// What is wrong.
        why: String,
    },
    /// Too many exports or rules.
    #[error("{0}")]
    TooMany(String),
}

/// Which clients a rule admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    /// Every client.
    Any,
    /// Addresses in a prefix (a host is a full-length prefix).
    Net {
        /// The network address (host bits zero).
        addr: IpAddr,
        /// Prefix length in bits.
        prefix: u8,
    },
}

impl ClientMatch {
    /// Parses `*`, an IP or a CIDR.
    fn parse(s: &str) -> Result<ClientMatch, String> {
        if s == "*" {
            return Ok(ClientMatch::Any);
        }
        let (ip_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip_text.parse().map_err(|_| {
            format!(
                "client {s:?} is not '*', an IP address or a CIDR (host names are not supported)"
            )
        })?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(|| format!("bad prefix length in {s:?} (0..={bits})"))?,
        };
        Ok(ClientMatch::Net {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is admitted. IPv4-mapped IPv6 addresses match IPv4 rules.
    pub fn matches(&self, ip: IpAddr) -> bool {
        match self {
            ClientMatch::Any => true,
            ClientMatch::Net { addr, prefix } => {
                let ip = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
                    v4 => v4,
                };
                ip.is_ipv4() == addr.is_ipv4() && mask(ip, *prefix) == *addr
            }
        }
    }
}

impl std::fmt::Display for ClientMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientMatch::Any => f.write_str("*"),
            ClientMatch::Net { addr, prefix } => {
                let full = if addr.is_ipv4() { 32 } else { 128 };
                if *prefix == full {
                    write!(f, "{addr}")
                } else {
                    write!(f, "{addr}/{prefix}")
                }
            }
        }
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

/// How client uids/gids are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Squash {
    /// uid 0 / gid 0 become the anonymous ids (default).
    Root,
    /// Nobody is mapped.
    None,
    /// Everybody becomes anonymous.
    All,
}

/// One parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Who.
    pub client: ClientMatch,
    /// Read-only.
    pub read_only: bool,
    /// Identity mapping.
    pub squash: Squash,
    /// Anonymous uid.
    pub anonuid: u32,
    /// Anonymous gid.
    pub anongid: u32,
    /// Require a privileged source port.
    pub secure: bool,
}

impl Rule {
    /// Parses `CLIENT(OPTIONS)` or a bare `CLIENT` (defaults: ro, root_squash, secure —
    /// like Linux).
    pub fn parse(text: &str) -> Result<Rule, String> {
        let text = text.trim();
        let (client, opts) = match text.find('(') {
            Some(i) => {
                let rest = &text[i + 1..];
                let body = rest
                    .strip_suffix(')')
                    .ok_or_else(|| "missing ')' at the end".to_string())?;
                (&text[..i], body)
            }
            None => (text, ""),
        };
        let mut rule = Rule {
            client: ClientMatch::parse(client.trim())?,
            read_only: true,
            squash: Squash::Root,
            anonuid: ANON_ID_DEFAULT,
            anongid: ANON_ID_DEFAULT,
            secure: true,
        };
        for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let id = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("bad number in option {opt:?}"))
            };
            match opt.split_once('=') {
                None => match opt {
                    "ro" => rule.read_only = true,
                    "rw" => rule.read_only = false,
                    "root_squash" => rule.squash = Squash::Root,
                    "no_root_squash" => rule.squash = Squash::None,
                    "all_squash" => rule.squash = Squash::All,
                    "secure" => rule.secure = true,
                    "insecure" => rule.secure = false,
                    _ => return Err(format!("unknown option {opt:?}")),
                },
                Some(("anonuid", v)) => rule.anonuid = id(v)?,
                Some(("anongid", v)) => rule.anongid = id(v)?,
                Some(("sec", v)) => {
                    if v.split(':').any(|f| f != "sys") {
                        return Err(format!(
                            "unsupported security flavor in {opt:?} (only sec=sys)"
                        ));
                    }
                }
                Some(_) => return Err(format!("unknown option {opt:?}")),
            }
        }
        Ok(rule)
    }

    /// Whether the rule admits the client at `peer` (address and, if `secure`, port).
    pub fn admits(&self, peer: SocketAddr) -> bool {
        self.client.matches(peer.ip()) && (!self.secure || peer.port() < PRIVILEGED_PORT_END)
    }

    /// The effective identity of a caller with AUTH_SYS `(uid, gid, gids)` or, for
    /// AUTH_NONE, `None`.
    pub fn identity(&self, cred: Option<(u32, u32, &[u32])>) -> Identity {
        let anon = Identity {
            uid: self.anonuid,
            gid: self.anongid,
            gids: Vec::new(),
        };
        let Some((uid, gid, gids)) = cred else {
            return anon;
        };
        let gids = &gids[..gids.len().min(GROUPS_MAX)];
        match self.squash {
            Squash::All => anon,
            Squash::None => Identity {
                uid,
                gid,
                gids: gids.to_vec(),
            },
            Squash::Root => Identity {
                uid: if uid == 0 { self.anonuid } else { uid },
                gid: if gid == 0 { self.anongid } else { gid },
                gids: gids
                    .iter()
                    .map(|&g| if g == 0 { self.anongid } else { g })
                    .collect(),
            },
        }
    }
}

/// Who a call runs as, after squashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub gids: Vec<u32>,
}

impl Identity {
    /// Whether the caller is (unsquashed) root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
    /// Whether the caller is in group `g`.
    pub fn in_group(&self, g: u32) -> bool {
        self.gid == g || self.gids.contains(&g)
    }
}

/// One export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Path in the file system (normalised: `/` or `/a/b`).
    pub path: String,
    /// Id in handles.
    pub id: u32,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

impl Export {
    /// The first rule matching the client address (ignoring the port check), if any.
    fn rule_for_ip(&self, ip: IpAddr) -> Option<&Rule> {
        self.rules.iter().find(|r| r.client.matches(ip))
    }

    /// The rule that governs `peer`: the first rule matching its address, and only if that
    /// rule's port requirement holds.
    pub fn rule_for(&self, peer: SocketAddr) -> Option<&Rule> {
        self.rule_for_ip(peer.ip()).filter(|r| r.admits(peer))
    }

    /// Path components below the file system root.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').filter(|c| !c.is_empty())
    }
}

/// All exports of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exports {
    list: Vec<Export>,
}

/// The default export id of a path: stable across releases and nodes (BLAKE3, not the
/// std hasher, whose output may change).
pub fn default_export_id(path: &str) -> u32 {
    let h = blake3::derive_key("twinfiler export id v1", path.as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

fn normalise_path(path: &str) -> Result<String, &'static str> {
    if !path.starts_with('/') {
        return Err("must be absolute");
    }
    if path.len() > EXPORT_PATH_BYTES_MAX {
        return Err("too long");
    }
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if comps
        .iter()
        .any(|c| *c == "." || *c == ".." || c.len() > 255)
    {
        return Err("'.', '..' or over-long components");
    }
    Ok(format!("/{}", comps.join("/")))
}

impl Exports {
    /// Builds and validates the exports of a config file.
    pub fn from_config(configs: &[ExportConfig]) -> Result<Exports, ExportError> {
        if configs.len() > EXPORTS_MAX {
            return Err(ExportError::TooMany(format!(
                "{} exports (at most {EXPORTS_MAX})",
                configs.len()
            )));
        }
        let mut list = Vec::with_capacity(configs.len());
        let (mut paths, mut ids) = (HashSet::new(), HashSet::new());
        for c in configs {
            let path = normalise_path(&c.path).map_err(|why| ExportError::BadPath {
                path: c.path.clone(),
                why,
            })?;
            if c.rules.len() > RULES_PER_EXPORT_MAX {
                return Err(ExportError::TooMany(format!(
                    "export {path:?}: {} rules (at most {RULES_PER_EXPORT_MAX})",
                    c.rules.len()
                )));
            }
            let rules = c
                .rules
                .iter()
                .map(|r| {
                    Rule::parse(r).map_err(|why| ExportError::BadRule {
                        path: path.clone(),
                        rule: r.clone(),
                        why,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let id = c.id.unwrap_or_else(|| default_export_id(&path));
            if !paths.insert(path.clone()) {
                return Err(ExportError::Duplicate { path, what: "path" });
            }
            if !ids.insert(id) {
                return Err(ExportError::Duplicate { path, what: "id" });
            }
            list.push(Export { path, id, rules });
        }
        Ok(Exports { list })
    }

    /// All exports, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Export> {
        self.list.iter()
    }

    /// The export with this id.
    pub fn by_id(&self, id: u32) -> Option<&Export> {
        self.list.iter().find(|e| e.id == id)
    }

    /// The export with this path (normalised first; MOUNT clients send it as typed).
    pub fn by_path(&self, path: &str) -> Option<&Export> {
        let p = normalise_path(path).ok()?;
        self.list.iter().find(|e| e.path == p)
    }

    /// The export a MOUNT of `path` goes through: the export with the longest path that is
    /// `path` or one of its ancestors (clients may mount a directory below an export, as
    /// with Linux knfsd), and the components of `path` below it.
    pub fn for_mount(&self, path: &str) -> Option<(&Export, Vec<String>)> {
        let p = normalise_path(path).ok()?;
        let best = self
            .list
            .iter()
            .filter(|e| e.path == "/" || p == e.path || p.starts_with(&format!("{}/", e.path)))
            .max_by_key(|e| e.path.len())?;
        let rest = p[best.path.len()..]
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        Some((best, rest))
    }

    /// Number of exports.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &str, rules: &[&str]) -> ExportConfig {
        ExportConfig {
            path: path.into(),
            id: None,
            rules: rules.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn toml_parses_and_first_match_wins() {
        #[derive(Deserialize)]
        struct File {
            export: Vec<ExportConfig>,
        }
        let f: File = toml::from_str(
            r#"
            [[export]]
            path = "/data/"
            rules = ["127.0.0.1(rw,no_root_squash)", "127.0.0.0/8(ro)", "*(rw,all_squash,anonuid=5,anongid=6,insecure)"]
            [[export]]
            path = "/"
            id = 9
            "#,
        )
        .unwrap();
        let ex = Exports::from_config(&f.export).unwrap();
        let data = ex.by_path("/data").unwrap();
        assert_eq!(data.id, default_export_id("/data"));
        assert_eq!(ex.by_id(9).unwrap().path, "/");
        let r = data.rule_for(peer("127.0.0.1:700")).unwrap();
        assert!(!r.read_only && r.squash == Squash::None);
        let r = data.rule_for(peer("127.0.0.2:700")).unwrap();
        assert!(r.read_only && r.squash == Squash::Root);
        // Secure by default: the /8 rule matches but the port is unprivileged → no access
        // (the later `*` rule is not consulted).
        assert!(data.rule_for(peer("127.0.0.2:40000")).is_none());
        let r = data.rule_for(peer("[::ffff:10.0.0.1]:40000")).unwrap();
        assert_eq!(r.identity(Some((1000, 100, &[1, 2]))).uid, 5);
        assert!(ex.by_id(9).unwrap().rule_for(peer("1.2.3.4:1")).is_none());
        // Mounts below an export go through the deepest export above them.
        let (e, rest) = ex.for_mount("/data/x/y").unwrap();
        assert_eq!(
            (e.path.as_str(), rest),
            ("/data", vec!["x".to_string(), "y".to_string()])
        );
        let (e, rest) = ex.for_mount("/datax").unwrap();
        assert_eq!((e.path.as_str(), rest), ("/", vec!["datax".to_string()]));
        assert_eq!(ex.for_mount("/data/").unwrap().1.len(), 0);
        assert!(ex.for_mount("relative").is_none());
    }

    #[test]
    fn squash_modes() {
        let root = Rule::parse("*(rw)").unwrap();
        let id = root.identity(Some((0, 0, &[0, 7])));
        assert_eq!(
            id,
            Identity {
                uid: 65534,
                gid: 65534,
                gids: vec![65534, 7]
            }
        );
        assert_eq!(root.identity(Some((5, 6, &[]))).uid, 5);
        let none = Rule::parse("*(rw,no_root_squash)").unwrap();
        assert!(none.identity(Some((0, 0, &[]))).is_root());
        let all = Rule::parse("*(all_squash,anonuid=10,anongid=11)").unwrap();
        assert_eq!(
            all.identity(Some((5, 6, &[7]))),
            Identity {
                uid: 10,
                gid: 11,
                gids: vec![]
            }
        );
        assert_eq!(none.identity(None).uid, 65534);
    }

    #[test]
    fn cidr_v4_v6_and_hosts() {
        let r = Rule::parse("10.1.0.0/16(insecure)").unwrap();
        assert!(r.admits(peer("10.1.200.3:5000")));
        assert!(!r.admits(peer("10.2.0.1:5000")));
        let r = Rule::parse("fd00::/64(insecure)").unwrap();
        assert!(r.admits(peer("[fd00::1:2]:9")));
        assert!(!r.admits(peer("[fd00:0:0:1::1]:9")));
        assert!(!r.admits(peer("10.0.0.1:9")));
        let r = Rule::parse("10.0.0.5").unwrap();
        assert!(r.admits(peer("10.0.0.5:1000")) && !r.admits(peer("10.0.0.6:1000")));
        assert_eq!(r.client.to_string(), "10.0.0.5");
        assert_eq!(
            Rule::parse("0.0.0.0/0").unwrap().client.to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn bad_configs_have_clear_errors() {
        let err = |path: &str, rules: &[&str]| {
            Exports::from_config(&[cfg(path, rules)])
                .unwrap_err()
                .to_string()
        };
        assert!(err("/a", &["*(rw,fast)"]).contains("unknown option \"fast\""));
        assert!(err("/a", &["10.0.0.0/33(rw)"]).contains("bad prefix length"));
        assert!(err("/a", &["host.example(rw)"]).contains("host names are not supported"));
        assert!(err("/a", &["*(rw"]).contains("missing ')'"));
        assert!(err("/a", &["*(anonuid=x)"]).contains("bad number"));
        assert!(err("/a", &["*(sec=krb5)"]).contains("only sec=sys"));
        assert!(err("a", &[]).contains("must be absolute"));
        assert!(err("/a/../b", &[]).contains("'..'"));
        let dup = Exports::from_config(&[cfg("/a", &[]), cfg("/a/", &[])]).unwrap_err();
        assert!(matches!(dup, ExportError::Duplicate { what: "path", .. }));
        let mut b = cfg("/b", &[]);
        b.id = Some(default_export_id("/a"));
        let dup = Exports::from_config(&[cfg("/a", &[]), b]).unwrap_err();
        assert!(matches!(dup, ExportError::Duplicate { what: "id", .. }));
    }
}
