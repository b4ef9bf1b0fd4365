//! Server-rendered HTML pages. Every page is readable without JavaScript; every form carries
//! the session's CSRF token (the login form a double-submit cookie token).

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::api::validate_mode;
use crate::auth::{cookie, Identity, LoginOutcome};
use crate::backend::{
    CheckResult, Health, NodeState, NodeStatus, OperationId, OperationKind, Outcome, PairStatus,
    Progress, StepState, TakeoverMode, COUNTDOWN_S_MAX, COUNTDOWN_S_MIN,
};
use crate::charts::sparkline;
use crate::server::{ClientIp, PageUser, Shared};

/// Our own script and stylesheet, shipped in the binary.
const SCRIPT_JS: &str = include_str!("../assets/console.js");
const STYLE_CSS: &str = include_str!("../assets/console.css");
/// The tab icon (browsers ask for one on every page; a 404 would litter their console).
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");
/// Cookie carrying the login form's anti-CSRF token (there is no session yet to bind it to).
const LOGIN_CSRF_COOKIE: &str = "twinfiler_login_csrf";
/// Bytes of randomness in the login CSRF token.
const LOGIN_CSRF_BYTES: usize = 16;
/// Most events shown on the events page.
const EVENTS_PAGE_MAX: usize = 500;
/// Default graceful countdown offered in the dialog, in seconds.
const COUNTDOWN_S_DEFAULT: u32 = 60;
/// Seconds between reloads of an unfinished operation page when JavaScript is off.
const NOSCRIPT_REFRESH_S: u32 = 2;

/// `GET /static/console.js`
pub(crate) async fn script() -> Response {
    static_asset("text/javascript; charset=utf-8", SCRIPT_JS)
}

