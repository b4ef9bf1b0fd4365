//! TCP mirror transport: TCP_NODELAY, vectored writes, every frame MACed with the pair's
//! pre-shared key; a frame that fails the MAC is refused, logged and closes the connection.
//!
//! Busy polling: a connection that received a frame recently polls its socket for a bounded
//! time before it sleeps in `recv`. A mirrored append waits for three thread wake-ups in a
//! row (the partner's receiver, our ack reader, the appender); on a virtual machine each
//! costs tens of microseconds, more than the whole round trip's work. A reader that is
//! already polling when the frame lands skips its wake-up. The poll yields the CPU between
//! attempts, so runnable threads on the same core go first. Polls that keep running out of
//! budget (a partner farther away than the budget) stop until a wait is short again.

use crate::proto::{self, Frame, MirrorKey, MAC_BYTES, PREFIX_BYTES};
use crate::transport::{Acceptor, Connection, Connector, FrameSink, FrameSource, TransportError};
use bytes::BytesMut;
use std::io::{IoSlice, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a blocked read or accept waits before returning to run timers.
pub const POLL_INTERVAL_MS: u64 = 5;
/// Bound on one connect attempt.
pub const CONNECT_TIMEOUT_MS: u64 = 200;
/// A send that makes no progress for this long fails and closes the connection (the sender
/// reconnects and resyncs; the cluster decides whether appends may go on without it).
pub const WRITE_TIMEOUT_MS: u64 = 300;
/// A connection counts as busy (its reads poll before sleeping) this long after a frame.
const BUSY_AFTER_INPUT_US: u64 = 2000;
/// After this many polls in a row found nothing, reads sleep at once until one of them
/// waits less than the poll budget.
const EMPTY_POLLS_MAX: u32 = 3;
/// Vectored writes are cut to this many slices (well under IOV_MAX = 1024).
const IOVECS_MAX: usize = 768;
/// Receive buffer allocation; grows to hold one maximal frame.
const RECV_BUFFER_BYTES: usize = 1 << 20;
/// A read is not issued into less free buffer than this (a fresh allocation is taken).
const RECV_READ_BYTES_MIN: usize = 64 << 10;

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
    busy_poll_us: u64,
}

impl TcpConnector {
    /// A connector to `addr` using `key`.
    pub fn new(addr: SocketAddr, key: MirrorKey, auth_failures: AuthFailures) -> TcpConnector {
        TcpConnector {
            addr,
            key,
            auth_failures,
            busy_poll_us: 0,
        }
    }

    /// Reads of a busy connection poll for up to `us` microseconds before sleeping (0: off).
    pub fn with_busy_poll(mut self, us: u64) -> TcpConnector {
        self.busy_poll_us = us;
        self
    }
}

impl Connector for TcpConnector {
    fn connect(&self) -> Result<Connection, TransportError> {
        let stream =
            TcpStream::connect_timeout(&self.addr, Duration::from_millis(CONNECT_TIMEOUT_MS))?;
        split(
            stream,
            self.key.clone(),
            self.auth_failures.clone(),
            self.busy_poll_us,
        )
    }
}

/// Listens for the partner's mirror connection.
pub struct TcpAcceptor {
    listener: TcpListener,
    key: MirrorKey,
    auth_failures: AuthFailures,
    busy_poll_us: u64,
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
            busy_poll_us: 0,
        })
    }

    /// Reads of a busy connection poll for up to `us` microseconds before sleeping (0: off).
    pub fn with_busy_poll(mut self, us: u64) -> TcpAcceptor {
        self.busy_poll_us = us;
        self
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
                    self.busy_poll_us,
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
    busy_poll_us: u64,
) -> Result<Connection, TransportError> {
    // One small ack must not wait for Nagle: the append latency is one round trip.
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(POLL_INTERVAL_MS)))?;
    // A write into a full send buffer toward a partner that stopped reading (a cut link)
    // must fail, not block: the appender doing the group commit is on an async runtime.
    stream.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)))?;
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
        buf: BytesMut::with_capacity(RECV_BUFFER_BYTES),
        peer,
        auth_failures,
        polling: PollGovernor::new(Duration::from_micros(busy_poll_us)),
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
    /// Received bytes not yet parsed; frames are split off its front without copying.
    buf: BytesMut,
    peer: String,
    auth_failures: AuthFailures,
    /// Whether reads poll before they sleep.
    polling: PollGovernor,
}

/// Decides whether a read polls before it sleeps (sans-IO: the caller reports what
/// happened and when).
#[derive(Debug)]
struct PollGovernor {
    /// Poll budget of one read (zero: never poll).
    budget: Duration,
    /// When bytes last arrived.
    last_input: Option<Instant>,
    /// Polls in a row that ran out of budget.
    empty_polls: u32,
}

