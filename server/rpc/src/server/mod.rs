//! The ONC RPC server: TCP (record marking) and UDP listeners that route calls by program
//! number to registered [`Program`]s, within explicit bounds ([`ServerConfig`]).
//!
//! # Shape
//!
//! - One accept task per TCP listener; per connection one **reader** task and one **writer**
//!   task. The reader frames records (a record sent as one fragment — every real client's
//!   case — is handed over as a slice of the read buffer, without a copy; multi-fragment
//!   records go through `twinfiler_proto::record::RecordDecoder`), takes an in-flight permit
//!   (per connection, then total) and spawns one task per call. Each call task runs the
//!   program and hands the reply, with its permit, to the connection's writer over a channel
//!   whose capacity equals the per-connection bound. The writer gathers whatever replies are
//!   ready (up to [`REPLIES_PER_WRITE_MAX`]) and writes them with vectored writes (record
//!   mark + head + data each): replies never interleave, and they go out in completion
//!   order, not request order (RPC allows it; Linux relies on it for parallel READs).
//! - **Back-pressure**: a call holds its permits until its reply has been written. When a
//!   bound is reached the reader waits for a permit and does not read the socket, so TCP flow
//!   control slows the client. There is no unbounded queue anywhere.
//! - **Memory bound**: per connection, the read buffer (`read_buffer_bytes`) plus one record
//!   being framed or waiting for its permit (≤ `record_bytes_max`; the buffer for a record
//!   is reserved when its fragment header arrives); plus, server-wide, `inflight_total_max`
//!   calls with their records and replies (≤ [`REPLY_BYTES_MAX`] each).
//! - **UDP**: one task per socket receives a datagram (= one call) only while it holds a
//!   permit of the socket's bound (`udp_inflight_max`), then takes a total permit, spawns
//!   the call, and the call task sends the reply as one datagram. A reply longer than
//!   [`UDP_DATAGRAM_BYTES_MAX`] is replaced by SYSTEM_ERR (with a warning): the client learns
//!   at once instead of retransmitting into silence. MOUNT and portmap replies fit; NFS over
//!   UDP must cap READ/READDIR sizes (its [`Call::transport`] says UDP).
//! - **Errors**: a malformed call header gets the reply `CallError::reply` names (or none);
//!   an unknown program PROG_UNAVAIL; a framing violation (oversized or too many fragments,
//!   EOF inside a record) closes the connection at once. A panicking program gets its client
//!   SYSTEM_ERR. Warnings caused by clients are rate-limited.
//! - **Stop** ([`RpcServer::stop`]): listeners close, readers stop reading, calls in flight
//!   finish and their replies are written; after the grace period whatever is left is
//!   abandoned (call futures dropped, connections closed).

mod busy_poll;
mod config;
mod stats;
mod tasks;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, debug_span, warn, Instrument};
use twinfiler_proto::rpc::{decode_call, AcceptStat, ReplyHeader};

pub use config::{
    ConfigError, ServerConfig, BUSY_POLL_AFTER_LONE_CALLS, IOVECS_PER_WRITE_MAX,
    REPLIES_PER_WRITE_MAX, REPLY_BYTES_MAX, UDP_DATAGRAM_BYTES_MAX,
};
pub use stats::ServerStats;

use crate::{Call, Outcome, Program, Reply, Transport};
use stats::{bump, Counters};
use tasks::{Phase, TaskCounter, WarnLimiter};

/// How long `stop` waits for abandoned tasks to notice, after the grace period.
const STOP_ABANDON_WAIT_MS: u64 = 1000;

/// State shared by every task of one server.
pub(crate) struct Shared {
    config: ServerConfig,
    programs: RwLock<HashMap<u32, Arc<dyn Program>>>,
    counters: Counters,
    /// Permits for calls in flight, all transports together.
    inflight_total: Arc<Semaphore>,
    /// Permits for open TCP connections.
    connections: Arc<Semaphore>,
    phase: watch::Sender<Phase>,
    tasks: Arc<TaskCounter>,
    /// Keeps misbehaving clients from flooding the log with protocol warnings.
    warnings: WarnLimiter,
    /// Open TCP connections by id (bounded by `connections_max`), for [`RpcServer::peers`].
    peers: std::sync::Mutex<HashMap<u64, Peer>>,
    /// Id of the next TCP connection.
    next_connection_id: std::sync::atomic::AtomicU64,
    /// Bounds the connections busy polling at once.
    poll_slots: busy_poll::PollSlots,
}

/// A connected TCP client (see [`RpcServer::peers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Our address it connected to (which identity of the node).
    pub local: SocketAddr,
    /// When the connection was accepted.
    pub since: std::time::SystemTime,
}

impl Shared {
    fn program(&self, prog: u32) -> Option<Arc<dyn Program>> {
        // A poisoned lock means a register() panicked mid-insert; the map is still valid.
        let programs = self.programs.read().unwrap_or_else(|e| e.into_inner());
        programs.get(&prog).cloned()
    }

