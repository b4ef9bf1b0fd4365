//! The HA pair in network namespaces (root only): node a and node b as `twinfiler node`
//! processes in their namespaces, disks as files on the host (both nodes see both), the
//! client in a third namespace writing and verifying through a's data address while the
//! operator API drives takeovers and givebacks. Each test asserts zero client errors, zero
//! lost acknowledged writes and valid old handles, and prints the client-visible pauses.
//!
//! Skipped (with a message) unless root with `ip`.

use std::time::{Duration, Instant};

use twinfiler::lab::console::{node_field, Check, Console, Mode};
use twinfiler::lab::netns::{self, NetLab};
use twinfiler::lab::process::NodeProc;
use twinfiler::lab::{PairAddrs, PairOptions, PairSpec};

use crate::harness::*;

/// A takeover or giveback must finish within this bound (countdowns included).
const OPERATION_MS_MAX: u64 = 90_000;
/// Both nodes normal and a takeover possible within this bound after start.
const PAIR_READY_MS_MAX: u64 = 90_000;
/// A state change seen by a console within this bound.
const STATE_MS_MAX: u64 = 30_000;
/// Countdown of the forced scenario (the victim hangs), s.
const FORCED_COUNTDOWN_S: u32 = 2;
/// Countdown of graceful takeovers, s (a responsive victim must finish well before).
const GRACEFUL_COUNTDOWN_S: u32 = 30;
/// Delay of the automatic giveback scenario, ms.
const AUTO_GIVEBACK_DELAY_MS: u64 = 2_000;
/// How long the cut interconnect is watched for a (wrong) takeover, ms.
const CUT_WATCH_MS: u64 = 4_000;

/// Why a pair test does not run here, if it does not.
fn skip_reason() -> Option<String> {
    if !netns::is_root() {
        return Some("needs root for network namespaces".into());
    }
    if netns::ip(&["-V"]).is_err() {
        return Some("needs `ip` (iproute2)".into());
    }
    None
}

/// Two nodes in their namespaces. Dropping it kills the nodes, then deletes the namespaces.
struct Pair {
    procs: [Option<NodeProc>; 2],
    tag: String,
    spec: PairSpec,
    lab: NetLab,
    _dir: tempfile::TempDir,
}

impl Pair {
    fn start(tag: &str, opts: &PairOptions) -> Pair {
        let dir = temp_dir("twinfiler-pair-");
        let lab = NetLab::setup(tag).expect("network namespaces");
        let spec = PairSpec::write(dir.path(), &PairAddrs::netns(), opts).expect("pair configs");
        let mut pair = Pair {
            procs: [None, None],
            tag: tag.to_string(),
            spec,
            lab,
            _dir: dir,
        };
        for i in 0..2 {
            pair.spawn(i);
        }
        for i in 0..2 {
            if let Err(e) = pair.procs[i]
                .as_mut()
                .expect("spawned")
                .wait_serving(NODE_START_MS_MAX)
            {
                pair.dump_logs();
                panic!("{e}");
            }
        }
        pair
    }

    fn spawn(&mut self, i: usize) {
        let ns = self.lab.ns(["a", "b"][i]);
        self.procs[i] =
            Some(NodeProc::spawn(&exe(), &self.spec.nodes[i], Some(&ns)).expect("spawn node"));
    }

    fn console(&self, i: usize) -> Console {
        Console::new(&self.spec.urls[i], &self.spec.token).expect("console client")
    }

    fn proc_(&mut self, i: usize) -> &mut NodeProc {
        self.procs[i].as_mut().expect("node running")
    }

    fn dump_logs(&self) {
        // Whole logs are kept for the post-mortem (the temp dir goes away).
        let keep = std::env::temp_dir().join(format!("twinfiler-pair-logs-{}", self.tag));
        let _ = std::fs::create_dir_all(&keep);
        for n in &self.spec.nodes {
            dump_log(&n.name, &n.log_path());
            let _ = std::fs::copy(n.log_path(), keep.join(format!("{}.log", n.name)));
        }
        eprintln!("whole node logs kept in {}", keep.display());
        eprintln!("addresses a: {}", self.lab.addresses("a"));
        eprintln!("addresses b: {}", self.lab.addresses("b"));
    }

