//! The console over HTTP against the scripted `FakeBackend`: auth, CSRF, rate limit, the JSON
//! API, the SSE progress stream on a real loopback socket, and `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use futures::StreamExt;
use tower::ServiceExt;
use web_ui::testing::{FakeBackend, FakeHandle, TAKEOVER_STEPS};
use web_ui::{ApiToken, ConsoleConfig, Outcome, PairStatus, Progress, StepState};

const PASSWORD: &str = "s3cret-pass";
const TOKEN: &str = "test-token-0123456789abcdef";
/// Fake operations advance one step per this interval.
const STEP_INTERVAL: Duration = Duration::from_millis(10);
/// Upper bound on waiting for an operation's stream to end.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body read in a test.
const BODY_BYTES_MAX: usize = 1 << 20;

/// Argon2 is deliberately slow: hash once for all tests.
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| web_ui::hash_password(PASSWORD).unwrap())
}

fn config() -> ConsoleConfig {
    ConsoleConfig {
        admin_password_argon2: password_hash().to_string(),
        api_tokens: vec![ApiToken {
            name: "ci".into(),
            blake3_hex: web_ui::hash_token(TOKEN),
        }],
        ..ConsoleConfig::default()
    }
}

fn setup_with(config: ConsoleConfig) -> (Router, Arc<FakeBackend>) {
    let fake = FakeBackend::new(STEP_INTERVAL);
    let app = web_ui::router(Arc::new(FakeHandle(Arc::clone(&fake))), config);
    (app, fake)
}

fn setup() -> (Router, Arc<FakeBackend>) {
    setup_with(config())
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut r = b.body(Body::from(body.to_string())).unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    r.extensions_mut().insert(ConnectInfo(peer));
    r
}

async fn send(app: &Router, req: Request<Body>) -> Response {
    app.clone().oneshot(req).await.unwrap()
}

