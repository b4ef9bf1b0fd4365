//! `twinfiler status [--url URL] [--token TOKEN]`: asks a node's console API for the pair's
//! status and prints a readable summary. `TWINFILER_URL` and `TWINFILER_TOKEN` stand in for
//! the flags (`. DIR/env` after `twinfiler demo`).

use anyhow::Context;
use web_ui::{Health, NodeStatus, PairStatus};

use super::api_client::{runtime, ApiArgs};

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the raw JSON instead of the summary.
    #[arg(long)]
    json: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let body = runtime()?.block_on(client.status_text())?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let status: PairStatus = serde_json::from_str(&body).with_context(|| {
        format!(
            "{}/api/v1/status answered something that is not a status",
            client.base_url()
        )
    })?;
    print!("{}", render(&status));
    Ok(())
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
    if !n.clients.is_empty() {
        let clients: Vec<String> = n
            .clients
            .iter()
            .map(|c| format!("{} ({})", c.address, c.protocol))
            .collect();
        s.push_str(&format!(
            "  clients ({}): {}\n",
            clients.len(),
            clients.join(", ")
        ));
    }
    if !n.takeover_possible {
        for b in &n.takeover_blockers {
            s.push_str(&format!("  takeover not possible: {b}\n"));
        }
    }
    s
}
