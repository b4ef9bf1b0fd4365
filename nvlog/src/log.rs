//! One log area (own log or partner mirror): two halves of records, their headers, the
//! committed-end words, and replay.
//!
//! Why a committed-end word: a group commit writes several records and persists them with
//! one barrier, and the hardware may make any subset of those cache lines durable before a
//! crash. The committed end (persisted after the records) draws the line: a bad record
//! before it is media corruption of acknowledged data (a hard error); at or after it, the
//! first bad record is a torn tail and ends the log cleanly.

use crate::format::{
    self, decode_record, HalfHeader, RecordFault, RecordHeader, HALF_COMMITTED_OFFSET,
    HALF_HEADER_BYTES, RECORD_HEADER_BYTES,
};
use crate::region::{Area, Region};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One record read back from a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Sequence number.
    pub seq: u64,
    /// Kind (see [`crate::kind`]).
    pub kind: u16,
    /// Opaque payload.
    pub payload: Vec<u8>,
}

/// How a log ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Ended at an empty slot or an older (released) record.
    Clean,
    /// Ended at a torn or corrupt record past the committed end (never acknowledged).
    Torn {
        /// Half holding it.
        half: usize,
        /// Byte offset from the half's first record.
        offset: u64,
        /// Sequence number the record would have had.
        seq_expected: u64,
        /// What was wrong with it.
        fault: String,
    },
}

/// Replay refused: the log is damaged where acknowledged data lives.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    /// A record before the committed end is not intact.
    #[error(
        "{area:?} log half {half}: record seq {seq_expected} at offset {offset} is corrupt ({fault}) \
         although the half's committed end is {committed_end}: acknowledged data is damaged; \
         do not serve from this log — recover from the partner's mirror copy"
    )]
    CorruptCommitted {
        /// Area.
        area: Area,
        /// Half.
        half: usize,
        /// Offset from the half's first record.
        offset: u64,
        /// Expected sequence number.
        seq_expected: u64,
        /// Committed end of the half.
        committed_end: u64,
        /// What was wrong.
        fault: String,
    },
    /// The committed-end word points past the half.
    #[error("{area:?} log half {half}: committed end {committed_end} exceeds the half capacity {capacity}")]
    BadCommittedEnd {
        /// Area.
        area: Area,
        /// Half.
        half: usize,
        /// Value found.
        committed_end: u64,
        /// Capacity of the half.
        capacity: u64,
    },
    /// The halves do not chain (a later half has committed records after a torn tail).
    #[error(
        "{area:?} log: half {half} starts at seq {base_seq} but the previous half ended at seq \
         {prev_last} ({why}); records in between are missing"
    )]
    Gap {
        /// Area.
        area: Area,
        /// The later half.
        half: usize,
        /// Its base sequence.
        base_seq: u64,
        /// Last good sequence before it.
        prev_last: u64,
        /// Explanation.
        why: &'static str,
    },
    /// Replay asked to start before the oldest record still in the log.
    #[error("{area:?} log: replay from seq {from} asked, but the oldest record is seq {first}")]
    FromBeforeStart {
        /// Area.
        area: Area,
        /// Requested start.
        from: u64,
        /// Oldest record present.
        first: u64,
    },
}

/// The result of scanning one half.
#[derive(Clone, Debug)]
pub struct HalfScan {
    /// Half index.
    pub half: usize,
    /// Header, `None` when the half is free.
    pub header: Option<HalfHeader>,
    /// Committed end (bytes from the first record).
    pub committed_end: u64,
    /// End of the last intact record (≥ committed end).
    pub valid_end: u64,
    /// Records found: offset and header.
    pub records: Vec<(u64, RecordHeader)>,
    /// How the half ended.
    pub tail: Tail,
}

impl HalfScan {
    /// Last sequence number in the half (base − 1 when empty).
    pub fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|(_, h)| h.seq)
    }
}

/// The records of a replay plus how the log ended.
#[derive(Clone, Debug)]
pub struct Replay {
    /// Records with `seq >= from`, in sequence order.
    pub records: Vec<Record>,
    /// How the log ended (a torn tail is reported here, not as an error).
    pub tail: Tail,
}

/// Access to one area (two halves) of a region.
#[derive(Clone)]
pub struct LogArea {
    region: Arc<Region>,
    area: Area,
}

impl LogArea {
    /// The `area` of `region`.
    pub fn new(region: Arc<Region>, area: Area) -> LogArea {
        LogArea { region, area }
    }

    /// The region.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Which area.
    pub fn area(&self) -> Area {
        self.area
    }

