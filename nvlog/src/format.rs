//! Byte layouts of the region header, half headers and records (see `docs/format.md`).
//!
//! Every integer is little-endian. Decoders check magic, version, bounds and CRC32C and
//! return `None`/an error on bad bytes; they never panic.

/// Version of every structure in this file; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// Region header magic: the first 8 bytes of a region.
pub const REGION_MAGIC: [u8; 8] = *b"TFNVRAM\0";
/// Bytes reserved for the region header at the start of the region.
pub const REGION_HEADER_BYTES: u64 = 4096;
/// Offset of the 8-byte "own epoch" counter (bumped at each open by the writer).
pub const REGION_EPOCH_OFFSET: usize = 64;
/// Offset of the 8-byte "highest partner epoch accepted into the mirror" counter.
pub const REGION_PARTNER_EPOCH_OFFSET: usize = 128;
/// Bytes covered by the region header CRC32C (stored right after them).
const REGION_STATIC_BYTES: usize = 40;

/// Half header magic (`"NVH1"` as bytes).
pub const HALF_MAGIC: u32 = u32::from_le_bytes(*b"NVH1");
/// Bytes reserved at the start of each half before its first record.
pub const HALF_HEADER_BYTES: u64 = 4096;
/// Offset inside a half of the 8-byte committed-end word (its own cache line).
pub const HALF_COMMITTED_OFFSET: usize = 64;
/// Bytes of the half header covered by its CRC32C (stored right after them).
const HALF_STATIC_BYTES: usize = 24;

/// Record magic (`"NVRC"` as bytes).
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"NVRC");
/// Record header size in bytes; the payload follows.
pub const RECORD_HEADER_BYTES: usize = 32;
/// Records start and end on this boundary (one cache line), so a record never shares a
/// line with the next and a flush covers whole records.
pub const RECORD_ALIGN_BYTES: usize = 64;
/// Largest payload accepted by `append` and by the decoder: a full 1 MiB NFS WRITE plus
/// the operation's header and the client request identity that travel with it.
pub const PAYLOAD_BYTES_MAX: usize = (1 << 20) + 4096;

/// Smallest half size accepted (header block plus one largest record).
pub const HALF_BYTES_MIN: u64 = 2 << 20;

/// The static part of a region header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionHeader {
    /// Bytes per half, including the half header block; every area has two halves.
    pub half_bytes: u64,
}

/// Why a region header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// No region magic: not an nvlog region (or never formatted).
    #[error("no nvlog region magic (found {0:02x?})")]
    NoMagic([u8; 8]),
    /// Formatted by another, incompatible version of nvlog.
    #[error(
        "region format version {found} is not supported by this build (expects {expected}); \
         replay it with a matching twinfiler version or reformat it after a clean CP"
    )]
    WrongVersion {
        /// Version found in the region.
        found: u32,
        /// Version this build writes and reads.
        expected: u32,
    },
    /// Header CRC mismatch.
    #[error("region header CRC32C mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the header bytes.
        computed: u32,
    },
    /// Sizes that do not fit together.
    #[error("region header geometry invalid: {0}")]
    BadGeometry(String),
}

