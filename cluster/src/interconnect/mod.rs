//! The interconnect transport: authenticated TCP links between the two nodes of the pair.
//!
//! One or more links (say one per NIC); every message goes out on every link that is up and
//! the receiver keeps the first copy, so any working link keeps the pair connected. The node
//! with the lower id dials, the other accepts (a newer valid connection on a link replaces an
//! older one: a half-open session after a cable pull does not block the reconnect). Each link
//! sends a PING every `ping_interval_ms` (it measures the round trip) and is declared down
//! when nothing arrived for `link_silence_ms`. The byte format is in [`frame`].
//!
//! Frames that fail authentication, sequence or format checks are refused, logged and
//! reported ([`InterconnectEvent::Refused`]); the link that carried them is closed (a TCP
//! stream cannot be resynchronised after a bad frame).

pub mod frame;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::wire::{self, Message};
use crate::NodeId;
use frame::{Hello, Kind, LinkError, PairKey, FRAME_HEADER_BYTES, HELLO_BYTES, MAC_BYTES};

/// Events queued for the consumer at most (then the links wait: backpressure, not loss).
pub const EVENTS_QUEUE_MAX: usize = 1024;
/// Outgoing messages queued per link at most (a slower link drops the oldest; the state
/// machine resends what matters).
pub const OUTGOING_QUEUE_MAX: usize = 256;
/// Frames one session's reader queues for its writer at most.
pub const INBOUND_QUEUE_MAX: usize = 64;

/// One link: where the acceptor listens and where the dialer connects.
#[derive(Clone, Copy, Debug)]
pub struct LinkAddrs {
    /// Our end: the acceptor listens here; the dialer binds its source address to this IP.
    pub local: SocketAddr,
    /// The partner's end.
    pub peer: SocketAddr,
}

/// Interconnect configuration.
#[derive(Clone, Debug)]
pub struct InterconnectConfig {
    /// This node.
    pub me: NodeId,
    /// The partner.
    pub partner: NodeId,
    /// The links, in the same order on both nodes.
    pub links: Vec<LinkAddrs>,
    /// The pair's pre-shared key.
    pub key: PairKey,
    /// Ping cadence per link.
    pub ping_interval_ms: u64,
    /// A link that received nothing for this long is down.
    pub link_silence_ms: u64,
    /// Wait between reconnect attempts of a link.
    pub reconnect_ms: u64,
    /// Bound on a TCP connect plus the handshake.
    pub connect_timeout_ms: u64,
}

impl InterconnectConfig {
    /// A configuration with the default timings (ping 100 ms, silence 500 ms, reconnect
    /// 100 ms, connect 1 000 ms).
    pub fn new(me: NodeId, partner: NodeId, links: Vec<LinkAddrs>, key: PairKey) -> Self {
        InterconnectConfig {
            me,
            partner,
            links,
            key,
            ping_interval_ms: 100,
            link_silence_ms: 500,
            reconnect_ms: 100,
            connect_timeout_ms: 1_000,
        }
    }
}

/// What the interconnect tells its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterconnectEvent {
    /// A message from the partner (authenticated, in order, first copy only).
    Message {
        /// The message.
        message: Message,
        /// The link that delivered it first.
        link: usize,
    },
    /// A link came up.
    LinkUp {
        /// Which.
        link: usize,
    },
    /// A link went down.
    LinkDown {
        /// Which.
        link: usize,
        /// Why, for the log and the console.
        reason: String,
    },
    /// The first link came up: the pair is connected.
    Connected,
    /// The last link went down: the pair is disconnected.
    Disconnected,
    /// Bytes were refused (bad MAC, bad format, wrong peer); the connection was closed.
    Refused {
        /// The link they came on.
        link: usize,
        /// Why.
        error: String,
    },
}

