//! The router, shared state, and the extractors that gate every route on authentication.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::{Auth, Identity, CSRF_HEADER};
use crate::backend::{BackendError, ConsoleBackend};
use crate::config::ConsoleConfig;
use crate::{api, pages};

/// Everything a handler needs.
pub(crate) struct AppState {
    pub backend: Arc<dyn ConsoleBackend>,
    pub auth: Auth,
}

pub(crate) type Shared = Arc<AppState>;

/// Build the console: HTML pages, `/api/v1`, `/metrics` and the static assets.
///
/// Serve it with [`serve`] (or `into_make_service_with_connect_info::<SocketAddr>()`) so the
/// login rate limiter sees client addresses; without connect info all clients share one bucket.
pub fn router(backend: Arc<dyn ConsoleBackend>, config: ConsoleConfig) -> Router {
    let state: Shared = Arc::new(AppState {
        backend,
        auth: Auth::new(config),
    });
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/events", get(pages::events))
        .route(
            "/takeover/{node}",
            get(pages::takeover_dialog).post(pages::takeover_start),
        )
        .route(
            "/giveback/{node}",
            get(pages::giveback_dialog).post(pages::giveback_start),
        )
        .route("/operations/{id}", get(pages::operation))
        .route("/static/console.js", get(pages::script))
        .route("/static/console.css", get(pages::stylesheet))
        .route("/static/favicon.svg", get(pages::favicon))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/events", get(api::events))
        .route("/api/v1/takeover/check", post(api::takeover_check))
        .route("/api/v1/takeover", post(api::takeover))
        .route("/api/v1/giveback/check", post(api::giveback_check))
        .route("/api/v1/giveback", post(api::giveback))
        .route("/api/v1/operations/{id}", get(api::operation))
        .route("/api/v1/operations/{id}/events", get(api::operation_events))
        .route("/metrics", get(api::metrics))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Serve `app` on `listener` with client addresses available to the handlers.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Headers on every response: no framing (the takeover button must not be clickjacked), only
/// our own scripts, no caching of pages that show state.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The client's address, when the server was started with connect info.
pub(crate) struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// An API error: a status and a JSON `{"error": "..."}` body.
#[derive(Debug)]
pub(crate) struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.1 }));
        let mut response = (self.0, body).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"twinfiler\""),
            );
        }
        response
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let status = match e {
            BackendError::UnknownNode(_) => StatusCode::NOT_FOUND,
            BackendError::Refused(_) => StatusCode::CONFLICT,
            BackendError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

pub(crate) fn unauthorized() -> ApiError {
    ApiError(
        StatusCode::UNAUTHORIZED,
        "authentication required: log in or send Authorization: Bearer <token>".to_string(),
    )
}

/// Proof that an API caller authenticated (session or token); enough to read.
pub(crate) struct ApiReader;

impl FromRequestParts<Shared> for ApiReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        state
            .auth
            .identify(&parts.headers, Instant::now())
            .map(|_| ApiReader)
            .ok_or_else(unauthorized)
    }
}

/// An API caller allowed to change state: a token, or a session that sent its CSRF token in
/// the `X-CSRF-Token` header.
pub(crate) struct ApiWriter(pub Identity);

impl FromRequestParts<Shared> for ApiWriter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let identity = state
            .auth
            .identify(&parts.headers, Instant::now())
            .ok_or_else(unauthorized)?;
        let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !identity.csrf_ok(presented) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token".to_string(),
            ));
        }
        Ok(ApiWriter(identity))
    }
}

/// A logged-in browser user; unauthenticated requests are redirected to the login page.
/// HTML POST handlers must still check the form's CSRF field with [`Identity::csrf_ok`].
pub(crate) struct PageUser(pub Identity);

impl FromRequestParts<Shared> for PageUser {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Redirect> {
        state
            .auth
            .identify(&parts.headers, Instant::now())
            .map(PageUser)
            .ok_or_else(|| Redirect::to("/login"))
    }
}
