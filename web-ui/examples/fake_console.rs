//! Serve the console against the scripted `FakeBackend`, to look at the pages by hand:
//! `cargo run -p web-ui --features testing --example fake_console [ADDR]`
//! (default 127.0.0.1:8080). Prints a fresh admin password and API token.

use std::sync::Arc;
use std::time::Duration;

use web_ui::testing::{FakeBackend, FakeHandle};

/// Fake operations advance one step per this interval, slow enough to watch.
const STEP_INTERVAL: Duration = Duration::from_millis(700);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let password = web_ui::generate_token()[..16].to_string();
    let token = web_ui::generate_token();
    let config = web_ui::ConsoleConfig {
        admin_password_argon2: web_ui::hash_password(&password).expect("hash password"),
        api_tokens: vec![web_ui::ApiToken {
            name: "cli".into(),
            blake3_hex: web_ui::hash_token(&token),
        }],
        ..Default::default()
    };
    let backend = Arc::new(FakeHandle(FakeBackend::new(STEP_INTERVAL)));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("console: http://{addr}/  user admin  password {password}");
    println!("api:     curl -H 'Authorization: Bearer {token}' http://{addr}/api/v1/status");
    web_ui::serve(listener, web_ui::router(backend, config)).await
}
