//! The on-disk reservation block: a checksummed record at [`RESERVATION_AREA_BLOCK`] of every
//! disk, for disk files and block devices without SCSI-3 reservations. The format is in
//! `cluster/docs/reservations.md`.
//!
//! Nothing enforces it: both nodes can write the disk. It works because every node follows
//! three rules: (1) it acquires only by writing a record with a higher generation and reading
//! it back after a settle delay (a concurrent writer's record wins, the loser sees it);
//! (2) a holder re-reads the record every check interval and stops writing the aggregate the
//! moment the record names someone else or another generation (self-fencing); (3) a preempter
//! waits for the fence delay (longer than the holder's check interval plus one IO) after its
//! write before it touches the disks.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{HoldStatus, KeyList, ReservationKey, ReservationState, Reservations, ReserveError};
use crate::codec::{unseal, Reader, Writer};
use crate::direct_io::{AlignedBlock, DirectDisk};

/// Block (4 KiB units) of the reservation area in each disk's 1 MiB header (raid4 `layout`).
pub const RESERVATION_AREA_BLOCK: u64 = 8;
/// Magic of a reservation record.
pub const RESERVATION_MAGIC: [u8; 4] = *b"TFRV";
/// Version of the record layout.
pub const RESERVATION_VERSION: u8 = 1;
/// Registered keys a record holds at most (two nodes need two; room for a replacement node).
pub const REGISTERED_KEYS_MAX: usize = 8;
/// Attempts of one reserve or preempt that gave up for slow IO ([`ReserveError::SlowIo`]).
pub const ACQUIRE_ATTEMPTS_MAX: u32 = 3;
/// Size of the encoded record (the rest of the block is zero).
pub const RESERVATION_RECORD_BYTES: usize = 40 + 8 * REGISTERED_KEYS_MAX + 4;

/// One decoded reservation record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationRecord {
    /// Bumped by every write; never goes back.
    pub generation: u64,
    /// The holder, `None` when free.
    pub holder: Option<ReservationKey>,
    /// The key of the node that wrote this record (diagnostics).
    pub writer: ReservationKey,
    /// Writer's wall clock, milliseconds since the Unix epoch (diagnostics only: the nodes'
    /// clocks are not compared).
    pub timestamp_ms: u64,
    /// Registered keys, at most [`REGISTERED_KEYS_MAX`], no duplicates, no 0.
    pub keys: Vec<ReservationKey>,
}

impl ReservationRecord {
    /// The state of a never-written (all-zero) block.
    pub fn blank() -> ReservationRecord {
        ReservationRecord {
            generation: 0,
            holder: None,
            writer: ReservationKey(0),
            timestamp_ms: 0,
            keys: Vec::new(),
        }
    }

    /// Encodes into [`RESERVATION_RECORD_BYTES`].
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.keys.len() <= REGISTERED_KEYS_MAX, "too many keys");
        assert!(self.keys.iter().all(|k| k.0 != 0), "key 0 is reserved");
        let mut w = Writer(Vec::with_capacity(RESERVATION_RECORD_BYTES));
        w.0.extend_from_slice(&RESERVATION_MAGIC);
        w.u8(RESERVATION_VERSION);
        w.u8(u8::try_from(self.keys.len()).expect("bounded above"));
        w.u16(0);
        w.u64(self.generation);
        w.u64(self.holder.map_or(0, |k| k.0));
        w.u64(self.writer.0);
        w.u64(self.timestamp_ms);
        for i in 0..REGISTERED_KEYS_MAX {
            w.u64(self.keys.get(i).map_or(0, |k| k.0));
        }
        let out = w.seal();
        assert_eq!(out.len(), RESERVATION_RECORD_BYTES);
        out
    }

    /// Decodes a whole block: `Ok(blank)` for an all-zero record area, an error for anything
    /// damaged. Never panics.
    pub fn decode(block: &[u8]) -> Result<ReservationRecord, &'static str> {
        let rec = block
            .get(..RESERVATION_RECORD_BYTES)
            .ok_or("block shorter than a record")?;
        if rec.iter().all(|&b| b == 0) {
            return Ok(ReservationRecord::blank());
        }
        if rec[0..4] != RESERVATION_MAGIC {
            return Err("magic");
        }
        if rec[4] != RESERVATION_VERSION {
            return Err("version");
        }
        let payload = unseal(rec).ok_or("checksum")?;
        let mut r = Reader::new(&payload[5..]);
        let head = (|| Some((r.u8()?, r.u16()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?)))();
        let (count, reserved, generation, holder, writer, timestamp_ms) = head.ok_or("size")?;
        if reserved != 0 {
            return Err("reserved bytes");
        }
        let count = usize::from(count);
        if count > REGISTERED_KEYS_MAX {
            return Err("key count");
        }
        let mut keys = Vec::with_capacity(count);
        for i in 0..REGISTERED_KEYS_MAX {
            let k = r.u64().ok_or("size")?;
            match (i < count, k) {
                (true, 0) => return Err("zero key"),
                (true, k) if keys.contains(&ReservationKey(k)) => return Err("duplicate key"),
                (true, k) => keys.push(ReservationKey(k)),
                (false, 0) => {}
                (false, _) => return Err("key past the count"),
            }
        }
        let holder = (holder != 0).then_some(ReservationKey(holder));
        if holder.is_some_and(|h| !keys.contains(&h)) {
            return Err("holder not registered");
        }
        Ok(ReservationRecord {
            generation,
            holder,
            writer: ReservationKey(writer),
            timestamp_ms,
            keys,
        })
    }
}

