//! The operator console (Axum), JSON API and Prometheus metrics of a twinfiler node.
//!
//! The node implements [`ConsoleBackend`] and mounts [`router`]:
//!
//! ```no_run
//! # use std::sync::Arc;
//! async fn run_console(backend: Arc<dyn web_ui::ConsoleBackend>) -> std::io::Result<()> {
//!     let config = web_ui::ConsoleConfig {
//!         admin_password_argon2: web_ui::hash_password("from the demo").expect("hash"),
//!         ..Default::default()
//!     };
//!     // The management address from the node's config.
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     web_ui::serve(listener, web_ui::router(backend, config)).await
//! }
//! ```
//!
//! Pages are server-rendered HTML (maud) and readable without JavaScript; a small script of our
//! own (`assets/console.js`) adds the takeover dialog and live progress over server-sent events.
//! The JSON API under `/api/v1` is documented in `docs/api.md`; [`client::ApiClient`] speaks it
//! (the `twinfiler` CLI uses it).

mod api;
pub mod auth;
pub mod backend;
mod charts;
pub mod client;
pub mod config;
pub mod metrics;
mod pages;
mod server;
#[cfg(feature = "testing")]
pub mod testing;

pub use backend::{
    Aggregate, BackendError, CheckItem, CheckResult, Client, ConsoleBackend, CpStatus, Disk,
    DiskState, Event, Export, Health, Link, MirrorStatus, ModuleHealth, NodeState, NodeStatus,
    NvramStatus, OperationId, OperationKind, Outcome, PairStatus, Progress, Sample, Step,
    StepState, TakeoverMode, COUNTDOWN_S_MAX, COUNTDOWN_S_MIN,
};
pub use config::{
    generate_token, hash_password, hash_token, verify_password, ApiToken, ConsoleConfig,
};
pub use metrics::Metrics;
pub use server::{router, serve};
