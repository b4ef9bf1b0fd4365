//! ONC RPC over one TCP connection, with many calls in flight: calls are written whole under
//! a writer lock, a reader task reads reply records and hands each to the waiting call by xid.
//! Replies may come back in any order. A reply sent as one fragment (what servers send) is
//! handed over as the very buffer the socket read into, so a READ's data reaches the caller
//! with no copy beyond the kernel's.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use twinfiler_proto::record::{RECORD_BYTES_MAX, RECORD_MARK_BYTES};
use twinfiler_proto::rpc::{self, AcceptStat, CallHeader, Credential, OpaqueAuth, ReplyStatus};
use twinfiler_rpc::framing::RecordReader;

use super::ClientError;

/// How long one call waits for its reply before failing (a server that lost it).
pub const CALL_TIMEOUT_MS: u64 = 60_000;
/// How long connecting may take.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Size of each reply buffer the reader task allocates; replies at least this long get a
/// buffer of their own size.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// A complete reply to a successful call: the record and where the results start in it.
#[derive(Debug)]
pub struct Reply {
    /// The reply record (header and results).
    pub record: Bytes,
    /// Offset of the procedure results in `record`.
    pub results_offset: usize,
}

impl Reply {
    /// The procedure results.
    pub fn results(&self) -> &[u8] {
        &self.record[self.results_offset..]
    }
}

type Waiter = oneshot::Sender<Bytes>;

/// Calls waiting for their reply, by xid. `None` once the connection is gone: a call made
/// after that fails at once instead of waiting for its timeout.
type Pending = Mutex<Option<HashMap<u32, Waiter>>>;

/// One TCP connection to an RPC server; cheap to share (`Arc`) between concurrent callers.
pub struct RpcConn {
    /// `None` once [`RpcConn::close`]d.
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    pending: Arc<Pending>,
    next_xid: AtomicU32,
    cred: Credential,
    reader: tokio::task::JoinHandle<()>,
    local: SocketAddr,
}

impl RpcConn {
    /// Connects to `addr`; every call carries `cred`.
    pub async fn connect(addr: SocketAddr, cred: Credential) -> Result<Self, ClientError> {
        Self::connect_from(addr, cred, None).await
    }