impl RegionHeader {
    /// Encodes the static header into the first bytes of `out` (at least 44 bytes).
    pub fn encode(&self, out: &mut [u8]) {
        assert!(out.len() >= REGION_STATIC_BYTES + 4);
        out[..REGION_STATIC_BYTES + 4].fill(0);
        out[0..8].copy_from_slice(&REGION_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(REGION_HEADER_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.half_bytes.to_le_bytes());
        out[24..32].copy_from_slice(&(RECORD_ALIGN_BYTES as u64).to_le_bytes());
        // 32..40 reserved, zero.
        let crc = crc32c::crc32c(&out[..REGION_STATIC_BYTES]);
        out[REGION_STATIC_BYTES..REGION_STATIC_BYTES + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and checks a region header.
    pub fn decode(bytes: &[u8]) -> Result<RegionHeader, HeaderError> {
        if bytes.len() < REGION_STATIC_BYTES + 4 {
            return Err(HeaderError::BadGeometry(
                "region shorter than its header".into(),
            ));
        }
        let magic: [u8; 8] = bytes[0..8].try_into().unwrap_or([0; 8]);
        if magic != REGION_MAGIC {
            return Err(HeaderError::NoMagic(magic));
        }
        // The version is checked before the CRC so a future layout gets the clear message.
        let version = le_u32(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::WrongVersion {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let stored = le_u32(bytes, REGION_STATIC_BYTES);
        let computed = crc32c::crc32c(&bytes[..REGION_STATIC_BYTES]);
        if stored != computed {
            return Err(HeaderError::BadCrc { stored, computed });
        }
        let header_bytes = le_u32(bytes, 12) as u64;
        let half_bytes = le_u64(bytes, 16);
        let align = le_u64(bytes, 24);
        if header_bytes != REGION_HEADER_BYTES || align != RECORD_ALIGN_BYTES as u64 {
            return Err(HeaderError::BadGeometry(format!(
                "header_bytes {header_bytes} / record align {align} differ from this build's"
            )));
        }
        if half_bytes < HALF_BYTES_MIN || !half_bytes.is_multiple_of(4096) {
            return Err(HeaderError::BadGeometry(format!("half_bytes {half_bytes}")));
        }
        Ok(RegionHeader { half_bytes })
    }
}

/// The header of one half of a log area (own log or mirror).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HalfHeader {
    /// Which half (0 or 1).
    pub half: u16,
    /// Bumped each time the half is reused; `(generation, base_seq)` names its content.
    pub generation: u64,
    /// Sequence number of the first record in the half; 0 means the half is free.
    pub base_seq: u64,
}

impl HalfHeader {
    /// Encodes into `out` (at least 28 bytes).
    pub fn encode(&self, out: &mut [u8]) {
        assert!(out.len() >= HALF_STATIC_BYTES + 4);
        out[0..4].copy_from_slice(&HALF_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&(FORMAT_VERSION as u16).to_le_bytes());
        out[6..8].copy_from_slice(&self.half.to_le_bytes());
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..24].copy_from_slice(&self.base_seq.to_le_bytes());
        let crc = crc32c::crc32c(&out[..HALF_STATIC_BYTES]);
        out[HALF_STATIC_BYTES..HALF_STATIC_BYTES + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a half header; `None` when absent or torn (the half then counts as free).
    pub fn decode(bytes: &[u8], half: u16) -> Option<HalfHeader> {
        if bytes.len() < HALF_STATIC_BYTES + 4 || le_u32(bytes, 0) != HALF_MAGIC {
            return None;
        }
        let stored = le_u32(bytes, HALF_STATIC_BYTES);
        if stored != crc32c::crc32c(&bytes[..HALF_STATIC_BYTES]) {
            return None;
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        let found_half = u16::from_le_bytes([bytes[6], bytes[7]]);
        if version as u32 != FORMAT_VERSION || found_half != half {
            return None;
        }
        Some(HalfHeader {
            half,
            generation: le_u64(bytes, 8),
            base_seq: le_u64(bytes, 16),
        })
    }
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Record kind (see [`crate::kind`]).
    pub kind: u16,
    /// Sequence number.
    pub seq: u64,
    /// Payload length in bytes.
    pub payload_len: u32,
    /// CRC32C over the header (crc field zero) and the payload.
    pub crc: u32,
}

/// Why the bytes at a position are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordFault {
    /// All-zero header: nothing was ever written here.
    Empty,
    /// Header magic missing.
    BadMagic(u32),
    /// Written by another format version.
    BadVersion(u16),
    /// Length beyond the bound or beyond the half.
    BadLength(u32),
    /// Reserved bytes not zero.
    BadReserved,
    /// CRC32C mismatch.
    BadCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
}

impl std::fmt::Display for RecordFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordFault::Empty => write!(f, "empty (all-zero header)"),
            RecordFault::BadMagic(m) => write!(f, "bad magic {m:#010x}"),
            RecordFault::BadVersion(v) => {
                write!(f, "record version {v}, expected {FORMAT_VERSION}")
            }
            RecordFault::BadLength(l) => write!(f, "payload length {l} out of bounds"),
            RecordFault::BadReserved => write!(f, "reserved header bytes not zero"),
            RecordFault::BadCrc { stored, computed } => {
                write!(
                    f,
                    "CRC32C mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
        }
    }
}

/// Bytes a record with `payload_len` bytes of payload occupies (header + payload, aligned).
pub fn record_bytes(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len).div_ceil(RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES
}

/// Encodes a whole record into `out` (exactly `record_bytes(payload.len())` long).
pub fn encode_record(out: &mut [u8], kind: u16, seq: u64, payload: &[u8]) {
    encode_record_parts(out, kind, seq, &[payload]);
}

/// [`encode_record`] of the concatenation of `parts`, without building it first: a
/// caller whose payload is data plus a small trailer copies the data once, into the log.
pub fn encode_record_parts(out: &mut [u8], kind: u16, seq: u64, parts: &[&[u8]]) {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    assert!(payload_len <= PAYLOAD_BYTES_MAX);
    assert_eq!(out.len(), record_bytes(payload_len));
    let (head, rest) = out.split_at_mut(RECORD_HEADER_BYTES);
    head.fill(0);
    head[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    head[4..6].copy_from_slice(&(FORMAT_VERSION as u16).to_le_bytes());
    head[6..8].copy_from_slice(&kind.to_le_bytes());
    head[8..16].copy_from_slice(&seq.to_le_bytes());
    head[16..20].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let (body, pad) = rest.split_at_mut(payload_len);
    let mut at = 0;
    for part in parts {
        body[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    pad.fill(0);
    let crc = record_crc(head, body);
    head[20..24].copy_from_slice(&crc.to_le_bytes());
}

fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut head = [0u8; RECORD_HEADER_BYTES];
    head.copy_from_slice(&header[..RECORD_HEADER_BYTES]);
    head[20..24].fill(0);
    crc32c::crc32c_append(crc32c::crc32c(&head), payload)
}

/// Decodes the record at the start of `bytes` (the rest of the half from there).
pub fn decode_record(bytes: &[u8]) -> Result<RecordHeader, RecordFault> {
    let header = decode_record_header(bytes)?;
    let head = &bytes[..RECORD_HEADER_BYTES];
    let payload = &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + header.payload_len as usize];
    let computed = record_crc(head, payload);
    if header.crc != computed {
        return Err(RecordFault::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// As [`decode_record`] but without the CRC check: for bytes this node encoded itself
/// moments ago (the mirror sender walking a fresh group commit), where the CRC pass
/// would only repeat the encoder's work. Bounds are still checked.
pub fn decode_record_header(bytes: &[u8]) -> Result<RecordHeader, RecordFault> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(RecordFault::BadLength(0));
    }
    let head = &bytes[..RECORD_HEADER_BYTES];
    if head.iter().all(|b| *b == 0) {
        return Err(RecordFault::Empty);
    }
    let magic = le_u32(head, 0);
    if magic != RECORD_MAGIC {
        return Err(RecordFault::BadMagic(magic));
    }
    let version = u16::from_le_bytes([head[4], head[5]]);
    if version as u32 != FORMAT_VERSION {
        return Err(RecordFault::BadVersion(version));
    }
    let payload_len = le_u32(head, 16);
    if payload_len as usize > PAYLOAD_BYTES_MAX || record_bytes(payload_len as usize) > bytes.len()
    {
        return Err(RecordFault::BadLength(payload_len));
    }
    if head[24..32].iter().any(|b| *b != 0) {
        return Err(RecordFault::BadReserved);
    }
    let stored = le_u32(head, 20);
    Ok(RecordHeader {
        kind: u16::from_le_bytes([head[6], head[7]]),
        seq: le_u64(head, 8),
        payload_len,
        crc: stored,
    })
}

/// Reads a little-endian u32 at `at` (caller checked bounds).
pub fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Reads a little-endian u64 at `at` (caller checked bounds).
pub fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_fault_on_flip() {
        let payload = b"create /a/b uid=0 xid=7";
        let mut buf = vec![0u8; record_bytes(payload.len())];
        encode_record(&mut buf, 1, 42, payload);
        let h = decode_record(&buf).expect("valid record");
        assert_eq!(
            (h.kind, h.seq, h.payload_len as usize),
            (1, 42, payload.len())
        );
        for i in 0..RECORD_HEADER_BYTES + payload.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(
                decode_record(&bad).is_err(),
                "flip at byte {i} not detected"
            );
        }
    }

    #[test]
    fn record_of_parts_is_the_record_of_their_concatenation() {
        let data = vec![7u8; 5000];
        let trailer = b"meta and length";
        let mut joined = data.clone();
        joined.extend_from_slice(trailer);
        let mut want = vec![0xAAu8; record_bytes(joined.len())];
        encode_record(&mut want, 3, 9, &joined);
        // The slot may hold old bytes: padding and header are written whole.
        let mut got = vec![0x55u8; record_bytes(joined.len())];
        encode_record_parts(&mut got, 3, 9, &[&data, &[], trailer]);
        assert_eq!(got, want);
        assert!(decode_record(&got).is_ok());
    }

    #[test]
    fn region_header_version_refused_with_message() {
        let mut buf = vec![0u8; 4096];
        RegionHeader {
            half_bytes: HALF_BYTES_MIN,
        }
        .encode(&mut buf);
        assert_eq!(
            RegionHeader::decode(&buf),
            Ok(RegionHeader {
                half_bytes: HALF_BYTES_MIN
            })
        );
        buf[8] = 9;
        let err = RegionHeader::decode(&buf).unwrap_err();
        assert!(
            err.to_string().contains("version 9 is not supported"),
            "{err}"
        );
    }
}