async fn body_text(r: Response) -> String {
    let bytes = axum::body::to_bytes(r.into_body(), BODY_BYTES_MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn location(r: &Response) -> String {
    r.headers()[header::LOCATION].to_str().unwrap().to_string()
}

/// The value of the first `name="csrf" value="..."` in a page.
fn form_csrf(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("page has a csrf field") + marker.len();
    let len = html[start..].find('"').unwrap();
    html[start..start + len].to_string()
}

fn set_cookie_pair(r: &Response) -> String {
    let v = r.headers()[header::SET_COOKIE].to_str().unwrap();
    v.split(';').next().unwrap().to_string()
}

/// A logged-in browser: its cookie header and its session CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

async fn login(app: &Router) -> Browser {
    let form = send(app, request("GET", "/login", &[], "")).await;
    assert_eq!(form.status(), StatusCode::OK);
    let login_cookie = set_cookie_pair(&form);
    let login_csrf = form_csrf(&body_text(form).await);
    let body = format!("user=admin&password={PASSWORD}&csrf={login_csrf}");
    let r = send(
        app,
        request(
            "POST",
            "/login",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", &login_cookie),
            ],
            &body,
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/");
    let set = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(!set.contains("Secure"), "Secure is off by default: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let page = send(app, request("GET", "/", &[("cookie", &cookie)], "")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let csrf = form_csrf(&body_text(page).await);
    Browser { cookie, csrf }
}

const JSON: (&str, &str) = ("content-type", "application/json");
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Every state-changing route, API and HTML, with a body that would be valid if authenticated.
const API_POSTS: [(&str, &str); 4] = [
    ("/api/v1/takeover/check", r#"{"target":"b"}"#),
    (
        "/api/v1/takeover",
        r#"{"target":"b","mode":{"kind":"immediate"}}"#,
    ),
    ("/api/v1/giveback/check", r#"{"target":"b"}"#),
    ("/api/v1/giveback", r#"{"target":"b"}"#),
];
const HTML_POSTS: [(&str, &str); 3] = [
    ("/takeover/b", "mode=immediate&confirm=yes&csrf=x"),
    ("/giveback/b", "confirm=yes&csrf=x"),
    ("/logout", "csrf=x"),
];

#[tokio::test]
async fn unauthenticated_requests_get_401_or_login_and_never_act() {
    let (app, fake) = setup();
    for (uri, body) in API_POSTS {
        for auth in [None, Some("Bearer wrong-token"), Some("Basic YWRtaW46eA==")] {
            let mut headers = vec![JSON];
            if let Some(a) = auth {
                headers.push(("authorization", a));
            }
            let r = send(&app, request("POST", uri, &headers, body)).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{uri} {auth:?}");
            assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        }
        // A forged session cookie is no better.
        let r = send(
            &app,
            request(
                "POST",
                uri,
                &[JSON, ("cookie", "twinfiler_session=forged")],
                body,
            ),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{uri} forged cookie");
    }
    for uri in [
        "/api/v1/status",
        "/api/v1/events",
        "/api/v1/operations/1",
        "/api/v1/operations/1/events",
    ] {
        let r = send(&app, request("GET", uri, &[], "")).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{uri}");
    }
    for (uri, body) in HTML_POSTS {
        let r = send(&app, request("POST", uri, &[FORM], body)).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{uri}");
        assert_eq!(location(&r), "/login", "{uri}");
    }
    for uri in [
        "/",
        "/events",
        "/takeover/b",
        "/giveback/b",
        "/operations/1",
    ] {
        let r = send(&app, request("GET", uri, &[], "")).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{uri}");
        assert_eq!(location(&r), "/login", "{uri}");
    }
    assert_eq!(fake.operations_started.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn login_success_failure_and_logout() {
    let (app, _fake) = setup();
    // Wrong password: 401, no session cookie.
    let form = send(&app, request("GET", "/login", &[], "")).await;
    let login_cookie = set_cookie_pair(&form);
    let csrf = form_csrf(&body_text(form).await);
    let r = send(
        &app,
        request(
            "POST",
            "/login",
            &[FORM, ("cookie", &login_cookie)],
            &format!("user=admin&password=nope&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!r.headers().contains_key(header::SET_COOKIE));
    // Right password but no login CSRF cookie (a cross-site login attempt): 403.
    let r = send(
        &app,
        request(
            "POST",
            "/login",
            &[FORM],
            &format!("user=admin&password={PASSWORD}&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let browser = login(&app).await;
    let r = send(
        &app,
        request("GET", "/api/v1/status", &[("cookie", &browser.cookie)], ""),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Logout ends the session.
    let r = send(
        &app,
        request(
            "POST",
            "/logout",
            &[FORM, ("cookie", &browser.cookie)],
            &format!("csrf={}", browser.csrf),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = send(
        &app,
        request("GET", "/api/v1/status", &[("cookie", &browser.cookie)], ""),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn secure_cookie_flag_is_configurable() {
    let (app, _fake) = setup_with(ConsoleConfig {
        cookie_secure: true,
        ..config()
    });
    let form = send(&app, request("GET", "/login", &[], "")).await;
    let set = form.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(set.contains("; Secure"), "{set}");
}

#[tokio::test]
async fn login_is_rate_limited_per_client() {
    let (app, _fake) = setup();
    let form = send(&app, request("GET", "/login", &[], "")).await;
    let login_cookie = set_cookie_pair(&form);
    let csrf = form_csrf(&body_text(form).await);
    let attempt = |password: &str, peer: &str| {
        let mut r = request(
            "POST",
            "/login",
            &[FORM, ("cookie", &login_cookie)],
            &format!("user=admin&password={password}&csrf={csrf}"),
        );
        let peer: SocketAddr = peer.parse().unwrap();
        r.extensions_mut().insert(ConnectInfo(peer));
        r
    };
    for i in 0..5 {
        let r = send(&app, attempt("wrong", "127.0.0.5:1000")).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // The sixth, even with the right password, is refused.
    let r = send(&app, attempt(PASSWORD, "127.0.0.5:1001")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another client is not affected.
    let r = send(&app, attempt(PASSWORD, "127.0.0.6:1000")).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn session_posts_need_the_csrf_token() {
    let (app, fake) = setup();
    let b = login(&app).await;
    let cookie = ("cookie", b.cookie.as_str());
    let body = r#"{"target":"b","mode":{"kind":"graceful","countdown_s":30}}"#;
    // API: no header, wrong header.
    let r = send(
        &app,
        request("POST", "/api/v1/takeover", &[JSON, cookie], body),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send(
        &app,
        request(
            "POST",
            "/api/v1/takeover",
            &[JSON, cookie, ("x-csrf-token", "wrong")],
            body,
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // HTML form: missing, wrong.
    for form in [
        "mode=immediate&confirm=yes",
        "mode=immediate&confirm=yes&csrf=wrong",
    ] {
        let r = send(&app, request("POST", "/takeover/b", &[FORM, cookie], form)).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{form}");
    }
    assert_eq!(fake.operations_started.load(Ordering::SeqCst), 0);

    // Unconfirmed form: refused, no action.
    let r = send(
        &app,
        request(
            "POST",
            "/takeover/b",
            &[FORM, cookie],
            &format!("mode=immediate&csrf={}", b.csrf),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fake.operations_started.load(Ordering::SeqCst), 0);

    // The console's own script path: session + header works.
    let r = send(
        &app,
        request(
            "POST",
            "/api/v1/takeover/check",
            &[JSON, cookie, ("x-csrf-token", &b.csrf)],
            r#"{"target":"b"}"#,
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // The right token in the form starts the takeover and lands on its progress page.
    let form = format!("mode=graceful&countdown_s=30&confirm=yes&csrf={}", b.csrf);
    let r = send(&app, request("POST", "/takeover/b", &[FORM, cookie], &form)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/operations/1");
    assert_eq!(fake.operations_started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn token_auth_reads_and_acts_without_csrf() {
    let (app, fake) = setup();
    let auth = bearer();
    let h = ("authorization", auth.as_str());
    let r = send(&app, request("GET", "/api/v1/status", &[h], "")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let status: PairStatus = serde_json::from_str(&body_text(r).await).unwrap();
    assert_eq!(status.nodes.len(), 2);
    assert!(status.nodes.iter().all(|n| n.takeover_possible));

    let r = send(
        &app,
        request(
            "POST",
            "/api/v1/takeover/check",
            &[JSON, h],
            r#"{"target":"b"}"#,
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let check: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
    assert_eq!(check["possible"], true);

    // Bad inputs are refused before anything starts.
    let zero = r#"{"target":"b","mode":{"kind":"graceful","countdown_s":0}}"#;
    let r = send(&app, request("POST", "/api/v1/takeover", &[JSON, h], zero)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = send(
        &app,
        request(
            "POST",
            "/api/v1/takeover",
            &[JSON, h],
            r#"{"target":"zz","mode":{"kind":"immediate"}}"#,
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = send(
        &app,
        request("POST", "/api/v1/giveback", &[JSON, h], r#"{"target":"b"}"#),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT, "nothing to give back yet");
    assert_eq!(fake.operations_started.load(Ordering::SeqCst), 0);
}

/// Start a real server on 127.0.0.1:0.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(web_ui::serve(listener, app));
    addr
}

/// Read an SSE stream to its end; returns the `progress` payloads and the `end` payload.
async fn read_sse(client: &reqwest::Client, url: &str) -> (Vec<Progress>, Option<Outcome>) {
    let resp = client
        .get(url)
        .header("authorization", bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let collect = async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            assert!(text.len() < BODY_BYTES_MAX);
        }
    };
    tokio::time::timeout(STREAM_TIMEOUT, collect)
        .await
        .expect("the stream ends when the operation does");
    let mut progress = Vec::new();
    let mut end = None;
    for block in text.split("\n\n") {
        let event = block.lines().find_map(|l| l.strip_prefix("event: "));
        let data = block.lines().find_map(|l| l.strip_prefix("data: "));
        match (event, data) {
            (Some("progress"), Some(d)) => progress.push(serde_json::from_str(d).unwrap()),
            (Some("end"), Some(d)) => end = serde_json::from_str(d).unwrap(),
            _ => {}
        }
    }
    (progress, end)
}

async fn status(client: &reqwest::Client, base: &str) -> PairStatus {
    client
        .get(format!("{base}/api/v1/status"))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn takeover_and_giveback_via_api_stream_to_success() {
    let (app, _fake) = setup();
    let addr = serve(app.clone()).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    let r = client
        .post(format!("{base}/api/v1/takeover"))
        .header("authorization", bearer())
        .json(&serde_json::json!({"target": "b", "mode": {"kind": "graceful", "countdown_s": 30}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let accepted: serde_json::Value = r.json().await.unwrap();
    let id = accepted["operation"].as_u64().unwrap();
    assert_eq!(
        accepted["events_url"],
        format!("/api/v1/operations/{id}/events")
    );

    let (progress, end) = read_sse(&client, &format!("{base}/api/v1/operations/{id}/events")).await;
    assert_eq!(end, Some(Outcome::Succeeded));
    let last = progress.last().expect("at least one progress event");
    assert_eq!(last.outcome, Some(Outcome::Succeeded));
    assert_eq!(last.steps.len(), TAKEOVER_STEPS.len());
    assert!(
        last.steps.iter().all(|s| s.state == StepState::Done),
        "{last:?}"
    );
    assert_eq!(last.actor, "token:ci");

    let s = status(&client, &base).await;
    let state = |n: &str| s.nodes.iter().find(|x| x.name == n).unwrap().state;
    assert_eq!(state("a"), web_ui::NodeState::InTakeover);
    assert_eq!(state("b"), web_ui::NodeState::WaitingForGiveback);
    let a = s.nodes.iter().find(|x| x.name == "a").unwrap();
    assert!(
        a.exports.iter().any(|e| e.path == "/b"),
        "a serves b's export"
    );

    // A reconnect after the end (a page reload) gets the final state and ends at once.
    let (again, end) = read_sse(&client, &format!("{base}/api/v1/operations/{id}/events")).await;
    assert_eq!(again.len(), 1);
    assert_eq!(end, Some(Outcome::Succeeded));

    // The overview now offers giveback to b.
    let b = login(&app).await;
    let html = body_text(send(&app, request("GET", "/", &[("cookie", &b.cookie)], "")).await).await;
    assert!(html.contains("href=\"/giveback/b\""), "{html}");
    assert!(
        !html.contains("href=\"/takeover/"),
        "no takeover offered while in takeover"
    );

    // Giveback.
    let r = client
        .post(format!("{base}/api/v1/giveback"))
        .header("authorization", bearer())
        .json(&serde_json::json!({"target": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let gid = r.json::<serde_json::Value>().await.unwrap()["operation"]
        .as_u64()
        .unwrap();
    assert_ne!(gid, id);
    let (_, end) = read_sse(&client, &format!("{base}/api/v1/operations/{gid}/events")).await;
    assert_eq!(end, Some(Outcome::Succeeded));
    let s = status(&client, &base).await;
    assert!(s.nodes.iter().all(|n| n.state == web_ui::NodeState::Normal));

    // The events log names the operator.
    let events: Vec<web_ui::Event> = client
        .get(format!("{base}/api/v1/events?since=0"))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.actor == "token:ci"), "{events:?}");
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));

    // The browser's path: the events page names the operator, the SSE stream accepts the
    // session (a finished operation's stream ends at once).
    let page = body_text(
        send(
            &app,
            request("GET", "/events", &[("cookie", &b.cookie)], ""),
        )
        .await,
    )
    .await;
    assert!(page.contains("token:ci"), "{page}");
    let r = send(
        &app,
        request(
            "GET",
            &format!("/api/v1/operations/{gid}/events"),
            &[("cookie", &b.cookie)],
            "",
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let sse = tokio::time::timeout(STREAM_TIMEOUT, body_text(r))
        .await
        .unwrap();
    assert!(sse.contains("event: end"), "{sse}");

    // The progress page (what a browser reload shows) renders the finished operation.
    let r = send(
        &app,
        request(
            "GET",
            &format!("/operations/{id}"),
            &[("cookie", &b.cookie)],
            "",
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = body_text(r).await;
    assert!(html.contains("Succeeded."), "{html}");
    assert!(html.contains(&format!("data-op=\"{id}\"")));
}

#[tokio::test]
async fn immediate_takeover_skips_drain_and_failures_are_reported() {
    let (app, fake) = setup();
    let addr = serve(app).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    fake.fail_at_step("reservations asserted");
    let r = client
        .post(format!("{base}/api/v1/takeover"))
        .header("authorization", bearer())
        .json(&serde_json::json!({"target": "a", "mode": {"kind": "immediate"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["operation"]
        .as_u64()
        .unwrap();
    let (progress, end) = read_sse(&client, &format!("{base}/api/v1/operations/{id}/events")).await;
    match end {
        Some(Outcome::Failed { reason }) => assert!(reason.contains("reservations"), "{reason}"),
        other => panic!("expected failure, got {other:?}"),
    }
    let last = progress.last().unwrap();
    let step = |n: &str| last.steps.iter().find(|s| s.name == n).unwrap().state;
    assert_eq!(step("draining requests"), StepState::Skipped);
    assert_eq!(step("reservations asserted"), StepState::Failed);
    assert_eq!(step("serving"), StepState::Pending);
    // The pair is back to normal and a new takeover may be tried.
    let s = status(&client, &base).await;
    assert!(s.nodes.iter().all(|n| n.state == web_ui::NodeState::Normal));
}

#[tokio::test]
async fn pages_render_overview_dialog_and_events() {
    let (app, _fake) = setup();
    let b = login(&app).await;
    let cookie = ("cookie", b.cookie.as_str());
    let html = body_text(send(&app, request("GET", "/", &[cookie], "")).await).await;
    for needle in [
        "Node a",
        "Node b",
        "<polyline",
        "in sync",
        "ic0",
        "heartbeat RTT 85",
        "aggr_b",
        "/takeover/b",
        "name=\"csrf-token\"",
        "/static/console.js",
    ] {
        assert!(html.contains(needle), "overview lacks {needle:?}");
    }
    let dialog = body_text(send(&app, request("GET", "/takeover/b", &[cookie], "")).await).await;
    assert!(dialog.contains("mirror in sync"));
    assert!(dialog.contains("name=\"countdown_s\""));
    assert_eq!(form_csrf(&dialog), b.csrf);
    let r = send(&app, request("GET", "/takeover/nosuch", &[cookie], "")).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);

    let events = body_text(send(&app, request("GET", "/events", &[cookie], "")).await).await;
    assert!(events.contains("No events yet."));

    let js = send(&app, request("GET", "/static/console.js", &[], "")).await;
    assert_eq!(js.status(), StatusCode::OK);
    assert!(body_text(js).await.contains("EventSource"));
}

#[tokio::test]
async fn security_headers_forbid_framing() {
    let (app, _fake) = setup();
    let r = send(&app, request("GET", "/login", &[], "")).await;
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let (app, _fake) = setup();
    let r = send(&app, request("GET", "/metrics", &[], "")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = body_text(r).await;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "twinfiler_nfs_ops_total",
        "twinfiler_nfs_op_seconds",
        "twinfiler_nvlog_appends_total",
        "twinfiler_nvlog_mirror_degraded",
        "twinfiler_cp_total",
        "twinfiler_raid_disk_state",
        "twinfiler_ha_state",
    ] {
        assert!(names.contains(&name), "missing {name} in\n{text}");
    }
    let ok = scrape
        .samples
        .iter()
        .find(|s| s.metric == "twinfiler_nfs_ops_total")
        .unwrap();
    assert_eq!(ok.labels.get("procedure"), Some("READ"));
    assert_eq!(ok.labels.get("status"), Some("NFS3_OK"));
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "twinfiler_nfs_op_seconds")
        .unwrap();
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert!(buckets.iter().any(|b| b.count == 1.0), "{buckets:?}")
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert!(!text.contains("# EOF"), "classic text format by default");

    // Prometheus itself asks for OpenMetrics and gets it.
    let r = send(
        &app,
        request(
            "GET",
            "/metrics",
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )],
            "",
        ),
    )
    .await;
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let om = body_text(r).await;
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE twinfiler_nfs_ops counter"));

    let (locked, _fake) = setup_with(ConsoleConfig {
        metrics_require_auth: true,
        ..config()
    });
    let r = send(&locked, request("GET", "/metrics", &[], "")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let auth = bearer();
    let r = send(
        &locked,
        request("GET", "/metrics", &[("authorization", &auth)], ""),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// `promtool check metrics` (Debian package `prometheus`) is stricter than the parser crate
/// (naming conventions, help text, histogram shape). Skipped with a note when promtool is not
/// installed, unless TWINFILER_REQUIRE_PROMTOOL is set (CI sets it).
#[tokio::test]
async fn metrics_pass_promtool_check() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let required = std::env::var_os("TWINFILER_REQUIRE_PROMTOOL").is_some();
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if !required => {
            eprintln!("skipping: promtool not available ({e}); apt-get install prometheus");
            return;
        }
        Err(e) => panic!("promtool required but not runnable: {e}"),
    };
    let (app, fake) = setup();
    // Fill every family with at least one series so all of them are checked.
    let m = &fake.metrics;
    m.nfs_bytes
        .get_or_create(&web_ui::metrics::DirectionLabels {
            direction: "read".into(),
        })
        .inc_by(4096);
    m.ha_operations
        .get_or_create(&web_ui::metrics::OperationLabels {
            kind: "takeover".into(),
            mode: "graceful".into(),
            result: "success".into(),
        })
        .inc();
    m.heartbeat_rtt_seconds
        .get_or_create(&web_ui::metrics::LinkLabels { link: "ic0".into() })
        .observe(0.000_1);
    let text = body_text(send(&app, request("GET", "/metrics", &[], "")).await).await;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {report}\n{text}");
    assert!(report.trim().is_empty(), "promtool lint findings: {report}");
}