    /// Records an accepted connection; returns its id for [`Shared::connection_closed`].
    fn connection_opened(&self, addr: SocketAddr, local: SocketAddr) -> u64 {
        use std::sync::atomic::Ordering;
        let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let peer = Peer {
            addr,
            local,
            since: std::time::SystemTime::now(),
        };
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.insert(id, peer);
        debug_assert!(peers.len() <= self.config.connections_max);
        id
    }

    fn connection_closed(&self, id: u64) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.remove(&id);
    }

    fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Decodes the call header of `record`, routes it and runs the program. Returns the reply
    /// to send, or `None` to send nothing.
    async fn dispatch(
        &self,
        record: Bytes,
        peer: SocketAddr,
        local: SocketAddr,
        transport: Transport,
    ) -> Option<Reply> {
        bump(&self.counters.calls);
        let (header, args_offset) = match decode_call(&record) {
            Ok(decoded) => decoded,
            Err(err) => {
                bump(&self.counters.calls_rejected);
                if self.warnings.allow() {
                    warn!(%peer, ?transport, error = %err, "malformed RPC call");
                } else {
                    debug!(%peer, ?transport, error = %err, "malformed RPC call");
                }
                return err.reply().map(|head| Reply::header_only(&head));
            }
        };
        let Some(program) = self.program(header.prog) else {
            bump(&self.counters.calls_rejected);
            debug!(%peer, xid = header.xid, prog = header.prog, "program unavailable");
            let head = ReplyHeader::accepted(header.xid, AcceptStat::ProgUnavail);
            return Some(Reply::header_only(&head));
        };
        let span = debug_span!(
            "rpc",
            %peer,
            xid = header.xid,
            prog = header.prog,
            vers = header.vers,
            proc = header.proc_,
        );
        let call = Call {
            header,
            record,
            args_offset,
            peer,
            local,
            transport,
        };
        let xid = call.header.xid;
        // A panicking program is a bug; the client still gets an answer, and the connection
        // and the permits survive.
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| program.call(call))) {
            Ok(future) => {
                AssertUnwindSafe(future.instrument(span))
                    .catch_unwind()
                    .await
            }
            Err(panic) => Err(panic),
        };
        match outcome {
            Ok(Outcome::Reply(reply)) => Some(reply),
            Ok(Outcome::Drop) => {
                bump(&self.counters.calls_dropped);
                None
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(%peer, xid, panic = %what, "RPC program panicked; replying SYSTEM_ERR");
                Some(system_err(xid))
            }
        }
    }
}

/// The SYSTEM_ERR reply replacing one the transport cannot carry.
fn system_err(xid: u32) -> Reply {
    Reply::header_only(&ReplyHeader::accepted(xid, AcceptStat::SystemErr))
}

/// The xid of a reply (its first word), if it has one.
fn reply_xid(reply: &Reply) -> Option<u32> {
    let word = reply.head.get(..4)?;
    Some(u32::from_be_bytes(word.try_into().ok()?))
}

/// What [`RpcServer::stop`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopReport {
    /// Every call in flight finished and every connection closed within the grace period.
    pub drained: bool,
    /// Tasks still alive when `stop` returned (0 unless a program ignores cancellation by
    /// blocking a runtime thread).
    pub tasks_left: usize,
}

/// An ONC RPC server: register programs, then listen on TCP and UDP addresses. Cloning gives
/// another handle to the same server.
#[derive(Clone)]
pub struct RpcServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RpcServer {
    /// A server with these bounds and no programs.
    pub fn new(config: ServerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let (phase, _) = watch::channel(Phase::Running);
        let shared = Shared {
            inflight_total: Arc::new(Semaphore::new(config.inflight_total_max)),
            connections: Arc::new(Semaphore::new(config.connections_max)),
            config,
            programs: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            phase,
            tasks: Arc::new(TaskCounter::default()),
            warnings: WarnLimiter::new(),
            peers: std::sync::Mutex::new(HashMap::new()),
            next_connection_id: std::sync::atomic::AtomicU64::new(0),
            poll_slots: busy_poll::PollSlots::for_this_machine(),
        };
        Ok(RpcServer {
            shared: Arc::new(shared),
        })
    }

    /// Serves `program` under program number `prog` on every listener (also on listeners
    /// already running). Returns the program it replaces, if any.
    pub fn register(&self, prog: u32, program: Arc<dyn Program>) -> Option<Arc<dyn Program>> {
        let mut programs = self
            .shared
            .programs
            .write()
            .unwrap_or_else(|e| e.into_inner());
        programs.insert(prog, program)
    }

    /// Stops serving `prog`; its calls get PROG_UNAVAIL from now on.
    pub fn unregister(&self, prog: u32) -> Option<Arc<dyn Program>> {
        let mut programs = self
            .shared
            .programs
            .write()
            .unwrap_or_else(|e| e.into_inner());
        programs.remove(&prog)
    }

    /// The bounds in force.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }

