//! `twinfiler takeover` and `twinfiler giveback` (the binary) against the console serving the
//! scripted `FakeBackend` of web-ui's `testing` feature on a real loopback socket: each step
//! printed with a timestamp, the outcome, and the exit codes 0 (success), 1 (failed or
//! refused) and 2 (usage, authentication).

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use web_ui::testing::{serve_fake, FakeBackend, TAKEOVER_STEPS};
use web_ui::{ApiToken, ConsoleConfig};

const TOKEN: &str = "cli-takeover-test-token-0123456789";
/// Fake operations advance one step per this interval.
const STEP_INTERVAL: Duration = Duration::from_millis(30);
/// Each CLI run must finish within this bound.
const CLI_MS_MAX: u64 = 30_000;

/// A console over a fresh fake pair on 127.0.0.1 (any port); its URL and the fake.
async fn fake_console() -> (String, Arc<FakeBackend>) {
    let config = ConsoleConfig {
        api_tokens: vec![ApiToken {
            name: "cli".into(),
            blake3_hex: web_ui::hash_token(TOKEN),
        }],
        ..ConsoleConfig::default()
    };
    serve_fake(STEP_INTERVAL, config).await
}

/// Run the CLI with `--url` and `token` (none: the variable is cleared) off the runtime.
async fn run(url: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinfiler"));
    cmd.args(args)
        .arg("--url")
        .arg(url)
        .env_remove("TWINFILER_URL")
        .env("RUST_LOG", "warn");
    match token {
        Some(t) => cmd.env("TWINFILER_TOKEN", t),
        None => cmd.env_remove("TWINFILER_TOKEN"),
    };
    let started = Instant::now();
    let out: Output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run twinfiler");
    assert!(
        started.elapsed() < Duration::from_millis(CLI_MS_MAX),
        "{args:?} took {:?}",
        started.elapsed()
    );
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// True for a line starting with an `HH:MM:SS.mmm` timestamp.
fn timestamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 12
        && b[2] == b':'
        && b[5] == b':'
        && b[8] == b'.'
        && [0, 1, 3, 4, 6, 7, 9, 10, 11]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_takeover_and_giveback_follow_steps_and_exit_codes() {
    let (url, fake) = fake_console().await;
    let t = Some(TOKEN);

    let (code, out, err) = run(&url, t, &["takeover", "--of", "b", "--check-only"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("check takeover of b: possible"), "{out}");
    assert_eq!(
        fake.operations_started
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    let (code, out, err) = run(&url, t, &["takeover", "--of", "b", "--countdown", "5s"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("started graceful takeover of b (countdown 5 s)"),
        "{out}"
    );
    for step in TAKEOVER_STEPS {
        let done = out
            .lines()
            .any(|l| timestamped(l) && l.contains(" done ") && l.contains(step));
        assert!(
            done,
            "step {step:?} printed as done with a timestamp:\n{out}"
        );
    }
    assert!(out.contains("succeeded after"), "{out}");

    // b is taken over now: a second takeover is refused by the check (exit 1).
    let (code, out, err) = run(&url, t, &["takeover", "--of", "b", "--immediate"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("not possible"), "{err}");

    let (code, out, err) = run(&url, t, &["giveback", "--to", "b", "--no-wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("started giveback to b: operation"), "{out}");
    assert!(
        !out.lines().any(timestamped),
        "--no-wait follows nothing: {out}"
    );

    // A failing operation: exit 1 with the reason.
    let (code, _, _) = run(&url, t, &["giveback", "--to", "b"]).await;
    assert!(
        code == 0 || code == 1,
        "the giveback above may still be running"
    );
    let deadline = Instant::now() + Duration::from_millis(CLI_MS_MAX);
    loop {
        let (code, _, _) = run(&url, t, &["takeover", "--of", "b", "--check-only"]).await;
        if code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fake pair never became normal again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fake.fail_at_step("final CP");
    let (code, out, err) = run(&url, t, &["takeover", "--of", "b", "--countdown", "1m"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("FAILED") && l.contains("final CP")),
        "{out}"
    );
    assert!(err.contains("FAILED") && err.contains("final CP"), "{err}");

    // Usage and authentication: exit 2, nothing started.
    let started = fake
        .operations_started
        .load(std::sync::atomic::Ordering::SeqCst);
    for (token, args) in [
        (Some("wrong"), &["takeover", "--of", "b"][..]),
        (None, &["giveback", "--to", "b"][..]),
        (t, &["takeover", "--of", "nosuch"][..]),
        (t, &["takeover", "--of", "b", "--countdown", "0s"][..]),
        (t, &["takeover", "--of", "b", "--countdown", "11m"][..]),
        (
            t,
            &["takeover", "--of", "b", "--immediate", "--countdown", "5s"][..],
        ),
    ] {
        let (code, out, err) = run(&url, token, args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
    }
    assert_eq!(
        fake.operations_started
            .load(std::sync::atomic::Ordering::SeqCst),
        started
    );

    // Nothing listening: exit 1 (operational), not 2.
    let (code, _, err) = run("http://127.0.0.1:1", t, &["giveback", "--to", "b"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the console"), "{err}");
}