/// Round-trip statistics of the pings, over every link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttStats {
    /// Samples.
    pub samples: u64,
    /// Last sample, microseconds.
    pub last_us: u64,
    /// Smallest, microseconds.
    pub min_us: u64,
    /// Largest, microseconds.
    pub max_us: u64,
    /// Sum of all samples, microseconds (mean = sum / samples).
    pub sum_us: u64,
}

impl RttStats {
    fn add(&mut self, us: u64) {
        self.min_us = if self.samples == 0 {
            us
        } else {
            self.min_us.min(us)
        };
        self.max_us = self.max_us.max(us);
        self.samples += 1;
        self.last_us = us;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Mean, microseconds (0 without samples).
    pub fn mean_us(&self) -> u64 {
        self.sum_us.checked_div(self.samples).unwrap_or(0)
    }
}

struct LinkTable {
    /// The live session id of each link.
    sessions: Vec<Option<u64>>,
}

impl LinkTable {
    fn up(&self) -> usize {
        self.sessions.iter().filter(|s| s.is_some()).count()
    }
}

struct Shared {
    cfg: InterconnectConfig,
    boot_id: u64,
    epoch: Instant,
    events: mpsc::Sender<InterconnectEvent>,
    outgoing: broadcast::Sender<(u64, Vec<u8>)>,
    msg_seq: AtomicU64,
    session_seq: AtomicU64,
    table: tokio::sync::Mutex<LinkTable>,
    /// The partner's boot id and the last message sequence delivered from it.
    delivered: Mutex<(u64, u64)>,
    rtt: Mutex<RttStats>,
    current: Vec<watch::Sender<u64>>,
    /// Where the acceptor's links listen (empty at the dialer).
    listening: Vec<SocketAddr>,
}

/// A running interconnect. Dropping it stops every link.
pub struct Interconnect {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Interconnect {
    /// Starts the links (acceptors bind now: a bind error is returned). Events arrive on the
    /// returned receiver.
    pub async fn start(
        cfg: InterconnectConfig,
    ) -> std::io::Result<(Interconnect, mpsc::Receiver<InterconnectEvent>)> {
        assert!(!cfg.links.is_empty(), "at least one link");
        assert!(cfg.me != cfg.partner, "the partner is another node");
        assert!(
            cfg.links.len() <= usize::from(u8::MAX),
            "link index fits a byte"
        );
        assert!(cfg.ping_interval_ms > 0 && cfg.link_silence_ms > cfg.ping_interval_ms);
        let (events, rx) = mpsc::channel(EVENTS_QUEUE_MAX);
        let (outgoing, _) = broadcast::channel(OUTGOING_QUEUE_MAX);
        let dialer = cfg.me < cfg.partner;
        let mut listeners = Vec::new();
        if !dialer {
            for l in &cfg.links {
                listeners.push(TcpListener::bind(l.local).await?);
            }
        }
        let n = cfg.links.len();
        let listening = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<std::io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            boot_id: rand::random(),
            epoch: Instant::now(),
            events,
            outgoing,
            msg_seq: AtomicU64::new(0),
            session_seq: AtomicU64::new(0),
            table: tokio::sync::Mutex::new(LinkTable {
                sessions: vec![None; n],
            }),
            delivered: Mutex::new((0, 0)),
            rtt: Mutex::new(RttStats::default()),
            current: (0..n).map(|_| watch::channel(0).0).collect(),
            listening,
            cfg,
        });
        let mut tasks = Vec::new();
        if dialer {
            for link in 0..n {
                tasks.push(tokio::spawn(dial_loop(shared.clone(), link)));
            }
        } else {
            for (link, listener) in listeners.into_iter().enumerate() {
                tasks.push(tokio::spawn(accept_loop(shared.clone(), link, listener)));
            }
        }
        Ok((Interconnect { shared, tasks }, rx))
    }

    /// The addresses the acceptor's links listen on (port 0 resolved); empty at the dialer.
    pub fn listening(&self) -> &[SocketAddr] {
        &self.shared.listening
    }