/// Delays of the on-disk protocol.
#[derive(Clone, Copy, Debug)]
pub struct DiskBlockTiming {
    /// After writing a record to acquire, wait this long and read it back: a concurrent
    /// writer that read the old record before our write has written by then — or gives up,
    /// because an acquirer whose own read-to-write took `settle_ms` or more abandons
    /// ([`ReserveError::SlowIo`]). Both nodes must use the same value; it must comfortably
    /// exceed one read plus one O_DSYNC write (a few ms on a local disk, more on iSCSI).
    pub settle_ms: u64,
    /// After a preempt, wait this long before returning: the old holder checks every
    /// `check_interval_ms` and stops writing when it sees the preemption, so this must exceed
    /// its check interval plus one IO.
    pub fence_wait_ms: u64,
}

impl Default for DiskBlockTiming {
    fn default() -> Self {
        DiskBlockTiming {
            settle_ms: 50,
            fence_wait_ms: 500,
        }
    }
}

/// One disk's reservation block, as one node uses it.
pub struct DiskBlockReservation {
    disk: DirectDisk,
    path: String,
    key: ReservationKey,
    timing: DiskBlockTiming,
    /// The generation of our last acquisition (reserve or preempt), and of our own later
    /// writes that keep the hold (registration refresh); `None` when we do not hold it.
    held_generation: Option<u64>,
}

impl DiskBlockReservation {
    /// Opens the disk at `path` for key `key`.
    pub fn open(
        path: &Path,
        key: ReservationKey,
        timing: DiskBlockTiming,
    ) -> Result<DiskBlockReservation, ReserveError> {
        assert!(key.0 != 0, "key 0 is reserved");
        let shown = path.display().to_string();
        let disk = DirectDisk::open(path).map_err(|source| ReserveError::Io {
            path: shown.clone(),
            source,
        })?;
        Ok(DiskBlockReservation {
            disk,
            path: shown,
            key,
            timing,
            held_generation: None,
        })
    }

    /// Reads and decodes the record.
    pub fn read_record(&self) -> Result<ReservationRecord, ReserveError> {
        let block = self
            .disk
            .read_block(RESERVATION_AREA_BLOCK)
            .map_err(|e| self.io(e))?;
        ReservationRecord::decode(block.as_ref()).map_err(|reason| ReserveError::Corrupt {
            path: self.path.clone(),
            reason,
        })
    }

    /// Writes a blank record (generation kept above `previous_generation`): the operator's
    /// way out of a damaged block, when neither node serves the aggregate.
    pub fn reinitialise(&mut self, previous_generation: u64) -> Result<(), ReserveError> {
        let mut rec = ReservationRecord::blank();
        rec.generation = previous_generation + 1;
        self.write_record(rec).map(drop)
    }