impl PollGovernor {
    fn new(budget: Duration) -> PollGovernor {
        PollGovernor {
            budget,
            last_input: None,
            empty_polls: 0,
        }
    }

    /// Whether a read at `now` should poll: polling is on, bytes arrived lately, and recent
    /// polls did not keep coming back empty.
    fn should_poll(&self, now: Instant) -> bool {
        !self.budget.is_zero()
            && self.empty_polls < EMPTY_POLLS_MAX
            && self.last_input.is_some_and(|t| {
                now.saturating_duration_since(t) < Duration::from_micros(BUSY_AFTER_INPUT_US)
            })
    }

    /// A poll found bytes (`true`) or ran out of budget.
    fn on_poll(&mut self, found: bool) {
        self.empty_polls = if found { 0 } else { self.empty_polls + 1 };
    }

    /// A sleeping read returned after `waited`: a wait within the budget means a poll
    /// would have caught the bytes, so polls resume.
    fn on_wait(&mut self, waited: Duration) {
        if waited < self.budget {
            self.empty_polls = 0;
        }
    }

    /// Bytes arrived at `now`.
    fn on_input(&mut self, now: Instant) {
        self.last_input = Some(now);
    }
}

impl TcpSource {
    /// One read: a poll first when it should pay off, else (or when it found nothing) a
    /// `recv` that sleeps up to the poll interval.
    fn read(&mut self) -> std::io::Result<usize> {
        if self.polling.should_poll(Instant::now()) {
            let polled = poll_into_spare(&self.stream, &mut self.buf, self.polling.budget)?;
            self.polling.on_poll(polled.is_some());
            if let Some(n) = polled {
                return Ok(n);
            }
        }
        let started = Instant::now();
        let n = read_into_spare(&self.stream, &mut self.buf, 0)?;
        self.polling.on_wait(started.elapsed());
        Ok(n)
    }