/// `GET /static/console.css`
pub(crate) async fn stylesheet() -> Response {
    static_asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /static/favicon.svg`
pub(crate) async fn favicon() -> Response {
    static_asset("image/svg+xml", FAVICON_SVG)
}

fn static_asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The frame around every page. `csrf` goes into a meta tag for the script's API calls.
fn layout(title: &str, who: Option<&Identity>, head_extra: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(csrf) = who.and_then(|w| w.csrf()) {
                    meta name="csrf-token" content=(csrf);
                }
                title { (title) " — twinfiler" }
                link rel="stylesheet" href="/static/console.css";
                link rel="icon" type="image/svg+xml" href="/static/favicon.svg";
                script src="/static/console.js" defer {}
                (head_extra)
            }
            body {
                header {
                    a.brand href="/" { "twinfiler" }
                    @if let Some(w) = who {
                        nav {
                            a href="/" { "Overview" }
                            a href="/events" { "Events" }
                        }
                        @if let Some(csrf) = w.csrf() {
                            form.logout method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                span { (w.actor()) }
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn page(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

fn error_page(status: StatusCode, who: Option<&Identity>, message: &str) -> Response {
    let body = html! {
        h1 { "Error" }
        p.error { (message) }
        p { a href="/" { "Back to the overview" } }
    };
    page(status, layout("Error", who, html! {}, body))
}

fn csrf_rejected(who: &Identity) -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        Some(who),
        "The form's security token is missing or stale. Reload the page and try again.",
    )
}

// ---------------------------------------------------------------------------------------------
// Login

/// `GET /login`
pub(crate) async fn login_form(State(state): State<Shared>) -> Response {
    let token = crate::config::random_hex(LOGIN_CSRF_BYTES);
    let secure = if state.auth.config().cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let set_cookie = format!(
        "{LOGIN_CSRF_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"
    );
    let markup = login_markup(&token, None);
    ([(header::SET_COOKIE, set_cookie)], markup).into_response()
}

fn login_markup(csrf: &str, error: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Log in" }
        @if let Some(e) = error { p.error { (e) } }
        form.login method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            label { "User " input name="user" autocomplete="username" required; }
            label { "Password " input type="password" name="password" autocomplete="current-password" required; }
            button type="submit" { "Log in" }
        }
    };
    layout("Log in", None, html! {}, body)
}

/// Login form fields.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    user: String,
    password: String,
    csrf: Option<String>,
}

/// `POST /login`
pub(crate) async fn login(
    State(state): State<Shared>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE);
    let csrf_ok = match (expected, form.csrf.as_deref()) {
        (Some(e), Some(p)) => !e.is_empty() && e == p,
        _ => false,
    };
    if !csrf_ok {
        return page(
            StatusCode::FORBIDDEN,
            html! { (login_markup("", Some("The login form expired. Reload the page."))) },
        );
    }
    let csrf = form.csrf.unwrap_or_default();
    match state
        .auth
        .login(ip, &form.user, &form.password, Instant::now())
    {
        LoginOutcome::Ok(id) => (
            [(header::SET_COOKIE, state.auth.session_cookie(&id))],
            Redirect::to("/"),
        )
            .into_response(),
        LoginOutcome::Denied => page(
            StatusCode::UNAUTHORIZED,
            login_markup(&csrf, Some("Wrong user name or password.")),
        ),
        LoginOutcome::RateLimited => page(
            StatusCode::TOO_MANY_REQUESTS,
            login_markup(
                &csrf,
                Some("Too many failed logins. Wait a minute and try again."),
            ),
        ),
    }
}

/// A form with only the CSRF field.
#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /logout`
pub(crate) async fn logout(
    State(state): State<Shared>,
    PageUser(who): PageUser,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !who.csrf_ok(form.csrf.as_deref()) {
        return csrf_rejected(&who);
    }
    if let Identity::Session { id, .. } = &who {
        state.auth.logout(id);
    }
    (
        [(header::SET_COOKIE, state.auth.clear_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Overview

/// `GET /`
pub(crate) async fn overview(State(state): State<Shared>, PageUser(who): PageUser) -> Response {
    let status = match state.backend.status().await {
        Ok(s) => s,
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&who), &e.to_string()),
    };
    let body = overview_markup(&status);
    page(
        StatusCode::OK,
        layout("Overview", Some(&who), html! {}, body),
    )
}

fn overview_markup(status: &PairStatus) -> Markup {
    html! {
        div #overview data-live="1" {
            @if let Some(op) = status.active_operation {
                p.notice { "An operation is in progress: " a href=(format!("/operations/{op}")) { "operation " (op) } }
            }
            div.nodes {
                @for node in &status.nodes {
                    (node_card(node, node.name == status.local))
                }
            }
        }
    }
}

fn health_class(h: Health) -> &'static str {
    match h {
        Health::Ok => "ok",
        Health::Degraded => "warn",
        Health::Failed => "bad",
        Health::Unknown => "unknown",
    }
}

fn state_class(s: NodeState) -> &'static str {
    match s {
        NodeState::Normal | NodeState::InTakeover => "ok",
        NodeState::Down => "bad",
        _ => "warn",
    }
}

