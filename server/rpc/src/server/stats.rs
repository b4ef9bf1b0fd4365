//! Counters of an [`RpcServer`](super::RpcServer), updated with relaxed atomics (they are
//! statistics, not synchronisation) and read as a [`ServerStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the server's counters (monotonic except `connections_open` and
/// `calls_inflight`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// TCP connections accepted and served.
    pub connections_accepted: u64,
    /// TCP connections refused because `connections_max` were open.
    pub connections_rejected: u64,
    /// TCP connections open now.
    pub connections_open: u64,
    /// TCP connections closed for a protocol violation (oversized or truncated record).
    pub connections_protocol_errors: u64,
    /// TCP connections closed because they were idle.
    pub connections_idle_closed: u64,
    /// Records received (TCP) and datagrams received (UDP).
    pub calls: u64,
    /// Of `calls`, TCP records found by a connection's busy poll (see
    /// [`ServerConfig::busy_poll_us`](super::ServerConfig)): each saved a wake-up.
    pub calls_polled: u64,
    /// Calls answered by the transport itself with an error (bad header, unknown program),
    /// or dropped because their header was not a call.
    pub calls_rejected: u64,
    /// Calls a program answered with [`Outcome::Drop`](crate::Outcome::Drop).
    pub calls_dropped: u64,
    /// Calls executing or waiting for their reply to be written now.
    pub calls_inflight: u64,
    /// Replies written (TCP) or sent (UDP).
    pub replies: u64,
    /// Replies too large for the transport, replaced by SYSTEM_ERR.
    pub replies_too_large: u64,
    /// Bytes read from sockets (record marks included).
    pub bytes_in: u64,
    /// Bytes written to sockets (record marks included).
    pub bytes_out: u64,
    /// Times a connection or the UDP loop stopped reading because an in-flight bound was
    /// reached.
    pub backpressure_waits: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections_accepted: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_protocol_errors: AtomicU64,
    pub connections_idle_closed: AtomicU64,
    pub calls: AtomicU64,
    pub calls_polled: AtomicU64,
    pub calls_rejected: AtomicU64,
    pub calls_dropped: AtomicU64,
    pub calls_inflight: AtomicU64,
    pub replies: AtomicU64,
    pub replies_too_large: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub backpressure_waits: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// Subtracts one from a gauge.
pub(crate) fn drop_one(gauge: &AtomicU64) {
    let before = gauge.fetch_sub(1, Ordering::Relaxed);
    debug_assert!(before > 0, "gauge underflow");
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ServerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            connections_accepted: get(&self.connections_accepted),
            connections_rejected: get(&self.connections_rejected),
            connections_open: get(&self.connections_open),
            connections_protocol_errors: get(&self.connections_protocol_errors),
            connections_idle_closed: get(&self.connections_idle_closed),
            calls: get(&self.calls),
            calls_polled: get(&self.calls_polled),
            calls_rejected: get(&self.calls_rejected),
            calls_dropped: get(&self.calls_dropped),
            calls_inflight: get(&self.calls_inflight),
            replies: get(&self.replies),
            replies_too_large: get(&self.replies_too_large),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            backpressure_waits: get(&self.backpressure_waits),
        }
    }
}
