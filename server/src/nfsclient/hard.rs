//! A "hard mount" transport, like a Linux NFS hard mount: a call never fails because the
//! server went away for a while. On connection loss or refusal it reconnects to the same
//! address (asking the portmapper again when the port is not fixed), from the same local port,
//! with a short random backoff and a bound on the total wait, and retransmits every call still
//! outstanding with the SAME xid — so the server's duplicate-request cache (which knows a
//! client by address, port and xid) answers a retransmitted non-idempotent call with its
//! original reply. A call with no reply on a live connection is retransmitted on it after a
//! growing interval (a server that lost it, or an address that moved: the retransmission
//! draws the RST that starts the reconnection). NFS3ERR_JUKEBOX is retried after a short
//! delay with a new xid (the server may cache the JUKEBOX reply under the old one).
//!
//! It measures what an application would see: every call that spanned a reconnection or took
//! long is kept as a [`Stall`], and every error status that reaches the caller is counted.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng as _;
use twinfiler_proto::nfs3::{NfsStat3, NFS_PROGRAM};
use twinfiler_proto::record::RECORD_MARK_BYTES;
use twinfiler_proto::rpc::Credential;

use super::rpc::{self, Reply, RpcConn};
use super::{getport, ClientError};

/// Bounds and intervals of a hard transport.
#[derive(Debug, Clone)]
pub struct HardOptions {
    /// One outage (no connection at all) may last this long before calls fail, ms.
    pub reconnect_wait_ms_max: u64,
    /// Random backoff between two connection attempts: at least this, ms.
    pub backoff_ms_min: u64,
    /// ... and at most this, ms.
    pub backoff_ms_max: u64,
    /// First retransmission of an unanswered call on a live connection after this long, ms.
    pub retransmit_ms_initial: u64,
    /// The retransmission interval doubles up to this, ms.
    pub retransmit_ms_max: u64,
    /// One call (all its retransmissions and reconnections) may take this long, ms.
    pub call_ms_max: u64,
    /// Wait before re-sending a call answered NFS3ERR_JUKEBOX, ms.
    pub jukebox_delay_ms: u64,
    /// JUKEBOX answers one call may get before the caller sees the error.
    pub jukebox_retries_max: u32,
    /// Calls that took at least this long are kept as stalls (besides every call that spanned
    /// a reconnection), ms.
    pub stall_record_ms: u64,
    /// Bind failures of the old local port before a reconnection takes any port (then the
    /// server's DRC no longer recognises our retransmissions: counted).
    pub same_port_attempts_max: u32,
}

impl Default for HardOptions {
    fn default() -> Self {
        HardOptions {
            reconnect_wait_ms_max: 60_000,
            backoff_ms_min: 10,
            backoff_ms_max: 50,
            retransmit_ms_initial: 500,
            retransmit_ms_max: 2_000,
            call_ms_max: 120_000,
            jukebox_delay_ms: 100,
            jukebox_retries_max: 600,
            stall_record_ms: 50,
            same_port_attempts_max: 50,
        }
    }
}

/// Stalls kept at most (the oldest are dropped beyond).
const STALLS_MAX: usize = 100_000;
/// Error descriptions kept at most for the report.
const ERROR_SAMPLES_MAX: usize = 32;

/// One call that an application would have noticed: it spanned a reconnection or took long.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    /// When the call was first sent.
    pub first_send: Instant,
    /// When its reply arrived.
    pub replied: Instant,
    /// It was retransmitted after a reconnection.
    pub reconnected: bool,
}

impl Stall {
    /// How long the caller waited.
    pub fn duration(&self) -> Duration {
        self.replied.duration_since(self.first_send)
    }
}

/// What a hard transport saw; shared, read while calls run.
#[derive(Debug, Default)]
pub struct HardStats {
    /// Calls completed (any outcome).
    pub calls: AtomicU64,
    /// Connections made after the first.
    pub reconnects: AtomicU64,
    /// Calls re-sent (after a reconnection or a retransmission interval).
    pub retransmits: AtomicU64,
    /// NFS3ERR_JUKEBOX answers retried.
    pub jukebox: AtomicU64,
    /// Errors the caller saw: an NFS error status, or the call failed.
    pub errors: AtomicU64,
    /// Reconnections that could not keep the local port.
    pub port_changes: AtomicU64,
    /// Longest wait of a call that spanned a reconnection, µs.
    pub max_reconnect_pause_us: AtomicU64,
    stalls: Mutex<VecDeque<Stall>>,
    error_samples: Mutex<Vec<String>>,
}