fn node_card(n: &NodeStatus, local: bool) -> Markup {
    html! {
        section.node data-node=(n.name) {
            h2 {
                "Node " (n.name)
                @if local { small { " (this node)" } }
                " " span class={"badge " (state_class(n.state))} data-state=(serde_plain(n.state)) { (n.state.label()) }
            }
            div.actions {
                @if n.state == NodeState::Normal {
                    @if n.takeover_possible {
                        a.button href=(format!("/takeover/{}", n.name)) data-check="takeover" data-target=(n.name) { "Take over " (n.name) "…" }
                    } @else {
                        p.blockers { "Takeover of " (n.name) " not possible: "
                            @for (i, b) in n.takeover_blockers.iter().enumerate() {
                                @if i > 0 { "; " } (b)
                            }
                        }
                    }
                }
                @if n.state == NodeState::WaitingForGiveback {
                    a.button href=(format!("/giveback/{}", n.name)) data-check="giveback" data-target=(n.name) { "Give back to " (n.name) "…" }
                }
            }
            div.charts {
                (sparkline("Operations", "op/s", &n.samples, |s| s.ops_per_s))
                (sparkline("Throughput", "B/s", &n.samples, |s| s.bytes_per_s))
            }
            h3 { "Health" }
            ul.modules {
                @for m in &n.modules {
                    li class=(health_class(m.health)) { strong { (m.name) } ": " (serde_plain(m.health)) @if !m.detail.is_empty() { " — " (m.detail) } }
                }
            }
            h3 { "Interconnect" }
            ul {
                @for l in &n.links {
                    li class=(if l.up { "ok" } else { "bad" }) {
                        (l.name) ": " (if l.up { "up" } else { "down" })
                        @if let Some(rtt) = l.heartbeat_rtt_us { ", heartbeat RTT " (rtt) " µs" }
                        ", " (l.heartbeat_misses) " missed"
                    }
                }
            }
            h3 { "NVRAM" }
            p {
                "Mirror: "
                @if n.mirror.in_sync { span.ok { "in sync" } } @else { span.bad { "degraded" } }
                ", lag " (n.mirror.lag_bytes) " B"
                @if let Some(r) = &n.mirror.degraded_reason { " (" (r) ")" }
                br;
                "In use: " (n.nvram.used_bytes) " of " (n.nvram.capacity_bytes) " B"
                br;
                "Last CP: "
                @if let Some(cp) = &n.last_cp {
                    "generation " (cp.generation) ", " (cp.duration_ms) " ms, " (cp.bytes) " B, at " (fmt_time(cp.at_unix_ms))
                } @else { "none yet" }
            }
            h3 { "Aggregates" }
            @for a in &n.aggregates {
                div.aggregate {
                    strong { (a.name) } " — home " (a.home) ", served by "
                    (a.served_by.as_deref().unwrap_or("nobody"))
                    @if let Some(p) = a.rebuild_progress { ", rebuilding " (format!("{:.0}", p * 100.0)) "%" }
                    table {
                        tr { th { "disk" } th { "role" } th { "state" } }
                        @for d in &a.disks {
                            tr { td { (d.name) } td { (d.role) } td { (serde_plain(d.state)) } }
                        }
                    }
                }
            }
            h3 { "Exports" }
            ul.exports { @for e in &n.exports { li { code { (e.path) } " on " (e.aggregate) " at " (e.address) } } }
            h3 { "Clients (" (n.clients.len()) ")" }
            ul.clients { @for c in &n.clients { li { (c.address) " (" (c.protocol) ")" } } }
        }
    }
}

/// The serde (kebab-case) name of a unit enum value, for data attributes and labels.
fn serde_plain<T: serde::Serialize>(v: T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Unix milliseconds as "YYYY-MM-DD HH:MM:SSZ" (UTC; the proleptic Gregorian calendar).
pub(crate) fn fmt_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), counting in 400-year eras of 146097 days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // shift the epoch to 0000-03-01 so leap days end each year
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    assert!((1..=12).contains(&m) && (1..=31).contains(&d));
    (y, m, d)
}

// ---------------------------------------------------------------------------------------------
// Takeover and giveback dialogs

fn check_markup(check: &CheckResult) -> Markup {
    html! {
        ul.checks {
            @for c in &check.checks {
                li class=(if c.ok { "ok" } else { "bad" }) {
                    (if c.ok { "✔ " } else { "✘ " }) strong { (c.name) } @if !c.detail.is_empty() { " — " (c.detail) }
                }
            }
        }
    }
}

/// `GET /takeover/{node}` — runs check-only, then offers the confirmation form.
pub(crate) async fn takeover_dialog(
    State(state): State<Shared>,
    PageUser(who): PageUser,
    Path(node): Path<String>,
) -> Response {
    let check = match state.backend.check_takeover(&node).await {
        Ok(c) => c,
        Err(e) => return error_page(StatusCode::CONFLICT, Some(&who), &e.to_string()),
    };
    let csrf = who.csrf().unwrap_or_default();
    let body = html! {
        h1 { "Take over node " (node) }
        h2 { "Check" }
        (check_markup(&check))
        @if check.possible {
            form.confirm method="post" action=(format!("/takeover/{node}")) {
                input type="hidden" name="csrf" value=(csrf);
                fieldset {
                    legend { "Mode" }
                    label { input type="radio" name="mode" value="graceful" checked; " Graceful: drain first, force after " input type="number" name="countdown_s" value=(COUNTDOWN_S_DEFAULT) min=(COUNTDOWN_S_MIN) max=(COUNTDOWN_S_MAX); " s" }
                    label { input type="radio" name="mode" value="immediate"; " Immediate: fence and take over now (in-flight requests are retried by clients)" }
                }
                label { input type="checkbox" name="confirm" value="yes" required; " I want node " (node) "'s partner to take over " (node) "." }
                button.danger type="submit" { "Take over " (node) }
            }
        } @else {
            p.error { "Takeover is not possible now." }
        }
        p { a href="/" { "Cancel" } }
    };
    page(
        StatusCode::OK,
        layout("Take over", Some(&who), html! {}, body),
    )
}

