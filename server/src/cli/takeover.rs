//! `twinfiler takeover --of NODE [--immediate] [--countdown 30s] [--check-only] [--no-wait]` and
//! `twinfiler giveback --to NODE [--no-wait]`: start an operation through a node's console API
//! (either node of the pair will do) and, unless `--no-wait`, follow it step by step until it
//! ends.
//!
//! Exit codes: 0 success (or, with `--check-only`, takeover possible), 1 the operation failed
//! or was refused or the console could not be reached, 2 usage or authentication errors (bad
//! flags, no or refused token, unknown node).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use web_ui::client::{Accepted, ApiClient, ClientError};
use web_ui::{
    CheckResult, Outcome, Progress, StepState, TakeoverMode, COUNTDOWN_S_MAX, COUNTDOWN_S_MIN,
};

use super::api_client::{runtime, ApiArgs};

/// Graceful countdown when `--countdown` is not given, in seconds.
const COUNTDOWN_S_DEFAULT: u32 = 30;
/// How long to follow an operation beyond its countdown before giving up, in seconds (the
/// operation keeps running on the node; the exit code is then 1).
const WAIT_S_BEYOND_COUNTDOWN: u64 = 600;

/// Exit code for a failed or refused operation.
const EXIT_FAILED: i32 = 1;
/// Exit code for usage and authentication errors.
const EXIT_USAGE: i32 = 2;

#[derive(clap::Args)]
pub struct TakeoverArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The node to take over (its partner takes over its disks, addresses and exports).
    #[arg(long, value_name = "NODE")]
    of: String,
    /// Fence and take over at once, without draining (clients retransmit what was in flight).
    #[arg(long, conflicts_with = "countdown")]
    immediate: bool,
    /// Graceful: drain, and force the takeover after this long (e.g. 30s, 2m; 1s to 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_countdown)]
    countdown: Option<u32>,
    /// Only run the check and print it; exit 0 when a takeover is possible now, else 1.
    #[arg(long, conflicts_with = "no_wait")]
    check_only: bool,
    /// Print the operation's id and URLs and return without following it.
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Args)]
pub struct GivebackArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The node that gets its identity (disks, addresses, exports) back.
    #[arg(long, value_name = "NODE")]
    to: String,
    /// Print the operation's id and URLs and return without following it.
    #[arg(long)]
    no_wait: bool,
}