impl HardStats {
    /// The stalls recorded so far (oldest first).
    pub fn stalls(&self) -> Vec<Stall> {
        self.stalls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// The first errors seen, described.
    pub fn error_samples(&self) -> Vec<String> {
        self.error_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts an error the caller saw.
    pub fn count_error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%what, "client-visible error");
        let mut s = self.error_samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < ERROR_SAMPLES_MAX {
            s.push(what);
        }
    }

    fn record_stall(&self, stall: Stall) {
        if stall.reconnected {
            let us = u64::try_from(stall.duration().as_micros()).unwrap_or(u64::MAX);
            self.max_reconnect_pause_us.fetch_max(us, Ordering::Relaxed);
        }
        let mut s = self.stalls.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() >= STALLS_MAX {
            s.pop_front();
        }
        s.push_back(stall);
    }

    /// The longest wait of any call sent or answered within `[from, to]`, counting only the
    /// part after `from` (a call sent before the window counts from the window's start).
    pub fn longest_pause_within(&self, from: Instant, to: Instant) -> Duration {
        self.stalls()
            .iter()
            .filter(|s| s.replied >= from && s.first_send <= to)
            .map(|s| s.replied.duration_since(s.first_send.max(from)))
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

/// Where the transport connects.
#[derive(Debug, Clone)]
pub struct HardTarget {
    /// Server address (the data address: it may move between nodes).
    pub ip: IpAddr,
    /// Its portmapper port, asked when `port` is `None` (also after a refusal).
    pub portmap_port: u16,
    /// The program's port if fixed.
    pub port: Option<u16>,
    /// Program and version (for the portmapper).
    pub prog: u32,
    /// Version.
    pub vers: u32,
}

/// The current connection and how many connections came before it.
struct Slot {
    conn: Option<Arc<RpcConn>>,
    generation: u64,
}

/// A reconnecting, retransmitting RPC transport for one program on one server address.
pub struct HardConn {
    target: HardTarget,
    cred: Credential,
    opts: HardOptions,
    slot: tokio::sync::Mutex<Slot>,
    /// The port last learned (fixed, or from the portmapper); 0 = ask.
    port: AtomicU16,
    /// Our local port, kept across reconnections; 0 = not yet chosen.
    local_port: AtomicU16,
    xid: AtomicU32,
    stats: Arc<HardStats>,
}

/// The NFS status a reply carries (the first word of every NFSv3 result but NULL's).
fn nfs_status(reply: &Reply) -> Option<u32> {
    let r = reply.results();
    let w = r.get(..4)?;
    Some(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

impl HardConn {
    /// Connects (bounded like a reconnection) and returns the transport.
    pub async fn connect(
        target: HardTarget,
        cred: Credential,
        opts: HardOptions,
    ) -> Result<Self, ClientError> {
        assert!(opts.backoff_ms_min <= opts.backoff_ms_max);
        assert!(
            opts.retransmit_ms_initial > 0 && opts.retransmit_ms_initial <= opts.retransmit_ms_max
        );
        let c = HardConn {
            port: AtomicU16::new(target.port.unwrap_or(0)),
            target,
            cred,
            opts,
            slot: tokio::sync::Mutex::new(Slot {
                conn: None,
                generation: 0,
            }),
            local_port: AtomicU16::new(0),
            xid: AtomicU32::new(rpc::xid_seed()),
            stats: Arc::new(HardStats::default()),
        };
        c.reconnect(0).await?;
        Ok(c)
    }

    /// What this transport saw so far.
    pub fn stats(&self) -> &Arc<HardStats> {
        &self.stats
    }

    /// The local address calls come from (the server's view of this client).
    pub async fn local_addr(&self) -> Option<SocketAddr> {
        self.slot.lock().await.conn.as_ref().map(|c| c.local_addr())
    }

    /// Calls `prog`/`vers`/`proc_`; rides through server restarts and address moves (bounded
    /// by [`HardOptions::call_ms_max`]). Counts an error the caller will see.
    pub async fn call(
        &self,
        prog: u32,
        vers: u32,
        proc_: u32,
        encode_args: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Reply, ClientError> {
        let r = self.call_inner(prog, vers, proc_, encode_args).await;
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        match &r {
            Err(e) => self
                .stats
                .count_error(format!("prog {prog} proc {proc_}: {e}")),
            Ok(reply) if prog == NFS_PROGRAM && proc_ != 0 => {
                if let Some(stat) = nfs_status(reply).filter(|s| *s != 0) {
                    self.stats.count_error(format!(
                        "NFS proc {proc_}: status {:?}",
                        NfsStat3::from_u32(stat).ok_or(stat)
                    ));
                }
            }
            Ok(_) => {}
        }
        r
    }

    async fn call_inner(
        &self,
        prog: u32,
        vers: u32,
        proc_: u32,
        encode_args: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Reply, ClientError> {
        let first_send = Instant::now();
        let mut xid = self.xid.fetch_add(1, Ordering::Relaxed);
        let mut msg = rpc::encode_call(xid, prog, vers, proc_, &self.cred, encode_args)?;
        let mut jukebox = 0u32;
        loop {
            let (record, reconnected) = self.transmit(xid, &msg, first_send).await?;
            let reply = rpc::accept_reply(record)?;
            let is_jukebox = prog == NFS_PROGRAM
                && proc_ != 0
                && nfs_status(&reply) == Some(NfsStat3::Jukebox as u32);
            if is_jukebox && jukebox < self.opts.jukebox_retries_max {
                jukebox += 1;
                self.stats.jukebox.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(self.opts.jukebox_delay_ms)).await;
                // A new xid: the server may have cached the JUKEBOX reply under the old one.
                xid = self.xid.fetch_add(1, Ordering::Relaxed);
                msg[RECORD_MARK_BYTES..RECORD_MARK_BYTES + 4].copy_from_slice(&xid.to_be_bytes());
                continue;
            }
            let stall = Stall {
                first_send,
                replied: Instant::now(),
                reconnected: reconnected || jukebox > 0,
            };
            if stall.reconnected
                || stall.duration() >= Duration::from_millis(self.opts.stall_record_ms)
            {
                self.stats.record_stall(stall);
            }
            return Ok(reply);
        }
    }

    /// Sends `msg` (the call `xid`) until a reply comes; returns it and whether a
    /// reconnection happened meanwhile.
    async fn transmit(
        &self,
        xid: u32,
        msg: &[u8],
        first_send: Instant,
    ) -> Result<(Bytes, bool), ClientError> {
        let deadline = first_send + Duration::from_millis(self.opts.call_ms_max);
        let mut reconnected = false;
        let (mut conn, mut generation) = self.current().await?;
        let mut interval = Duration::from_millis(self.opts.retransmit_ms_initial);
        let mut sends = 0u64;
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    what: "call (with retransmissions)",
                    ms: self.opts.call_ms_max,
                });
            }
            // Register, then send: a fast reply is not missed.
            let sent = match conn.register(xid) {
                Ok(rx) => conn.send(msg).await.map(|()| rx),
                Err(e) => Err(e),
            };
            sends += 1;
            if sends > 1 {
                self.stats.retransmits.fetch_add(1, Ordering::Relaxed);
            }
            let mut rx = match sent {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::debug!(xid, error = %e, "send failed; reconnecting");
                    conn.forget(xid);
                    (conn, generation) = self.reconnect(generation).await?;
                    reconnected = true;
                    continue;
                }
            };
            // Wait, retransmitting on the same connection each interval, until the reply,
            // the connection's end or the deadline.
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(interval.min(left), &mut rx).await {
                    Ok(Ok(record)) => return Ok((record, reconnected)),
                    Ok(Err(_closed)) => {
                        (conn, generation) = self.reconnect(generation).await?;
                        reconnected = true;
                        break;
                    }
                    Err(_elapsed) => {
                        if Instant::now() >= deadline {
                            conn.forget(xid);
                            break;
                        }
                        interval =
                            (interval * 2).min(Duration::from_millis(self.opts.retransmit_ms_max));
                        self.stats.retransmits.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = conn.send(msg).await {
                            tracing::debug!(xid, error = %e, "retransmission failed; reconnecting");
                            conn.forget(xid);
                            (conn, generation) = self.reconnect(generation).await?;
                            reconnected = true;
                            break;
                        }
                    }
                }
            }
            // The outer loop registers and sends again (on the new connection), or stops at
            // the deadline.
        }
    }

    /// The current connection, connecting if there is none.
    async fn current(&self) -> Result<(Arc<RpcConn>, u64), ClientError> {
        let generation = {
            let slot = self.slot.lock().await;
            match &slot.conn {
                Some(c) if !c.is_closed() => return Ok((c.clone(), slot.generation)),
                _ => slot.generation,
            }
        };
        self.reconnect(generation).await
    }

    /// Replaces connection `generation` by a new one (unless another call already did:
    /// then that one is returned). Bounded by [`HardOptions::reconnect_wait_ms_max`].
    async fn reconnect(&self, generation: u64) -> Result<(Arc<RpcConn>, u64), ClientError> {
        let mut slot = self.slot.lock().await;
        if slot.generation != generation {
            if let Some(c) = slot.conn.as_ref().filter(|c| !c.is_closed()) {
                return Ok((c.clone(), slot.generation));
            }
        }
        if slot.generation == generation {
            if let Some(old) = slot.conn.take() {
                // Frees our local port even while other calls still hold the old connection.
                old.close().await;
            }
        }
        let start = Instant::now();
        let bound = Duration::from_millis(self.opts.reconnect_wait_ms_max);
        let mut same_port_failures = 0u32;
        let mut last_error = String::new();
        loop {
            if start.elapsed() >= bound {
                tracing::warn!(error = %last_error, "server unreachable");
                return Err(ClientError::Timeout {
                    what: "reconnection",
                    ms: self.opts.reconnect_wait_ms_max,
                });
            }
            match self.try_connect(same_port_failures).await {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    let local = conn.local_addr().port();
                    let old = self.local_port.swap(local, Ordering::Relaxed);
                    if old != 0 && old != local {
                        self.stats.port_changes.fetch_add(1, Ordering::Relaxed);
                    }
                    if slot.generation > 0 {
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            after_ms = start.elapsed().as_millis() as u64,
                            "reconnected"
                        );
                    }
                    slot.generation += 1;
                    slot.conn = Some(conn.clone());
                    return Ok((conn, slot.generation));
                }
                Err(e) => {
                    if let ClientError::Io(io) = &e {
                        if matches!(
                            io.raw_os_error(),
                            Some(libc::EADDRINUSE) | Some(libc::EADDRNOTAVAIL)
                        ) {
                            same_port_failures += 1;
                        }
                        if io.kind() == std::io::ErrorKind::ConnectionRefused
                            && self.target.port.is_none()
                        {
                            // The program may have moved: ask again next time.
                            self.port.store(0, Ordering::Relaxed);
                        }
                    }
                    last_error = e.to_string();
                }
            }
            let ms =
                rand::thread_rng().gen_range(self.opts.backoff_ms_min..=self.opts.backoff_ms_max);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    async fn try_connect(&self, same_port_failures: u32) -> Result<RpcConn, ClientError> {
        let mut port = self.port.load(Ordering::Relaxed);
        if port == 0 {
            port = getport(
                self.target.ip,
                self.target.portmap_port,
                self.target.prog,
                self.target.vers,
            )
            .await?;
            self.port.store(port, Ordering::Relaxed);
        }
        let local = match self.local_port.load(Ordering::Relaxed) {
            0 => None,
            _ if same_port_failures >= self.opts.same_port_attempts_max => None,
            p => Some(p),
        };
        RpcConn::connect_from(
            SocketAddr::new(self.target.ip, port),
            self.cred.clone(),
            local,
        )
        .await
    }
}