    /// The clients connected over TCP now, oldest first (for an operator's "connected
    /// clients"). UDP has no connections: its clients are not listed.
    pub fn peers(&self) -> Vec<Peer> {
        let peers = self.shared.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<(u64, Peer)> = peers.iter().map(|(id, p)| (*id, *p)).collect();
        drop(peers);
        list.sort_unstable_by_key(|(id, _)| *id);
        list.into_iter().map(|(_, p)| p).collect()
    }

    fn ensure_running(&self) -> io::Result<()> {
        if *self.shared.phase.borrow() == Phase::Running {
            Ok(())
        } else {
            Err(io::Error::other("RPC server is stopping"))
        }
    }

    /// Listens for TCP connections on `addr` (port 0 picks a free port) and returns the
    /// address actually bound. Must be called inside a tokio runtime.
    ///
    /// Bind a specific address (the identity's), not a wildcard: replies to rpcbind GETADDR
    /// name the address the call arrived on, which for TCP is always known, but for UDP only
    /// when the socket is bound to it.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.ensure_running()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.serve_tcp_listener(listener)
    }

    /// Serves a TCP listener built by the caller (special socket options, an inherited
    /// socket). Returns its local address.
    pub fn serve_tcp_listener(&self, listener: tokio::net::TcpListener) -> io::Result<SocketAddr> {
        self.ensure_running()?;
        let local = listener.local_addr()?;
        tracing::info!(%local, "RPC server listening on TCP");
        let shared = self.shared.clone();
        self.shared
            .tasks
            .spawn(tcp::accept_loop(shared, listener, local));
        Ok(local)
    }

    /// Listens for UDP datagrams on `addr` (port 0 picks a free port) and returns the address
    /// actually bound. Must be called inside a tokio runtime.
    pub async fn listen_udp(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.ensure_running()?;
        let socket = tokio::net::UdpSocket::bind(addr).await?;
        self.serve_udp_socket(socket)
    }

    /// Serves a UDP socket built by the caller. Returns its local address.
    pub fn serve_udp_socket(&self, socket: tokio::net::UdpSocket) -> io::Result<SocketAddr> {
        self.ensure_running()?;
        let local = socket.local_addr()?;
        if local.ip().is_unspecified() {
            warn!(
                %local,
                "UDP bound to a wildcard address: calls cannot tell which local address they \
                 arrived on (rpcbind GETADDR over UDP will name {})",
                local.ip()
            );
        }
        tracing::info!(%local, "RPC server listening on UDP");
        let shared = self.shared.clone();
        self.shared
            .tasks
            .spawn(udp::serve(shared, Arc::new(socket), local));
        Ok(local)
    }

    /// Stops the server: listeners close and no new call is read at once; calls in flight
    /// get up to `grace` to finish and have their replies written. Then whatever is left is
    /// abandoned (call futures dropped, connections closed). Idempotent.
    pub async fn stop(&self, grace: Duration) -> StopReport {
        self.shared.phase.send_if_modified(|p| {
            let was_running = *p == Phase::Running;
            if was_running {
                *p = Phase::Draining;
            }
            was_running
        });
        let tasks = &self.shared.tasks;
        let drained = tokio::time::timeout(grace, tasks.wait_idle()).await.is_ok();
        if !drained {
            warn!(
                tasks = tasks.live(),
                grace_ms = grace.as_millis() as u64,
                "RPC server stop: grace period over, abandoning calls in flight"
            );
            self.shared.phase.send_replace(Phase::Stopped);
            let abandon = Duration::from_millis(STOP_ABANDON_WAIT_MS);
            let _ = tokio::time::timeout(abandon, tasks.wait_idle()).await;
        }
        StopReport {
            drained,
            tasks_left: tasks.live(),
        }
    }
}

/// Takes the permits of one call: its share of `local` (the connection's or the UDP
/// socket's bound), then of the server total. Waits (without reading) while either is
/// exhausted.
async fn take_call_permit(shared: &Arc<Shared>, local: &Arc<Semaphore>) -> tasks::CallPermit {
    let local = tasks::acquire(local, &shared.counters).await;
    complete_call_permit(shared, local).await
}

/// Adds a permit of the server total to a `local` one already held.
async fn complete_call_permit(
    shared: &Arc<Shared>,
    local: tokio::sync::OwnedSemaphorePermit,
) -> tasks::CallPermit {
    let total = tasks::acquire(&shared.inflight_total, &shared.counters).await;
    tasks::CallPermit::new(local, total, shared.clone())
}

/// Checks a program's reply against what the transport can carry; replaces an oversized one
/// with SYSTEM_ERR. `None` for a reply without even an xid (a program bug: nothing to send).
fn checked_reply(
    shared: &Shared,
    reply: Reply,
    bytes_max: usize,
    peer: SocketAddr,
) -> Option<Reply> {
    let Some(xid) = reply_xid(&reply) else {
        tracing::error!(%peer, len = reply.len(), "program returned a reply without an xid; dropped");
        return None;
    };
    if reply.len() <= bytes_max {
        return Some(reply);
    }
    bump(&shared.counters.replies_too_large);
    warn!(%peer, xid, len = reply.len(), max = bytes_max, "reply too large for the transport; sending SYSTEM_ERR");
    Some(system_err(xid))
}
