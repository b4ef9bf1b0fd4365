//! Test support: a toy program with controllable blocking, a minimal RPC client over TCP and
//! UDP, and a server starter. Every wait is bounded by `WAIT`.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use twinfiler_proto::record::{frame, RecordDecoder};
use twinfiler_proto::rpc::{decode_reply, CallHeader, Credential, OpaqueAuth, ReplyHeader};
use twinfiler_proto::xdr::{Decoder, XdrWrite};
use twinfiler_rpc::{BoxFuture, Call, Outcome, Program, Reply, RpcServer, ServerConfig};

/// Upper bound of every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Program number of the toy program.
pub const TOY_PROG: u32 = 0x2000_7357;
/// Version of the toy program.
pub const TOY_VERS: u32 = 1;
/// Ping.
pub const PROC_NULL: u32 = 0;
/// Replies with its arguments (sent back as `Reply::data`, exercising vectored writes).
pub const PROC_ECHO: u32 = 1;
/// Replies nothing (`Outcome::Drop`).
pub const PROC_DROP: u32 = 2;
/// Argument `n`: replies `n` bytes of data.
pub const PROC_BIG: u32 = 3;
/// Argument `tag`: blocks until the gate releases `tag` (or everything), then replies `tag`.
pub const PROC_GATE: u32 = 4;
/// Most bytes PROC_BIG returns (above the transport's reply cap, to test it).
pub const BIG_BYTES_MAX: usize = 5 * 1024 * 1024;
/// Panics (after an await, or before returning its future if the argument is 0).
pub const PROC_PANIC: u32 = 5;

#[derive(Debug, Default, Clone)]
struct Released {
    all: bool,
    tags: HashSet<u32>,
}

/// The toy program; counts calls blocked in PROC_GATE.
#[derive(Debug)]
pub struct Toy {
    released: watch::Sender<Released>,
    gated: watch::Sender<usize>,
    gated_max: AtomicUsize,
}

impl Toy {
    pub fn new() -> Arc<Self> {
        Arc::new(Toy {
            released: watch::channel(Released::default()).0,
            gated: watch::channel(0).0,
            gated_max: AtomicUsize::new(0),
        })
    }

    /// Lets the gate call with `tag` finish.
    pub fn release(&self, tag: u32) {
        self.released.send_modify(|r| {
            r.tags.insert(tag);
        });
    }

    /// Lets every gate call finish, now and later.
    pub fn release_all(&self) {
        self.released.send_modify(|r| r.all = true);
    }

    /// Gate calls blocked now.
    pub fn gated(&self) -> usize {
        *self.gated.borrow()
    }

    /// Most gate calls ever blocked at once.
    pub fn gated_max(&self) -> usize {
        self.gated_max.load(Ordering::SeqCst)
    }

    /// Waits (at most `WAIT`) until exactly `n` gate calls are blocked.
    pub async fn wait_gated(&self, n: usize) {
        let mut rx = self.gated.subscribe();
        let waited = tokio::time::timeout(WAIT, rx.wait_for(|g| *g == n)).await;
        assert!(
            waited.is_ok(),
            "timed out waiting for {n} gated calls (now {})",
            self.gated()
        );
    }

    async fn gate(self: Arc<Self>, tag: u32) {
        /// Counts the call out even if its future is dropped (server stop).
        struct Out<'a>(&'a Toy);
        impl Drop for Out<'_> {
            fn drop(&mut self) {
                self.0.gated.send_modify(|g| *g -= 1);
            }
        }
        self.gated.send_modify(|g| *g += 1);
        let _out = Out(&self);
        self.gated_max.fetch_max(self.gated(), Ordering::SeqCst);
        let mut rx = self.released.subscribe();
        let _ = rx.wait_for(|r| r.all || r.tags.contains(&tag)).await;
    }
}

fn success(xid: u32) -> Vec<u8> {
    twinfiler_proto::xdr::to_vec(&ReplyHeader::success(xid))
}

impl Program for Toy {
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<Outcome> {
        if call.header.proc_ == PROC_PANIC && call.args() == [0, 0, 0, 0] {
            panic!("toy program panics before returning its future");
        }
        Box::pin(async move {
            let xid = call.header.xid;
            let mut args = Decoder::new_at(&call.record, call.args_offset);
            if call.header.vers != TOY_VERS {
                let stat = twinfiler_proto::rpc::AcceptStat::ProgMismatch {
                    low: TOY_VERS,
                    high: TOY_VERS,
                };
                let head = ReplyHeader::accepted(xid, stat);
                return Outcome::Reply(Reply::from_vec(twinfiler_proto::xdr::to_vec(&head)));
            }
            match call.header.proc_ {
                PROC_NULL => Outcome::Reply(Reply::from_vec(success(xid))),
                PROC_ECHO => Outcome::Reply(Reply::with_data(
                    success(xid),
                    call.record.slice(call.args_offset..),
                )),
                PROC_DROP => Outcome::Drop,
                PROC_PANIC => {
                    tokio::task::yield_now().await;
                    panic!("toy program panics while running");
                }
                PROC_BIG => {
                    // Capped: random tests send random sizes.
                    let n = (args.u32().unwrap_or(0) as usize).min(BIG_BYTES_MAX);
                    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                    Outcome::Reply(big_reply(success(xid), data))
                }
                PROC_GATE => {
                    let tag = args.u32().unwrap_or(u32::MAX);
                    self.gate(tag).await;
                    let mut head = success(xid);
                    head.put_u32(tag);
                    Outcome::Reply(Reply::from_vec(head))
                }
                _ => {
                    let head = twinfiler_proto::rpc::ReplyHeader::accepted(
                        xid,
                        twinfiler_proto::rpc::AcceptStat::ProcUnavail,
                    );
                    Outcome::Reply(Reply::from_vec(twinfiler_proto::xdr::to_vec(&head)))
                }
            }
        })
    }
}

