//! A client of the console's JSON API (`docs/api.md`), for the `twinfiler` CLI and tests.
//!
//! It authenticates with an API token (`Authorization: Bearer`), maps the API's error statuses
//! to [`ClientError`] variants the CLI turns into exit codes, and follows an operation over its
//! server-sent-events stream until the `end` event.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::backend::{CheckResult, OperationId, Outcome, PairStatus, Progress, TakeoverMode};

/// Bound on connecting to the console, in milliseconds.
const CONNECT_MS_MAX: u64 = 5_000;
/// Bound on one ordinary (non-streaming) request, connect included, in milliseconds.
const REQUEST_MS_MAX: u64 = 10_000;
/// The server sends a keep-alive comment every 15 s; a stream silent for this long is dead.
const STREAM_SILENCE_MS_MAX: u64 = 40_000;
/// Pause before reconnecting a progress stream that closed before its `end` event, in ms.
const RECONNECT_PAUSE_MS: u64 = 500;
/// Most consecutive failed reconnects of a progress stream before giving up.
const RECONNECTS_MAX: u32 = 20;
/// Largest SSE event we accept, in bytes (a `Progress` is a few KiB).
const SSE_EVENT_BYTES_MAX: usize = 1 << 20;
/// Largest answer body read (a status of a pair is a few KiB).
const BODY_BYTES_MAX: usize = 4 << 20;

/// What went wrong talking to the console.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No TCP/HTTP answer at all.
    #[error("cannot reach the console at {url}: {source}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// 401: the token was refused.
    #[error("{url}: 401 unauthorized: the token was refused (check TWINFILER_TOKEN / --token)")]
    Unauthorized {
        /// The endpoint.
        url: String,
    },
    /// 400, 403 or 404: the request itself is wrong (bad input, no rights, unknown node).
    #[error("{url}: HTTP {status}: {message}")]
    Rejected {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The API's `error` text.
        message: String,
    },
    /// 409: the node refused (check failed, another operation running, wrong state).
    #[error("refused: {message}")]
    Refused {
        /// The API's `error` text.
        message: String,
    },
    /// Any other non-success status (503, 500, …).
    #[error("{url}: HTTP {status}: {message}")]
    Failed {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The API's `error` text or the body.
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("{url}: unexpected answer: {detail}")]
    Protocol {
        /// The endpoint.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The operation did not end within the caller's bound.
    #[error("operation {id} did not end within {waited_s} s; it may still be running")]
    Timeout {
        /// The operation.
        id: OperationId,
        /// How long we waited.
        waited_s: u64,
    },
}

impl ClientError {
    /// True for errors of the caller's making (bad token, bad input, unknown node): the CLI
    /// exits 2 for these and 1 for the others.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ClientError::Unauthorized { .. } | ClientError::Rejected { .. }
        )
    }
}

