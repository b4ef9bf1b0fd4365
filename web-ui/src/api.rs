//! JSON API under `/api/v1`, the operation progress stream (SSE) and `/metrics`.
//! See `docs/api.md` for the contract.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::watch;

use crate::backend::{
    CheckResult, Event, OperationId, PairStatus, Progress, TakeoverMode, COUNTDOWN_S_MAX,
    COUNTDOWN_S_MIN,
};
use crate::server::{unauthorized, ApiError, ApiReader, ApiWriter, Shared};

/// Most events returned by one `GET /api/v1/events`.
pub(crate) const EVENTS_LIMIT_MAX: usize = 1000;
/// Events returned when the caller gives no limit.
const EVENTS_LIMIT_DEFAULT: usize = 200;
/// A progress stream is closed after this long even if the operation never ends, in seconds
/// (the browser reconnects and gets the current state again).
const PROGRESS_STREAM_S_MAX: u64 = 3600;
/// SSE keep-alive comment interval, in seconds (keeps proxies from closing an idle stream).
const SSE_KEEPALIVE_S: u64 = 15;

/// `GET /api/v1/status`
pub(crate) async fn status(
    State(state): State<Shared>,
    _who: ApiReader,
) -> Result<Json<PairStatus>, ApiError> {
    Ok(Json(state.backend.status().await?))
}

/// Query of `GET /api/v1/events`.
#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/v1/events?since=SEQ&limit=N`
pub(crate) async fn events(
    State(state): State<Shared>,
    _who: ApiReader,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let limit = q
        .limit
        .unwrap_or(EVENTS_LIMIT_DEFAULT)
        .min(EVENTS_LIMIT_MAX);
    let events = state.backend.events(q.since.unwrap_or(0), limit).await?;
    Ok(Json(events))
}

/// Body of the check and giveback calls.
#[derive(Deserialize)]
pub(crate) struct TargetBody {
    target: String,
}

/// Body of `POST /api/v1/takeover`.
#[derive(Deserialize)]
pub(crate) struct TakeoverBody {
    target: String,
    mode: TakeoverMode,
}

/// Reject countdowns outside the allowed range (the backend may clamp further).
pub(crate) fn validate_mode(mode: TakeoverMode) -> Result<TakeoverMode, String> {
    match mode {
        TakeoverMode::Graceful { countdown_s }
            if !(COUNTDOWN_S_MIN..=COUNTDOWN_S_MAX).contains(&countdown_s) =>
        {
            Err(format!(
                "countdown_s must be between {COUNTDOWN_S_MIN} and {COUNTDOWN_S_MAX} seconds"
            ))
        }
        m => Ok(m),
    }
}

/// `POST /api/v1/takeover/check` — check only, changes nothing, but is a POST because it
/// talks to the partner; it needs write rights like the takeover itself.
pub(crate) async fn takeover_check(
    State(state): State<Shared>,
    _who: ApiWriter,
    Json(body): Json<TargetBody>,
) -> Result<Json<CheckResult>, ApiError> {
    Ok(Json(state.backend.check_takeover(&body.target).await?))
}

/// `POST /api/v1/giveback/check`
pub(crate) async fn giveback_check(
    State(state): State<Shared>,
    _who: ApiWriter,
    Json(body): Json<TargetBody>,
) -> Result<Json<CheckResult>, ApiError> {
    Ok(Json(state.backend.check_giveback(&body.target).await?))
}