    /// Connects to `addr` from local port `local_port` (any port if `None`), with
    /// SO_REUSEADDR so that a reconnection can take the same port again: the server's
    /// duplicate-request cache knows a client by address and port, as Linux clients keep
    /// theirs across reconnects.
    pub async fn connect_from(
        addr: SocketAddr,
        cred: Credential,
        local_port: Option<u16>,
    ) -> Result<Self, ClientError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // On every socket: a later one may bind our port only if both allow it.
        socket.set_reuseaddr(true)?;
        if let Some(port) = local_port {
            let any: IpAddr = if addr.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            socket.bind(SocketAddr::new(any, port))?;
        }
        let stream = tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            socket.connect(addr),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            what: "connect",
            ms: CONNECT_TIMEOUT_MS,
        })??;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let (mut read_half, write_half) = stream.into_split();
        let pending: Arc<Pending> = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader_pending = pending.clone();
        let reader = tokio::spawn(async move {
            let why = read_replies(&mut read_half, &reader_pending).await;
            tracing::debug!(%addr, ?why, "rpc connection reader ended");
            // Dropping the waiters wakes every call still in flight with "closed".
            reader_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        });
        Ok(RpcConn {
            writer: tokio::sync::Mutex::new(Some(write_half)),
            pending,
            next_xid: AtomicU32::new(xid_seed()),
            cred,
            reader,
            local,
        })
    }

    /// The local address (and port) of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The credential every call carries.
    pub fn cred(&self) -> &Credential {
        &self.cred
    }

    /// A fresh xid for a call on this connection.
    pub fn next_xid(&self) -> u32 {
        self.next_xid.fetch_add(1, Ordering::Relaxed)
    }

    /// True once the connection is gone (the reader stopped).
    pub fn is_closed(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Registers interest in the reply to `xid` (before sending the call, so that a fast
    /// reply is not missed).
    pub fn register(&self, xid: u32) -> Result<oneshot::Receiver<Bytes>, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let map = pending.as_mut().ok_or(ClientError::Closed)?;
        // A retransmission re-registers the same xid: the newer waiter replaces the older.
        map.insert(xid, tx);
        Ok(rx)
    }

    /// Writes one complete call record (from [`encode_call`]).
    pub async fn send(&self, msg: &[u8]) -> Result<(), ClientError> {
        self.send_parts(&[msg]).await
    }

    /// Writes one complete call record given as consecutive parts, with vectored writes.
    ///
    /// A record left half-written (the write failed, or the caller was cancelled between two
    /// writes) closes our side of the connection: the next call's bytes would otherwise
    /// complete it, and the server would execute a call made of two.
    async fn send_parts(&self, parts: &[&[u8]]) -> Result<(), ClientError> {
        let mut writer = self.writer.lock().await;
        let unfinished = UnfinishedRecord {
            writer: &mut writer,
            complete: false,
        };
        let w = unfinished.writer.as_mut().ok_or(ClientError::Closed)?;
        write_all_parts(w, parts).await?;
        unfinished.complete();
        Ok(())
    }

    /// Closes the connection now, even while others still hold it (their calls fail with
    /// [`ClientError::Closed`]): frees the local port for a reconnection.
    pub async fn close(&self) {
        self.reader.abort();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.writer.lock().await.take();
    }

    /// Calls `prog`/`vers`/`proc_` with arguments appended by `encode_args`; returns the
    /// reply of an accepted, successful call.
    pub async fn call(
        &self,
        prog: u32,
        vers: u32,
        proc_: u32,
        encode_args: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Reply, ClientError> {
        let xid = self.next_xid();
        let msg = encode_call(xid, prog, vers, proc_, &self.cred, encode_args)?;
        self.exchange(xid, &[&msg]).await
    }

    /// Like [`Self::call`] with data (the concatenation of `data`) after the arguments
    /// `encode_head` appends, which end with the data's length word: the data and its XDR
    /// padding go out as iovecs of the same write, never copied into the call buffer.
    pub async fn call_with_data(
        &self,
        prog: u32,
        vers: u32,
        proc_: u32,
        encode_head: impl FnOnce(&mut Vec<u8>),
        data: &[&[u8]],
    ) -> Result<Reply, ClientError> {
        let xid = self.next_xid();
        let data_len: usize = data.iter().map(|d| d.len()).sum();
        let padding = twinfiler_proto::xdr::padding(data_len);
        let tail_bytes = data_len + padding.len();
        let mut head = encode_call(xid, prog, vers, proc_, &self.cred, encode_head)?;
        mark_record(&mut head, tail_bytes)?;
        debug_assert!(
            head.ends_with(&(data_len as u32).to_be_bytes()),
            "the arguments must end with the data's length word"
        );
        let mut record = Vec::with_capacity(data.len() + 2);
        record.push(&head[..]);
        record.extend_from_slice(data);
        record.push(padding);
        self.exchange(xid, &record).await
    }

    /// Sends the call `xid` (the record's parts, mark included) and waits for its reply.
    async fn exchange(&self, xid: u32, record: &[&[u8]]) -> Result<Reply, ClientError> {
        let rx = self.register(xid)?;
        if let Err(e) = self.send_parts(record).await {
            self.forget(xid);
            return Err(e);
        }
        let record = match tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), rx).await {
            Ok(Ok(record)) => record,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                self.forget(xid);
                return Err(ClientError::Timeout {
                    what: "reply",
                    ms: CALL_TIMEOUT_MS,
                });
            }
        };
        accept_reply(record)
    }

    /// Stops waiting for the reply to `xid`.
    pub fn forget(&self, xid: u32) {
        if let Some(map) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            map.remove(&xid);
        }
    }
}

/// Writes the concatenation of `parts` with vectored writes, however little each one takes.
async fn write_all_parts<W: AsyncWrite + Unpin>(w: &mut W, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    // Each round writes at least one byte, so this ends.
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// The writer while a record is being written: dropped before [`Self::complete`], it drops
/// the write half (the server then sees a record cut short, never a wrong one).
struct UnfinishedRecord<'a> {
    writer: &'a mut Option<OwnedWriteHalf>,
    complete: bool,
}

