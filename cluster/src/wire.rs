//! Interconnect messages and their compact encoding.
//!
//! Frame (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `"TF"` |
//! | 2 | 1 | version ([`WIRE_VERSION`]) |
//! | 3 | 1 | kind (message type) |
//! | 4 | 1 | sender node id |
//! | 5 | 1 | reserved, 0 (room for transport flags, e.g. "MAC follows") |
//! | 6 | 2 | body length |
//! | 8 | n | body (fixed layout per kind) |
//! | 8+n | 4 | CRC-32C of bytes 0..8+n |
//!
//! The CRC catches corruption only; authentication is the transport's job (it will wrap each
//! frame with a MAC over the pair's pre-shared key and strip it before [`decode`]). The decoder
//! checks every length and enum value and never panics.

use crate::codec::{unseal, Reader, Writer};
use crate::health::Health;
use crate::takeover::{Reason, StateCode};
use crate::NodeId;

/// Magic bytes at the start of every frame.
pub const WIRE_MAGIC: [u8; 2] = *b"TF";
/// Version of this encoding; a frame of another version is rejected with a clear error.
pub const WIRE_VERSION: u8 = 1;
/// Header bytes before the body.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Largest frame this version produces or accepts.
pub const FRAME_BYTES_MAX: usize = 64;

/// A heartbeat: the sender's state and health, sent every `heartbeat_interval_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Heartbeat {
    /// The sender's state.
    pub state: StateCode,
    /// The takeover epoch the state refers to (attempt in progress, or takeover held).
    pub epoch: u64,
    /// The newest takeover epoch the sender has been given back (as a victim).
    pub given_back_epoch: u64,
    /// The sender's failover-monitor health.
    pub health: Health,
    /// Every write the sender acknowledged is in the receiver's mirror.
    pub mirror_in_sync: bool,
    /// The sender's protocol version.
    pub version: u16,
}

/// One interconnect message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Periodic liveness, state and health.
    Heartbeat(Heartbeat),
    /// Path 1 (Fig. 4): the victim asks its partner to take it over.
    PleaseTakeover {
        /// Identifies the request in the answer.
        nonce: u64,
        /// Countdown the victim's operator asked for.
        countdown_ms: u32,
        /// Skip the graceful drain (forced at once).
        immediate: bool,
    },
    /// The partner cannot take over (or the victim cannot be taken over): why.
    TakeoverRefused {
        /// The PLEASE_TAKEOVER this answers, or 0.
        nonce: u64,
        /// The attempt this answers, or 0.
        epoch: u64,
        /// Why.
        reason: Reason,
    },
    /// The taker asks the victim to drain and shut down; its countdown runs.
    PleaseShutdown {
        /// The takeover attempt.
        epoch: u64,
        /// The PLEASE_TAKEOVER this answers (path 1), or 0 (path 2).
        nonce: u64,
        /// The countdown the taker runs.
        countdown_ms: u32,
    },
    /// The victim drained, took its final CP and released its disks.
    ShutdownComplete {
        /// The takeover attempt.
        epoch: u64,
        /// Requests completed during the drain.
        completed: u32,
        /// Requests left unprocessed in the (mirrored) log.
        kept: u32,
    },
    /// Countdown expired: the victim must stop at once; its disks are being preempted.
    Takeover {
        /// The takeover attempt.
        epoch: u64,
    },
    /// The taker holds the victim's identity; the victim must stay down.
    PleaseDie {
        /// The takeover held.
        epoch: u64,
    },
    /// The sender is ready to raise the receiver's (handed-over) addresses: release them.
    ReleaseAddresses {
        /// The takeover (or giveback) epoch.
        epoch: u64,
    },
    /// The sender released the addresses named in `ReleaseAddresses`.
    AddressesReleased {
        /// The takeover (or giveback) epoch.
        epoch: u64,
    },
    /// The victim's operator asks the taker to give back.
    PleaseGiveback,
    /// The taker drained and released the victim's identity: take it back.
    Giveback {
        /// The takeover being given back.
        epoch: u64,
    },
    /// The victim serves its identity again.
    GivebackDone {
        /// The takeover given back.
        epoch: u64,
    },
}

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than a header and CRC, longer than [`FRAME_BYTES_MAX`], or length fields disagree.
    #[error(
        "frame length {0} invalid (header, body length and CRC must agree; max {FRAME_BYTES_MAX})"
    )]
    Length(usize),
    /// Not a twinfiler frame.
    #[error("bad magic: not a twinfiler interconnect frame")]
    Magic,
    /// Another protocol version: upgrade both nodes to compatible versions.
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    /// Corrupted in transit.
    #[error("CRC mismatch: frame corrupted")]
    Checksum,
    /// Unknown message kind.
    #[error("unknown message kind {0}")]
    Kind(u8),
    /// A field holds a value outside its enum, or the body has the wrong size for its kind.
    #[error("malformed body for message kind {0}")]
    Body(u8),
}