    /// A complete frame at the front of the buffer, if any.
    ///
    /// Why `split_to`: the frame's body leaves the buffer as a `Bytes` sharing the receive
    /// allocation (an Append's records are not copied between the socket read and the copy
    /// into the mirror area); the buffer reclaims or replaces that allocation once no frame
    /// refers to it.
    fn parse(&mut self) -> Result<Option<Frame>, TransportError> {
        if self.buf.len() < PREFIX_BYTES {
            return Ok(None);
        }
        let mut prefix = [0u8; PREFIX_BYTES];
        prefix.copy_from_slice(&self.buf[..PREFIX_BYTES]);
        let body_len =
            proto::parse_prefix(&prefix).map_err(|source| TransportError::Malformed {
                peer: self.peer.clone(),
                source,
            })?;
        let total = PREFIX_BYTES + body_len + MAC_BYTES;
        if self.buf.len() < total {
            // Room for the whole frame, so the next reads complete it.
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let frame = self.buf.split_to(total).freeze();
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&frame[PREFIX_BYTES + body_len..]);
        let body = frame.slice(PREFIX_BYTES..PREFIX_BYTES + body_len);
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
        if self.buf.capacity() - self.buf.len() < RECV_READ_BYTES_MIN {
            // Reuses the allocation when every frame split off it is gone, else takes a
            // fresh one (the bytes still referenced stay valid where they are).
            self.buf.reserve(RECV_BUFFER_BYTES);
        }
        match self.read() {
            Ok(0) => Err(TransportError::Closed),
            Ok(_) => {
                self.polling.on_input(Instant::now());
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
        !self.buf.is_empty()
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}

/// Non-blocking reads into the spare capacity of `buf` for up to `budget`: `Some(n)` once
/// bytes (or the end of the stream, `n == 0`) arrived, `None` if nothing did.
fn poll_into_spare(
    stream: &TcpStream,
    buf: &mut BytesMut,
    budget: Duration,
) -> std::io::Result<Option<usize>> {
    let until = Instant::now() + budget;
    loop {
        match read_into_spare(stream, buf, libc::MSG_DONTWAIT) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        std::thread::yield_now();
    }
}

/// One `recv` (with `flags`) into the spare capacity of `buf`, extending it by the bytes
/// received.
///
/// Why not `Read::read`: that takes an initialised `&mut [u8]`, and zeroing the spare
/// megabyte before every read would cost a pass over memory; the kernel writes through a
/// raw pointer and reports how much it wrote.
fn read_into_spare(
    stream: &TcpStream,
    buf: &mut BytesMut,
    flags: libc::c_int,
) -> std::io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    loop {
        // SAFETY: the pointer and length describe `spare`, memory `buf` owns and does not
        // read until `set_len` below; the fd is a live socket we hold.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                flags,
            )
        };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: recv initialised the first `n` spare bytes.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bound on waiting for the frames on the receiving side.
    const RECV_WAIT_MS_MAX: u64 = 10_000;

    fn append(lsn: u64, len: usize) -> Frame {
        Frame::Append {
            session: 1,
            lsn,
            half: (lsn % 2) as u8,
            generation: 3,
            offset: lsn * 64,
            last_seq: lsn,
            bytes: (0..len).map(|i| (i as u64 * 31 + lsn) as u8).collect(),
        }
    }

    /// Frames of every size class, small ones sharing a receive allocation with large ones
    /// and large ones bigger than the allocation, arrive intact and in order (the receive
    /// buffer hands out frames without copying, so a reused or replaced allocation must
    /// never alter a frame already handed out).
    #[test]
    fn frames_across_receive_buffer_boundaries_arrive_intact() {
        frames_arrive_intact(0);
    }

    /// The same with busy polling on both ends (reads that poll, then sleep).
    #[test]
    fn frames_arrive_intact_with_busy_polling() {
        frames_arrive_intact(BUSY_POLL_TEST_US);
    }

    const BUSY_POLL_TEST_US: u64 = 200;

    fn frames_arrive_intact(busy_poll_us: u64) {
        let key = MirrorKey::from_passphrase("tcp-test");
        let auth = AuthFailures::default();
        let mut acceptor = TcpAcceptor::bind(
            "127.0.0.1:0".parse().expect("addr"),
            key.clone(),
            auth.clone(),
        )
        .expect("bind")
        .with_busy_poll(busy_poll_us);
        let addr = acceptor.local_addr().expect("addr");
        let sizes = [
            1,
            4096 + 64,
            RECV_BUFFER_BYTES - 100,
            RECV_BUFFER_BYTES + 4096,
            64,
            (3 << 20) + 17,
            RECV_READ_BYTES_MIN - 1,
            8,
        ];
        let frames: Vec<Frame> = sizes
            .iter()
            .cycle()
            .take(40)
            .enumerate()
            .map(|(i, len)| append(i as u64 + 1, *len))
            .collect();
        let to_send = frames.clone();
        let sender = std::thread::spawn(move || {
            let (mut sink, _source) = TcpConnector::new(addr, key, AuthFailures::default())
                .with_busy_poll(busy_poll_us)
                .connect()
                .expect("connect");
            for batch in to_send.chunks(3) {
                sink.send(batch).expect("send");
            }
            sink
        });
        let deadline = Instant::now() + Duration::from_millis(RECV_WAIT_MS_MAX);
        let (_sink, mut source) = loop {
            if let Some(c) = acceptor.accept().expect("accept") {
                break c;
            }
            assert!(Instant::now() < deadline, "no connection");
        };
        let mut got = Vec::new();
        while got.len() < frames.len() {
            assert!(
                Instant::now() < deadline,
                "only {} frames arrived",
                got.len()
            );
            if let Some(f) = source.recv().expect("recv") {
                got.push(f);
            }
        }
        // Compare only now: every frame was held while later ones reused the buffer.
        assert_eq!(got, frames);
        assert!(!source.has_buffered());
        assert_eq!(auth.get(), 0);
        drop(sender.join().expect("sender thread"));
    }

    /// Polls run while input is recent, stop after a few empty ones in a row (a partner
    /// farther away than the budget), and resume after a wait within the budget.
    #[test]
    fn the_poll_governor_polls_while_it_pays_off() {
        let budget = Duration::from_micros(100);
        let busy = Duration::from_micros(BUSY_AFTER_INPUT_US);
        let t0 = Instant::now();
        let mut g = PollGovernor::new(budget);
        assert!(!g.should_poll(t0), "no input yet");
        g.on_input(t0);
        assert!(g.should_poll(t0 + busy / 2));
        assert!(!g.should_poll(t0 + busy), "input too long ago");
        for _ in 1..EMPTY_POLLS_MAX {
            g.on_poll(false);
            assert!(g.should_poll(t0));
        }
        g.on_poll(true);
        for _ in 0..EMPTY_POLLS_MAX {
            assert!(g.should_poll(t0));
            g.on_poll(false);
        }
        assert!(!g.should_poll(t0), "empty polls in a row stop polling");
        g.on_wait(budget * 3);
        assert!(!g.should_poll(t0), "a long wait keeps it stopped");
        g.on_wait(budget / 2);
        assert!(g.should_poll(t0), "a short wait resumes it");
        assert!(!PollGovernor::new(Duration::ZERO).should_poll(t0), "off");
    }
}
