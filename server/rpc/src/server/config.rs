//! Bounds of an [`RpcServer`](super::RpcServer): every queue, buffer and wait has an explicit
//! limit here, with its unit in the name.

use std::time::Duration;

use twinfiler_proto::record::RECORD_BYTES_MAX;

/// Largest UDP payload over IPv4 (65,535 − 20-byte IP header − 8-byte UDP header). A reply
/// longer than this cannot be sent in one datagram; programs serving UDP (NFS READ, READDIR)
/// should cap their results with this in mind (see [`Call::transport`](crate::Call)).
pub const UDP_DATAGRAM_BYTES_MAX: usize = 65_507;

/// Largest reply the TCP transport sends (one record fragment holds < 2 GiB; we cap far lower
/// so a runaway program cannot make us write gigabytes): a 1 MiB READ plus headers fits.
pub const REPLY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most replies gathered into one batch of vectored writes.
pub const REPLIES_PER_WRITE_MAX: usize = 64;

/// Most buffers handed to one `writev` (Linux IOV_MAX; more is EINVAL). A batch with more
/// pieces (a READ of cached blocks has one per 4 KiB) takes several calls.
pub const IOVECS_PER_WRITE_MAX: usize = 1024;

/// A connection is polled for (see [`ServerConfig::busy_poll_us`]) once this many of its
/// calls in a row arrived with nothing else of it in flight.
pub const BUSY_POLL_AFTER_LONE_CALLS: u32 = 8;

/// Transport bounds of one [`RpcServer`](super::RpcServer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Most TCP connections open at once; more are accepted and closed at once, with a
    /// warning (a client stuck in the listen backlog would only time out later).
    pub connections_max: usize,
    /// Most calls of one TCP connection executing or waiting for their reply to be written.
    /// At the bound the connection is not read (back-pressure through TCP flow control).
    pub inflight_per_connection_max: usize,
    /// Most calls executing or waiting to be written, all connections and UDP together.
    pub inflight_total_max: usize,
    /// Most calls from UDP executing at once (UDP has no flow control: at the bound we stop
    /// receiving and the kernel drops datagrams, which clients retransmit).
    pub udp_inflight_max: usize,
    /// Largest record (sum of its fragments) a TCP client may send; a larger one closes the
    /// connection. At most [`RECORD_BYTES_MAX`] is sensible: 1 MiB WRITEs plus headers.
    pub record_bytes_max: usize,
    /// Read-ahead buffer of a TCP connection (several small calls are read in one syscall).
    pub read_buffer_bytes: usize,
    /// A TCP connection with nothing in flight and no complete record for this long is closed.
    pub idle_timeout_ms: u64,
    /// A reply write that makes no progress for this long closes the connection (a client
    /// that stopped reading must not pin our buffers forever).
    pub write_timeout_ms: u64,
    /// A TCP connection whose calls have all been answered polls its socket this long for
    /// the client's next call before it sleeps, µs (0: off). A client waiting for each
    /// reply then finds us awake: no wake-up from idle on the call's way in. Costs up to
    /// about this much CPU per reply. Only connections whose last
    /// [`BUSY_POLL_AFTER_LONE_CALLS`] calls came one at a time poll, and at most half the
    /// cores poll at once; see `server/busy_poll.rs`.
    pub busy_poll_us: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connections_max: 512,
            inflight_per_connection_max: 64,
            inflight_total_max: 1024,
            udp_inflight_max: 64,
            record_bytes_max: RECORD_BYTES_MAX,
            read_buffer_bytes: 64 * 1024,
            // Linux knfsd closes idle TCP connections after 6 minutes; clients reconnect.
            idle_timeout_ms: 6 * 60 * 1000,
            write_timeout_ms: 30 * 1000,
            busy_poll_us: 0,
        }
    }
}

/// A [`ServerConfig`] bound that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A bound is zero.
    #[error("server config: {field} must be at least 1")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// The per-connection bound exceeds the total one.
    #[error(
        "server config: inflight_per_connection_max ({per_connection}) exceeds \
         inflight_total_max ({total})"
    )]
    PerConnectionAboveTotal {
        /// Per-connection bound.
        per_connection: usize,
        /// Total bound.
        total: usize,
    },
    /// The record cap is larger than record marking can express.
    #[error("server config: record_bytes_max {0} must be below 2^31")]
    RecordTooLarge(usize),
}

impl ServerConfig {
    /// Checks that the bounds are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields = [
            ("connections_max", self.connections_max),
            (
                "inflight_per_connection_max",
                self.inflight_per_connection_max,
            ),
            ("inflight_total_max", self.inflight_total_max),
            ("udp_inflight_max", self.udp_inflight_max),
            ("record_bytes_max", self.record_bytes_max),
            ("read_buffer_bytes", self.read_buffer_bytes),
            ("idle_timeout_ms", self.idle_timeout_ms as usize),
            ("write_timeout_ms", self.write_timeout_ms as usize),
        ];
        if let Some((field, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero { field });
        }
        if self.inflight_per_connection_max > self.inflight_total_max {
            return Err(ConfigError::PerConnectionAboveTotal {
                per_connection: self.inflight_per_connection_max,
                total: self.inflight_total_max,
            });
        }
        if self.record_bytes_max >= 1 << 31 {
            return Err(ConfigError::RecordTooLarge(self.record_bytes_max));
        }
        Ok(())
    }

    /// [`Self::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// [`Self::busy_poll_us`] as a duration, if polling is on.
    pub fn busy_poll(&self) -> Option<Duration> {
        (self.busy_poll_us > 0).then(|| Duration::from_micros(self.busy_poll_us))
    }

    /// [`Self::write_timeout_ms`] as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
}
