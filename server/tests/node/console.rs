//! The operator console of a real node: JSON API with and without a token, takeover refused
//! with its reason, `/metrics` counting real NFS calls, `twinfiler status`, and the demo pair
//! started, verified and stopped non-interactively.

use std::process::Command;
use std::time::{Duration, Instant};

use twinfiler::config::NodeConfig;
use twinfiler::node::Node;

use crate::client::{self, Cred, LOCAL};
use crate::common::{Opts, Setup};

/// Metrics must show the calls within this bound (the node polls its counters every second).
const METRICS_WAIT_MS_MAX: u64 = 10_000;
/// The demo (two node starts, mkfs on first run, sync, stop) must finish within this bound.
const DEMO_MS_MAX: u64 = 240_000;
/// GETATTR calls the metrics test makes.
const GETATTR_CALLS: u64 = 5;

/// A node with a console on 127.0.0.1 (any port) accepting `token`.
async fn start_with_console(setup: &Setup, token: &str) -> Node {
    let o = Opts {
        name: "c".into(),
        ..Opts::default()
    };
    let mut text = setup.config_text(&o);
    text.push_str(&format!(
        "\n[console]\nlisten = \"127.0.0.1:0\"\nadmin_password_argon2 = \"{}\"\n\
         api_tokens = [{{ name = \"test\", blake3_hex = \"{}\" }}]\n",
        web_ui::hash_password("pw").expect("hash"),
        web_ui::hash_token(token)
    ));
    let path = setup.path().join("node.toml");
    std::fs::write(&path, text).expect("write config");
    let config = NodeConfig::load(&path).expect("console config is valid");
    Node::start(config).await.expect("node starts")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_api_serves_real_status_and_refuses_takeover() {
    let setup = Setup::new();
    let token = web_ui::generate_token();
    let node = start_with_console(&setup, &token).await;
    let base = format!(
        "http://{}",
        node.console_addr().expect("console configured")
    );
    let c = http();

    let anon = c.get(format!("{base}/api/v1/status")).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    let wrong = c
        .get(format!("{base}/api/v1/status"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let r = c
        .get(format!("{base}/api/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status: web_ui::PairStatus = r.json().await.unwrap();
    assert_eq!(status.local, "c");
    let me = &status.nodes[0];
    assert_eq!(me.name, "c");
    assert_eq!(me.state, web_ui::NodeState::Normal);
    assert_eq!(me.exports.len(), 1);
    assert_eq!(me.exports[0].path, "/");
    assert!(me.modules.iter().any(|m| m.name == "nfs"));
    let nvlog = me.modules.iter().find(|m| m.name == "nvlog").unwrap();
    assert!(nvlog.detail.contains("standalone"), "{nvlog:?}");
    // 3 data disks + parity, no spare, all in service.
    assert_eq!(me.aggregates[0].disks.len(), 4);
    assert!(me.aggregates[0]
        .disks
        .iter()
        .all(|d| d.state == web_ui::DiskState::Ok));
    assert!(me.nvram.capacity_bytes > 0);
    assert!(!me.takeover_possible);

    // Takeover is refused with the reason, and the refusal is in the event log.
    let r = c
        .post(format!("{base}/api/v1/takeover"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"target": "c", "mode": {"kind": "immediate"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not part of an HA pair"),
        "{body}"
    );
    let r = c
        .post(format!("{base}/api/v1/takeover"))
        .json(&serde_json::json!({"target": "c", "mode": {"kind": "immediate"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token, no action");
    let r = c
        .post(format!("{base}/api/v1/giveback"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"target": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let events: Vec<web_ui::Event> = c
        .get(format!("{base}/api/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e.message == "node started"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.actor == "token:test" && e.message.contains("takeover of c requested")),
        "{events:?}"
    );

    node.shutdown().await.unwrap();
}

/// The value of `twinfiler_nfs_ops_total{procedure=P}` summed over statuses.
fn nfs_ops(scrape: &prometheus_parse::Scrape, procedure: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "twinfiler_nfs_ops_total")
        .filter(|s| s.labels.get("procedure") == Some(procedure))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn scrape(c: &reqwest::Client, base: &str) -> prometheus_parse::Scrape {
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text")
}

/// `promtool check metrics` (Debian `prometheus`) on the classic text, when installed.
async fn promtool_check(c: &reqwest::Client, base: &str) {
    use std::io::Write as _;
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = spawned else {
        eprintln!("SKIPPED promtool check: promtool not installed (Debian package prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_nfs_calls() {
    let setup = Setup::new();
    let token = web_ui::generate_token();
    let node = start_with_console(&setup, &token).await;
    let base = format!("http://{}", node.console_addr().unwrap());
    let c = http();
    let before = scrape(&c, &base).await;
    assert!(before
        .samples
        .iter()
        .any(|s| s.metric == "twinfiler_raid_disk_state"));
    let start = nfs_ops(&before, "GETATTR");

    let l = node.listeners();
    let root = client::mount(l.mount_tcp, LOCAL, "/", &Cred::root())
        .await
        .expect("mount");
    let mut nfs = client::nfs(l.nfs_tcp, LOCAL, &Cred::root()).await;
    for _ in 0..GETATTR_CALLS {
        client::getattr(&mut nfs, &root).await.expect("getattr");
    }
    assert!(client::lookup(&mut nfs, &root, "no-such-file")
        .await
        .is_err());
    // A logged request: the NVRAM log's appends, bytes and persist latency show it.
    client::create(&mut nfs, &root, "logged", 0o644)
        .await
        .expect("create");
    let deadline = Instant::now() + Duration::from_millis(METRICS_WAIT_MS_MAX);
    loop {
        let s = scrape(&c, &base).await;
        let now = nfs_ops(&s, "GETATTR");
        let with = |metric: &str, procedure: &str, status: Option<&str>| {
            s.samples.iter().any(|x| {
                x.metric == metric
                    && x.labels.get("procedure") == Some(procedure)
                    && status.is_none_or(|st| x.labels.get("status") == Some(st))
            })
        };
        let total = |metric: &str| {
            s.samples
                .iter()
                .filter(|x| x.metric == metric)
                .map(|x| match x.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => 0.0,
                })
                .sum::<f64>()
        };
        let logged = total("twinfiler_nvlog_append_bytes_total") > 0.0
            && total("twinfiler_nvlog_persist_seconds_count") > 0.0;
        if now - start >= GETATTR_CALLS as f64 && logged {
            // Counted by reply status, and timed.
            assert!(with("twinfiler_nfs_ops_total", "GETATTR", Some("NFS3_OK")));
            assert!(with(
                "twinfiler_nfs_ops_total",
                "LOOKUP",
                Some("NFS3ERR_NOENT")
            ));
            assert!(with("twinfiler_nfs_op_seconds_count", "GETATTR", None));
            promtool_check(&c, &base).await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GETATTR count went {start} -> {now}, want +{GETATTR_CALLS}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_cli_prints_the_node_and_fails_on_401() {
    let setup = Setup::new();
    let token = web_ui::generate_token();
    let node = start_with_console(&setup, &token).await;
    let url = format!("http://{}", node.console_addr().unwrap());
    let run = |args: Vec<String>, env_token: Option<String>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinfiler"));
        cmd.arg("status").args(args).env_remove("TWINFILER_TOKEN");
        cmd.env("TWINFILER_URL", &url);
        if let Some(t) = env_token {
            cmd.env("TWINFILER_TOKEN", t);
        }
        async move {
            tokio::task::spawn_blocking(move || cmd.output().expect("run twinfiler status"))
                .await
                .unwrap()
        }
    };
    let ok = run(vec![], Some(token.clone())).await;
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("node c (answering): normal"), "{out}");
    assert!(out.contains("export / on 127.0.0.1"), "{out}");
    assert!(out.contains("not part of an HA pair"), "{out}");

    let bad = run(vec!["--token".into(), "wrong".into()], None).await;
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("401"), "{err}");

    node.shutdown().await.unwrap();
    // Nothing listens there any more: a clear connection error, non-zero exit.
    let gone = run(vec![], Some(token)).await;
    assert!(!gone.status.success());
    let err = String::from_utf8_lossy(&gone.stderr);
    assert!(err.contains("cannot reach the console"), "{err}");
}

/// Removes the demo's NVRAM regions (named after the demo dir) on drop.
struct DemoRegions(Vec<std::path::PathBuf>);

impl Drop for DemoRegions {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn run_demo(dir: &std::path::Path) -> std::process::Output {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_twinfiler"))
        .args([
            "demo",
            "--high-ports",
            "--console-port",
            "18080",
            "--exit-after-start",
        ])
        .arg("--dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the demo");
    assert!(
        started.elapsed() < Duration::from_millis(DEMO_MS_MAX),
        "demo took {:?}",
        started.elapsed()
    );
    out
}

#[test]
fn demo_starts_verifies_and_stops_the_pair_and_resumes_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::Builder::new()
        .prefix("twinfiler-demo-test-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let tag = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
    let _regions = DemoRegions(
        ["a", "b", "a-partner", "b-partner"]
            .iter()
            .map(|n| format!("/dev/shm/twinfiler-demo-{}-{n}.nvram", &tag[..12]).into())
            .collect(),
    );
    let first = run_demo(&dir);
    let out = String::from_utf8_lossy(&first.stdout).to_string();
    let logs = || {
        format!(
            "a: {}\nb: {}",
            std::fs::read_to_string(dir.join("a/node.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("b/node.log")).unwrap_or_default()
        )
    };
    assert!(
        first.status.success(),
        "{out}\n{}\n{}",
        String::from_utf8_lossy(&first.stderr),
        logs()
    );
    assert!(out.contains("demo verified"), "{out}");
    assert!(
        out.contains("mount -t nfs -o vers=3,proto=tcp,port=12049"),
        "{out}"
    );
    assert!(out.contains("127.0.0.11:/a /mnt/a"), "{out}");
    assert!(out.contains("node a stopped cleanly") && out.contains("node b stopped cleanly"));
    for f in ["credentials", "env", "pair.key"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let env = std::fs::read_to_string(dir.join("env")).unwrap();
    assert!(
        env.contains("TWINFILER_URL=http://127.0.0.11:18080"),
        "{env}"
    );
    let creds = std::fs::read_to_string(dir.join("credentials")).unwrap();

    // Again: the same pair resumes (same credentials, aggregates mounted, not created).
    let second = run_demo(&dir);
    let out2 = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(second.status.success(), "{out2}\n{}", logs());
    assert!(out2.contains("demo verified"), "{out2}");
    assert_eq!(
        std::fs::read_to_string(dir.join("credentials")).unwrap(),
        creds
    );
}

#[test]
fn the_example_with_its_console_section_uncommented_parses() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let text = text
        .replace("#   [console]", "[console]")
        .replace("#   listen = ", "listen = ")
        .replace("#   admin_user = ", "admin_user = ")
        .replace("#   metrics_require_auth = ", "metrics_require_auth = ");
    let c = NodeConfig::parse(&text, std::path::Path::new("console.toml")).expect("example");
    let console = c.console.expect("console section");
    assert_eq!(console.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(console.admin_user, "admin");
    let cfg = console.console_config().unwrap();
    assert!(!cfg.metrics_require_auth);
    assert!(cfg.api_tokens.is_empty());
    // A token entry holding something other than a BLAKE3 hash is refused.
    let bad = text.replace(
        "metrics_require_auth = false",
        "metrics_require_auth = false\napi_tokens = [{ name = \"x\", blake3_hex = \"plaintext\" }]",
    );
    let err = NodeConfig::parse(&bad, std::path::Path::new("bad.toml")).unwrap_err();
    assert!(err.to_string().contains("blake3_hex"), "{err}");
}