/// The refusal for a state-changing form without a valid CSRF token or without the
/// confirmation box ticked; `None` when the form may act.
fn unconfirmed(
    who: &Identity,
    csrf: &Option<String>,
    confirm: &Option<String>,
    action: &str,
) -> Option<Response> {
    if !who.csrf_ok(csrf.as_deref()) {
        return Some(csrf_rejected(who));
    }
    if confirm.as_deref() != Some("yes") {
        return Some(error_page(
            StatusCode::BAD_REQUEST,
            Some(who),
            &format!("Tick the confirmation box to {action}."),
        ));
    }
    None
}

/// Takeover confirmation form.
#[derive(Deserialize)]
pub(crate) struct TakeoverForm {
    csrf: Option<String>,
    mode: String,
    countdown_s: Option<u32>,
    confirm: Option<String>,
}

/// `POST /takeover/{node}`
pub(crate) async fn takeover_start(
    State(state): State<Shared>,
    PageUser(who): PageUser,
    Path(node): Path<String>,
    Form(form): Form<TakeoverForm>,
) -> Response {
    if let Some(refused) = unconfirmed(&who, &form.csrf, &form.confirm, "take over") {
        return refused;
    }
    let mode = match form.mode.as_str() {
        "graceful" => TakeoverMode::Graceful {
            countdown_s: form.countdown_s.unwrap_or(COUNTDOWN_S_DEFAULT),
        },
        "immediate" => TakeoverMode::Immediate,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                Some(&who),
                "Choose graceful or immediate.",
            )
        }
    };
    let mode = match validate_mode(mode) {
        Ok(m) => m,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, Some(&who), &e),
    };
    let actor = who.actor();
    tracing::info!(target_node = %node, ?mode, %actor, "takeover requested from console");
    match state.backend.start_takeover(&node, mode, &actor).await {
        Ok(id) => Redirect::to(&format!("/operations/{id}")).into_response(),
        Err(e) => error_page(StatusCode::CONFLICT, Some(&who), &e.to_string()),
    }
}

/// `GET /giveback/{node}`
pub(crate) async fn giveback_dialog(
    State(state): State<Shared>,
    PageUser(who): PageUser,
    Path(node): Path<String>,
) -> Response {
    let check = match state.backend.check_giveback(&node).await {
        Ok(c) => c,
        Err(e) => return error_page(StatusCode::CONFLICT, Some(&who), &e.to_string()),
    };
    let csrf = who.csrf().unwrap_or_default();
    let body = html! {
        h1 { "Give back to node " (node) }
        h2 { "Check" }
        (check_markup(&check))
        @if check.possible {
            form.confirm method="post" action=(format!("/giveback/{node}")) {
                input type="hidden" name="csrf" value=(csrf);
                label { input type="checkbox" name="confirm" value="yes" required; " Give node " (node) " its disks, addresses and exports back." }
                button.danger type="submit" { "Give back to " (node) }
            }
        } @else {
            p.error { "Giveback is not possible now." }
        }
        p { a href="/" { "Cancel" } }
    };
    page(
        StatusCode::OK,
        layout("Give back", Some(&who), html! {}, body),
    )
}

/// Giveback confirmation form.
#[derive(Deserialize)]
pub(crate) struct GivebackForm {
    csrf: Option<String>,
    confirm: Option<String>,
}