    /// Both nodes normal and a takeover of a possible (bounded).
    async fn ready(&self) {
        for i in 0..2 {
            for n in ["a", "b"] {
                self.console(i)
                    .wait_state(n, "normal", PAIR_READY_MS_MAX)
                    .await
                    .expect("pair normal");
            }
        }
        self.console(1)
            .wait_possible(Check::Takeover, "a", PAIR_READY_MS_MAX)
            .await
            .expect("takeover of a possible");
    }

    async fn run_op(&self, console: usize, op: u64, what: &str) {
        if let Err(e) = self
            .console(console)
            .wait_operation(op, OPERATION_MS_MAX)
            .await
        {
            panic!("{what}: {e}");
        }
    }

    /// kill -9 of a; returns the kill's time once b has taken a over.
    async fn kill_a_until_taken_over(&mut self, w: &Writer) -> Instant {
        self.procs[0].take().expect("a running").kill9();
        let t0 = Instant::now();
        self.console(1)
            .wait_state("b", "in-takeover", STATE_MS_MAX)
            .await
            .expect("hard takeover by b");
        w.progress("kill -9 of a").await;
        t0
    }

    /// Starts the victim a again and sees it wait for giveback.
    async fn restart_a(&mut self) {
        self.spawn(0);
        self.console(0)
            .wait_state("a", "waiting-for-giveback", NODE_START_MS_MAX)
            .await
            .expect("restarted victim waits for giveback");
    }

    /// Starts the victim a again, sees it wait for giveback, and gives back to it.
    async fn restart_a_then_give_back(&mut self, w: &Writer) {
        self.restart_a().await;
        self.giveback_to_a(w).await;
    }

    async fn giveback_to_a(&self, w: &Writer) {
        // b must know that a waits (a restarted victim announces itself over the
        // interconnect once it is back).
        self.console(1)
            .wait_state("a", "waiting-for-giveback", NODE_START_MS_MAX)
            .await
            .expect("b sees a waiting for giveback");
        // The check an operator runs first agrees once a's heartbeat says it waits.
        self.console(1)
            .wait_possible(Check::Giveback, "a", STATE_MS_MAX)
            .await
            .expect("giveback to a possible");
        let t0 = Instant::now();
        let op = self
            .console(1)
            .giveback("a")
            .await
            .expect("giveback accepted");
        self.run_op(1, op, "giveback").await;
        w.progress("giveback").await;
        w.pause_since("giveback", t0);
        self.console(1)
            .wait_state("a", "normal", STATE_MS_MAX)
            .await
            .expect("a normal after giveback");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for p in &mut self.procs {
            p.take();
        }
        self.spec.remove_regions();
    }
}

/// Runs `scenario` with a started pair and a client runtime in the client namespace.
/// The pair of most scenarios: small disks, giveback only when asked.
fn pair_options() -> PairOptions {
    PairOptions {
        disk_mib: 128,
        ..PairOptions::default()
    }
}

fn with_pair(tag: &str, scenario: impl AsyncFnOnce(&mut Pair, &Writer) + Send) {
    with_pair_options(tag, &pair_options(), scenario);
}

fn with_pair_options(
    tag: &str,
    opts: &PairOptions,
    scenario: impl AsyncFnOnce(&mut Pair, &Writer) + Send,
) {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = serial();
    let mut pair = Pair::start(tag, opts);
    let client_ns = pair.lab.ns("c");
    run_client(Some(&client_ns), || async {
        pair.ready().await;
        let w = Writer::start(
            netns::DATA_A.into(),
            twinfiler::lab::STANDARD_PORTS.portmap,
            "load",
        )
        .await;
        scenario(&mut pair, &w).await;
        w.finish_and_check().await;
    });
}

async fn graceful(pair: &mut Pair, w: &Writer, asked_at: usize) {
    let t0 = Instant::now();
    let op = pair
        .console(asked_at)
        .takeover(
            "a",
            Mode::Graceful {
                countdown_s: GRACEFUL_COUNTDOWN_S,
            },
        )
        .await
        .expect("takeover accepted");
    // A check asked meanwhile is refused (busy) and must not end the running takeover.
    let (possible, _) = pair
        .console(asked_at)
        .check(Check::Takeover, "a")
        .await
        .expect("takeover check");
    assert!(
        !possible,
        "a second takeover is not possible while one runs"
    );
    pair.run_op(asked_at, op, "graceful takeover").await;
    w.progress("graceful takeover").await;
    let pause = w.pause_since("graceful takeover", t0);
    assert!(
        pause < Duration::from_secs(GRACEFUL_COUNTDOWN_S.into()),
        "a responsive victim finishes before the countdown"
    );
    pair.console(1)
        .wait_state("b", "in-takeover", STATE_MS_MAX)
        .await
        .expect("b serves both identities");
    pair.giveback_to_a(w).await;
}