/// The body of `response` as text, at most [`BODY_BYTES_MAX`] bytes (a longer one is a
/// protocol error, not an allocation the peer chooses).
async fn read_body(url: &str, mut response: reqwest::Response) -> Result<String, ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        url: url.to_string(),
        source,
    };
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > BODY_BYTES_MAX {
            return Err(ClientError::Protocol {
                url: url.to_string(),
                detail: format!("an answer over {BODY_BYTES_MAX} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The 202 answer to starting an operation.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Accepted {
    /// The operation id.
    pub operation: OperationId,
    /// `GET` for its progress (JSON).
    pub status_url: String,
    /// Its server-sent-events stream.
    pub events_url: String,
    /// Its page in the console.
    pub page_url: String,
}

/// A token-authenticated client of one node's console.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the console at `base_url` (e.g. `http://127.0.0.1:8080`) using `token`.
    pub fn new(base_url: &str, token: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_MS_MAX))
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: base_url.to_string(),
                source,
            })?;
        Ok(ApiClient {
            base: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    /// The console's base URL (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send a request and return the body of a 2xx answer, or the mapped error.
    async fn send(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<String, ClientError> {
        let response = request
            .bearer_auth(&self.token)
            .timeout(Duration::from_millis(REQUEST_MS_MAX))
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.to_string(),
                source,
            })?;
        let status = response.status();
        let body = read_body(url, response).await?;
        if status.is_success() {
            return Ok(body);
        }
        Err(error_for(url, status, &body))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let body = self.send(&url, self.http.get(&url)).await?;
        decode(&url, &body)
    }

    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        json: serde_json::Value,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let body = self.send(&url, self.http.post(&url).json(&json)).await?;
        decode(&url, &body)
    }

    /// `GET /api/v1/status`, as the raw JSON text (for `twinfiler status --json`).
    pub async fn status_text(&self) -> Result<String, ClientError> {
        let url = self.url("/api/v1/status");
        self.send(&url, self.http.get(&url)).await
    }

    /// `GET /api/v1/status`.
    pub async fn status(&self) -> Result<PairStatus, ClientError> {
        self.get_json("/api/v1/status").await
    }

    /// `POST /api/v1/takeover/check`: could `target` be taken over now?
    pub async fn check_takeover(&self, target: &str) -> Result<CheckResult, ClientError> {
        self.post_json(
            "/api/v1/takeover/check",
            serde_json::json!({ "target": target }),
        )
        .await
    }

    /// `POST /api/v1/takeover`: start taking over `target`.
    pub async fn start_takeover(
        &self,
        target: &str,
        mode: TakeoverMode,
    ) -> Result<Accepted, ClientError> {
        self.post_json(
            "/api/v1/takeover",
            serde_json::json!({ "target": target, "mode": mode }),
        )
        .await
    }

    /// `POST /api/v1/giveback/check`: could `target` get its identity back now?
    pub async fn check_giveback(&self, target: &str) -> Result<CheckResult, ClientError> {
        self.post_json(
            "/api/v1/giveback/check",
            serde_json::json!({ "target": target }),
        )
        .await
    }

    /// `POST /api/v1/giveback`: start giving `target` its identity back.
    pub async fn start_giveback(&self, target: &str) -> Result<Accepted, ClientError> {
        self.post_json("/api/v1/giveback", serde_json::json!({ "target": target }))
            .await
    }

    /// `GET /api/v1/operations/{id}`.
    pub async fn operation(&self, id: OperationId) -> Result<Progress, ClientError> {
        self.get_json(&format!("/api/v1/operations/{id}")).await
    }

    /// Follow operation `id` until it ends, calling `on_progress` with every progress the
    /// server publishes (the first one is the state at connect time), and return its outcome.
    ///
    /// Uses the SSE stream; a stream that closes early (server restart, the one-hour bound) is
    /// reconnected, which replays the current state. Gives up after `wait_max`.
    pub async fn follow(
        &self,
        id: OperationId,
        wait_max: Duration,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Outcome, ClientError> {
        let start = Instant::now();
        let deadline = start + wait_max;
        let url = self.url(&format!("/api/v1/operations/{id}/events"));
        let mut failures = 0u32;
        loop {
            let timed_out = || ClientError::Timeout {
                id,
                waited_s: start.elapsed().as_secs(),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            let attempt = tokio::time::timeout(
                left,
                self.follow_once(&url, &mut on_progress, &mut failures),
            )
            .await
            .map_err(|_| timed_out())?;
            match attempt {
                Ok(Some(outcome)) => return Ok(outcome),
                // Closed before `end`: reconnect (the server replays the current progress).
                Ok(None) => {}
                Err(e) if e.is_usage() || matches!(e, ClientError::Protocol { .. }) => {
                    return Err(e)
                }
                Err(e) => {
                    failures += 1;
                    if failures > RECONNECTS_MAX {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, failures, "progress stream failed; reconnecting");
                }
            }
            tokio::time::sleep(Duration::from_millis(RECONNECT_PAUSE_MS)).await;
        }
    }

    /// One connection to the progress stream: `Some(outcome)` on `end`, `None` if the server
    /// closed it first. Resets `failures` once the stream delivers an event.
    async fn follow_once(
        &self,
        url: &str,
        on_progress: &mut impl FnMut(&Progress),
        failures: &mut u32,
    ) -> Result<Option<Outcome>, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            url: url.to_string(),
            source,
        };
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let body = read_body(url, response).await.unwrap_or_default();
            return Err(error_for(url, status, &body));
        }
        let mut stream = response.bytes_stream();
        let mut parser = SseParser::default();
        loop {
            let chunk =
                tokio::time::timeout(Duration::from_millis(STREAM_SILENCE_MS_MAX), stream.next())
                    .await;
            let bytes = match chunk {
                // Silent too long: treat as closed and reconnect.
                Err(_) => return Ok(None),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(unreachable(e)),
                Ok(Some(Ok(b))) => b,
            };
            let events = parser
                .push(&bytes)
                .map_err(|detail| ClientError::Protocol {
                    url: url.to_string(),
                    detail,
                })?;
            for (name, data) in events {
                *failures = 0;
                match name.as_str() {
                    "progress" => {
                        let p: Progress = decode(url, &data)?;
                        let finished = p.outcome.clone();
                        on_progress(&p);
                        // The `end` event follows; the outcome is already known.
                        if let Some(outcome) = finished {
                            return Ok(Some(outcome));
                        }
                    }
                    "end" => {
                        let outcome: Option<Outcome> = decode(url, &data)?;
                        return match outcome {
                            Some(o) => Ok(Some(o)),
                            None => Err(ClientError::Protocol {
                                url: url.to_string(),
                                detail: "end event without an outcome".into(),
                            }),
                        };
                    }
                    // Unknown event types are for newer clients.
                    _ => {}
                }
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(url: &str, body: &str) -> Result<T, ClientError> {
    serde_json::from_str(body).map_err(|e| ClientError::Protocol {
        url: url.to_string(),
        detail: format!("{e}"),
    })
}

/// The API's `{"error": "..."}` text, or the body itself.
fn error_for(url: &str, status: StatusCode, body: &str) -> ClientError {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let message = serde_json::from_str::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| body.trim().to_string());
    let url = url.to_string();
    match status.as_u16() {
        401 => ClientError::Unauthorized { url },
        409 => ClientError::Refused { message },
        s @ (400 | 403 | 404) => ClientError::Rejected {
            url,
            status: s,
            message,
        },
        s => ClientError::Failed {
            url,
            status: s,
            message,
        },
    }
}

/// Splits a `text/event-stream` byte stream into `(event name, data)` pairs.
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    /// Add bytes; return the complete events they finish. Errors on an event larger than
    /// [`SSE_EVENT_BYTES_MAX`] or not UTF-8.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        // Events end with a blank line; normalise CRLF first so one search finds them.
        while let Some(end) = find_blank_line(&self.buffer) {
            let block: Vec<u8> = self.buffer.drain(..end.0 + end.1).collect();
            let text = std::str::from_utf8(&block[..end.0])
                .map_err(|_| "event stream is not UTF-8".to_string())?;
            if let Some(event) = parse_block(text) {
                events.push(event);
            }
        }
        if self.buffer.len() > SSE_EVENT_BYTES_MAX {
            return Err(format!("an event exceeds {SSE_EVENT_BYTES_MAX} bytes"));
        }
        Ok(events)
    }
}

