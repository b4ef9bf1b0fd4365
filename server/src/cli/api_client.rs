//! What every console-API subcommand shares: the `--url`/`--token` flags (or `TWINFILER_URL` /
//! `TWINFILER_TOKEN`, as `. DIR/env` after `twinfiler demo` sets them), the client built from
//! them and a small runtime to run it on. The HTTP calls themselves are
//! [`web_ui::client::ApiClient`].

use anyhow::{bail, Context};
use web_ui::client::ApiClient;

/// Console URL when neither `--url` nor `TWINFILER_URL` is given.
const URL_DEFAULT: &str = "http://127.0.0.1:8080";

/// Where the console is and how to authenticate (flatten into a subcommand's arguments).
#[derive(clap::Args, Clone, Debug)]
pub struct ApiArgs {
    /// The node's console URL (default: $TWINFILER_URL, else http://127.0.0.1:8080).
    #[arg(long)]
    url: Option<String>,
    /// API token (default: $TWINFILER_TOKEN).
    #[arg(long)]
    token: Option<String>,
}

impl ApiArgs {
    /// The client these flags (or the environment) describe. Fails without a token.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let url = self
            .url
            .clone()
            .or_else(|| std::env::var("TWINFILER_URL").ok())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| URL_DEFAULT.to_string());
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("TWINFILER_TOKEN").ok());
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            bail!("no API token: pass --token or set TWINFILER_TOKEN (`. DIR/env` after `twinfiler demo`)");
        };
        Ok(ApiClient::new(&url, &token)?)
    }
}

/// A single-threaded runtime for one CLI command (the calls are sequential).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}
