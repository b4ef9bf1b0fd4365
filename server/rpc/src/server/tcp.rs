//! TCP: the accept loop, and per connection a reader task (framing, permits, one task per
//! call) and a writer task (vectored writes of ready replies, in completion order).
//!
//! A reader whose client waits for each reply may poll the socket before it sleeps; see
//! [`busy_poll`](super::busy_poll).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, debug_span, warn, Instrument};
use twinfiler_proto::record::record_mark;

use super::busy_poll::{poll_for_record, Pending, Unanswered};
use super::stats::{add, bump, drop_one};
use super::tasks::{reached, CallPermit, Phase};
use super::{
    checked_reply, take_call_permit, Shared, BUSY_POLL_AFTER_LONE_CALLS, IOVECS_PER_WRITE_MAX,
    REPLIES_PER_WRITE_MAX, REPLY_BYTES_MAX,
};
use crate::framing::{FrameError, RecordReader};
use crate::{Reply, Transport};

/// Pause after a failed accept (e.g. EMFILE), so a persistent error does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// Accepts connections until the server drains.
pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, local: SocketAddr) {
    let draining = reached(shared.phase(), Phase::Draining);
    tokio::pin!(draining);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut draining => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(%local, error = %err, "TCP accept failed");
                tokio::select! {
                    _ = &mut draining => break,
                    _ = tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)) => {}
                }
                continue;
            }
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            bump(&shared.counters.connections_rejected);
            if shared.warnings.allow() {
                warn!(
                    %peer,
                    %local,
                    connections_max = shared.config.connections_max,
                    "too many TCP connections; closing the new one"
                );
            }
            continue;
        };
        bump(&shared.counters.connections_accepted);
        // Small replies must not wait for Nagle: RPC is request/response.
        let _ = stream.set_nodelay(true);
        let conn_local = stream.local_addr().unwrap_or(local);
        start_connection(&shared, stream, peer, conn_local, permit);
    }
    debug!(%local, "TCP listener closed");
}

/// Open connection bookkeeping, shared by its reader and writer; dropped when both end.
struct ConnGuard {
    shared: Arc<Shared>,
    /// The connection's id in the server's peer list.
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.connection_closed(self.id);
        drop_one(&self.shared.counters.connections_open);
        debug!("connection closed");
    }
}

/// A reply on its way to the writer, with the permits of its call (released once written).
struct Outgoing {
    reply: Reply,
    _permit: CallPermit,
    /// Dropped by the writer right before the write: the call counts as answered.
    pending: Option<Pending>,
}

fn start_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    bump(&shared.counters.connections_open);
    let span = debug_span!("rpc_conn", %peer, %local);
    span.in_scope(|| debug!("connection accepted"));
    let guard = Arc::new(ConnGuard {
        shared: shared.clone(),
        id: shared.connection_opened(peer, local),
        _permit: permit,
    });
    let (read_half, write_half) = stream.into_split();
    // Capacity = the per-connection bound: every sender holds a permit, so sends never wait.
    let (tx, rx) = mpsc::channel(shared.config.inflight_per_connection_max);
    let abort = Arc::new(Notify::new());
    let conn = Connection {
        shared: shared.clone(),
        peer,
        local,
        inflight: Arc::new(Semaphore::new(shared.config.inflight_per_connection_max)),
        unanswered: Arc::new(Unanswered::default()),
    };
    shared.tasks.spawn(
        write_replies(shared.clone(), write_half, rx, abort.clone(), guard.clone())
            .instrument(span.clone()),
    );
    shared.tasks.spawn(
        conn.read_calls(read_half, tx, abort, guard)
            .instrument(span),
    );
}

/// The reader side of one connection.
struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: SocketAddr,
    /// This connection's share of in-flight calls.
    inflight: Arc<Semaphore>,
    /// Its calls not yet answered (for busy polling).
    unanswered: Arc<Unanswered>,
}

