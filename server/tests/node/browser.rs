//! The operator's walk-through in a real headless Chromium against a real pair: `twinfiler
//! demo --high-ports` runs nodes a and b; the browser logs in to a's console, takes b over
//! through the dialog (check, graceful with a countdown, confirm), follows the live progress
//! (reloading mid-way) to success, sees a serving both exports, gives back and sees both
//! nodes normal. Then the CLI does the same: `twinfiler takeover --of b` and `twinfiler
//! giveback --to b` must exit 0.
//!
//! Opt-in (it needs Chromium, the HA driver and the demo's fixed high ports, which the demo
//! test in `console.rs` also uses — run it alone):
//! `TWINFILER_BROWSER_PAIR=1 cargo test -p twinfiler --test node browser -- --nocapture`.
//! Screenshots land in `CARGO_TARGET_TMPDIR/browser-pair`.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use web_ui::testing::browser::{self, Browser, Walkthrough};

/// Console port of the demo pair here (the demo test in `console.rs` uses 18080).
const CONSOLE_PORT: u16 = 18180;
/// The demo must print its next steps (both nodes serving) within this bound.
const DEMO_START_MS_MAX: u64 = 240_000;
/// Bound on each page change and on each operation in the browser, in milliseconds.
const STEP_TIMEOUT_MS: u64 = 60_000;
/// Bound on the demo stopping after SIGINT (final CPs).
const DEMO_STOP_MS_MAX: u64 = 30_000;
/// The whole walk-through (both operations) must finish within this bound, in seconds.
const WALK_S_MAX: u64 = 120;
/// Each CLI operation must finish within this bound.
const CLI_MS_MAX: u64 = 60_000;
/// After a giveback, a takeover must be possible again within this bound (mirror resync).
const RESYNC_MS_MAX: u64 = 30_000;
/// Pause between checks while waiting for the resync.
const RESYNC_POLL_MS: u64 = 250;

fn enabled() -> bool {
    std::env::var("TWINFILER_BROWSER_PAIR").is_ok_and(|v| v == "1")
}

/// The demo pair as a child process group; stopped with SIGINT (final CP) on drop, killed if
/// it does not stop in time. Its NVRAM regions are removed afterwards.
struct Demo {
    child: Child,
    regions: Vec<PathBuf>,
}

impl Demo {
    fn start(dir: &Path) -> (Demo, String) {
        let tag = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
        // Each node's own region and its takeover log of the partner's.
        let regions = ["a", "b", "a-partner", "b-partner"]
            .iter()
            .map(|n| format!("/dev/shm/twinfiler-demo-{}-{n}.nvram", &tag[..12]).into())
            .collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_twinfiler"))
            .args(["demo", "--high-ports", "--console-port"])
            .arg(CONSOLE_PORT.to_string())
            .arg("--dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("run twinfiler demo");
        let stdout = child.stdout.take().expect("piped stdout");
        let demo = Demo { child, regions };
        // Read its output on a thread so the wait below is bounded.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_millis(DEMO_START_MS_MAX);
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    out.push_str(&line);
                    out.push('\n');
                    if line.contains("Ctrl-C stops both nodes") {
                        // Keep draining so the demo never blocks on a full pipe.
                        std::thread::spawn(move || while rx.recv().is_ok() {});
                        return (demo, out);
                    }
                }
                Err(_) => panic!("the demo did not come up within {DEMO_START_MS_MAX} ms:\n{out}"),
            }
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals the demo process we spawned (SIGINT = Ctrl-C: clean stop).
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_millis(DEMO_STOP_MS_MAX);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            // SAFETY: kills the process group we created for the demo (it and its nodes).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
        for r in &self.regions {
            let _ = std::fs::remove_file(r);
        }
    }
}

/// `key=value` from the demo's credentials file.
fn credential(dir: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(dir.join("credentials")).expect("demo credentials");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in the credentials"))
}

fn cli(url: &str, token: &str, args: &[&str]) -> std::process::Output {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_twinfiler"))
        .args(args)
        .env("TWINFILER_URL", url)
        .env("TWINFILER_TOKEN", token)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the CLI");
    assert!(
        started.elapsed() < Duration::from_millis(CLI_MS_MAX),
        "{args:?} took {:?}",
        started.elapsed()
    );
    out
}