impl UnfinishedRecord<'_> {
    fn complete(mut self) {
        self.complete = true;
    }
}

impl Drop for UnfinishedRecord<'_> {
    fn drop(&mut self) {
        if !self.complete {
            self.writer.take();
        }
    }
}

/// Start xids somewhere arbitrary so two runs against one server do not share a DRC key
/// space (the server caches replies by xid and client address).
pub fn xid_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
        .unwrap_or(1)
}

/// One call record, record mark included: the header for `xid` with `cred`, then the
/// arguments `encode_args` appends.
pub fn encode_call(
    xid: u32,
    prog: u32,
    vers: u32,
    proc_: u32,
    cred: &Credential,
    encode_args: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>, ClientError> {
    // The record mark goes in front once the length is known: one buffer, one write.
    let mut msg = vec![0u8; RECORD_MARK_BYTES];
    CallHeader {
        xid,
        prog,
        vers,
        proc_,
        cred: cred.clone(),
        verf: OpaqueAuth::none(),
    }
    .encode(&mut msg);
    encode_args(&mut msg);
    mark_record(&mut msg, 0)?;
    Ok(msg)
}

/// Writes the record mark in front of `msg` (mark included), for a record that goes on
/// with `tail_bytes` the caller sends right after `msg`.
fn mark_record(msg: &mut [u8], tail_bytes: usize) -> Result<(), ClientError> {
    let body_len = msg.len() - RECORD_MARK_BYTES + tail_bytes;
    if body_len > RECORD_BYTES_MAX {
        return Err(ClientError::TooLarge { bytes: body_len });
    }
    msg[..RECORD_MARK_BYTES].copy_from_slice(&twinfiler_proto::record::record_mark(body_len, true));
    Ok(())
}

/// Checks a reply record: the reply of an accepted, successful call, or the RPC error.
pub fn accept_reply(record: Bytes) -> Result<Reply, ClientError> {
    let (head, results_offset) = rpc::decode_reply(&record)?;
    match head.status {
        ReplyStatus::Accepted {
            stat: AcceptStat::Success,
            ..
        } => Ok(Reply {
            record,
            results_offset,
        }),
        status => Err(ClientError::Rpc(format!("{status:?}"))),
    }
}

impl Drop for RpcConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The reader task: reads records and wakes the call each belongs to. Returns why it
/// stopped (EOF, I/O error, bad framing).
async fn read_replies(
    read_half: &mut tokio::net::tcp::OwnedReadHalf,
    pending: &Pending,
) -> Result<(), ClientError> {
    let mut reader = RecordReader::new(RECORD_BYTES_MAX, READ_CHUNK_BYTES);
    // The reader counts what it reads (the server's statistics); nobody asks a client.
    let bytes_in = std::sync::atomic::AtomicU64::new(0);
    loop {
        let Some(record) = reader.next_record(read_half, &bytes_in).await? else {
            return Err(ClientError::Closed);
        };
        let Some(xid_bytes) = record.get(..4) else {
            continue; // too short to name a call: nobody to hand it to
        };
        let xid = u32::from_be_bytes([xid_bytes[0], xid_bytes[1], xid_bytes[2], xid_bytes[3]]);
        let waiter = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|m| m.remove(&xid));
        // A reply nobody waits for (timed out, or a duplicate) is dropped.
        if let Some(w) = waiter {
            let _ = w.send(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// Takes at most `per_write` bytes of the first non-empty slice per call.
    struct Trickle {
        per_write: usize,
        got: Vec<u8>,
        writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.per_write);
            self.got.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn parts_go_out_whole_and_in_order_however_little_each_write_takes() {
        let parts: [&[u8]; 5] = [b"mark", b"", b"head-of-call", &[7u8; 100], b"\0\0"];
        for per_write in [1, 3, 7, 64, 4096] {
            let mut w = Trickle {
                per_write,
                got: Vec::new(),
                writes: 0,
            };
            write_all_parts(&mut w, &parts).await.unwrap();
            assert_eq!(w.got, parts.concat(), "{per_write} bytes a write");
            assert!(w.writes >= w.got.len().div_ceil(per_write));
        }
    }
}