    fn io(&self, source: std::io::Error) -> ReserveError {
        ReserveError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Stamps and writes `rec` (with the next generation); returns what was written.
    fn write_record(&self, mut rec: ReservationRecord) -> Result<ReservationRecord, ReserveError> {
        rec.writer = self.key;
        rec.timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let bytes = rec.encode();
        // Pair the assertion: what we write must decode to itself.
        debug_assert_eq!(ReservationRecord::decode(&bytes).as_ref(), Ok(&rec));
        self.disk
            .write_block(RESERVATION_AREA_BLOCK, &AlignedBlock::with_prefix(&bytes))
            .map_err(|e| self.io(e))?;
        Ok(rec)
    }

    fn with_key(keys: &[ReservationKey], key: ReservationKey) -> Option<Vec<ReservationKey>> {
        let mut keys = keys.to_vec();
        if !keys.contains(&key) {
            if keys.len() >= REGISTERED_KEYS_MAX {
                return None;
            }
            keys.push(key);
        }
        Some(keys)
    }

    fn reserve_once(&mut self) -> Result<u64, ReserveError> {
        let started = Instant::now();
        let rec = self.read_record()?;
        match rec.holder {
            // Already ours, acquired by this handle at this generation: nothing to do.
            Some(h) if h == self.key && self.held_generation == Some(rec.generation) => {
                return Ok(rec.generation);
            }
            // Ours on disk but not proven by this handle (a restart, or a record left by an
            // abandoned attempt): acquire it afresh below, with a new generation.
            Some(h) if h == self.key => {}
            Some(holder) => {
                return Err(ReserveError::Conflict {
                    path: self.path.clone(),
                    holder,
                })
            }
            None => {}
        }
        let next = self.held_by_us(rec, |_| true)?;
        self.acquire(next, started, self.timing.settle_ms)
    }

    /// The successor of `rec` (next generation) with us as holder, keeping the registered
    /// keys that `keep` accepts and adding ours.
    fn held_by_us(
        &self,
        rec: ReservationRecord,
        keep: impl Fn(ReservationKey) -> bool,
    ) -> Result<ReservationRecord, ReserveError> {
        let kept: Vec<ReservationKey> = rec.keys.iter().copied().filter(|&k| keep(k)).collect();
        let keys = Self::with_key(&kept, self.key).ok_or(ReserveError::TooManyKeys {
            path: self.path.clone(),
            max: REGISTERED_KEYS_MAX,
        })?;
        Ok(ReservationRecord {
            generation: rec.generation + 1,
            holder: Some(self.key),
            keys,
            ..rec
        })
    }

    fn preempt_once(&mut self, victim: ReservationKey) -> Result<u64, ReserveError> {
        let started = Instant::now();
        let rec = self.read_record()?;
        let next = self.held_by_us(rec, |k| k != victim)?;
        // The fence wait covers the settle delay too: one wait, then the read-back.
        let wait_ms = self.timing.fence_wait_ms.max(self.timing.settle_ms);
        self.acquire(next, started, wait_ms)
    }

    /// Runs an acquisition again when it gave up for slowness (each attempt undid itself).
    fn retry_slow(
        &mut self,
        mut op: impl FnMut(&mut Self) -> Result<u64, ReserveError>,
    ) -> Result<u64, ReserveError> {
        let mut attempt = 1;
        loop {
            match op(self) {
                Err(e @ ReserveError::SlowIo { .. }) if attempt < ACQUIRE_ATTEMPTS_MAX => {
                    tracing::warn!(error = %e, attempt, "slow acquisition abandoned; retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Writes `next`, waits `wait_ms`, and checks it is still the record on disk.
    ///
    /// `started` is when the read that `next` was derived from began. If that read, our
    /// decision and our write together took `settle_ms` or more, we give up: a competitor that
    /// wrote after our read could already have read back its own record and won, and our
    /// late write would now overwrite its hold (it would see that only at its next check).
    /// Proof sketch: for a competitor B to have won, its read-back began ≥ `settle_ms` after
    /// its write completed, which was after our read began; our write landing after B's
    /// read-back thus means our read→write took ≥ `settle_ms`.
    fn acquire(
        &mut self,
        next: ReservationRecord,
        started: Instant,
        wait_ms: u64,
    ) -> Result<u64, ReserveError> {
        let written = self.write_record(next)?;
        let elapsed = started.elapsed();
        if elapsed >= Duration::from_millis(self.timing.settle_ms) {
            self.held_generation = None;
            self.undo(&written);
            return Err(ReserveError::SlowIo {
                path: self.path.clone(),
                elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                settle_ms: self.timing.settle_ms,
            });
        }
        std::thread::sleep(Duration::from_millis(wait_ms));
        let now = self.read_record()?;
        if now.holder == Some(self.key) && now.generation == written.generation {
            self.held_generation = Some(written.generation);
            Ok(written.generation)
        } else {
            self.held_generation = None;
            Err(ReserveError::Conflict {
                path: self.path.clone(),
                holder: now.holder.unwrap_or(now.writer),
            })
        }
    }

    /// After a slow acquisition: if our record is still the one on disk, write it free again
    /// (best effort; the state machine releases again after a failed step anyway).
    fn undo(&mut self, written: &ReservationRecord) {
        let Ok(now) = self.read_record() else { return };
        if now.holder == Some(self.key) && now.generation == written.generation {
            let free = ReservationRecord {
                generation: now.generation + 1,
                holder: None,
                ..now
            };
            if let Err(e) = self.write_record(free) {
                tracing::warn!(path = %self.path, error = %e, "undo of a slow acquisition failed");
            }
        }
    }
}

impl Reservations for DiskBlockReservation {
    fn path(&self) -> &str {
        &self.path
    }

    fn key(&self) -> ReservationKey {
        self.key
    }

    fn register(&mut self) -> Result<(), ReserveError> {
        let rec = self.read_record()?;
        if rec.keys.contains(&self.key) {
            return Ok(());
        }
        let keys = Self::with_key(&rec.keys, self.key).ok_or(ReserveError::TooManyKeys {
            path: self.path.clone(),
            max: REGISTERED_KEYS_MAX,
        })?;
        self.write_record(ReservationRecord {
            generation: rec.generation + 1,
            keys,
            ..rec
        })
        .map(drop)
    }

    fn reserve(&mut self) -> Result<u64, ReserveError> {
        self.retry_slow(Self::reserve_once)
    }

    fn read_keys(&mut self) -> Result<KeyList, ReserveError> {
        let rec = self.read_record()?;
        Ok(KeyList {
            generation: rec.generation,
            keys: rec.keys,
        })
    }

    fn read_reservation(&mut self) -> Result<ReservationState, ReserveError> {
        let rec = self.read_record()?;
        Ok(ReservationState {
            generation: rec.generation,
            holder: rec.holder,
        })
    }

    fn preempt(&mut self, victim: ReservationKey) -> Result<u64, ReserveError> {
        assert!(victim != self.key, "a node never preempts itself");
        self.retry_slow(|me| me.preempt_once(victim))
    }

    fn release(&mut self) -> Result<(), ReserveError> {
        self.held_generation = None;
        let rec = self.read_record()?;
        let ours = rec.holder == Some(self.key);
        if !ours && !rec.keys.contains(&self.key) {
            return Ok(());
        }
        if rec.holder.is_some() && !ours {
            // Another node holds it: leave its record alone (our stale key is harmless and
            // will be dropped by its next preempt).
            return Ok(());
        }
        let keys = rec
            .keys
            .iter()
            .copied()
            .filter(|&k| k != self.key)
            .collect();
        self.write_record(ReservationRecord {
            generation: rec.generation + 1,
            holder: None,
            keys,
            ..rec
        })
        .map(drop)
    }

    fn check_held(&mut self) -> Result<HoldStatus, ReserveError> {
        let rec = self.read_record()?;
        match self.held_generation {
            Some(g) if rec.holder == Some(self.key) && rec.generation == g => {
                Ok(HoldStatus::Held { generation: g })
            }
            _ => Ok(HoldStatus::Lost { holder: rec.holder }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReservationRecord {
        ReservationRecord {
            generation: 7,
            holder: Some(ReservationKey(0x11)),
            writer: ReservationKey(0x22),
            timestamp_ms: 1_700_000_000_000,
            keys: vec![ReservationKey(0x11), ReservationKey(0x22)],
        }
    }

    #[test]
    fn record_roundtrips_in_a_block() {
        let bytes = sample().encode();
        let mut block = vec![0u8; 4096];
        block[..bytes.len()].copy_from_slice(&bytes);
        assert_eq!(ReservationRecord::decode(&block), Ok(sample()));
        assert_eq!(
            ReservationRecord::decode(&[0u8; 4096]),
            Ok(ReservationRecord::blank())
        );
    }

    #[test]
    fn every_bit_flip_and_truncation_is_rejected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(ReservationRecord::decode(&bad).is_err(), "flip {i}/{bit}");
            }
        }
        for len in 0..bytes.len() {
            assert!(
                ReservationRecord::decode(&bytes[..len]).is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn checksummed_but_inconsistent_records_are_rejected() {
        // Valid CRC over invalid content: holder not among the keys, duplicate keys.
        let mut r = sample();
        r.holder = Some(ReservationKey(0x33));
        assert_eq!(
            ReservationRecord::decode(&r.encode()),
            Err("holder not registered")
        );
        let mut r = sample();
        r.keys = vec![ReservationKey(0x11), ReservationKey(0x11)];
        assert_eq!(ReservationRecord::decode(&r.encode()), Err("duplicate key"));
    }

    #[test]
    fn noise_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut buf: Vec<u8> = (0..RESERVATION_RECORD_BYTES)
                .map(|i| (x >> (i % 8 * 8)) as u8)
                .collect();
            buf[..4].copy_from_slice(&RESERVATION_MAGIC);
            buf[4] = RESERVATION_VERSION;
            let _ = ReservationRecord::decode(&buf);
        }
    }
}
