//! ONC RPC record marking over a byte stream (RFC 5531 §11), sans-IO.
//!
//! A record is a sequence of fragments, each preceded by a 4-byte big-endian header whose top
//! bit marks the last fragment and whose low 31 bits give the fragment length. The decoder is
//! fed whatever bytes the socket produced and hands back complete records. It never buffers
//! more than [`RECORD_BYTES_MAX`] per record, and [`RecordDecoder::wants`] tells the caller how
//! many bytes it needs next, so a server applies back-pressure simply by not reading.

/// Largest record we accept: a 1 MiB NFS WRITE plus RPC header, credentials and arguments.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024 + 4 * 1024;

/// Most fragments one record may have. Bounds the work an attacker can cause with a stream of
/// empty non-final fragments; real clients send one fragment per record.
pub const RECORD_FRAGMENTS_MAX: u32 = 1024;

/// Size of a record-marking header.
pub const RECORD_MARK_BYTES: usize = 4;

const LAST_FRAGMENT_BIT: u32 = 0x8000_0000;

/// Why the stream must be closed. Record marking has no resynchronisation: after any of these
/// the connection is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record (sum of its fragments) would exceed the cap.
    #[error("RPC record of at least {len} bytes exceeds the {max}-byte cap")]
    TooLarge {
        /// Bytes the record would have had at least.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// Too many fragments in one record.
    #[error("RPC record has more than {max} fragments")]
    TooManyFragments {
        /// The cap in force.
        max: u32,
    },
}

/// The 4-byte record mark for a single-fragment record of `len` bytes.
pub fn record_mark(len: usize, last: bool) -> [u8; RECORD_MARK_BYTES] {
    assert!(len < LAST_FRAGMENT_BIT as usize, "fragment too long");
    let word = len as u32 | if last { LAST_FRAGMENT_BIT } else { 0 };
    word.to_be_bytes()
}

/// Frames `payload` as one single-fragment record.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_MARK_BYTES + payload.len());
    out.extend_from_slice(&record_mark(payload.len(), true));
    out.extend_from_slice(payload);
    out
}

/// What [`RecordDecoder::feed`] did with the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input consumed (the rest belongs to later records: feed it again).
    pub consumed: usize,
    /// A complete record, if one finished within the consumed bytes.
    pub record: Option<Vec<u8>>,
}

/// Reassembles records from a byte stream. Feed it bytes; it returns at most one record per
/// call and consumes nothing past the end of that record.
#[derive(Debug)]
pub struct RecordDecoder {
    record_bytes_max: usize,
    header: [u8; RECORD_MARK_BYTES],
    header_filled: usize,
    /// Bytes still to come in the current fragment (valid when the header is complete).
    fragment_left: usize,
    fragment_is_last: bool,
    fragments: u32,
    record: Vec<u8>,
    failed: Option<RecordError>,
}

impl Default for RecordDecoder {
    fn default() -> Self {
        Self::new(RECORD_BYTES_MAX)
    }
}

impl RecordDecoder {
    /// A decoder with a per-record cap of `record_bytes_max` (at most [`RECORD_BYTES_MAX`]
    /// is typical; smaller caps suit MOUNT and portmap listeners).
    pub fn new(record_bytes_max: usize) -> Self {
        assert!(record_bytes_max > 0 && record_bytes_max < LAST_FRAGMENT_BIT as usize);
        RecordDecoder {
            record_bytes_max,
            header: [0; RECORD_MARK_BYTES],
            header_filled: 0,
            fragment_left: 0,
            fragment_is_last: false,
            fragments: 0,
            record: Vec::new(),
            failed: None,
        }
    }

    /// Bytes needed before the decoder can make progress (the rest of the current header or
    /// fragment). Always ≥ 1. A server may read this many bytes (or more, feeding the
    /// surplus again), or stop reading to push back on the client.
    pub fn wants(&self) -> usize {
        if self.header_filled < RECORD_MARK_BYTES {
            RECORD_MARK_BYTES - self.header_filled
        } else {
            self.fragment_left.max(1)
        }
    }

    /// Bytes of the current, incomplete record held in memory.
    pub fn buffered(&self) -> usize {
        self.record.len()
    }

    /// True if no partial record is buffered (a clean point to close the connection).
    pub fn is_idle(&self) -> bool {
        self.header_filled == 0 && self.record.is_empty() && self.fragments == 0
    }