impl Connection {
    fn calls_inflight(&self) -> usize {
        self.shared.config.inflight_per_connection_max - self.inflight.available_permits()
    }

    /// Reads records and starts their calls until the stream ends, breaks the protocol, idles
    /// out, the writer fails, or the server drains.
    async fn read_calls(
        self,
        mut read_half: OwnedReadHalf,
        tx: mpsc::Sender<Outgoing>,
        abort: Arc<Notify>,
        _guard: Arc<ConnGuard>,
    ) {
        let shared = self.shared.clone();
        let config = &shared.config;
        let mut reader = RecordReader::new(config.record_bytes_max, config.read_buffer_bytes);
        let draining = reached(shared.phase(), Phase::Draining);
        tokio::pin!(draining);
        let busy_poll = config.busy_poll();
        // Calls in a row that found nothing else of this connection in flight: a client
        // that waits for each reply. Only such a client is polled for; one with calls in
        // flight sends its next while we work, and a poll would only take CPU from them.
        let mut lone_calls = 0u32;
        loop {
            let polls = busy_poll.filter(|_| lone_calls >= BUSY_POLL_AFTER_LONE_CALLS);
            let polled = match polls {
                Some(budget) if self.unanswered.count() == 0 => {
                    poll_for_record(&shared, &mut reader, &read_half, budget).await
                }
                _ => Ok(None),
            };
            let next = match polled {
                Ok(Some(record)) => {
                    bump(&shared.counters.calls_polled);
                    Ok(Ok(Some(record)))
                }
                Err(err) => Ok(Err(err)),
                Ok(None) => tokio::select! {
                    biased;
                    _ = &mut draining => break,
                    _ = tx.closed() => break,
                    // The last call was answered while we slept: poll for the next one.
                    _ = self.unanswered.none_left(), if polls.is_some() => continue,
                    next = tokio::time::timeout(
                        config.idle_timeout(),
                        reader.next_record(&mut read_half, &shared.counters.bytes_in),
                    ) => next,
                },
            };
            let record = match next {
                Err(_idle) => {
                    // Calls in flight (a slow COMMIT) mean the client is waiting, not idle.
                    if self.calls_inflight() > 0 {
                        continue;
                    }
                    bump(&shared.counters.connections_idle_closed);
                    debug!(
                        idle_timeout_ms = config.idle_timeout_ms,
                        "closing idle connection"
                    );
                    break;
                }
                Ok(Ok(Some(record))) => record,
                Ok(Ok(None)) => {
                    debug!("peer closed the connection");
                    break;
                }
                Ok(Err(FrameError::Io(err))) => {
                    debug!(error = %err, "read failed");
                    break;
                }
                Ok(Err(err)) => {
                    bump(&shared.counters.connections_protocol_errors);
                    if shared.warnings.allow() {
                        warn!(error = %err, "closing connection: RPC record-marking violation");
                    }
                    // Close now: record marking cannot resynchronise, and replies still
                    // in flight would go to a client that is broken or hostile.
                    abort.notify_one();
                    break;
                }
            };
            lone_calls = match self.unanswered.count() {
                0 => lone_calls.saturating_add(1),
                _ => 0,
            };
            let pending = Pending::new(&self.unanswered);
            // Back-pressure: no read happens while we wait here.
            let permit = tokio::select! {
                biased;
                _ = &mut draining => break,
                _ = tx.closed() => break,
                permit = take_call_permit(&shared, &self.inflight) => permit,
            };
            let call = run_call(
                shared.clone(),
                record,
                self.peer,
                self.local,
                (permit, pending),
                tx.clone(),
            );
            shared.tasks.spawn(call.in_current_span());
        }
    }
}

