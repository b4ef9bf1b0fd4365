//! The operator console (Axum), JSON API and Prometheus metrics.