    /// Sends `message` on every link that is up; returns false when none is (the message is
    /// dropped: the state machine resends what must arrive).
    pub fn send(&self, message: &Message) -> bool {
        let seq = self.shared.msg_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = wire::encode(self.shared.cfg.me, message);
        self.shared.outgoing.send((seq, bytes)).is_ok()
    }

    /// Links up now.
    pub async fn links_up(&self) -> usize {
        self.shared.table.lock().await.up()
    }

    /// Ping round trips so far.
    pub fn rtt(&self) -> RttStats {
        *self.shared.rtt.lock().expect("rtt lock")
    }
}

impl Drop for Interconnect {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Sessions end when their link's watch sender and the outgoing channel go away.
        for c in &self.shared.current {
            c.send_replace(u64::MAX);
        }
    }
}

async fn dial_loop(shared: Arc<Shared>, link: usize) {
    let addrs = shared.cfg.links[link];
    let timeout = Duration::from_millis(shared.cfg.connect_timeout_ms);
    loop {
        let connect = async {
            let socket = match addrs.peer {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            // Bind the source IP so the link uses its own path (its own NIC).
            socket.bind(SocketAddr::new(addrs.local.ip(), 0))?;
            socket.connect(addrs.peer).await
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(stream)) => run_connection(shared.clone(), link, stream, true).await,
            Ok(Err(e)) => tracing::debug!(link, error = %e, "interconnect connect failed"),
            Err(_) => tracing::debug!(link, "interconnect connect timed out"),
        }
        tokio::time::sleep(Duration::from_millis(shared.cfg.reconnect_ms)).await;
    }
}

async fn accept_loop(shared: Arc<Shared>, link: usize, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                tracing::debug!(link, %from, "interconnect connection");
                tokio::spawn(run_connection(shared.clone(), link, stream, false));
            }
            Err(e) => {
                tracing::warn!(link, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(shared.cfg.reconnect_ms)).await;
            }
        }
    }
}

/// Handshake, then the session; reports refusals. Returns when the connection is over.
async fn run_connection(shared: Arc<Shared>, link: usize, mut stream: TcpStream, dialer: bool) {
    let _ = stream.set_nodelay(true);
    let timeout = Duration::from_millis(shared.cfg.connect_timeout_ms);
    let hello = Hello {
        node: shared.cfg.me,
        link: u8::try_from(link).expect("bounded at start"),
        boot_id: shared.boot_id,
        nonce: rand::random(),
    };
    let peer = match tokio::time::timeout(timeout, handshake(&shared, &mut stream, &hello)).await {
        Ok(Ok(peer)) => peer,
        Ok(Err(HandshakeError::Io(e))) => {
            tracing::debug!(link, error = %e, "handshake IO failed");
            return;
        }
        Ok(Err(HandshakeError::Refused(e))) => {
            refuse(&shared, link, &e).await;
            return;
        }
        Err(_) => {
            refuse(&shared, link, &LinkError::Malformed("handshake timed out")).await;
            return;
        }
    };
    let (dn, an) = if dialer {
        (hello.nonce, peer.nonce)
    } else {
        (peer.nonce, hello.nonce)
    };
    let session = frame::session_key(&shared.cfg.key, &dn, &an);
    let id = shared.session_seq.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut d = shared.delivered.lock().expect("delivered lock");
        if d.0 != peer.boot_id {
            *d = (peer.boot_id, 0);
        }
    }
    link_up(&shared, link, id).await;
    let reason = run_session(&shared, link, id, stream, session).await;
    link_down(&shared, link, id, reason).await;
}

enum HandshakeError {
    Io(std::io::Error),
    Refused(LinkError),
}