    /// Bytes available for records in one half.
    pub fn capacity(&self) -> u64 {
        self.region.half_bytes() - HALF_HEADER_BYTES
    }

    fn records_offset(&self, half: usize) -> usize {
        self.region.half_offset(self.area, half) + HALF_HEADER_BYTES as usize
    }

    /// Header of `half`, `None` if free or torn.
    pub fn header(&self, half: usize) -> Option<HalfHeader> {
        let off = self.region.half_offset(self.area, half);
        HalfHeader::decode(self.region.bytes(off, 64), half as u16).filter(|h| h.base_seq != 0)
    }

    /// Raw generation of `half` even when free (so reuse keeps counting up).
    pub fn generation(&self, half: usize) -> u64 {
        let off = self.region.half_offset(self.area, half);
        HalfHeader::decode(self.region.bytes(off, 64), half as u16).map_or(0, |h| h.generation)
    }

    /// The committed-end word of `half`.
    pub fn committed_end(&self, half: usize) -> u64 {
        let off = self.region.half_offset(self.area, half) + HALF_COMMITTED_OFFSET;
        self.region.word(off).load(Ordering::Acquire)
    }

    /// Durably makes `half` hold `(generation, base_seq)` with no records (base 0 = free).
    /// Order: committed end 0 first, so a torn header can never expose old records.
    pub fn reset_half(&self, half: usize, generation: u64, base_seq: u64) {
        let base = self.region.half_offset(self.area, half);
        self.region
            .word(base + HALF_COMMITTED_OFFSET)
            .store(0, Ordering::Release);
        self.region.persist(base + HALF_COMMITTED_OFFSET, 8);
        let mut head = [0u8; 32];
        HalfHeader {
            half: half as u16,
            generation,
            base_seq,
        }
        .encode(&mut head);
        // SAFETY: the half header is written only by this area's single writer.
        unsafe { self.region.bytes_mut(base, head.len()) }.copy_from_slice(&head);
        self.region.persist(base, head.len());
    }

    /// Copies `bytes` to `offset` (from the half's first record). Not yet durable.
    ///
    /// # Safety
    /// The range must be past the half's committed end and owned by the caller.
    pub unsafe fn write(&self, half: usize, offset: u64, bytes: &[u8]) {
        assert!(offset + bytes.len() as u64 <= self.capacity());
        let at = self.records_offset(half) + offset as usize;
        // SAFETY: exclusivity is the caller's contract; bounds asserted above.
        unsafe { self.region.bytes_mut(at, bytes.len()) }.copy_from_slice(bytes);
    }

