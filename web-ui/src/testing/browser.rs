//! A real browser for console tests: headless Chromium driven over WebDriver (chromedriver,
//! the `fantoccini` crate), and the operator's takeover/giveback walk-through as reusable
//! steps, so the same scenario runs against the `FakeBackend` here and against a real
//! `twinfiler demo` pair in the server's tests.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (or `TWINFILER_CHROMIUM` /
//! `TWINFILER_CHROMEDRIVER` naming the binaries). chromedriver listens on a loopback port and
//! runs in its own process group; [`Browser`] kills that group (Chromium included) when it is
//! closed or dropped, also when a test panics.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::{Client, ClientBuilder, Locator};

/// Chromium flags: headless, no sandbox (tests run as root), and nothing that talks to the
/// network on its own (component updates, sync, field trials over QUIC).
pub const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1280,1024",
];
/// chromedriver must answer `/status` within this bound after it starts, in milliseconds.
const DRIVER_START_MS_MAX: u64 = 15_000;
/// Pause between polls of a condition in the page, in milliseconds.
const POLL_MS: u64 = 100;
/// Tries of a find-and-click whose element the overview's live refresh replaced.
const STALE_RETRIES_MAX: u32 = 10;

/// Why a browser step failed.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// chromedriver or Chromium could not be started.
    #[error("browser setup: {0}")]
    Setup(String),
    /// A WebDriver session could not be created.
    #[error("WebDriver session: {0}")]
    Session(#[from] fantoccini::error::NewSessionError),
    /// A WebDriver command failed.
    #[error("WebDriver command: {0}")]
    Command(#[from] CmdError),
    /// The page did not show what the scenario expects.
    #[error("{0}")]
    Expectation(String),
}

/// Path of a binary: the environment variable if set, else the first existing candidate.
fn find_binary(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn chromium_path() -> Option<PathBuf> {
    find_binary(
        "TWINFILER_CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    )
}

fn chromedriver_path() -> Option<PathBuf> {
    find_binary("TWINFILER_CHROMEDRIVER", &["/usr/bin/chromedriver"])
}

/// True when both Chromium and chromedriver are installed.
pub fn available() -> bool {
    chromium_path().is_some() && chromedriver_path().is_some()
}

/// A headless Chromium session. Close it with [`Browser::close`]; dropping it kills the
/// processes too.
pub struct Browser {
    client: Option<Client>,
    /// chromedriver's URL (`http://127.0.0.1:PORT`).
    driver_url: String,
    driver: Child,
    /// Chromium's fresh profile, removed with the browser.
    profile: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver on a free loopback port and open a Chromium session with
    /// [`CHROMIUM_FLAGS`] and a fresh profile directory.
    pub async fn start() -> Result<Browser, BrowserError> {
        let chromium =
            chromium_path().ok_or_else(|| BrowserError::Setup("chromium not installed".into()))?;
        let chromedriver = chromedriver_path()
            .ok_or_else(|| BrowserError::Setup("chromedriver not installed".into()))?;
        let profile = tempfile::Builder::new()
            .prefix("twinfiler-chromium-")
            .tempdir()
            .map_err(|e| BrowserError::Setup(format!("profile dir: {e}")))?;
        // Ask the kernel for a free port, then hand it to chromedriver (a tiny race with other
        // binders on this machine; a clash shows up as a start failure below).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| BrowserError::Setup(format!("free port: {e}")))?
            .port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log"))
            .map_err(|e| BrowserError::Setup(format!("driver log: {e}")))?;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group, so that killing the group also ends Chromium.
            .process_group(0)
            .spawn()
            .map_err(|e| BrowserError::Setup(format!("spawn {}: {e}", chromedriver.display())))?;
        let url = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            client: None,
            driver_url: url.clone(),
            driver,
            profile,
        };
        browser.wait_driver(&url).await?;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            browser.profile.path().join("profile").display()
        ));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": args }),
        );
        // Keep the page's console (script errors, CSP violations) for `severe_log`.
        caps.insert(
            "goog:loggingPrefs".into(),
            serde_json::json!({ "browser": "ALL" }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await?;
        browser.client = Some(client);
        Ok(browser)
    }

    async fn wait_driver(&mut self, url: &str) -> Result<(), BrowserError> {
        let deadline = Instant::now() + Duration::from_millis(DRIVER_START_MS_MAX);
        let http = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                return Err(BrowserError::Setup(format!(
                    "chromedriver exited with {status}: {}",
                    self.driver_log()
                )));
            }
            let ready = http
                .get(format!("{url}/status"))
                .timeout(Duration::from_millis(1000))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BrowserError::Setup(format!(
                    "chromedriver did not answer within {DRIVER_START_MS_MAX} ms"
                )));
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    /// The page console's SEVERE entries (uncaught script errors, failed loads, CSP
    /// violations) since the previous call; chromedriver hands each entry out once.
    pub async fn severe_log(&self) -> Result<Vec<String>, BrowserError> {
        let session = self
            .client()
            .session_id()
            .await?
            .ok_or_else(|| BrowserError::Setup("no WebDriver session".into()))?;
        let response = reqwest::Client::new()
            .post(format!("{}/session/{session}/se/log", self.driver_url))
            .json(&serde_json::json!({ "type": "browser" }))
            .timeout(Duration::from_millis(DRIVER_START_MS_MAX))
            .send()
            .await
            .map_err(|e| BrowserError::Setup(format!("browser log: {e}")))?;
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| BrowserError::Setup(format!("browser log: {e}")))?;
        let entries = body["value"].as_array().cloned().unwrap_or_default();
        Ok(entries
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect())
    }

    /// chromedriver's log so far (for failure messages).
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// The WebDriver client.
    pub fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a started Browser always has a session")
    }

    /// End the session and the processes.
    pub async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
        self.kill();
    }

    fn kill(&mut self) {
        let pgid = self.driver.id() as libc::pid_t;
        assert!(pgid > 0, "a spawned child has a positive pid");
        // SAFETY: kill(2) with a negative pid signals the process group we created for
        // chromedriver (process_group(0) made its pid the group id); no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The fantoccini client's own drop would try to end the session over HTTP; killing the
        // group makes that moot and also covers panics mid-test.
        self.client.take();
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Page helpers

fn is_stale(e: &CmdError) -> bool {
    matches!(
        e,
        CmdError::Standard(w) if matches!(w.error, ErrorStatus::StaleElementReference | ErrorStatus::NoSuchElement)
    )
}

/// Poll `probe` until it returns `Some`, at most `timeout`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T, BrowserError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, BrowserError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(BrowserError::Command(e)) if is_stale(&e) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(BrowserError::Expectation(format!(
                "timed out after {} ms waiting for {what}",
                timeout.as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// The element matching `css`, waiting up to `timeout` for it to appear.
pub async fn find(c: &Client, css: &str, timeout: Duration) -> Result<Element, BrowserError> {
    wait_for(css, timeout, || async move {
        Ok(c.find_all(Locator::Css(css)).await?.into_iter().next())
    })
    .await
}

/// Click the element matching `css`, retrying when the page replaced it in between.
pub async fn click(c: &Client, css: &str, timeout: Duration) -> Result<(), BrowserError> {
    for _ in 0..STALE_RETRIES_MAX {
        let e = find(c, css, timeout).await?;
        match e.click().await {
            Ok(()) => return Ok(()),
            Err(err) if is_stale(&err) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(BrowserError::Expectation(format!(
        "{css} kept being replaced while clicking it"
    )))
}

/// The `data-state` of node `name`'s badge on the overview.
pub async fn node_state(c: &Client, name: &str) -> Result<String, BrowserError> {
    let css = format!("section.node[data-node=\"{name}\"] .badge");
    let badge = c.find(Locator::Css(&css)).await?;
    Ok(badge.attr("data-state").await?.unwrap_or_default())
}

/// Wait until the overview shows `expected` as node `name`'s state (the page refreshes
/// itself every few seconds).
pub async fn wait_node_state(
    c: &Client,
    name: &str,
    expected: &str,
    timeout: Duration,
) -> Result<(), BrowserError> {
    let what = format!("node {name} in state {expected}");
    wait_for(&what, timeout, || async move {
        Ok((node_state(c, name).await? == expected).then_some(()))
    })
    .await
}

/// Log in at `base`/login.
pub async fn login(c: &Client, base: &str, user: &str, password: &str) -> Result<(), BrowserError> {
    c.goto(&format!("{base}/login")).await?;
    let t = Duration::from_secs(10);
    find(c, "form.login input[name=user]", t)
        .await?
        .send_keys(user)
        .await?;
    find(c, "form.login input[name=password]", t)
        .await?
        .send_keys(password)
        .await?;
    click(c, "form.login button[type=submit]", t).await?;
    find(c, "#overview", t)
        .await
        .map_err(|_| BrowserError::Expectation("login did not lead to the overview".into()))?;
    Ok(())
}

/// How to confirm a takeover in the dialog.
#[derive(Clone, Copy, Debug)]
pub enum DialogMode {
    /// Graceful with this countdown in seconds.
    Graceful(u32),
    /// Immediate.
    Immediate,
    /// Giveback (the dialog has no mode).
    Giveback,
}

/// On the overview: click node `target`'s takeover (or giveback) button, wait for the
/// in-page dialog with its check result, choose the mode, tick the confirmation and submit.
/// Returns the check lines the dialog showed; the browser is then on the operation's page.
pub async fn confirm_in_dialog(
    c: &Client,
    target: &str,
    mode: DialogMode,
    timeout: Duration,
) -> Result<Vec<String>, BrowserError> {
    let kind = match mode {
        DialogMode::Giveback => "giveback",
        _ => "takeover",
    };
    let button = format!("a[data-check=\"{kind}\"][data-target=\"{target}\"]");
    click(c, &button, timeout).await?;
    // The script ran the check through the API and shows it in a modal dialog.
    find(c, "dialog[open] ul.checks li", timeout).await?;
    let mut checks = Vec::new();
    for li in c
        .find_all(Locator::Css("dialog[open] ul.checks li"))
        .await?
    {
        checks.push(li.text().await?);
    }
    match mode {
        DialogMode::Graceful(countdown_s) => {
            click(c, "dialog[open] input[name=mode][value=graceful]", timeout).await?;
            let field = find(c, "dialog[open] input[name=countdown_s]", timeout).await?;
            field.clear().await?;
            field.send_keys(&countdown_s.to_string()).await?;
        }
        DialogMode::Immediate => {
            click(c, "dialog[open] input[name=mode][value=immediate]", timeout).await?;
        }
        DialogMode::Giveback => {}
    }
    click(c, "dialog[open] input[name=confirm]", timeout).await?;
    click(c, "dialog[open] button[type=submit]", timeout).await?;
    wait_for("the operation page", timeout, || async move {
        Ok(c.current_url()
            .await?
            .path()
            .starts_with("/operations/")
            .then_some(()))
    })
    .await?;
    Ok(checks)
}

/// What the progress page showed.
#[derive(Clone, Debug, Default)]
pub struct ProgressSeen {
    /// Steps done when the page was reloaded mid-way (`None`: it finished before a reload).
    pub done_at_reload: Option<usize>,
    /// Steps done right after the reload (rendered by the server: the page resumed).
    pub done_after_reload: Option<usize>,
    /// True when the page advanced over SSE after the reload (done count grew without
    /// another reload).
    pub live_after_reload: bool,
    /// The final step lines ("✔ serving — ok").
    pub steps: Vec<String>,
    /// The outcome line ("Succeeded.").
    pub outcome: String,
}

async fn done_count(c: &Client) -> Result<usize, BrowserError> {
    Ok(c.find_all(Locator::Css("#progress li.done")).await?.len())
}

async fn finished(c: &Client) -> Result<bool, BrowserError> {
    let b = c.find(Locator::Css("#progress")).await?;
    Ok(b.attr("data-finished").await?.as_deref() == Some("1"))
}

/// On an operation's page: wait for the first finished step, reload the page (it must come
/// back with the steps so far and keep following), then wait for the outcome.
pub async fn watch_progress(c: &Client, timeout: Duration) -> Result<ProgressSeen, BrowserError> {
    let mut seen = ProgressSeen::default();
    let first_done = wait_for("a finished step or the outcome", timeout, || async move {
        let done = done_count(c).await?;
        let fin = finished(c).await?;
        Ok((done > 0 || fin).then_some((done, fin)))
    })
    .await?;
    if !first_done.1 {
        c.refresh().await?;
        let after = done_count(c).await?;
        seen.done_at_reload = Some(first_done.0);
        seen.done_after_reload = Some(after);
        if after < first_done.0 {
            return Err(BrowserError::Expectation(format!(
                "after a reload the page shows {after} done steps, before it showed {}",
                first_done.0
            )));
        }
        let fin_after_reload = finished(c).await?;
        // Advanced without another reload: the script follows the stream again.
        let live = wait_for("progress after the reload", timeout, || async move {
            let d = done_count(c).await?;
            let fin = finished(c).await?;
            Ok((d > after || fin).then_some(d > after))
        })
        .await?;
        seen.live_after_reload = live && !fin_after_reload;
    }
    wait_for("the operation's outcome", timeout, || async move {
        Ok(finished(c).await?.then_some(()))
    })
    .await?;
    for li in c.find_all(Locator::Css("#progress li")).await? {
        seen.steps.push(li.text().await?);
    }
    seen.outcome = c
        .find(Locator::Css("#progress .outcome"))
        .await?
        .text()
        .await?;
    Ok(seen)
}

/// Save a PNG screenshot of the current page to `path` (a test artifact).
pub async fn screenshot(c: &Client, path: &Path) -> Result<(), BrowserError> {
    let png = c.screenshot().await?;
    std::fs::write(path, png)
        .map_err(|e| BrowserError::Expectation(format!("write {}: {e}", path.display())))
}

/// Everything the walk-through needs to know about the console under test.
#[derive(Clone, Debug)]
pub struct Walkthrough {
    /// Console base URL (`http://127.0.0.1:PORT`).
    pub base: String,
    /// Admin user and password.
    pub user: String,
    /// Admin password.
    pub password: String,
    /// The node to take over and give back to.
    pub target: String,
    /// Its partner (which serves both identities in between).
    pub partner: String,
    /// Graceful countdown chosen in the dialog, in seconds.
    pub countdown_s: u32,
    /// Bound on each operation and on each page change, in milliseconds.
    pub step_timeout_ms: u64,
    /// Where to save screenshots (`None`: no screenshots).
    pub artifacts: Option<PathBuf>,
}

/// What the walk-through saw.
#[derive(Clone, Debug)]
pub struct WalkthroughReport {
    /// Check lines of the takeover dialog.
    pub takeover_checks: Vec<String>,
    /// The takeover's progress page.
    pub takeover: ProgressSeen,
    /// Exports the partner's card listed while it served both identities.
    pub partner_exports_in_takeover: Vec<String>,
    /// Check lines of the giveback dialog.
    pub giveback_checks: Vec<String>,
    /// The giveback's progress page.
    pub giveback: ProgressSeen,
    /// SEVERE entries of the page console seen along the way (should be none).
    pub console_errors: Vec<String>,
}

async fn export_paths(c: &Client, node: &str) -> Result<Vec<String>, BrowserError> {
    let css = format!("section.node[data-node=\"{node}\"] ul.exports code");
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(&css)).await? {
        out.push(e.text().await?);
    }
    Ok(out)
}

/// The operator's whole path: log in, see both nodes, take `target` over gracefully through
/// the dialog, watch the progress (reloading mid-way) until success, see the partner serve
/// both, give back the same way, and see both nodes normal again.
pub async fn takeover_and_giveback(
    b: &Browser,
    w: &Walkthrough,
) -> Result<WalkthroughReport, BrowserError> {
    let c = b.client();
    let t = Duration::from_millis(w.step_timeout_ms);
    login(c, &w.base, &w.user, &w.password).await?;
    for node in [&w.target, &w.partner] {
        find(c, &format!("section.node[data-node=\"{node}\"]"), t).await?;
        wait_node_state(c, node, "normal", t).await?;
    }
    let shot = |name: &str| w.artifacts.as_ref().map(|d| d.join(name));
    if let Some(p) = shot("console-overview.png") {
        screenshot(c, &p).await?;
    }

    let mut console_errors = b.severe_log().await?;
    let takeover_checks =
        confirm_in_dialog(c, &w.target, DialogMode::Graceful(w.countdown_s), t).await?;
    console_errors.extend(b.severe_log().await?);
    let takeover = watch_progress(c, t).await?;
    console_errors.extend(b.severe_log().await?);
    if let Some(p) = shot("console-takeover-done.png") {
        screenshot(c, &p).await?;
    }
    if !takeover.outcome.contains("Succeeded") {
        return Err(BrowserError::Expectation(format!(
            "takeover ended with {:?}; steps {:?}",
            takeover.outcome, takeover.steps
        )));
    }

    c.goto(&format!("{}/", w.base)).await?;
    wait_node_state(c, &w.target, "waiting-for-giveback", t).await?;
    wait_node_state(c, &w.partner, "in-takeover", t).await?;
    let partner_exports_in_takeover = export_paths(c, &w.partner).await?;
    if let Some(p) = shot("console-in-takeover.png") {
        screenshot(c, &p).await?;
    }

    console_errors.extend(b.severe_log().await?);
    let giveback_checks = confirm_in_dialog(c, &w.target, DialogMode::Giveback, t).await?;
    console_errors.extend(b.severe_log().await?);
    let giveback = watch_progress(c, t).await?;
    console_errors.extend(b.severe_log().await?);
    if !giveback.outcome.contains("Succeeded") {
        return Err(BrowserError::Expectation(format!(
            "giveback ended with {:?}; steps {:?}",
            giveback.outcome, giveback.steps
        )));
    }
    c.goto(&format!("{}/", w.base)).await?;
    for node in [&w.target, &w.partner] {
        wait_node_state(c, node, "normal", t).await?;
    }
    if let Some(p) = shot("console-after-giveback.png") {
        screenshot(c, &p).await?;
    }
    console_errors.extend(b.severe_log().await?);
    Ok(WalkthroughReport {
        takeover_checks,
        takeover,
        partner_exports_in_takeover,
        giveback_checks,
        giveback,
        console_errors,
    })
}
