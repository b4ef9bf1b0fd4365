//! The link protocol's bytes: the handshake and the authenticated frames. Pure: no sockets.
//!
//! Handshake (each side sends one, 64 bytes): magic `"TFIC"` | version (1) | node (1) |
//! link index (1) | reserved (1) | boot id (8) | nonce (16) | MAC (32) = keyed BLAKE3 with the
//! pair key over the first 32 bytes. Both nonces then give the link's session key:
//! `keyed BLAKE3(pair key, "twinfiler link session v1" | dialer nonce | acceptor nonce)`, so a
//! frame recorded on one session is refused on every other one.
//!
//! Frame: kind (1) | reserved (1) | body length (2, LE) | sequence (8, LE) | body | MAC (32) =
//! keyed BLAKE3 with the session key over sender node | header | body. The sequence starts at
//! 1 on each session and grows by exactly 1 per frame (TCP keeps the order), so a replayed,
//! dropped or reordered frame is refused. Bodies: DATA = message sequence (8, LE; the same
//! message goes on every link and the receiver keeps the first copy) | a `wire` frame;
//! PING = sender's timestamp (8); PONG = the PING's timestamp echoed (8).

use crate::NodeId;

/// Pair key: 32 bytes shared by the two nodes.
#[derive(Clone)]
pub struct PairKey(pub [u8; 32]);

impl PairKey {
    /// Derives the key from a passphrase (configuration convenience).
    pub fn from_passphrase(passphrase: &str) -> PairKey {
        PairKey(blake3::derive_key(
            "twinfiler interconnect pair key v1",
            passphrase.as_bytes(),
        ))
    }
}

impl std::fmt::Debug for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairKey(..)")
    }
}

/// Handshake magic.
pub const HELLO_MAGIC: [u8; 4] = *b"TFIC";
/// Link protocol version.
pub const LINK_VERSION: u8 = 1;
/// Size of a handshake.
pub const HELLO_BYTES: usize = 64;
/// MAC size.
pub const MAC_BYTES: usize = 32;
/// Frame header size (kind, reserved, length, sequence).
pub const FRAME_HEADER_BYTES: usize = 12;
/// Largest body: a message sequence plus the largest `wire` frame.
pub const FRAME_BODY_BYTES_MAX: usize = 8 + crate::wire::FRAME_BYTES_MAX;

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A `wire` message.
    Data = 1,
    /// Liveness and RTT probe.
    Ping = 2,
    /// Answer to a ping.
    Pong = 3,
}

/// One side's handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender.
    pub node: NodeId,
    /// The link the sender means.
    pub link: u8,
    /// Random per start of the sender's interconnect (message sequences restart with it).
    pub boot_id: u64,
    /// Random per connection.
    pub nonce: [u8; 16],
}

/// Why bytes from a link were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// Not our protocol, another version, or fields out of range.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The MAC does not match: wrong pair key, or tampering.
    #[error("authentication failed (MAC mismatch: wrong pair key or tampered frame)")]
    BadMac,
    /// A sequence number other than the next one: replay, loss or reordering.
    #[error("sequence {got}, expected {expected} (replayed or reordered frame)")]
    Sequence {
        /// Received.
        got: u64,
        /// Expected.
        expected: u64,
    },
    /// The handshake names an unexpected node or link.
    #[error("handshake from {node} on link {link}, expected the partner on link {expected_link}")]
    WrongPeer {
        /// Node named.
        node: NodeId,
        /// Link named.
        link: u8,
        /// Our link.
        expected_link: u8,
    },
}

impl Hello {
    /// Encodes and authenticates.
    pub fn encode(&self, key: &PairKey) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[0..4].copy_from_slice(&HELLO_MAGIC);
        out[4] = LINK_VERSION;
        out[5] = self.node.0;
        out[6] = self.link;
        out[8..16].copy_from_slice(&self.boot_id.to_le_bytes());
        out[16..32].copy_from_slice(&self.nonce);
        let mac = blake3::keyed_hash(&key.0, &out[..32]);
        out[32..].copy_from_slice(mac.as_bytes());
        out
    }

    /// Checks and decodes.
    pub fn decode(buf: &[u8; HELLO_BYTES], key: &PairKey) -> Result<Hello, LinkError> {
        if buf[0..4] != HELLO_MAGIC {
            return Err(LinkError::Malformed("handshake magic"));
        }
        if buf[4] != LINK_VERSION {
            return Err(LinkError::Malformed("handshake version"));
        }
        let mac: [u8; MAC_BYTES] = buf[32..].try_into().map_err(|_| LinkError::BadMac)?;
        if blake3::keyed_hash(&key.0, &buf[..32]) != blake3::Hash::from(mac) {
            return Err(LinkError::BadMac);
        }
        if buf[7] != 0 {
            return Err(LinkError::Malformed("handshake reserved byte"));
        }
        let boot: [u8; 8] = buf[8..16]
            .try_into()
            .map_err(|_| LinkError::Malformed("boot id"))?;
        let nonce: [u8; 16] = buf[16..32]
            .try_into()
            .map_err(|_| LinkError::Malformed("nonce"))?;
        Ok(Hello {
            node: NodeId(buf[5]),
            link: buf[6],
            boot_id: u64::from_le_bytes(boot),
            nonce,
        })
    }
}

