//! `web_ui::client::ApiClient` (what `twinfiler takeover`/`giveback`/`status` use) against the
//! console serving the scripted `FakeBackend` on a real loopback socket: operations followed
//! over SSE to their outcome, and every error class the CLI maps to an exit code.

use std::sync::Arc;
use std::time::Duration;

use web_ui::client::{ApiClient, ClientError};
use web_ui::testing::{serve_fake, FakeBackend, GIVEBACK_STEPS, TAKEOVER_STEPS};
use web_ui::{ApiToken, ConsoleConfig, NodeState, Outcome, StepState, TakeoverMode};

const TOKEN: &str = "client-test-token-0123456789";
/// Fake operations advance one step per this interval.
const STEP_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on following one operation.
const FOLLOW_MAX: Duration = Duration::from_secs(20);

/// A console on 127.0.0.1 (any port) over a fresh fake pair; returns its URL and the fake.
async fn serve() -> (String, Arc<FakeBackend>) {
    let config = ConsoleConfig {
        api_tokens: vec![ApiToken {
            name: "cli".into(),
            blake3_hex: web_ui::hash_token(TOKEN),
        }],
        ..ConsoleConfig::default()
    };
    serve_fake(STEP_INTERVAL, config).await
}

#[tokio::test]
async fn takeover_and_giveback_followed_to_success() {
    let (url, _fake) = serve().await;
    let c = ApiClient::new(&format!("{url}/"), TOKEN).unwrap();
    assert_eq!(c.base_url(), url, "trailing slash dropped");

    let check = c.check_takeover("b").await.unwrap();
    assert!(check.possible, "{check:?}");
    let accepted = c
        .start_takeover("b", TakeoverMode::Graceful { countdown_s: 5 })
        .await
        .unwrap();
    assert_eq!(
        accepted.page_url,
        format!("/operations/{}", accepted.operation)
    );
    let mut seen = Vec::new();
    let outcome = c
        .follow(accepted.operation, FOLLOW_MAX, |p| seen.push(p.clone()))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    let last = seen.last().expect("at least one progress");
    assert!(last.steps.iter().all(|s| s.state == StepState::Done));
    assert_eq!(last.steps.len(), TAKEOVER_STEPS.len());
    assert!(
        seen.len() > 2,
        "steps arrive one by one, saw {} updates",
        seen.len()
    );

    let status = c.status().await.unwrap();
    let b = status.nodes.iter().find(|n| n.name == "b").unwrap();
    assert_eq!(b.state, NodeState::WaitingForGiveback);

    // Following a finished operation returns its outcome at once.
    let again = c
        .follow(accepted.operation, FOLLOW_MAX, |_| {})
        .await
        .unwrap();
    assert_eq!(again, Outcome::Succeeded);

    assert!(c.check_giveback("b").await.unwrap().possible);
    let gb = c.start_giveback("b").await.unwrap();
    let mut last = None;
    let outcome = c
        .follow(gb.operation, FOLLOW_MAX, |p| last = Some(p.clone()))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(last.unwrap().steps.len(), GIVEBACK_STEPS.len());
    let status = c.status().await.unwrap();
    assert!(status.nodes.iter().all(|n| n.state == NodeState::Normal));
}

#[tokio::test]
async fn failed_operation_reports_its_reason() {
    let (url, fake) = serve().await;
    fake.fail_at_step("reservations asserted");
    let c = ApiClient::new(&url, TOKEN).unwrap();
    let a = c
        .start_takeover("b", TakeoverMode::Immediate)
        .await
        .unwrap();
    let progress = c.operation(a.operation).await.unwrap();
    assert_eq!(progress.target, "b");
    let outcome = c.follow(a.operation, FOLLOW_MAX, |_| {}).await.unwrap();
    match outcome {
        Outcome::Failed { reason } => assert!(reason.contains("reservations"), "{reason}"),
        o => panic!("expected a failure, got {o:?}"),
    }
}

#[tokio::test]
async fn errors_are_classified_for_exit_codes() {
    let (url, _fake) = serve().await;
    let bad = ApiClient::new(&url, "wrong-token").unwrap();
    let e = bad.status().await.unwrap_err();
    assert!(matches!(e, ClientError::Unauthorized { .. }), "{e}");
    assert!(e.is_usage());

    let c = ApiClient::new(&url, TOKEN).unwrap();
    let e = c.check_takeover("zz").await.unwrap_err();
    assert!(
        matches!(e, ClientError::Rejected { status: 404, .. }),
        "{e}"
    );
    assert!(e.is_usage());
    let e = c
        .start_takeover("b", TakeoverMode::Graceful { countdown_s: 0 })
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Rejected { status: 400, .. }),
        "{e}"
    );

    // Giveback before any takeover: refused (409), an operational failure, not usage.
    let e = c.start_giveback("b").await.unwrap_err();
    assert!(matches!(e, ClientError::Refused { .. }), "{e}");
    assert!(!e.is_usage());

    let e = c
        .follow(web_ui::OperationId(999), FOLLOW_MAX, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Rejected { status: 404, .. }),
        "{e}"
    );

    // Nothing listens on port 1 of loopback.
    let nobody = ApiClient::new("http://127.0.0.1:1", TOKEN).unwrap();
    let e = nobody.status().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    assert!(!e.is_usage());
}

/// An answer larger than the client's bound is refused as a protocol error, not read whole.
#[tokio::test]
async fn an_oversized_answer_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY_BYTES: usize = 8 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = s.read(&mut request).await;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {BODY_BYTES}\r\n\r\n"
        );
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&vec![b' '; BODY_BYTES]).await;
    });
    let c = ApiClient::new(&url, TOKEN).unwrap();
    let err = c.status_text().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Protocol { .. }),
        "expected a protocol error, got {err}"
    );
    server.abort();
}
