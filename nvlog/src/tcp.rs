//! TCP mirror transport: TCP_NODELAY, vectored writes, every frame MACed with the pair's
//! pre-shared key; a frame that fails the MAC is refused, logged and closes the connection.

use crate::proto::{self, Frame, MirrorKey, MAC_BYTES, PREFIX_BYTES};
use crate::transport::{Acceptor, Connection, Connector, FrameSink, FrameSource, TransportError};
use bytes::Bytes;
use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a blocked read or accept waits before returning to run timers.
pub const POLL_INTERVAL_MS: u64 = 5;
/// Bound on one connect attempt.
pub const CONNECT_TIMEOUT_MS: u64 = 200;
/// Vectored writes are cut to this many slices (well under IOV_MAX = 1024).
const IOVECS_MAX: usize = 768;
/// Initial receive buffer; grows to one maximal frame.
const RECV_BUFFER_BYTES: usize = 1 << 20;

/// Counts frames refused for a bad MAC (shared with status).
#[derive(Clone, Default)]
pub struct AuthFailures(Arc<AtomicU64>);

impl AuthFailures {
    /// Frames refused so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connects to a partner's mirror listener.
pub struct TcpConnector {
    addr: SocketAddr,
    key: MirrorKey,
    auth_failures: AuthFailures,
}

impl TcpConnector {
    /// A connector to `addr` using `key`.
    pub fn new(addr: SocketAddr, key: MirrorKey, auth_failures: AuthFailures) -> TcpConnector {
        TcpConnector {
            addr,
            key,
            auth_failures,
        }
    }
}

impl Connector for TcpConnector {
    fn connect(&self) -> Result<Connection, TransportError> {
        let stream =
            TcpStream::connect_timeout(&self.addr, Duration::from_millis(CONNECT_TIMEOUT_MS))?;
        split(stream, self.key.clone(), self.auth_failures.clone())
    }
}

/// Listens for the partner's mirror connection.
pub struct TcpAcceptor {
    listener: TcpListener,
    key: MirrorKey,
    auth_failures: AuthFailures,
}

impl TcpAcceptor {
    /// Binds `addr` (port 0 picks a free port; see [`TcpAcceptor::local_addr`]).
    pub fn bind(
        addr: SocketAddr,
        key: MirrorKey,
        auth_failures: AuthFailures,
    ) -> Result<TcpAcceptor, TransportError> {
        let listener = TcpListener::bind(addr)?;
        // Non-blocking so the accept loop can notice shutdown within the poll interval.
        listener.set_nonblocking(true)?;
        Ok(TcpAcceptor {
            listener,
            key,
            auth_failures,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Acceptor for TcpAcceptor {
    fn accept(&mut self) -> Result<Option<Connection>, TransportError> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                Ok(Some(split(
                    stream,
                    self.key.clone(),
                    self.auth_failures.clone(),
                )?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn split(
    stream: TcpStream,
    key: MirrorKey,
    auth_failures: AuthFailures,
) -> Result<Connection, TransportError> {
    // One small ack must not wait for Nagle: the append latency is one round trip.
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(POLL_INTERVAL_MS)))?;
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let reader = stream.try_clone()?;
    let sink = TcpSink {
        stream,
        key: key.clone(),
    };
    let source = TcpSource {
        stream: reader,
        key,
        buf: vec![0u8; RECV_BUFFER_BYTES],
        start: 0,
        end: 0,
        peer,
        auth_failures,
    };
    Ok((Box::new(sink), Box::new(source)))
}

struct TcpSink {
    stream: TcpStream,
    key: MirrorKey,
}

impl FrameSink for TcpSink {
    fn send(&mut self, frames: &[Frame]) -> Result<(), TransportError> {
        let encoded: Vec<proto::Encoded> =
            frames.iter().map(|f| proto::encode(f, &self.key)).collect();
        for group in encoded.chunks(IOVECS_MAX / 3) {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(group.len() * 3);
            for e in group {
                slices.push(IoSlice::new(&e.head));
                if !e.payload.is_empty() {
                    slices.push(IoSlice::new(&e.payload));
                }
                slices.push(IoSlice::new(&e.mac));
            }
            write_all_vectored(&mut self.stream, &mut slices)?;
        }
        Ok(())
    }

    fn close(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn write_all_vectored(
    stream: &mut TcpStream,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct TcpSource {
    stream: TcpStream,
    key: MirrorKey,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    peer: String,
    auth_failures: AuthFailures,
}

impl TcpSource {
    /// A complete frame at the front of the buffer, if any.
    fn parse(&mut self) -> Result<Option<Frame>, TransportError> {
        let avail = self.end - self.start;
        if avail < PREFIX_BYTES {
            return Ok(None);
        }
        let mut prefix = [0u8; PREFIX_BYTES];
        prefix.copy_from_slice(&self.buf[self.start..self.start + PREFIX_BYTES]);
        let body_len =
            proto::parse_prefix(&prefix).map_err(|source| TransportError::Malformed {
                peer: self.peer.clone(),
                source,
            })?;
        let total = PREFIX_BYTES + body_len + MAC_BYTES;
        if avail < total {
            if self.buf.len() - self.start < total {
                // Make room: move the partial frame to the front, grow to fit it.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < total {
                    self.buf.resize(total, 0);
                }
            }
            return Ok(None);
        }
        let body_at = self.start + PREFIX_BYTES;
        let body = Bytes::copy_from_slice(&self.buf[body_at..body_at + body_len]);
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&self.buf[body_at + body_len..body_at + body_len + MAC_BYTES]);
        self.start += total;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        match proto::decode(&prefix, body, &mac, &self.key) {
            Ok(f) => Ok(Some(f)),
            Err(source @ proto::DecodeError::BadMac) => {
                self.auth_failures.bump();
                tracing::warn!(peer = %self.peer, "nvlog mirror: refused frame with a bad MAC (peer lacks the pre-shared key); closing");
                Err(TransportError::Auth {
                    peer: self.peer.clone(),
                    source,
                })
            }
            Err(source) => Err(TransportError::Malformed {
                peer: self.peer.clone(),
                source,
            }),
        }
    }
}

impl FrameSource for TcpSource {
    fn recv(&mut self) -> Result<Option<Frame>, TransportError> {
        if let Some(f) = self.parse()? {
            return Ok(Some(f));
        }
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match self.stream.read(&mut self.buf[self.end..]) {
            Ok(0) => Err(TransportError::Closed),
            Ok(n) => {
                self.end += n;
                self.parse()
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn has_buffered(&self) -> bool {
        self.end > self.start
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}