async fn handshake(
    shared: &Shared,
    stream: &mut TcpStream,
    hello: &Hello,
) -> Result<Hello, HandshakeError> {
    stream
        .write_all(&hello.encode(&shared.cfg.key))
        .await
        .map_err(HandshakeError::Io)?;
    let mut buf = [0u8; HELLO_BYTES];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(HandshakeError::Io)?;
    let peer = Hello::decode(&buf, &shared.cfg.key).map_err(HandshakeError::Refused)?;
    if peer.node != shared.cfg.partner || peer.link != hello.link {
        return Err(HandshakeError::Refused(LinkError::WrongPeer {
            node: peer.node,
            link: peer.link,
            expected_link: hello.link,
        }));
    }
    Ok(peer)
}

async fn refuse(shared: &Shared, link: usize, error: &LinkError) {
    tracing::warn!(link, %error, "interconnect refused bytes from the peer; connection closed");
    let _ = shared
        .events
        .send(InterconnectEvent::Refused {
            link,
            error: error.to_string(),
        })
        .await;
}

async fn link_up(shared: &Shared, link: usize, id: u64) {
    let mut t = shared.table.lock().await;
    let was_up = t.up();
    let replaced = t.sessions[link].replace(id).is_some();
    shared.current[link].send_replace(id);
    if !replaced {
        tracing::info!(link, "interconnect link up");
        let _ = shared.events.send(InterconnectEvent::LinkUp { link }).await;
    }
    if was_up == 0 {
        tracing::info!("interconnect connected");
        let _ = shared.events.send(InterconnectEvent::Connected).await;
    }
}

async fn link_down(shared: &Shared, link: usize, id: u64, reason: String) {
    let mut t = shared.table.lock().await;
    if t.sessions[link] != Some(id) {
        return; // superseded by a newer session of this link: nothing changes
    }
    t.sessions[link] = None;
    tracing::warn!(link, %reason, "interconnect link down");
    let _ = shared
        .events
        .send(InterconnectEvent::LinkDown { link, reason })
        .await;
    if t.up() == 0 {
        tracing::warn!("interconnect disconnected: no link up");
        let _ = shared.events.send(InterconnectEvent::Disconnected).await;
    }
}

/// One authenticated inbound frame.
struct Inbound {
    kind: Kind,
    body: Vec<u8>,
}

