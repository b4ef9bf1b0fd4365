//! The operator API of a node's console (web-ui/docs/api.md), as the lab needs it, over the
//! console's own client ([`web_ui::client::ApiClient`]): status, takeover check, takeover,
//! giveback and waiting for an operation's outcome. Statuses are read as JSON values, so the
//! lab keeps working while the API grows fields.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use web_ui::client::{ApiClient, ClientError};
use web_ui::{OperationId, Outcome};

use super::LabError;

/// How a takeover is asked.
pub use web_ui::TakeoverMode as Mode;

/// Which check [`Console::wait_possible`] asks.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// `POST /api/v1/takeover/check`.
    Takeover,
    /// `POST /api/v1/giveback/check`.
    Giveback,
}

/// How often an operation or a state is polled.
const POLL_MS: u64 = 50;

/// What a request to the console at `url` was for, and what went wrong.
fn console_error(url: &str, what: &str) -> impl FnOnce(ClientError) -> LabError {
    let context = format!("{what} at {url}");
    move |e| LabError::Console(format!("{context}: {e}"))
}

/// A console client.
#[derive(Clone)]
pub struct Console {
    api: ApiClient,
}

impl Console {
    /// A client of the console at `url` with an API token.
    pub fn new(url: &str, token: &str) -> Result<Console, LabError> {
        Ok(Console {
            api: ApiClient::new(url, token).map_err(console_error(url, "client"))?,
        })
    }

    /// Base URL, e.g. `http://127.0.0.21:8080`.
    pub fn url(&self) -> &str {
        self.api.base_url()
    }

    /// `GET /api/v1/status`.
    pub async fn status(&self) -> Result<Value, LabError> {
        let text = self
            .api
            .status_text()
            .await
            .map_err(console_error(self.url(), "status"))?;
        serde_json::from_str(&text)
            .map_err(|e| LabError::Console(format!("status at {}: {e}: {text}", self.url())))
    }

    /// The `state` label of node `name` in this console's status.
    pub async fn node_state(&self, name: &str) -> Result<String, LabError> {
        let s = self.status().await?;
        node_field(&s, name, "state")
            .and_then(|v| v.as_str().map(str::to_owned))
            .ok_or_else(|| LabError::Console(format!("no state of node {name} in {s}")))
    }

    /// Asks `check` of `target` (changes nothing): (possible, the whole answer).
    pub async fn check(&self, check: Check, target: &str) -> Result<(bool, Value), LabError> {
        let what = format!("{check:?} check of {target}");
        let answer = match check {
            Check::Takeover => self.api.check_takeover(target).await,
            Check::Giveback => self.api.check_giveback(target).await,
        }
        .map_err(console_error(self.url(), &what))?;
        let value =
            serde_json::to_value(&answer).map_err(|e| LabError::Console(format!("{what}: {e}")))?;
        Ok((answer.possible, value))
    }

    /// `POST /api/v1/takeover`; returns the operation id, or the refusal.
    pub async fn takeover(&self, target: &str, mode: Mode) -> Result<u64, LabError> {
        let accepted = self
            .api
            .start_takeover(target, mode)
            .await
            .map_err(console_error(
                self.url(),
                &format!("takeover of {target} ({mode:?})"),
            ))?;
        Ok(accepted.operation.0)
    }

    /// `POST /api/v1/giveback`; `target` gets its identity back.
    pub async fn giveback(&self, target: &str) -> Result<u64, LabError> {
        let accepted = self
            .api
            .start_giveback(target)
            .await
            .map_err(console_error(self.url(), &format!("giveback to {target}")))?;
        Ok(accepted.operation.0)
    }

    /// Polls `GET /api/v1/operations/{id}` until its outcome (bounded): Ok if it succeeded,
    /// the reason otherwise. Polled rather than followed as a stream: the console asked may
    /// be the one going down, and it is briefly unreachable.
    pub async fn wait_operation(&self, id: u64, wait_ms: u64) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            match self.api.operation(OperationId(id)).await {
                Ok(p) => {
                    let progress = serde_json::to_value(&p).unwrap_or(Value::Null);
                    match &p.outcome {
                        Some(Outcome::Succeeded) => return Ok(()),
                        Some(Outcome::Failed { reason }) => {
                            return Err(LabError::Console(format!(
                                "operation {id} failed: {reason}; progress: {progress}"
                            )))
                        }
                        None => last = progress,
                    }
                }
                Err(e) => last = json!({ "error": e.to_string() }),
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        Err(LabError::Console(format!(
            "operation {id} did not finish within {wait_ms} ms; last: {last}"
        )))
    }

    /// Asks `check` of `target` until it says possible (bounded); the last answer is in
    /// the error.
    pub async fn wait_possible(
        &self,
        check: Check,
        target: &str,
        wait_ms: u64,
    ) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let (possible, answer) = self.check(check, target).await?;
            if possible {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Console(format!(
                    "{check:?} of {target} not possible within {wait_ms} ms: {answer}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
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