/// The key of one session, from both handshakes' nonces.
pub fn session_key(key: &PairKey, dialer_nonce: &[u8; 16], acceptor_nonce: &[u8; 16]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(&key.0);
    h.update(b"twinfiler link session v1");
    h.update(dialer_nonce);
    h.update(acceptor_nonce);
    *h.finalize().as_bytes()
}

fn frame_mac(session: &[u8; 32], sender: NodeId, header: &[u8], body: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(session);
    h.update(&[sender.0]);
    h.update(header);
    h.update(body);
    h.finalize()
}

/// Encodes one frame from `sender`.
pub fn encode_frame(
    session: &[u8; 32],
    sender: NodeId,
    kind: Kind,
    seq: u64,
    body: &[u8],
) -> Vec<u8> {
    assert!(body.len() <= FRAME_BODY_BYTES_MAX, "frame body too large");
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len() + MAC_BYTES);
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
    let mac = frame_mac(session, sender, &out[..FRAME_HEADER_BYTES], body);
    out.extend_from_slice(mac.as_bytes());
    out
}

/// A parsed frame header: how many more bytes (body + MAC) to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Kind.
    pub kind: Kind,
    /// Body length.
    pub body_len: usize,
    /// Sequence number.
    pub seq: u64,
}

/// Parses (and bounds-checks) a frame header.
pub fn parse_header(h: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, LinkError> {
    let kind = match h[0] {
        1 => Kind::Data,
        2 => Kind::Ping,
        3 => Kind::Pong,
        _ => return Err(LinkError::Malformed("frame kind")),
    };
    if h[1] != 0 {
        return Err(LinkError::Malformed("frame reserved byte"));
    }
    let body_len = usize::from(u16::from_le_bytes([h[2], h[3]]));
    let ok_len = match kind {
        Kind::Data => {
            (8 + crate::wire::FRAME_HEADER_BYTES + 4..=FRAME_BODY_BYTES_MAX).contains(&body_len)
        }
        Kind::Ping | Kind::Pong => body_len == 8,
    };
    if !ok_len {
        return Err(LinkError::Malformed("frame length"));
    }
    let seq = u64::from_le_bytes(
        h[4..12]
            .try_into()
            .map_err(|_| LinkError::Malformed("seq"))?,
    );
    Ok(FrameHeader {
        kind,
        body_len,
        seq,
    })
}

/// Verifies the MAC of a frame from `sender` whose header parsed as `header`.
pub fn verify_frame(
    session: &[u8; 32],
    sender: NodeId,
    header: &[u8; FRAME_HEADER_BYTES],
    body: &[u8],
    mac: &[u8],
) -> Result<(), LinkError> {
    let mac: [u8; MAC_BYTES] = mac.try_into().map_err(|_| LinkError::BadMac)?;
    if frame_mac(session, sender, header, body) == blake3::Hash::from(mac) {
        Ok(())
    } else {
        Err(LinkError::BadMac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_roundtrips_and_wrong_key_or_damage_is_refused() {
        let key = PairKey::from_passphrase("pair");
        let h = Hello {
            node: NodeId(1),
            link: 2,
            boot_id: 77,
            nonce: [9; 16],
        };
        let buf = h.encode(&key);
        assert_eq!(Hello::decode(&buf, &key), Ok(h));
        assert_eq!(
            Hello::decode(&buf, &PairKey::from_passphrase("other")),
            Err(LinkError::BadMac)
        );
        for i in 0..HELLO_BYTES {
            let mut bad = buf;
            bad[i] ^= 0x40;
            assert!(Hello::decode(&bad, &key).is_err(), "byte {i}");
        }
    }

    #[test]
    fn frame_roundtrips_and_every_bit_flip_is_refused() {
        let s = session_key(&PairKey::from_passphrase("pair"), &[1; 16], &[2; 16]);
        let frame = encode_frame(&s, NodeId(0), Kind::Ping, 5, &42u64.to_le_bytes());
        let hdr: [u8; FRAME_HEADER_BYTES] = frame[..12].try_into().expect("header");
        let h = parse_header(&hdr).expect("header");
        assert_eq!((h.kind, h.body_len, h.seq), (Kind::Ping, 8, 5));
        let (body, mac) = frame[12..].split_at(8);
        assert_eq!(verify_frame(&s, NodeId(0), &hdr, body, mac), Ok(()));
        assert_eq!(
            verify_frame(&s, NodeId(1), &hdr, body, mac),
            Err(LinkError::BadMac),
            "a frame reflected back to its sender is refused"
        );
        for i in 0..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[i] ^= 1 << bit;
                let hdr: [u8; FRAME_HEADER_BYTES] = bad[..12].try_into().expect("header");
                let ok = parse_header(&hdr).is_ok_and(|h| {
                    bad.len() == 12 + h.body_len + MAC_BYTES
                        && verify_frame(
                            &s,
                            NodeId(0),
                            &hdr,
                            &bad[12..12 + h.body_len],
                            &bad[12 + h.body_len..],
                        )
                        .is_ok()
                });
                assert!(!ok, "flip {i}/{bit} accepted");
            }
        }
    }

    #[test]
    fn header_noise_never_panics() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut h = [0u8; FRAME_HEADER_BYTES];
            h.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (x >> (i % 8 * 8)) as u8);
            h[0] = (x % 4) as u8;
            h[1] = 0;
            let _ = parse_header(&h);
        }
    }
}