/// `30s`, `2m`, `90` (seconds) → seconds within the API's bounds.
fn parse_countdown(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (digits, scale) = if let Some(d) = t.strip_suffix("ms") {
        // Sub-second countdowns are not allowed; accept whole seconds written in ms.
        let ms: u64 = d.parse().map_err(|_| format!("bad duration {text:?}"))?;
        if !ms.is_multiple_of(1000) {
            return Err(format!(
                "{text:?}: the countdown is counted in whole seconds"
            ));
        }
        return check_countdown(ms / 1000, text);
    } else if let Some(d) = t.strip_suffix('s') {
        (d, 1)
    } else if let Some(d) = t.strip_suffix('m') {
        (d, 60)
    } else {
        (t, 1)
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad duration {text:?} (use e.g. 30s or 2m)"))?;
    check_countdown(n.saturating_mul(scale), text)
}

fn check_countdown(seconds: u64, text: &str) -> Result<u32, String> {
    u32::try_from(seconds)
        .ok()
        .filter(|s| (COUNTDOWN_S_MIN..=COUNTDOWN_S_MAX).contains(s))
        .ok_or_else(|| {
            format!(
                "countdown {text:?} must be between {COUNTDOWN_S_MIN} s and {COUNTDOWN_S_MAX} s"
            )
        })
}

/// Why a command did not succeed; decides the exit code.
enum Failure {
    /// Talking to the console failed (usage or not, as the error says).
    Client(ClientError),
    /// Bad flags or no token.
    Usage(String),
    /// The check said no, or the operation ended failed.
    Failed(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

/// Report a failure on stderr and exit with its code; success returns normally (exit 0).
fn exit_on(result: Result<(), Failure>) -> anyhow::Result<()> {
    let (code, message) = match result {
        Ok(()) => return Ok(()),
        Err(Failure::Client(e)) => (
            if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            },
            e.to_string(),
        ),
        Err(Failure::Usage(m)) => (EXIT_USAGE, m),
        Err(Failure::Failed(m)) => (EXIT_FAILED, m),
    };
    eprintln!("twinfiler: {message}");
    std::process::exit(code)
}

fn client(api: &ApiArgs) -> Result<ApiClient, Failure> {
    api.client().map_err(|e| Failure::Usage(format!("{e:#}")))
}

/// `twinfiler takeover`
pub fn run_takeover(args: TakeoverArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    exit_on(rt.block_on(takeover(args)))
}

/// `twinfiler giveback`
pub fn run_giveback(args: GivebackArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    exit_on(rt.block_on(giveback(args)))
}

async fn takeover(args: TakeoverArgs) -> Result<(), Failure> {
    let client = client(&args.api)?;
    let target = args.of.as_str();
    let check = client.check_takeover(target).await?;
    print!("{}", render_check(&format!("takeover of {target}"), &check));
    if args.check_only {
        return if check.possible {
            Ok(())
        } else {
            Err(Failure::Failed(format!(
                "takeover of {target} is not possible now"
            )))
        };
    }
    if !check.possible {
        return Err(Failure::Failed(format!(
            "takeover of {target} is not possible now; nothing was started"
        )));
    }
    let mode = if args.immediate {
        TakeoverMode::Immediate
    } else {
        TakeoverMode::Graceful {
            countdown_s: args.countdown.unwrap_or(COUNTDOWN_S_DEFAULT),
        }
    };
    let accepted = client.start_takeover(target, mode).await?;
    let what = match mode {
        TakeoverMode::Immediate => format!("immediate takeover of {target}"),
        TakeoverMode::Graceful { countdown_s } => {
            format!("graceful takeover of {target} (countdown {countdown_s} s)")
        }
    };
    println!("{}", render_started(&what, &client, &accepted));
    if args.no_wait {
        return Ok(());
    }
    let countdown_s = match mode {
        TakeoverMode::Graceful { countdown_s } => u64::from(countdown_s),
        TakeoverMode::Immediate => 0,
    };
    wait(
        &client,
        &accepted,
        &what,
        countdown_s + WAIT_S_BEYOND_COUNTDOWN,
    )
    .await
}

async fn giveback(args: GivebackArgs) -> Result<(), Failure> {
    let client = client(&args.api)?;
    let target = args.to.as_str();
    let check = client.check_giveback(target).await?;
    print!("{}", render_check(&format!("giveback to {target}"), &check));
    if !check.possible {
        return Err(Failure::Failed(format!(
            "giveback to {target} is not possible now; nothing was started"
        )));
    }
    let accepted = client.start_giveback(target).await?;
    let what = format!("giveback to {target}");
    println!("{}", render_started(&what, &client, &accepted));
    if args.no_wait {
        return Ok(());
    }
    wait(&client, &accepted, &what, WAIT_S_BEYOND_COUNTDOWN).await
}

/// Follow the operation, printing every step change, and map its outcome to the result.
async fn wait(
    client: &ApiClient,
    accepted: &Accepted,
    what: &str,
    wait_s_max: u64,
) -> Result<(), Failure> {
    let started = Instant::now();
    let mut printer = StepPrinter::default();
    let outcome = client
        .follow(
            accepted.operation,
            Duration::from_secs(wait_s_max),
            |p: &Progress| {
                for line in printer.changes(p, now_unix_ms()) {
                    println!("{line}");
                }
            },
        )
        .await?;
    let took = started.elapsed().as_secs_f64();
    match outcome {
        Outcome::Succeeded => {
            println!("{what} succeeded after {took:.1} s");
            Ok(())
        }
        Outcome::Failed { reason } => Err(Failure::Failed(format!(
            "{what} FAILED after {took:.1} s: {reason}"
        ))),
    }
}

fn render_check(what: &str, check: &CheckResult) -> String {
    let mut out = format!(
        "check {what}: {}\n",
        if check.possible {
            "possible"
        } else {
            "NOT possible"
        }
    );
    for c in &check.checks {
        out.push_str(&format!(
            "  {} {}{}\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            if c.detail.is_empty() {
                String::new()
            } else {
                format!(" — {}", c.detail)
            }
        ));
    }
    out
}

fn render_started(what: &str, client: &ApiClient, a: &Accepted) -> String {
    format!(
        "started {what}: operation {} (console: {}{})",
        a.operation,
        client.base_url(),
        a.page_url
    )
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "HH:MM:SS.mmm" (UTC) of a Unix time in milliseconds.
fn clock(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn state_word(s: StepState) -> &'static str {
    match s {
        StepState::Pending => "pending",
        StepState::Running => "running",
        StepState::Done => "done",
        StepState::Failed => "FAILED",
        StepState::Skipped => "skipped",
    }
}

/// Turns successive `Progress` values into one line per step change (state or detail), so
/// the operator sees every step as it happens without repeats.
#[derive(Default)]
struct StepPrinter {
    /// What was last printed per step index.
    printed: Vec<Option<(StepState, String)>>,
}

impl StepPrinter {
    fn changes(&mut self, p: &Progress, now_ms: u64) -> Vec<String> {
        self.printed.resize(p.steps.len(), None);
        let mut lines = Vec::new();
        for (i, step) in p.steps.iter().enumerate() {
            // Pending steps are the plan, not news.
            if step.state == StepState::Pending {
                continue;
            }
            let now = (step.state, step.detail.clone());
            if self.printed[i].as_ref() == Some(&now) {
                continue;
            }
            let detail = if step.detail.is_empty() {
                String::new()
            } else {
                format!(" — {}", step.detail)
            };
            lines.push(format!(
                "{}  {:<8} {}{detail}",
                clock(step.at_unix_ms.unwrap_or(now_ms)),
                state_word(step.state),
                step.name
            ));
            self.printed[i] = Some(now);
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use web_ui::{OperationId, OperationKind, Step};

    #[test]
    fn countdowns_parse_within_bounds() {
        assert_eq!(parse_countdown("30s"), Ok(30));
        assert_eq!(parse_countdown("2m"), Ok(120));
        assert_eq!(parse_countdown("45"), Ok(45));
        assert_eq!(parse_countdown("5000ms"), Ok(5));
        assert!(parse_countdown("0s").is_err());
        assert!(parse_countdown("11m").is_err());
        assert!(parse_countdown("1500ms").is_err());
        assert!(parse_countdown("soon").is_err());
        assert!(parse_countdown("99999999999999999999m").is_err());
    }

    fn step(name: &str, state: StepState, detail: &str, at: Option<u64>) -> Step {
        Step {
            name: name.into(),
            state,
            detail: detail.into(),
            at_unix_ms: at,
        }
    }

    #[test]
    fn printer_prints_each_change_once() {
        let mut p = Progress {
            id: OperationId(1),
            kind: OperationKind::Takeover,
            target: "b".into(),
            actor: "token:cli".into(),
            steps: vec![
                step(
                    "PLEASE_SHUTDOWN sent",
                    StepState::Running,
                    "",
                    Some(3_723_004),
                ),
                step("draining requests", StepState::Pending, "", None),
            ],
            outcome: None,
        };
        let mut printer = StepPrinter::default();
        assert_eq!(
            printer.changes(&p, 0),
            vec!["01:02:03.004  running  PLEASE_SHUTDOWN sent"]
        );
        assert!(printer.changes(&p, 0).is_empty(), "no change, no line");
        p.steps[0].state = StepState::Done;
        p.steps[1] = step("draining requests", StepState::Running, "3 in flight", None);
        let lines = printer.changes(&p, 86_400_000 + 1);
        assert_eq!(
            lines,
            vec![
                "01:02:03.004  done     PLEASE_SHUTDOWN sent",
                "00:00:00.001  running  draining requests — 3 in flight",
            ]
        );
    }
}