const KIND_HEARTBEAT: u8 = 1;
const KIND_PLEASE_TAKEOVER: u8 = 2;
const KIND_TAKEOVER_REFUSED: u8 = 3;
const KIND_PLEASE_SHUTDOWN: u8 = 4;
const KIND_SHUTDOWN_COMPLETE: u8 = 5;
const KIND_TAKEOVER: u8 = 6;
const KIND_PLEASE_DIE: u8 = 7;
const KIND_RELEASE_ADDRESSES: u8 = 8;
const KIND_ADDRESSES_RELEASED: u8 = 9;
const KIND_PLEASE_GIVEBACK: u8 = 10;
const KIND_GIVEBACK: u8 = 11;
const KIND_GIVEBACK_DONE: u8 = 12;

impl Message {
    fn kind(&self) -> u8 {
        match self {
            Message::Heartbeat(_) => KIND_HEARTBEAT,
            Message::PleaseTakeover { .. } => KIND_PLEASE_TAKEOVER,
            Message::TakeoverRefused { .. } => KIND_TAKEOVER_REFUSED,
            Message::PleaseShutdown { .. } => KIND_PLEASE_SHUTDOWN,
            Message::ShutdownComplete { .. } => KIND_SHUTDOWN_COMPLETE,
            Message::Takeover { .. } => KIND_TAKEOVER,
            Message::PleaseDie { .. } => KIND_PLEASE_DIE,
            Message::ReleaseAddresses { .. } => KIND_RELEASE_ADDRESSES,
            Message::AddressesReleased { .. } => KIND_ADDRESSES_RELEASED,
            Message::PleaseGiveback => KIND_PLEASE_GIVEBACK,
            Message::Giveback { .. } => KIND_GIVEBACK,
            Message::GivebackDone { .. } => KIND_GIVEBACK_DONE,
        }
    }

    /// A short name for logs and the console.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Heartbeat(_) => "HEARTBEAT",
            Message::PleaseTakeover { .. } => "PLEASE_TAKEOVER",
            Message::TakeoverRefused { .. } => "TAKEOVER_REFUSED",
            Message::PleaseShutdown { .. } => "PLEASE_SHUTDOWN",
            Message::ShutdownComplete { .. } => "SHUTDOWN_COMPLETE",
            Message::Takeover { .. } => "TAKEOVER",
            Message::PleaseDie { .. } => "PLEASE_DIE",
            Message::ReleaseAddresses { .. } => "RELEASE_ADDRESSES",
            Message::AddressesReleased { .. } => "ADDRESSES_RELEASED",
            Message::PleaseGiveback => "PLEASE_GIVEBACK",
            Message::Giveback { .. } => "GIVEBACK",
            Message::GivebackDone { .. } => "GIVEBACK_DONE",
        }
    }

    fn encode_body(&self, w: &mut Writer) {
        match *self {
            Message::Heartbeat(hb) => {
                w.u8(hb.state as u8);
                w.u64(hb.epoch);
                w.u64(hb.given_back_epoch);
                w.u8(hb.health.to_byte());
                w.u8(u8::from(hb.mirror_in_sync));
                w.u16(hb.version);
            }
            Message::PleaseTakeover {
                nonce,
                countdown_ms,
                immediate,
            } => {
                w.u64(nonce);
                w.u32(countdown_ms);
                w.u8(u8::from(immediate));
            }
            Message::TakeoverRefused {
                nonce,
                epoch,
                reason,
            } => {
                w.u64(nonce);
                w.u64(epoch);
                w.u8(reason as u8);
            }
            Message::PleaseShutdown {
                epoch,
                nonce,
                countdown_ms,
            } => {
                w.u64(epoch);
                w.u64(nonce);
                w.u32(countdown_ms);
            }
            Message::ShutdownComplete {
                epoch,
                completed,
                kept,
            } => {
                w.u64(epoch);
                w.u32(completed);
                w.u32(kept);
            }
            Message::Takeover { epoch }
            | Message::PleaseDie { epoch }
            | Message::ReleaseAddresses { epoch }
            | Message::AddressesReleased { epoch }
            | Message::Giveback { epoch }
            | Message::GivebackDone { epoch } => w.u64(epoch),
            Message::PleaseGiveback => {}
        }
    }
}