    /// Mutable slot of `len` bytes at `offset` (for encoding a record in place).
    ///
    /// # Safety
    /// As for [`LogArea::write`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slot(&self, half: usize, offset: u64, len: usize) -> &mut [u8] {
        assert!(offset + len as u64 <= self.capacity());
        let at = self.records_offset(half) + offset as usize;
        // SAFETY: as above.
        unsafe { self.region.bytes_mut(at, len) }
    }

    /// Bytes `[start, end)` of `half`'s records.
    pub fn read(&self, half: usize, start: u64, end: u64) -> &[u8] {
        assert!(start <= end && end <= self.capacity());
        self.region.bytes(
            self.records_offset(half) + start as usize,
            (end - start) as usize,
        )
    }

    /// Persists the record bytes `[start, end)` then durably moves the committed end to `end`.
    pub fn commit(&self, half: usize, start: u64, end: u64) {
        assert!(start <= end && end <= self.capacity());
        assert!(
            self.committed_end(half) <= start,
            "commit must not move backwards"
        );
        self.region.persist(
            self.records_offset(half) + start as usize,
            (end - start) as usize,
        );
        let word = self.region.half_offset(self.area, half) + HALF_COMMITTED_OFFSET;
        self.region.word(word).store(end, Ordering::Release);
        self.region.persist(word, 8);
    }

    /// Scans one half: committed records must be intact; past the committed end, intact
    /// records continuing the sequence are kept and the first other one ends the half.
    pub fn scan_half(&self, half: usize) -> Result<HalfScan, ReplayError> {
        let committed_end = self.committed_end(half);
        let capacity = self.capacity();
        let Some(header) = self.header(half) else {
            return Ok(HalfScan {
                half,
                header: None,
                committed_end: 0,
                valid_end: 0,
                records: Vec::new(),
                tail: Tail::Clean,
            });
        };
        if committed_end > capacity
            || !committed_end.is_multiple_of(format::RECORD_ALIGN_BYTES as u64)
        {
            return Err(ReplayError::BadCommittedEnd {
                area: self.area,
                half,
                committed_end,
                capacity,
            });
        }
        let bytes = self.read(half, 0, capacity);
        let mut records = Vec::new();
        let mut offset = 0u64;
        let mut seq_expected = header.base_seq;
        let tail = loop {
            if offset + RECORD_HEADER_BYTES as u64 > capacity {
                break Tail::Clean;
            }
            let fault = match decode_record(&bytes[offset as usize..]) {
                Ok(h) if h.seq == seq_expected => {
                    let next = offset + format::record_bytes(h.payload_len as usize) as u64;
                    if offset < committed_end && next > committed_end {
                        Some(format!("record ends at {next}, past the committed end"))
                    } else {
                        records.push((offset, h));
                        offset = next;
                        seq_expected += 1;
                        continue;
                    }
                }
                Ok(h) if h.seq < seq_expected && offset >= committed_end => {
                    // A record left from before the half was reused: the log ends here.
                    break Tail::Clean;
                }
                Ok(h) => Some(format!(
                    "sequence {} where {seq_expected} was expected",
                    h.seq
                )),
                Err(RecordFault::Empty) if offset >= committed_end => break Tail::Clean,
                Err(f) => Some(f.to_string()),
            };
            let fault = fault.unwrap_or_default();
            if offset < committed_end {
                return Err(ReplayError::CorruptCommitted {
                    area: self.area,
                    half,
                    offset,
                    seq_expected,
                    committed_end,
                    fault,
                });
            }
            break Tail::Torn {
                half,
                offset,
                seq_expected,
                fault,
            };
        };
        Ok(HalfScan {
            half,
            header: Some(header),
            committed_end,
            valid_end: offset,
            records,
            tail,
        })
    }

    /// Scans both halves and returns them oldest first, checking that they chain.
    pub fn scan(&self) -> Result<Vec<HalfScan>, ReplayError> {
        let mut scans = vec![self.scan_half(0)?, self.scan_half(1)?];
        scans.retain(|s| s.header.is_some());
        scans.sort_by_key(|s| s.header.map_or(0, |h| h.base_seq));
        if let [older, newer] = scans.as_slice() {
            let newer_base = newer.header.map_or(0, |h| h.base_seq);
            let older_base = older.header.map_or(1, |h| h.base_seq);
            let prev_last = older.last_seq().unwrap_or(older_base - 1);
            if newer_base != prev_last + 1 {
                if newer.committed_end > 0 {
                    // Commits happen in log order, so committed records in the newer half
                    // prove the older half was complete: its missing end is damage.
                    return Err(ReplayError::Gap {
                        area: self.area,
                        half: newer.half,
                        base_seq: newer_base,
                        prev_last,
                        why: if matches!(older.tail, Tail::Torn { .. }) {
                            "the older half has a torn tail"
                        } else {
                            "the older half ends early"
                        },
                    });
                }
                // The newer half was opened while the older one's last records were still
                // being persisted, and nothing in it was committed: the log ends in the
                // older half.
                scans.truncate(1);
            }
        }
        Ok(scans)
    }

    /// All records with `seq >= from`, oldest first; a torn tail is reported in the result.
    pub fn replay(&self, from: u64) -> Result<Replay, ReplayError> {
        let scans = self.scan()?;
        let first = scans
            .iter()
            .find_map(|s| s.records.first().map(|(_, h)| h.seq));
        if let Some(first) = first {
            if from < first && from != 0 {
                // Records in [from, first) were released by a CP that the caller does not know
                // about, or are lost: either way the caller must not continue silently.
                return Err(ReplayError::FromBeforeStart {
                    area: self.area,
                    from,
                    first,
                });
            }
        }
        let mut tail = Tail::Clean;
        let mut records = Vec::new();
        for scan in &scans {
            let bytes = self.read(scan.half, 0, scan.valid_end);
            for (offset, h) in &scan.records {
                if h.seq < from {
                    continue;
                }
                let start = *offset as usize + RECORD_HEADER_BYTES;
                let payload = bytes[start..start + h.payload_len as usize].to_vec();
                records.push(Record {
                    seq: h.seq,
                    kind: h.kind,
                    payload,
                });
            }
            if let Tail::Torn { .. } = scan.tail {
                tail = scan.tail.clone();
            }
        }
        if let Tail::Torn {
            half,
            offset,
            seq_expected,
            fault,
        } = &tail
        {
            tracing::warn!(
                area = ?self.area, half, offset, seq_expected, %fault,
                "nvlog replay: torn tail record (never acknowledged) ends the log"
            );
        }
        Ok(Replay { records, tail })
    }
}
