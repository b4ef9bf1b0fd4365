//! A real headless Chromium (Debian `chromium` + `chromium-driver`, driven over WebDriver)
//! against the console serving the scripted `FakeBackend`: log in, see both nodes, take node
//! b over through the dialog (check, graceful with a countdown, confirm), watch the live
//! progress page to success with a reload mid-way, then give back the same way.
//!
//! Skips loudly when Chromium is not installed, unless `TWINFILER_REQUIRE_BROWSER=1` (CI),
//! which turns the skip into a failure. Screenshots land in `CARGO_TARGET_TMPDIR`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use web_ui::testing::browser::{self, Browser, Walkthrough};
use web_ui::testing::{serve_fake, FakeHandle, TAKEOVER_STEPS};
use web_ui::{ConsoleBackend, ConsoleConfig};

const PASSWORD: &str = "browser-test-pass";
/// Fake steps take this long: slow enough that a reload lands mid-operation.
const STEP_INTERVAL: Duration = Duration::from_millis(500);
/// Bound on each page change and on each operation, in milliseconds.
const STEP_TIMEOUT_MS: u64 = 20_000;
/// The whole test must finish within this bound, in seconds.
const TEST_S_MAX: u64 = 60;

fn browser_required() -> bool {
    std::env::var("TWINFILER_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_takes_over_and_gives_back_in_chromium() {
    if !browser::available() {
        assert!(
            !browser_required(),
            "TWINFILER_REQUIRE_BROWSER=1 but chromium/chromedriver are not installed"
        );
        eprintln!("SKIPPED: install the Debian packages chromium and chromium-driver");
        return;
    }
    let started = Instant::now();
    let config = ConsoleConfig {
        admin_password_argon2: web_ui::hash_password(PASSWORD).unwrap(),
        ..ConsoleConfig::default()
    };
    let (base, fake) = serve_fake(STEP_INTERVAL, config).await;

    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-fake");
    std::fs::create_dir_all(&artifacts).unwrap();
    let b = Browser::start().await.expect("chromium starts");
    let walk = Walkthrough {
        base,
        user: "admin".into(),
        password: PASSWORD.into(),
        target: "b".into(),
        partner: "a".into(),
        countdown_s: 7,
        step_timeout_ms: STEP_TIMEOUT_MS,
        artifacts: Some(artifacts.clone()),
    };
    let result = tokio::time::timeout(
        Duration::from_secs(TEST_S_MAX),
        browser::takeover_and_giveback(&b, &walk),
    )
    .await;
    let log = b.driver_log();
    b.close().await;
    let report = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("browser walk-through failed: {e}\nchromedriver log:\n{log}"),
        Err(_) => panic!("browser walk-through took over {TEST_S_MAX} s"),
    };
    eprintln!("{report:#?}\nscreenshots in {}", artifacts.display());

    assert!(
        report
            .takeover_checks
            .iter()
            .any(|c| c.contains("mirror in sync")),
        "the dialog showed the check: {:?}",
        report.takeover_checks
    );
    assert_eq!(report.takeover.steps.len(), TAKEOVER_STEPS.len());
    assert!(report.takeover.steps.iter().all(|s| s.starts_with('✔')));
    let at_reload = report.takeover.done_at_reload.expect("reloaded mid-way");
    assert!(report.takeover.done_after_reload.unwrap() >= at_reload);
    assert!(
        report.takeover.live_after_reload,
        "the reloaded page kept following the operation"
    );
    assert_eq!(
        report.partner_exports_in_takeover,
        vec!["/a".to_string(), "/b".to_string()],
        "a serves both exports while b is taken over"
    );
    assert!(report.giveback.outcome.contains("Succeeded"));
    assert!(
        report.console_errors.is_empty(),
        "no script errors or CSP violations in the page console: {:?}",
        report.console_errors
    );
    // The fake counts operations: exactly the takeover and the giveback were started.
    assert_eq!(
        fake.operations_started
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert!(artifacts.join("console-in-takeover.png").is_file());
    // The countdown typed into the dialog reached the backend.
    let events = FakeHandle(Arc::clone(&fake)).events(0, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("Graceful { countdown_s: 7 }")),
        "{events:?}"
    );
    eprintln!("browser test took {:.1} s", started.elapsed().as_secs_f64());
}
