//! `twinfiler status [--url URL] [--token TOKEN]`: asks a node's console API for the pair's
//! status and prints a readable summary. `TWINFILER_URL` and `TWINFILER_TOKEN` stand in for
//! the flags (`. DIR/env` after `twinfiler demo`).

use std::time::Duration;

use anyhow::{bail, Context};
use web_ui::{Health, NodeStatus, PairStatus};

/// Console URL when neither `--url` nor `TWINFILER_URL` is given.
const URL_DEFAULT: &str = "http://127.0.0.1:8080";
/// The whole request (connect included) must finish within this bound.
const REQUEST_MS_MAX: u64 = 10_000;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The node's console URL (default: $TWINFILER_URL, else http://127.0.0.1:8080).
    #[arg(long)]
    url: Option<String>,
    /// API token (default: $TWINFILER_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Print the raw JSON instead of the summary.
    #[arg(long)]
    json: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = args
        .url
        .or_else(|| std::env::var("TWINFILER_URL").ok())
        .unwrap_or_else(|| URL_DEFAULT.to_string());
    let token = args.token.or_else(|| std::env::var("TWINFILER_TOKEN").ok());
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        bail!("no API token: pass --token or set TWINFILER_TOKEN (`. DIR/env` after `twinfiler demo`)");
    };
    let body = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(fetch(&url, &token))?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let status: PairStatus = serde_json::from_str(&body)
        .with_context(|| format!("{url}/api/v1/status answered something that is not a status"))?;
    print!("{}", render(&status));
    Ok(())
}

/// GET /api/v1/status with the token; the body on 200, a clear error otherwise.
async fn fetch(url: &str, token: &str) -> anyhow::Result<String> {
    let endpoint = format!("{}/api/v1/status", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(REQUEST_MS_MAX))
        .build()
        .context("build the HTTP client")?;
    let response = client
        .get(&endpoint)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the console at {endpoint}: is the node running with a [console] section?"))?;
    let code = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("read the answer of {endpoint}"))?;
    match code.as_u16() {
        200 => Ok(body),
        401 => bail!(
            "{endpoint}: 401 unauthorized: the token was refused (check TWINFILER_TOKEN / --token)"
        ),
        _ => bail!("{endpoint}: HTTP {code}: {body}"),
    }
}

/// The summary printed for the operator.
pub fn render(status: &PairStatus) -> String {
    let mut out = String::new();
    for node in &status.nodes {
        let local = if node.name == status.local {
            " (answering)"
        } else {
            ""
        };
        out.push_str(&render_node(node, local));
    }
    out
}

fn health_word(h: Health) -> &'static str {
    match h {
        Health::Ok => "ok",
        Health::Degraded => "DEGRADED",
        Health::Failed => "FAILED",
        Health::Unknown => "unknown",
    }
}

fn render_node(n: &NodeStatus, local: &str) -> String {
    let mut s = format!("node {}{local}: {}\n", n.name, n.state.label());
    for m in &n.modules {
        s.push_str(&format!(
            "  {:<13} {:<9} {}\n",
            m.name,
            health_word(m.health),
            m.detail
        ));
    }
    let mirror = match (&n.mirror.in_sync, &n.mirror.degraded_reason) {
        (true, _) => "in sync".to_string(),
        (false, Some(r)) => r.clone(),
        (false, None) => "not in sync".to_string(),
    };
    s.push_str(&format!("  mirror: {mirror}\n"));
    for a in &n.aggregates {
        let disks: Vec<String> = a
            .disks
            .iter()
            .map(|d| format!("{}={:?}", d.role, d.state).to_lowercase())
            .collect();
        s.push_str(&format!("  aggregate {}: {}\n", a.name, disks.join(" ")));
    }
    if n.nvram.capacity_bytes > 0 {
        s.push_str(&format!(
            "  nvram: {} KiB used of {} KiB\n",
            n.nvram.used_bytes >> 10,
            n.nvram.capacity_bytes >> 10
        ));
    }
    if let Some(cp) = &n.last_cp {
        s.push_str(&format!(
            "  last CP: generation {}, {} ms, {} bytes\n",
            cp.generation, cp.duration_ms, cp.bytes
        ));
    }
    for e in &n.exports {
        s.push_str(&format!("  export {} on {}\n", e.path, e.address));
    }
    if !n.takeover_possible {
        for b in &n.takeover_blockers {
            s.push_str(&format!("  takeover not possible: {b}\n"));
        }
    }
    s
}