#[test]
fn graceful_takeover_asked_at_the_victim_then_giveback() {
    with_pair("gv", async |pair, w| graceful(pair, w, 0).await);
}

#[test]
fn graceful_takeover_asked_at_the_partner_then_giveback() {
    with_pair("gp", async |pair, w| graceful(pair, w, 1).await);
}

#[test]
fn hung_victim_is_taken_over_when_the_countdown_expires() {
    with_pair("fo", async |pair, w| {
        pair.proc_(0).freeze();
        let t0 = Instant::now();
        let op = pair
            .console(1)
            .takeover(
                "a",
                Mode::Graceful {
                    countdown_s: FORCED_COUNTDOWN_S,
                },
            )
            .await
            .expect("takeover accepted");
        pair.run_op(1, op, "forced takeover").await;
        w.progress("forced takeover").await;
        w.pause_since(
            "forced takeover (countdown excluded)",
            t0 + Duration::from_secs(FORCED_COUNTDOWN_S.into()),
        );
        // The fenced victim is killed and comes back: it must wait for giveback.
        pair.procs[0].take();
        pair.console(1)
            .wait_state("b", "in-takeover", STATE_MS_MAX)
            .await
            .expect("b in takeover");
        pair.restart_a_then_give_back(w).await;
    });
}

#[test]
fn killed_node_is_taken_over_within_the_detection_bound() {
    with_pair("kill", async |pair, w| {
        let t0 = pair.kill_a_until_taken_over(w).await;
        w.pause_since("hard takeover (kill -9, detection included)", t0);
        pair.restart_a_then_give_back(w).await;
    });
}

#[test]
fn killed_node_gets_its_identity_back_by_itself_with_auto_giveback() {
    let opts = PairOptions {
        auto_giveback_delay_ms: Some(AUTO_GIVEBACK_DELAY_MS),
        ..pair_options()
    };
    with_pair_options("auto", &opts, async |pair, w| {
        pair.kill_a_until_taken_over(w).await;
        pair.restart_a().await;
        // No operator from here on: b gives a its identity back after the delay.
        let t0 = Instant::now();
        pair.console(1)
            .wait_state("a", "normal", AUTO_GIVEBACK_DELAY_MS + OPERATION_MS_MAX)
            .await
            .expect("a normal again without an operator");
        pair.console(1)
            .wait_state("b", "normal", STATE_MS_MAX)
            .await
            .expect("b normal after the automatic giveback");
        w.progress("automatic giveback").await;
        w.pause_since("automatic giveback", t0);
    });
}

#[test]
fn cut_interconnect_does_not_cause_a_takeover() {
    with_pair("cut", async |pair, w| {
        pair.lab.cut_interconnect().expect("cut");
        let t0 = Instant::now();
        let mut blockers_seen = None;
        while t0.elapsed() < Duration::from_millis(CUT_WATCH_MS) {
            for i in 0..2 {
                let Ok(s) = pair.console(i).status().await else {
                    continue;
                };
                for n in ["a", "b"] {
                    let state =
                        node_field(&s, n, "state").and_then(|v| v.as_str().map(str::to_owned));
                    if let Some(state) = state {
                        assert!(
                            !matches!(
                                state.as_str(),
                                "taking-over" | "in-takeover" | "waiting-for-giveback" | "draining"
                            ),
                            "a cut interconnect caused a takeover: {n} is {state} (console {i})"
                        );
                    }
                    if node_field(&s, n, "takeover_possible").and_then(|v| v.as_bool())
                        == Some(false)
                    {
                        blockers_seen = node_field(&s, n, "takeover_blockers").cloned();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        w.progress("the interconnect cut").await;
        assert!(
            blockers_seen.is_some(),
            "status never showed takeover impossible while the interconnect was cut"
        );
        eprintln!(
            "takeover blockers while cut: {}",
            blockers_seen.unwrap_or_default()
        );
        pair.lab.restore_interconnect().expect("restore");
        pair.ready().await;
        w.progress("the interconnect restored").await;
    });
}
