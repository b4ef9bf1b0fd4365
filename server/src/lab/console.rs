//! The operator API of a node's console (web-ui/docs/api.md), as the lab needs it: status,
//! takeover check, takeover, giveback and waiting for an operation's outcome. Statuses are
//! read as JSON values, so the lab keeps working while the API grows fields.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::LabError;

/// One HTTP request, at most.
const REQUEST_MS_MAX: u64 = 5_000;
/// How often an operation or a state is polled.
const POLL_MS: u64 = 50;

/// How a takeover is asked.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Drain first, bounded by a countdown (seconds, 1..=600).
    Graceful {
        /// Countdown, s.
        countdown_s: u64,
    },
    /// No drain.
    Immediate,
}

/// A console client.
#[derive(Clone)]
pub struct Console {
    /// Base URL, e.g. `http://127.0.0.21:8080`.
    pub url: String,
    token: String,
    http: reqwest::Client,
}

impl Console {
    /// A client of the console at `url` with an API token.
    pub fn new(url: &str, token: &str) -> Result<Console, LabError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_MS_MAX))
            .build()
            .map_err(|e| LabError::Console(format!("http client: {e}")))?;
        Ok(Console {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(u16, Value), LabError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| LabError::Console(format!("{what} at {}: {e}", self.url)))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| LabError::Console(format!("{what}: body: {e}")))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    /// `GET /api/v1/status`.
    pub async fn status(&self) -> Result<Value, LabError> {
        let (code, body) = self
            .send(
                self.http.get(format!("{}/api/v1/status", self.url)),
                "status",
            )
            .await?;
        if code != 200 {
            return Err(LabError::Console(format!("status: HTTP {code}: {body}")));
        }
        Ok(body)
    }

    /// The `state` label of node `name` in this console's status.
    pub async fn node_state(&self, name: &str) -> Result<String, LabError> {
        let s = self.status().await?;
        node_field(&s, name, "state")
            .and_then(|v| v.as_str().map(str::to_owned))
            .ok_or_else(|| LabError::Console(format!("no state of node {name} in {s}")))
    }

    /// `POST /api/v1/takeover/check`: (possible, the whole answer).
    pub async fn check(&self, target: &str) -> Result<(bool, Value), LabError> {
        let (code, body) = self
            .send(
                self.http
                    .post(format!("{}/api/v1/takeover/check", self.url))
                    .json(&json!({"target": target})),
                "takeover check",
            )
            .await?;
        if code != 200 {
            return Err(LabError::Console(format!(
                "takeover check: HTTP {code}: {body}"
            )));
        }
        let possible = body
            .get("possible")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok((possible, body))
    }

    /// `POST /api/v1/takeover`; returns the operation id (202), or the refusal.
    pub async fn takeover(&self, target: &str, mode: Mode) -> Result<u64, LabError> {
        let mode = match mode {
            Mode::Graceful { countdown_s } => {
                json!({"kind": "graceful", "countdown_s": countdown_s})
            }
            Mode::Immediate => json!({"kind": "immediate"}),
        };
        self.start_operation("takeover", json!({"target": target, "mode": mode}))
            .await
    }

    /// `POST /api/v1/giveback`; `target` gets its identity back.
    pub async fn giveback(&self, target: &str) -> Result<u64, LabError> {
        self.start_operation("giveback", json!({"target": target}))
            .await
    }

    async fn start_operation(&self, kind: &str, body: Value) -> Result<u64, LabError> {
        let (code, answer) = self
            .send(
                self.http
                    .post(format!("{}/api/v1/{kind}", self.url))
                    .json(&body),
                kind,
            )
            .await?;
        if code != 202 {
            return Err(LabError::Console(format!(
                "{kind} {body} refused: HTTP {code}: {answer}"
            )));
        }
        answer
            .get("operation")
            .and_then(Value::as_u64)
            .ok_or_else(|| LabError::Console(format!("{kind}: no operation id in {answer}")))
    }

    /// Polls `GET /api/v1/operations/{id}` until its outcome (bounded); Ok(progress) if it
    /// succeeded, the reason otherwise.
    pub async fn wait_operation(&self, id: u64, wait_ms: u64) -> Result<Value, LabError> {
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            match self
                .send(
                    self.http
                        .get(format!("{}/api/v1/operations/{id}", self.url)),
                    "operation",
                )
                .await
            {
                Ok((200, p)) => {
                    match p
                        .get("outcome")
                        .and_then(|o| o.get("result"))
                        .and_then(Value::as_str)
                    {
                        Some("succeeded") => return Ok(p),
                        Some(_) => {
                            return Err(LabError::Console(format!("operation {id} failed: {p}")))
                        }
                        None => last = p,
                    }
                }
                Ok((code, body)) => last = json!({"http": code, "body": body}),
                // The console may be briefly unreachable (its node is the one going down).
                Err(e) => last = json!({"error": e.to_string()}),
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        Err(LabError::Console(format!(
            "operation {id} did not finish within {wait_ms} ms; last: {last}"
        )))
    }

    /// Polls until node `name`'s state is `state` (bounded).
    pub async fn wait_state(&self, name: &str, state: &str, wait_ms: u64) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.node_state(name).await {
                Ok(s) if s == state => return Ok(()),
                Ok(s) => last = s,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        Err(LabError::Console(format!(
            "node {name} not {state} within {wait_ms} ms (last: {last})"
        )))
    }
}

/// Field `key` of node `name` in a `PairStatus` value.
pub fn node_field<'a>(status: &'a Value, name: &str, key: &str) -> Option<&'a Value> {
    status
        .get("nodes")?
        .as_array()?
        .iter()
        .find(|n| n.get("name").and_then(Value::as_str) == Some(name))?
        .get(key)
}