/// Runs one call and queues its reply for the writer.
async fn run_call(
    shared: Arc<Shared>,
    record: bytes::Bytes,
    peer: SocketAddr,
    local: SocketAddr,
    (permit, pending): (CallPermit, Pending),
    tx: mpsc::Sender<Outgoing>,
) {
    let stopped = reached(shared.phase(), Phase::Stopped);
    let reply = tokio::select! {
        biased;
        reply = shared.dispatch(record, peer, local, Transport::Tcp) => reply,
        _ = stopped => return,
    };
    let Some(reply) = reply.and_then(|r| checked_reply(&shared, r, REPLY_BYTES_MAX, peer)) else {
        return;
    };
    // Fails only if the writer is gone (connection closed): the reply has nowhere to go.
    let _ = tx
        .send(Outgoing {
            reply,
            _permit: permit,
            pending: Some(pending),
        })
        .await;
}

/// Writes replies as they complete, several per vectored write, until every sender is gone
/// (reader and calls ended), the connection is aborted, or the server stops.
async fn write_replies(
    shared: Arc<Shared>,
    mut write_half: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    abort: Arc<Notify>,
    _guard: Arc<ConnGuard>,
) {
    let stopped = reached(shared.phase(), Phase::Stopped);
    tokio::pin!(stopped);
    let mut batch: Vec<Outgoing> = Vec::with_capacity(REPLIES_PER_WRITE_MAX);
    loop {
        let first = tokio::select! {
            biased;
            _ = abort.notified() => break,
            _ = &mut stopped => break,
            first = rx.recv() => match first {
                Some(first) => first,
                None => break,
            },
        };
        batch.push(first);
        while batch.len() < REPLIES_PER_WRITE_MAX {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        // Answered now, not after the write: a client waiting for this reply may send its
        // next call before the write returns, and that call must not find this one pending.
        for o in &mut batch {
            o.pending = None;
        }
        let written = tokio::select! {
            biased;
            _ = abort.notified() => break,
            _ = &mut stopped => break,
            written = write_batch(&mut write_half, &batch, shared.config.write_timeout()) => written,
        };
        match written {
            Ok(bytes) => {
                add(&shared.counters.bytes_out, bytes);
                add(&shared.counters.replies, batch.len());
            }
            Err(err) if err.kind() == io::ErrorKind::TimedOut => {
                warn!(
                    write_timeout_ms = shared.config.write_timeout_ms,
                    "client stopped reading replies; closing connection"
                );
                break;
            }
            Err(err) => {
                debug!(error = %err, "reply write failed");
                break;
            }
        }
        // Releases the calls' permits: the reader may read again.
        batch.clear();
    }
    // Dropping `rx` fails later sends and wakes the reader (tx.closed()); dropping the write
    // half sends FIN.
}

/// Writes every reply of `batch` (record mark, head, data) with vectored writes. Each write
/// must make progress within `timeout`. Returns the bytes written.
async fn write_batch(
    w: &mut OwnedWriteHalf,
    batch: &[Outgoing],
    timeout: Duration,
) -> io::Result<usize> {
    let marks: Vec<[u8; 4]> = batch
        .iter()
        .map(|o| record_mark(o.reply.len(), true))
        .collect();
    let pieces: usize = batch.iter().map(|o| 2 + o.reply.data.len()).sum();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(pieces);
    for (o, mark) in batch.iter().zip(&marks) {
        slices.push(IoSlice::new(mark));
        let parts = std::iter::once(&o.reply.head[..]).chain(o.reply.data.iter().map(|d| &d[..]));
        for part in parts {
            if !part.is_empty() {
                slices.push(IoSlice::new(part));
            }
        }
    }
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    let mut written = 0;
    // Each round writes at least one byte, so at most `total` rounds.
    while !rest.is_empty() {
        let window = rest.len().min(IOVECS_PER_WRITE_MAX);
        let n = tokio::time::timeout(timeout, w.write_vectored(&rest[..window]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "reply write timed out"))??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
        IoSlice::advance_slices(&mut rest, n);
    }
    debug_assert_eq!(written, total);
    Ok(written)
}