/// Reads frames, checking each; ends with the reason the stream is unusable.
async fn read_frames(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    session: [u8; 32],
    sender: NodeId,
    tx: mpsc::Sender<Inbound>,
) -> Result<(), ReadEnd> {
    let mut expected = 1u64;
    loop {
        let mut hdr = [0u8; FRAME_HEADER_BYTES];
        rd.read_exact(&mut hdr).await.map_err(ReadEnd::Io)?;
        let h = frame::parse_header(&hdr).map_err(ReadEnd::Refused)?;
        let mut rest = vec![0u8; h.body_len + MAC_BYTES];
        rd.read_exact(&mut rest).await.map_err(ReadEnd::Io)?;
        let (body, mac) = rest.split_at(h.body_len);
        frame::verify_frame(&session, sender, &hdr, body, mac).map_err(ReadEnd::Refused)?;
        if h.seq != expected {
            return Err(ReadEnd::Refused(LinkError::Sequence {
                got: h.seq,
                expected,
            }));
        }
        expected += 1;
        rest.truncate(h.body_len);
        if tx
            .send(Inbound {
                kind: h.kind,
                body: rest,
            })
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}

enum ReadEnd {
    Io(std::io::Error),
    Refused(LinkError),
}

/// Runs one session until it fails, goes silent or is superseded; returns why it ended.
async fn run_session(
    shared: &Shared,
    link: usize,
    id: u64,
    stream: TcpStream,
    session: [u8; 32],
) -> String {
    let (rd, mut wr) = stream.into_split();
    let (tx, mut inbound) = mpsc::channel(INBOUND_QUEUE_MAX);
    let mut reader = tokio::spawn(read_frames(rd, session, shared.cfg.partner, tx));
    let mut outgoing = shared.outgoing.subscribe();
    let mut current = shared.current[link].subscribe();
    let mut ping = tokio::time::interval(Duration::from_millis(shared.cfg.ping_interval_ms));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silence = Duration::from_millis(shared.cfg.link_silence_ms);
    let mut deadline = tokio::time::Instant::now() + silence;
    let mut seq = 0u64;
    let me = shared.cfg.me;
    let reason = loop {
        let out: Option<(Kind, Vec<u8>)> = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break format!("silent for {} ms", shared.cfg.link_silence_ms),
            changed = current.changed() => {
                if changed.is_err() || *current.borrow() != id {
                    break "superseded by a newer connection".to_string();
                }
                None
            }
            _ = ping.tick() => {
                let now_us = u64::try_from(shared.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                Some((Kind::Ping, now_us.to_le_bytes().to_vec()))
            }
            msg = outgoing.recv() => match msg {
                Ok((msg_seq, bytes)) => {
                    let mut body = msg_seq.to_le_bytes().to_vec();
                    body.extend_from_slice(&bytes);
                    Some((Kind::Data, body))
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(link, dropped = n, "interconnect link lagging; oldest messages dropped");
                    None
                }
                Err(broadcast::error::RecvError::Closed) => break "interconnect stopped".to_string(),
            },
            frame = inbound.recv() => match frame {
                Some(f) => {
                    deadline = tokio::time::Instant::now() + silence;
                    handle_inbound(shared, link, f).await
                }
                None => {
                    break match (&mut reader).await {
                        Ok(Err(ReadEnd::Refused(e))) => {
                            refuse(shared, link, &e).await;
                            format!("refused: {e}")
                        }
                        Ok(Err(ReadEnd::Io(e))) => format!("connection lost: {e}"),
                        _ => "connection closed".to_string(),
                    };
                }
            },
        };
        if let Some((kind, body)) = out {
            seq += 1;
            let bytes = frame::encode_frame(&session, me, kind, seq, &body);
            if let Err(e) = wr.write_all(&bytes).await {
                break format!("write failed: {e}");
            }
        }
    };
    reader.abort();
    reason
}

/// Acts on one inbound frame; returns a frame to send back (PONG).
async fn handle_inbound(shared: &Shared, link: usize, f: Inbound) -> Option<(Kind, Vec<u8>)> {
    match f.kind {
        Kind::Ping => Some((Kind::Pong, f.body)),
        Kind::Pong => {
            let sent: [u8; 8] = f.body.as_slice().try_into().ok()?;
            let sent_us = u64::from_le_bytes(sent);
            let now_us = u64::try_from(shared.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
            shared
                .rtt
                .lock()
                .expect("rtt lock")
                .add(now_us.saturating_sub(sent_us));
            None
        }
        Kind::Data => {
            let (seq_bytes, wire_frame) = f.body.split_at_checked(8)?;
            let msg_seq = u64::from_le_bytes(seq_bytes.try_into().ok()?);
            match wire::decode(wire_frame) {
                Ok((from, message)) if from == shared.cfg.partner => {
                    let fresh = {
                        let mut d = shared.delivered.lock().expect("delivered lock");
                        let fresh = msg_seq > d.1;
                        d.1 = d.1.max(msg_seq);
                        fresh
                    };
                    if fresh {
                        let _ = shared
                            .events
                            .send(InterconnectEvent::Message { message, link })
                            .await;
                    }
                }
                Ok((from, _)) => {
                    tracing::warn!(link, %from, "message names another sender; dropped")
                }
                Err(e) => {
                    tracing::warn!(link, error = %e, "authenticated frame with an undecodable message; dropped");
                    let _ = shared
                        .events
                        .send(InterconnectEvent::Refused {
                            link,
                            error: e.to_string(),
                        })
                        .await;
                }
            }
            None
        }
    }
}