fn accepted(id: OperationId) -> Response {
    let body = serde_json::json!({
        "operation": id,
        "status_url": format!("/api/v1/operations/{id}"),
        "events_url": format!("/api/v1/operations/{id}/events"),
        "page_url": format!("/operations/{id}"),
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `POST /api/v1/takeover`
pub(crate) async fn takeover(
    State(state): State<Shared>,
    ApiWriter(who): ApiWriter,
    Json(body): Json<TakeoverBody>,
) -> Result<Response, ApiError> {
    let mode = validate_mode(body.mode).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let actor = who.actor();
    tracing::info!(target_node = %body.target, ?mode, %actor, "takeover requested via API");
    let id = state
        .backend
        .start_takeover(&body.target, mode, &actor)
        .await?;
    Ok(accepted(id))
}

/// `POST /api/v1/giveback`
pub(crate) async fn giveback(
    State(state): State<Shared>,
    ApiWriter(who): ApiWriter,
    Json(body): Json<TargetBody>,
) -> Result<Response, ApiError> {
    let actor = who.actor();
    tracing::info!(target_node = %body.target, %actor, "giveback requested via API");
    let id = state.backend.start_giveback(&body.target, &actor).await?;
    Ok(accepted(id))
}

fn watch_or_404(state: &Shared, id: u64) -> Result<watch::Receiver<Progress>, ApiError> {
    state
        .backend
        .watch_operation(OperationId(id))
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no operation {id}")))
}

/// `GET /api/v1/operations/{id}`
pub(crate) async fn operation(
    State(state): State<Shared>,
    _who: ApiReader,
    Path(id): Path<u64>,
) -> Result<Json<Progress>, ApiError> {
    let rx = watch_or_404(&state, id)?;
    let progress = rx.borrow().clone();
    Ok(Json(progress))
}

/// `GET /api/v1/operations/{id}/events` — SSE: a `progress` event with the full [`Progress`]
/// now and on every change, then one `end` event with the outcome, then the stream closes.
pub(crate) async fn operation_events(
    State(state): State<Shared>,
    _who: ApiReader,
    Path(id): Path<u64>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let rx = watch_or_404(&state, id)?;
    Ok(Sse::new(progress_stream(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(SSE_KEEPALIVE_S))))
}

/// Where the progress stream is.
enum StreamPhase {
    /// Send the current value (first call) or wait for the next change.
    Watching { first: bool },
    /// The finished progress was sent; send `end` next.
    Ending,
    /// Closed.
    Done,
}

fn progress_stream(
    rx: watch::Receiver<Progress>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let deadline = Instant::now() + Duration::from_secs(PROGRESS_STREAM_S_MAX);
    let init = (rx, StreamPhase::Watching { first: true });
    futures::stream::unfold(init, move |(mut rx, phase)| async move {
        match phase {
            StreamPhase::Done => None,
            StreamPhase::Ending => {
                let outcome = rx.borrow().outcome.clone();
                let event = SseEvent::default()
                    .event("end")
                    .json_data(&outcome)
                    .unwrap_or_else(|_| SseEvent::default().event("end"));
                Some((Ok(event), (rx, StreamPhase::Done)))
            }
            StreamPhase::Watching { first } => {
                if !first {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, rx.changed()).await {
                        Ok(Ok(())) => {}
                        // Backend dropped the operation, or we hit the bound: close; the
                        // client can reconnect and read the current state.
                        Ok(Err(_)) | Err(_) => return None,
                    }
                }
                let progress = rx.borrow_and_update().clone();
                let next = if progress.is_finished() {
                    StreamPhase::Ending
                } else {
                    StreamPhase::Watching { first: false }
                };
                let event = SseEvent::default()
                    .event("progress")
                    .json_data(&progress)
                    .unwrap_or_else(|_| SseEvent::default().event("progress"));
                Some((Ok(event), (rx, next)))
            }
        }
    })
}

/// Content type of the OpenMetrics exposition.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text exposition.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` — OpenMetrics when the scraper asks for it (Prometheus does), else the
/// classic Prometheus text format. Anonymous unless configured otherwise.
pub(crate) async fn metrics(
    State(state): State<Shared>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if state.auth.config().metrics_require_auth
        && state.auth.identify(&headers, Instant::now()).is_none()
    {
        return Err(unauthorized());
    }
    let mut out = String::new();
    state.backend.render_metrics(&mut out).map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed".into(),
        )
    })?;
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if wants_openmetrics {
        (OPENMETRICS_CONTENT_TYPE, out)
    } else {
        (
            PROMETHEUS_CONTENT_TYPE,
            crate::metrics::openmetrics_to_prometheus_text(&out),
        )
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}