    /// Consumes bytes from `input` up to the end of the next record.
    pub fn feed(&mut self, input: &[u8]) -> Result<Fed, RecordError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let mut consumed = 0;
        loop {
            if self.header_filled < RECORD_MARK_BYTES {
                let n = (RECORD_MARK_BYTES - self.header_filled).min(input.len() - consumed);
                self.header[self.header_filled..self.header_filled + n]
                    .copy_from_slice(&input[consumed..consumed + n]);
                self.header_filled += n;
                consumed += n;
                if self.header_filled < RECORD_MARK_BYTES {
                    return Ok(Fed {
                        consumed,
                        record: None,
                    });
                }
                if let Err(err) = self.start_fragment() {
                    self.failed = Some(err.clone());
                    return Err(err);
                }
            }
            let n = self.fragment_left.min(input.len() - consumed);
            self.record
                .extend_from_slice(&input[consumed..consumed + n]);
            self.fragment_left -= n;
            consumed += n;
            if self.fragment_left > 0 {
                return Ok(Fed {
                    consumed,
                    record: None,
                });
            }
            // Fragment complete.
            self.header_filled = 0;
            if self.fragment_is_last {
                self.fragments = 0;
                let record = std::mem::take(&mut self.record);
                debug_assert!(record.len() <= self.record_bytes_max);
                return Ok(Fed {
                    consumed,
                    record: Some(record),
                });
            }
            if consumed == input.len() {
                return Ok(Fed {
                    consumed,
                    record: None,
                });
            }
        }
    }

    /// Validates a complete header and prepares for the fragment body.
    fn start_fragment(&mut self) -> Result<(), RecordError> {
        let word = u32::from_be_bytes(self.header);
        let len = (word & !LAST_FRAGMENT_BIT) as usize;
        self.fragments += 1;
        if self.fragments > RECORD_FRAGMENTS_MAX {
            return Err(RecordError::TooManyFragments {
                max: RECORD_FRAGMENTS_MAX,
            });
        }
        let total = self.record.len() + len;
        if total > self.record_bytes_max {
            return Err(RecordError::TooLarge {
                len: total,
                max: self.record_bytes_max,
            });
        }
        // The length is bounded by the cap, so reserving it is bounded too; reserving once
        // avoids repeated growth copies for 1 MiB WRITEs.
        self.record.reserve(len);
        self.fragment_left = len;
        self.fragment_is_last = word & LAST_FRAGMENT_BIT != 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(dec: &mut RecordDecoder, mut input: &[u8]) -> Result<Vec<Vec<u8>>, RecordError> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            if input.is_empty() {
                break;
            }
            let fed = dec.feed(input)?;
            input = &input[fed.consumed..];
            if let Some(r) = fed.record {
                out.push(r);
            }
        }
        Ok(out)
    }

    #[test]
    fn fragments_reassembled_byte_by_byte() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&record_mark(3, false));
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&record_mark(0, false));
        stream.extend_from_slice(&record_mark(2, true));
        stream.extend_from_slice(b"de");
        stream.extend_from_slice(&frame(b"second"));
        let mut dec = RecordDecoder::default();
        let mut records = Vec::new();
        for b in &stream {
            assert!(dec.wants() >= 1);
            let fed = dec.feed(std::slice::from_ref(b)).unwrap();
            assert_eq!(fed.consumed, 1);
            records.extend(fed.record);
        }
        assert_eq!(records, vec![b"abcde".to_vec(), b"second".to_vec()]);
        assert!(dec.is_idle());
        // Same stream in one piece.
        let mut dec = RecordDecoder::default();
        assert_eq!(feed_all(&mut dec, &stream).unwrap(), records);
    }

    #[test]
    fn wants_reports_the_rest_of_the_fragment() {
        let mut dec = RecordDecoder::default();
        assert_eq!(dec.wants(), 4);
        dec.feed(&record_mark(100, true)[..2]).unwrap();
        assert_eq!(dec.wants(), 2);
        dec.feed(&record_mark(100, true)[2..]).unwrap();
        assert_eq!(dec.wants(), 100);
        dec.feed(&[0; 40]).unwrap();
        assert_eq!(dec.wants(), 60);
    }

    #[test]
    fn oversized_record_rejected_before_buffering() {
        let mut dec = RecordDecoder::default();
        // A 2 GiB - 1 fragment header: rejected on the header alone.
        let err = dec.feed(&[0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, RecordError::TooLarge { .. }));
        assert_eq!(dec.buffered(), 0);
        assert!(dec.feed(b"more").is_err(), "a failed stream stays failed");
        // Fragments that add up past the cap.
        let mut dec = RecordDecoder::new(10);
        let mut s = record_mark(6, false).to_vec();
        s.extend_from_slice(b"123456");
        s.extend_from_slice(&record_mark(5, true));
        assert!(matches!(
            feed_all(&mut dec, &s),
            Err(RecordError::TooLarge { len: 11, max: 10 })
        ));
    }

    #[test]
    fn endless_empty_fragments_rejected() {
        let mut dec = RecordDecoder::default();
        let mut s = Vec::new();
        for _ in 0..=RECORD_FRAGMENTS_MAX {
            s.extend_from_slice(&record_mark(0, false));
        }
        assert!(matches!(
            feed_all(&mut dec, &s),
            Err(RecordError::TooManyFragments { .. })
        ));
    }
}