/// `POST /giveback/{node}`
pub(crate) async fn giveback_start(
    State(state): State<Shared>,
    PageUser(who): PageUser,
    Path(node): Path<String>,
    Form(form): Form<GivebackForm>,
) -> Response {
    if let Some(refused) = unconfirmed(&who, &form.csrf, &form.confirm, "give back") {
        return refused;
    }
    let actor = who.actor();
    tracing::info!(target_node = %node, %actor, "giveback requested from console");
    match state.backend.start_giveback(&node, &actor).await {
        Ok(id) => Redirect::to(&format!("/operations/{id}")).into_response(),
        Err(e) => error_page(StatusCode::CONFLICT, Some(&who), &e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Operation progress and events

/// `GET /operations/{id}` — the current progress, server-rendered; the script keeps it live
/// over SSE, and without JavaScript the page refreshes itself until the operation ends.
pub(crate) async fn operation(
    State(state): State<Shared>,
    PageUser(who): PageUser,
    Path(id): Path<u64>,
) -> Response {
    let Some(rx) = state.backend.watch_operation(OperationId(id)) else {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(&who),
            &format!("No operation {id}."),
        );
    };
    let progress = rx.borrow().clone();
    let head = if progress.is_finished() {
        html! {}
    } else {
        html! { noscript { meta http-equiv="refresh" content=(NOSCRIPT_REFRESH_S); } }
    };
    let body = progress_markup(&progress);
    page(StatusCode::OK, layout("Operation", Some(&who), head, body))
}

fn step_symbol(s: StepState) -> &'static str {
    match s {
        StepState::Pending => "○",
        StepState::Running => "◔",
        StepState::Done => "✔",
        StepState::Failed => "✘",
        StepState::Skipped => "–",
    }
}

fn progress_markup(p: &Progress) -> Markup {
    html! {
        h1 {
            (match p.kind { OperationKind::Takeover => "Takeover", OperationKind::Giveback => "Giveback" })
            " of node " (p.target)
        }
        p { "Operation " (p.id) ", requested by " (p.actor) "." }
        div #progress data-op=(p.id) data-finished=(if p.is_finished() { "1" } else { "0" }) {
            ol.steps {
                @for s in &p.steps {
                    li class=(serde_plain(s.state)) {
                        span.sym { (step_symbol(s.state)) } " " strong { (s.name) }
                        @if !s.detail.is_empty() { " — " span.detail { (s.detail) } }
                        @if let Some(at) = s.at_unix_ms { " " small.at { (fmt_time(at)) } }
                    }
                }
            }
            div.outcome {
                @match &p.outcome {
                    None => p { "Running…" },
                    Some(Outcome::Succeeded) => p.ok { "Succeeded." },
                    Some(Outcome::Failed { reason }) => p.bad { "Failed: " (reason) },
                }
            }
        }
        p { a href="/" { "Back to the overview" } }
    }
}

/// `GET /events`
pub(crate) async fn events(State(state): State<Shared>, PageUser(who): PageUser) -> Response {
    let mut events = match state.backend.events(0, EVENTS_PAGE_MAX).await {
        Ok(e) => e,
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&who), &e.to_string()),
    };
    events.reverse();
    let body = html! {
        h1 { "Events" }
        table.events {
            tr { th { "#" } th { "time (UTC)" } th { "node" } th { "who" } th { "what" } }
            @for e in &events {
                tr {
                    td { (e.seq) }
                    td data-unix-ms=(e.at_unix_ms) { (fmt_time(e.at_unix_ms)) }
                    td { (e.node) }
                    td { (e.actor) }
                    td { (e.message) }
                }
            }
        }
        @if events.is_empty() { p { "No events yet." } }
    };
    page(StatusCode::OK, layout("Events", Some(&who), html! {}, body))
}

#[cfg(test)]
mod tests {
    use super::fmt_time;

    #[test]
    fn formats_utc_times() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00Z");
        // 2000-02-29 12:34:56 UTC (a leap day in a century leap year).
        assert_eq!(fmt_time(951_827_696_000), "2000-02-29 12:34:56Z");
        assert_eq!(fmt_time(1_798_675_200_000), "2026-12-31 00:00:00Z");
    }
}