/// Encodes `message` from `from` into one frame.
pub fn encode(from: NodeId, message: &Message) -> Vec<u8> {
    let mut body = Writer(Vec::with_capacity(32));
    message.encode_body(&mut body);
    let body_len = u16::try_from(body.0.len()).expect("bodies are a few dozen bytes");
    let mut w = Writer(Vec::with_capacity(FRAME_HEADER_BYTES + body.0.len() + 4));
    w.0.extend_from_slice(&WIRE_MAGIC);
    w.u8(WIRE_VERSION);
    w.u8(message.kind());
    w.u8(from.0);
    w.u8(0);
    w.u16(body_len);
    w.0.extend_from_slice(&body.0);
    let frame = w.seal();
    assert!(
        frame.len() <= FRAME_BYTES_MAX,
        "frame exceeds FRAME_BYTES_MAX"
    );
    frame
}

/// Decodes one frame into its sender and message; checks length, magic, version, CRC and body.
pub fn decode(frame: &[u8]) -> Result<(NodeId, Message), WireError> {
    if frame.len() < FRAME_HEADER_BYTES + 4 || frame.len() > FRAME_BYTES_MAX {
        return Err(WireError::Length(frame.len()));
    }
    if frame[0..2] != WIRE_MAGIC {
        return Err(WireError::Magic);
    }
    if frame[2] != WIRE_VERSION {
        return Err(WireError::Version(frame[2]));
    }
    let payload = unseal(frame).ok_or(WireError::Checksum)?;
    let mut r = Reader::new(payload);
    let header = (|| Some((r.u16()?, r.u8()?, r.u8()?, r.u8()?, r.u8()?, r.u16()?)))();
    let (_, _, kind, from, _reserved, body_len) = header.ok_or(WireError::Length(frame.len()))?;
    if usize::from(body_len) != r.remaining() {
        return Err(WireError::Length(frame.len()));
    }
    let message = decode_body(kind, &mut r)?;
    if r.remaining() != 0 {
        return Err(WireError::Body(kind));
    }
    Ok((NodeId(from), message))
}

