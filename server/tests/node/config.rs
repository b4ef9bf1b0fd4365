//! The configuration: the shipped example parses, mistakes are errors that name the file
//! and the key, the pair key is generated (0600) only where that is safe.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use twinfiler::config::{ConfigError, NodeConfig, PairKey};

use crate::common::{Opts, Setup};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node.example.toml")
}

#[test]
fn the_example_parses_with_the_documented_defaults() {
    let c = NodeConfig::load(&example_path()).expect("node.example.toml is valid");
    assert_eq!(c.name, "a");
    assert!(c.is_standalone(), "the example runs standalone");
    assert_eq!(c.cp_interval_ms, 10_000);
    assert_eq!(
        (c.nfs.portmap_port, c.nfs.mount_port, c.nfs.nfs_port),
        (111, 20048, 2049)
    );
    assert_eq!(c.nvram.half_mib, 64);
    assert_eq!(c.aggregate.data_cache_mib, 1024);
    assert_eq!(c.exports.len(), 1);
    assert_eq!(c.exports[0].path, "/");
    assert_eq!(c.pair_key_path(), c.state_dir.join("pair.key"));
    // Transport bounds left out fall back to the RPC server's defaults; polling is on.
    assert_eq!(
        c.nfs.server_config(),
        twinfiler_rpc::ServerConfig {
            busy_poll_us: twinfiler::config::NFS_BUSY_POLL_US_DEFAULT,
            ..twinfiler_rpc::ServerConfig::default()
        }
    );
}

#[test]
fn the_example_with_its_mirror_section_uncommented_parses() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    let text = text
        .replace("# [mirror]", "[mirror]")
        .replace("# listen = ", "listen = ")
        .replace("# partner = ", "partner = ")
        .replace("# degraded_after_ms = ", "degraded_after_ms = ")
        .replace("# busy_poll_us = ", "busy_poll_us = ");
    let c = NodeConfig::parse(&text, Path::new("mirror.toml")).expect("mirrored example");
    let m = c.mirror.expect("mirror section");
    assert_eq!(m.listen, Some("127.0.0.1:7401".parse().unwrap()));
    assert_eq!(m.partner, Some("127.0.0.1:7402".parse().unwrap()));
    assert_eq!(m.busy_poll_us, nvlog::BUSY_POLL_US_DEFAULT);
}

fn parse_err(text: &str) -> String {
    match NodeConfig::parse(text, Path::new("/etc/twinfiler/bad.toml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("/etc/twinfiler/bad.toml"),
                "file not named: {msg}"
            );
            msg
        }
    }
}

fn valid_text() -> String {
    Setup::new().config_text(&Opts::default())
}

#[test]
fn mistakes_are_errors_naming_the_file_and_the_key() {
    let base = valid_text();
    NodeConfig::parse(&base, Path::new("ok.toml")).expect("the base text is valid");

    let msg = parse_err(&base.replace("cp_interval_ms", "cp_intervall_ms"));
    assert!(msg.contains("cp_intervall_ms"), "{msg}");
    let msg = parse_err(&base.replace("half_mib = 16", "half_mib = 3"));
    assert!(msg.contains("half_mib"), "{msg}");
    let msg = parse_err(&base.replace("cp_interval_ms = 10000", "cp_interval_ms = 5"));
    assert!(msg.contains("cp_interval_ms"), "{msg}");
    let msg = parse_err(&base.replace("bind = \"127.0.0.1\"", "bind = \"0.0.0.0\""));
    assert!(msg.contains("nfs.bind"), "{msg}");
    let msg = parse_err(
        &base
            .replace("mount_port = 0", "mount_port = 3000")
            .replace("nfs_port = 0", "nfs_port = 3000"),
    );
    assert!(
        msg.contains("mount_port") && msg.contains("nfs_port"),
        "{msg}"
    );
    let msg = parse_err(&base.replace(
        "stop_grace_ms = 5000",
        "stop_grace_ms = 5000\nrecord_bytes_max = 4096",
    ));
    assert!(msg.contains("record_bytes_max"), "{msg}");
    let msg = parse_err(&base.replace(
        "stop_grace_ms = 5000",
        "stop_grace_ms = 5000\nbusy_poll_us = 5000",
    ));
    assert!(msg.contains("busy_poll_us"), "{msg}");
    let msg = parse_err(&base.replace(
        "stop_grace_ms = 5000",
        "stop_grace_ms = 5000\ninflight_total_max = 0",
    ));
    assert!(msg.contains("inflight_total_max"), "{msg}");
    let msg = parse_err(&base.replace("data_disks = 3", "data_disks = 1"));
    assert!(msg.contains("data_disks"), "{msg}");
    let msg = parse_err(&base.replace(
        "[aggregate]",
        "[aggregate]
data_cache_mib = 2000000",
    ));
    assert!(msg.contains("data_cache_mib"), "{msg}");
    let msg = parse_err(&base.replace("127.0.0.1(rw", "127.0.0.300(rw"));
    assert!(msg.contains("127.0.0.300"), "{msg}");
    let no_exports = base.split("[[export]]").next().unwrap().to_string();
    let msg = parse_err(&no_exports);
    assert!(msg.contains("export"), "{msg}");
    let msg = parse_err(&base.replace("[nvram]", "[nvram]\nsize_mib = 4"));
    assert!(msg.contains("size_mib"), "{msg}");
    let msg = parse_err(&format!("{base}\n[mirror]\ndegraded_after_ms = 100\n"));
    assert!(msg.contains("listen") && msg.contains("partner"), "{msg}");
    let msg = parse_err(&base.replace("[nfs]", "[nfs]\nbind_prefix_len = 40"));
    assert!(msg.contains("bind_prefix_len"), "{msg}");
}

