//! Run the browser walk-through (log in, take over, give back, in headless Chromium) against
//! any running console, e.g. a `twinfiler demo` pair:
//! `cargo run -p web-ui --features testing --example browser_walkthrough -- \
//!     http://127.0.0.11:8080 DIR/credentials b a [SCREENSHOT_DIR]`
//! (the credentials file holds `user=` and `password=` lines; b is taken over by a).

use std::path::PathBuf;
use std::time::Instant;

use web_ui::testing::browser::{self, Browser, Walkthrough};

/// Graceful countdown chosen in the dialog, in seconds.
const COUNTDOWN_S: u32 = 10;
/// Bound on each page change and each operation, in milliseconds.
const STEP_TIMEOUT_MS: u64 = 60_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, credentials, target, partner, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: browser_walkthrough URL CREDENTIALS_FILE TARGET PARTNER [SHOTS]".into(),
        );
    };
    let text = std::fs::read_to_string(credentials)?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_string())
            .ok_or(format!("no {key}= in {credentials}"))
    };
    let walk = Walkthrough {
        base: base.clone(),
        user: field("user")?,
        password: field("password")?,
        target: target.clone(),
        partner: partner.clone(),
        countdown_s: COUNTDOWN_S,
        step_timeout_ms: STEP_TIMEOUT_MS,
        artifacts: rest.first().map(PathBuf::from),
    };
    let started = Instant::now();
    let b = Browser::start().await?;
    let result = browser::takeover_and_giveback(&b, &walk).await;
    let log = b.driver_log();
    b.close().await;
    match result {
        Ok(report) => {
            println!("{report:#?}");
            println!("walk-through took {:.1} s", started.elapsed().as_secs_f64());
            Ok(())
        }
        Err(e) => {
            eprintln!("chromedriver log:\n{log}");
            Err(e.into())
        }
    }
}