/// An RPC call record (AUTH_NONE credential) with `args` appended.
pub fn call_record(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let header = CallHeader {
        xid,
        prog,
        vers,
        proc_,
        cred: Credential::None,
        verf: OpaqueAuth::none(),
    };
    let mut out = Vec::new();
    header.encode(&mut out);
    out.extend_from_slice(args);
    out
}

/// A toy-program call record.
pub fn toy_call(xid: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    call_record(xid, TOY_PROG, TOY_VERS, proc_, args)
}

/// The big-endian encoding of `v` (a one-word argument).
pub fn word(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// Splits a reply record into its header and results.
pub fn parse_reply(record: &[u8]) -> (ReplyHeader, Vec<u8>) {
    let (header, offset) = decode_reply(record).expect("a well-formed reply");
    (header, record[offset..].to_vec())
}

/// A minimal RPC client on one TCP connection.
pub struct TcpClient {
    pub stream: TcpStream,
    decoder: RecordDecoder,
    buf: Vec<u8>,
}

impl TcpClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Self::from_stream(stream)
    }

    /// A client on a stream the caller connected.
    pub fn from_stream(stream: TcpStream) -> Self {
        TcpClient {
            stream,
            decoder: RecordDecoder::default(),
            buf: Vec::new(),
        }
    }

    /// Sends `record` as one fragment.
    pub async fn send(&mut self, record: &[u8]) {
        self.stream.write_all(&frame(record)).await.expect("send");
    }

    /// Sends raw bytes (no framing added).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// The next reply record; `None` if the server closed or reset the connection.
    pub async fn recv_or_closed(&mut self) -> Option<Vec<u8>> {
        let fut = async {
            // Bounded: each round consumes buffered bytes or reads at least one byte.
            loop {
                if !self.buf.is_empty() {
                    let fed = self.decoder.feed(&self.buf).expect("server framing");
                    self.buf.drain(..fed.consumed);
                    if let Some(record) = fed.record {
                        return Some(record);
                    }
                }
                let mut chunk = [0u8; 64 * 1024];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("timed out waiting for a reply")
    }

    /// The next reply record.
    pub async fn recv(&mut self) -> Vec<u8> {
        self.recv_or_closed()
            .await
            .expect("connection closed while waiting for a reply")
    }

    /// Sends a call and returns its reply header and results.
    pub async fn call(&mut self, record: &[u8]) -> (ReplyHeader, Vec<u8>) {
        self.send(record).await;
        parse_reply(&self.recv().await)
    }

    /// Waits until the server closes the connection (skipping replies still in flight).
    pub async fn expect_closed(&mut self) {
        for _ in 0..10_000 {
            if self.recv_or_closed().await.is_none() {
                return;
            }
        }
        panic!("connection still open after 10,000 replies");
    }
}

/// Sends one datagram call and waits for the reply datagram.
pub async fn udp_call(addr: SocketAddr, record: &[u8]) -> (ReplyHeader, Vec<u8>) {
    let local: SocketAddr = if addr.is_ipv4() {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(local).await.unwrap();
    socket.send_to(record, addr).await.unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("UDP reply timed out")
        .unwrap();
    assert_eq!(from, addr);
    parse_reply(&buf[..n])
}

/// A server on 127.0.0.1 (TCP and UDP, port 0) serving the toy program.
pub struct TestServer {
    pub server: RpcServer,
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub toy: Arc<Toy>,
}

pub async fn start(config: ServerConfig) -> TestServer {
    start_on("127.0.0.1:0".parse().unwrap(), config).await
}

pub async fn start_on(addr: SocketAddr, config: ServerConfig) -> TestServer {
    let server = RpcServer::new(config).expect("valid config");
    let toy = Toy::new();
    server.register(TOY_PROG, toy.clone());
    let tcp = server.listen_tcp(addr).await.expect("listen tcp");
    let udp = server.listen_udp(addr).await.expect("listen udp");
    TestServer {
        server,
        tcp,
        udp,
        toy,
    }
}

/// Polls `cond` every 10 ms until it holds (at most `WAIT`).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bytes per piece of a PROC_BIG reply: small, so a 1 MiB reply has more pieces than one
/// `writev` takes (IOV_MAX is 1024 on Linux) and the transport must split its writes.
pub const BIG_PIECE_BYTES: usize = 1000;

/// A reply whose data goes out as many pieces, like a READ of cached blocks.
fn big_reply(head: Vec<u8>, data: Vec<u8>) -> Reply {
    let data = Bytes::from(data);
    let pieces = (0..data.len())
        .step_by(BIG_PIECE_BYTES)
        .map(|at| data.slice(at..(at + BIG_PIECE_BYTES).min(data.len())))
        .collect();
    Reply { head, data: pieces }
}