/// The `[cluster]` section is checked at load, naming the key.
#[test]
fn cluster_mistakes_are_errors_naming_the_key() {
    let base = valid_text();
    let cluster = |node_id: u8, links: &str, loss_ms: u64| {
        let section = format!(
            "[cluster]\nnode_id = {node_id}\npartner_config = \"b.toml\"\nlinks = [{links}]\nheartbeat_loss_ms = {loss_ms}\n"
        );
        base.replace("[[export]]", &format!("{section}\n[[export]]"))
    };
    let link = r#"{ local = "127.0.0.1:7400", peer = "127.0.0.2:7400" }"#;
    NodeConfig::parse(&cluster(1, link, 1000), Path::new("ok.toml")).expect("a valid [cluster]");
    let msg = parse_err(&cluster(2, link, 1000));
    assert!(msg.contains("node_id"), "{msg}");
    let msg = parse_err(&cluster(0, "", 1000));
    assert!(msg.contains("cluster.links"), "{msg}");
    let msg = parse_err(&cluster(0, link, 0));
    assert!(msg.contains("[cluster] bounds"), "{msg}");
}

#[test]
fn a_standalone_node_generates_its_pair_key_once_with_mode_0600() {
    let s = Setup::new();
    let c = s.config(&Opts::default());
    std::fs::create_dir_all(&c.state_dir).unwrap();
    let key = c.load_pair_key().expect("generated");
    let meta = std::fs::metadata(c.pair_key_path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let again = c.load_pair_key().expect("read back");
    assert_eq!(
        key.as_bytes(),
        again.as_bytes(),
        "the key must survive restarts"
    );
    assert_eq!(key.fh_key_bytes(), again.fh_key_bytes());
}

#[test]
fn a_mirrored_node_never_generates_the_pair_key() {
    let s = Setup::new();
    let c = s.config(&Opts {
        mirror_partner: Some("127.0.0.1:9".parse().unwrap()),
        ..Opts::default()
    });
    std::fs::create_dir_all(&c.state_dir).unwrap();
    match c.load_pair_key() {
        Err(ConfigError::PairKey { path, message }) => {
            assert_eq!(path, c.pair_key_path());
            assert!(message.contains("both nodes"), "{message}");
        }
        other => panic!("expected a missing-key error, got {other:?}"),
    }
    assert!(!c.pair_key_path().exists());
}

#[test]
fn short_pair_keys_are_refused() {
    assert!(PairKey::from_bytes(vec![7; 31]).is_err());
    let k = PairKey::from_bytes(vec![7; 32]).unwrap();
    // Handle and mirror keys are distinct derivations of the same secret.
    assert_ne!(k.fh_key_bytes(), k.mirror_key().0);
}

#[test]
fn the_command_exits_non_zero_with_the_file_named_on_a_bad_config() {
    let s = Setup::new();
    let path = s.path().join("broken.toml");
    std::fs::write(&path, valid_text().replace("half_mib", "half_size")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twinfiler"))
        .args(["node", "--config"])
        .arg(&path)
        .output()
        .expect("run twinfiler");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(path.to_str().unwrap()) && stderr.contains("half_size"),
        "{stderr}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twinfiler"))
        .args(["node", "--check", "--config"])
        .arg(example_path())
        .output()
        .expect("run twinfiler");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let s = Setup::new();
    let text = s
        .config_text(&Opts::default())
        .replace(&s.path().display().to_string(), "")
        .replace("state_dir = \"/state\"", "state_dir = \"state\"")
        .replace("disks_dir = \"/disks\"", "disks_dir = \"disks\"");
    let path = s.path().join("node.toml");
    std::fs::write(&path, text).unwrap();
    let c = NodeConfig::load(&path).unwrap();
    assert_eq!(c.state_dir, s.path().join("state"));
    assert_eq!(c.aggregate.disks_dir, s.path().join("disks"));
    assert_eq!(c.pair_key_path(), s.path().join("state/pair.key"));
}