fn decode_body(kind: u8, r: &mut Reader<'_>) -> Result<Message, WireError> {
    let bad = WireError::Body(kind);
    let message = match kind {
        KIND_HEARTBEAT => {
            let fields = (|| Some((r.u8()?, r.u64()?, r.u64()?, r.u8()?, r.u8()?, r.u16()?)))();
            let (state, epoch, given_back_epoch, health, in_sync, version) = fields.ok_or(bad)?;
            Message::Heartbeat(Heartbeat {
                state: StateCode::from_byte(state).ok_or(WireError::Body(kind))?,
                epoch,
                given_back_epoch,
                health: Health::from_byte(health).ok_or(WireError::Body(kind))?,
                mirror_in_sync: decode_bool(in_sync).ok_or(WireError::Body(kind))?,
                version,
            })
        }
        KIND_PLEASE_TAKEOVER => {
            let fields = (|| Some((r.u64()?, r.u32()?, r.u8()?)))();
            let (nonce, countdown_ms, immediate) = fields.ok_or(bad)?;
            Message::PleaseTakeover {
                nonce,
                countdown_ms,
                immediate: decode_bool(immediate).ok_or(WireError::Body(kind))?,
            }
        }
        KIND_TAKEOVER_REFUSED => {
            let fields = (|| Some((r.u64()?, r.u64()?, r.u8()?)))();
            let (nonce, epoch, reason) = fields.ok_or(bad)?;
            Message::TakeoverRefused {
                nonce,
                epoch,
                reason: Reason::from_byte(reason).ok_or(WireError::Body(kind))?,
            }
        }
        KIND_PLEASE_SHUTDOWN => {
            let fields = (|| Some((r.u64()?, r.u64()?, r.u32()?)))();
            let (epoch, nonce, countdown_ms) = fields.ok_or(bad)?;
            Message::PleaseShutdown {
                epoch,
                nonce,
                countdown_ms,
            }
        }
        KIND_SHUTDOWN_COMPLETE => {
            let fields = (|| Some((r.u64()?, r.u32()?, r.u32()?)))();
            let (epoch, completed, kept) = fields.ok_or(bad)?;
            Message::ShutdownComplete {
                epoch,
                completed,
                kept,
            }
        }
        KIND_PLEASE_GIVEBACK => Message::PleaseGiveback,
        KIND_TAKEOVER
        | KIND_PLEASE_DIE
        | KIND_RELEASE_ADDRESSES
        | KIND_ADDRESSES_RELEASED
        | KIND_GIVEBACK
        | KIND_GIVEBACK_DONE => {
            let epoch = r.u64().ok_or(bad)?;
            match kind {
                KIND_TAKEOVER => Message::Takeover { epoch },
                KIND_PLEASE_DIE => Message::PleaseDie { epoch },
                KIND_RELEASE_ADDRESSES => Message::ReleaseAddresses { epoch },
                KIND_ADDRESSES_RELEASED => Message::AddressesReleased { epoch },
                KIND_GIVEBACK => Message::Giveback { epoch },
                _ => Message::GivebackDone { epoch },
            }
        }
        other => return Err(WireError::Kind(other)),
    };
    Ok(message)
}

fn decode_bool(byte: u8) -> Option<bool> {
    match byte {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Heartbeat(Heartbeat {
                state: StateCode::InTakeover,
                epoch: 7,
                given_back_epoch: 3,
                health: Health::ALL_OK,
                mirror_in_sync: true,
                version: 1,
            }),
            Message::PleaseTakeover {
                nonce: 9,
                countdown_ms: 30_000,
                immediate: false,
            },
            Message::TakeoverRefused {
                nonce: 9,
                epoch: 0,
                reason: Reason::MirrorNotInSync,
            },
            Message::PleaseShutdown {
                epoch: 4,
                nonce: 9,
                countdown_ms: 1,
            },
            Message::ShutdownComplete {
                epoch: 4,
                completed: 12,
                kept: 3,
            },
            Message::Takeover { epoch: 4 },
            Message::PleaseDie { epoch: 4 },
            Message::ReleaseAddresses { epoch: 4 },
            Message::AddressesReleased { epoch: 4 },
            Message::PleaseGiveback,
            Message::Giveback { epoch: 4 },
            Message::GivebackDone { epoch: u64::MAX },
        ]
    }

    #[test]
    fn every_message_roundtrips() {
        for m in samples() {
            let frame = encode(NodeId(1), &m);
            assert_eq!(decode(&frame), Ok((NodeId(1), m)), "{}", m.name());
        }
    }

    #[test]
    fn corrupt_truncated_and_foreign_frames_are_rejected() {
        for m in samples() {
            let frame = encode(NodeId(0), &m);
            for len in 0..frame.len() {
                assert!(decode(&frame[..len]).is_err(), "truncated {}", m.name());
            }
            for i in 0..frame.len() {
                for bit in 0..8 {
                    let mut bad = frame.clone();
                    bad[i] ^= 1 << bit;
                    assert!(decode(&bad).is_err(), "bit flip {i}/{bit} {}", m.name());
                }
            }
        }
        let mut v2 = encode(NodeId(0), &Message::PleaseGiveback);
        v2[2] = 2;
        assert_eq!(decode(&v2), Err(WireError::Version(2)));
    }

    #[test]
    fn decoder_never_panics_on_noise() {
        // A small deterministic generator: the decoder must return, never panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 70) as usize;
            let mut frame: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if len > 3 {
                frame[0] = b'T';
                frame[1] = b'F';
                frame[2] = WIRE_VERSION;
            }
            let _ = decode(&frame);
        }
    }
}