/// Poll `twinfiler status --json` until `node` is in `state` (the API's kebab-case label).
async fn wait_state(base: &str, token: &str, node: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_millis(RESYNC_MS_MAX);
    loop {
        let out = cli(base, token, &["status", "--json"]);
        let status: Option<web_ui::PairStatus> = serde_json::from_slice(&out.stdout).ok();
        let now = status
            .as_ref()
            .and_then(|s| s.nodes.iter().find(|n| n.name == node))
            .map(|n| web_ui::metrics::ha_state_name(n.state));
        if now == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} never reached {state} (last {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(RESYNC_POLL_MS)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_takes_over_and_gives_back_on_the_demo_pair() {
    if !enabled() {
        eprintln!("SKIPPED: set TWINFILER_BROWSER_PAIR=1 (needs chromium, chromium-driver)");
        return;
    }
    assert!(
        browser::available(),
        "TWINFILER_BROWSER_PAIR=1 but chromium/chromium-driver are not installed"
    );
    let tmp = tempfile::Builder::new()
        .prefix("twinfiler-browser-pair-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (demo, out) = Demo::start(&dir);
    eprintln!("{out}");
    let base = format!("http://127.0.0.11:{CONSOLE_PORT}");
    let token = credential(&dir, "token");
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-pair");
    std::fs::create_dir_all(&artifacts).unwrap();

    let started = Instant::now();
    let b = Browser::start().await.expect("chromium starts");
    let walk = Walkthrough {
        base: base.clone(),
        user: credential(&dir, "user"),
        password: credential(&dir, "password"),
        target: "b".into(),
        partner: "a".into(),
        countdown_s: 10,
        step_timeout_ms: STEP_TIMEOUT_MS,
        artifacts: Some(artifacts.clone()),
    };
    let result = tokio::time::timeout(
        Duration::from_secs(WALK_S_MAX),
        browser::takeover_and_giveback(&b, &walk),
    )
    .await;
    let log = b.driver_log();
    b.close().await;
    let logs = || {
        format!(
            "a: {}\nb: {}",
            std::fs::read_to_string(dir.join("a/node.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("b/node.log")).unwrap_or_default()
        )
    };
    let report = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("walk-through failed: {e}\n{}\nchromedriver:\n{log}", logs()),
        Err(_) => panic!("walk-through took over {WALK_S_MAX} s\n{}", logs()),
    };
    eprintln!(
        "{report:#?}\nbrowser walk-through took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        artifacts.display()
    );
    assert!(report.takeover.outcome.contains("Succeeded"));
    assert!(
        report
            .partner_exports_in_takeover
            .contains(&"/a".to_string())
            && report
                .partner_exports_in_takeover
                .contains(&"/b".to_string()),
        "a serves both exports in takeover: {:?}",
        report.partner_exports_in_takeover
    );
    assert!(report.giveback.outcome.contains("Succeeded"));
    assert!(
        report.console_errors.is_empty(),
        "no script errors or CSP violations in the page console: {:?}",
        report.console_errors
    );

    // The CLI against the same pair: exit 0 each, every step printed with a timestamp. Right
    // after a giveback the pair resynchronises its mirrors: wait until a takeover is possible.
    let deadline = Instant::now() + Duration::from_millis(RESYNC_MS_MAX);
    loop {
        let c = cli(&base, &token, &["takeover", "--of", "b", "--check-only"]);
        match c.status.code() {
            Some(0) => break,
            Some(1) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(RESYNC_POLL_MS)).await
            }
            _ => panic!(
                "takeover never became possible again: {}{}",
                String::from_utf8_lossy(&c.stdout),
                String::from_utf8_lossy(&c.stderr)
            ),
        }
    }
    let t = cli(
        &base,
        &token,
        &["takeover", "--of", "b", "--countdown", "5s"],
    );
    let text = String::from_utf8_lossy(&t.stdout).to_string();
    assert!(
        t.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&t.stderr)
    );
    assert!(text.contains("succeeded"), "{text}");
    // The taker reports success before it sees the victim settle in "waiting for giveback".
    wait_state(&base, &token, "b", "waiting-for-giveback").await;
    let g = cli(&base, &token, &["giveback", "--to", "b"]);
    let text = String::from_utf8_lossy(&g.stdout).to_string();
    assert!(
        g.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&g.stderr)
    );
    drop(demo);
}