/// Position and length of the first blank-line separator (`\n\n` or `\r\n\r\n`).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// One event block: `event:` names it (default `message`), `data:` lines are joined with
/// newlines, comments (`:`) and other fields are ignored. `None` for a comment-only block.
fn parse_block(text: &str) -> Option<(String, String)> {
    let mut name = None;
    let mut data: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = Some(value.to_string()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    let data = data?;
    Some((name.unwrap_or_else(|| "message".to_string()), data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_joins_split_chunks_and_skips_comments() {
        let mut p = SseParser::default();
        assert!(p.push(b":keep-alive\n\nevent: progr").unwrap().is_empty());
        let events = p.push(b"ess\ndata: {\"a\":1}\n\nevent: end\r\n").unwrap();
        assert_eq!(
            events,
            vec![("progress".to_string(), "{\"a\":1}".to_string())]
        );
        let events = p.push(b"data: null\r\n\r\n").unwrap();
        assert_eq!(events, vec![("end".to_string(), "null".to_string())]);
    }

    #[test]
    fn sse_parser_bounds_event_size() {
        let mut p = SseParser::default();
        let big = vec![b'x'; SSE_EVENT_BYTES_MAX + 1];
        assert!(p.push(&big).is_err());
    }

    #[test]
    fn statuses_map_to_usage_or_failure() {
        let u = "http://x/api";
        assert!(error_for(u, StatusCode::UNAUTHORIZED, "").is_usage());
        assert!(error_for(u, StatusCode::NOT_FOUND, r#"{"error":"unknown node"}"#).is_usage());
        let refused = error_for(u, StatusCode::CONFLICT, r#"{"error":"busy"}"#);
        assert!(!refused.is_usage());
        assert_eq!(refused.to_string(), "refused: busy");
        assert!(!error_for(u, StatusCode::SERVICE_UNAVAILABLE, "down").is_usage());
    }
}
