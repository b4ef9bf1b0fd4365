//! The payload of our `kind::OP` NVRAM log records: one modifying NFS request, with what
//! replay needs to re-execute it and regenerate the same reply (see `docs/log-records.md`).
//!
//! Layout: `body ‖ meta ‖ body_len (u32 LE)`. The body comes first so that a WRITE's payload
//! is its data followed by a small trailer ([`write_trailer`]): the log copies the data
//! straight out of the RPC record (`Nvlog::submit_parts`), and the file system is handed a
//! slice of that same record, so the request's data is never joined into a buffer of its own.
//!
//! `meta` (little-endian):
//!
//! | size | field |
//! |---|---|
//! | 1 | version = 1 |
//! | 1 | body kind: 1 = wafl `FsOp` encoding, 2 = raw WRITE data |
//! | 1 | has DRC key (0/1) |
//! | 44 | DRC key (`DrcKey::to_bytes`), only if present |
//! | 4 | NFS procedure |
//! | 4 | export id |
//! | 1 | flags: bit 0 = SETATTR guard present, bit 1 = truncate an existing file (CREATE UNCHECKED with size 0); other bits zero |
//! | 8 | guard ctime: seconds (u32) then nanoseconds (u32), only if bit 0 |
//! | 32 | body kind 2 only: ino, gen, offset, time_ns (u64 each) |

use bytes::Bytes;
use twinfiler_proto::drc::{DrcKey, DRC_KEY_BYTES};
use twinfiler_proto::nfs3::NfsTime3;
use wafl::{Fid, FsOp};

/// Payload format version written by this code.
pub const RECORD_VERSION: u8 = 1;
const BODY_FSOP: u8 = 1;
const BODY_WRITE: u8 = 2;
/// Meta flag: a SETATTR guard follows.
const FLAG_GUARD: u8 = 1;
/// Meta flag: truncate an existing file found by CREATE UNCHECKED.
const FLAG_TRUNCATE_EXISTING: u8 = 2;
/// Largest meta part, bytes (with key, guard and write fields).
pub const META_BYTES_MAX: usize = 3 + DRC_KEY_BYTES + 8 + 1 + 8 + 32;
/// Bytes of the trailing body length.
const BODY_LEN_BYTES: usize = 4;

/// Why a payload is not one of our records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad OP record: {0}")]
pub struct RecordError(pub String);

/// Everything of a record besides the file-system op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    /// The request's identity for the duplicate-request cache (`None` for ops the node
    /// makes itself).
    pub drc_key: Option<DrcKey>,
    /// NFS procedure number (`Nfs3Proc`).
    pub proc_: u32,
    /// Export the request came through (file handles in the reply carry it).
    pub export_id: u32,
    /// SETATTR guard: apply only if the object's ctime is this.
    pub guard: Option<NfsTime3>,
    /// CREATE UNCHECKED with size 0 in its attributes: an existing file it finds is
    /// truncated (like Linux knfsd; an `O_TRUNC` open may rely on it).
    pub truncate_existing: bool,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    /// Request identity and reply context.
    pub meta: RecordMeta,
    /// What to apply.
    pub op: FsOp,
}

fn put_meta(out: &mut Vec<u8>, m: &RecordMeta, body_kind: u8) {
    out.push(RECORD_VERSION);
    out.push(body_kind);
    match &m.drc_key {
        Some(k) => {
            out.push(1);
            out.extend_from_slice(&k.to_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&m.proc_.to_le_bytes());
    out.extend_from_slice(&m.export_id.to_le_bytes());
    let mut flags = 0;
    if m.guard.is_some() {
        flags |= FLAG_GUARD;
    }
    if m.truncate_existing {
        flags |= FLAG_TRUNCATE_EXISTING;
    }
    out.push(flags);
    if let Some(t) = &m.guard {
        out.extend_from_slice(&t.seconds.to_le_bytes());
        out.extend_from_slice(&t.nseconds.to_le_bytes());
    }
}

/// Encodes a record whose op is not a WRITE.
pub fn encode(meta: &RecordMeta, op: &FsOp) -> Vec<u8> {
    let mut out = op.encode();
    let body_len = out.len();
    out.reserve(META_BYTES_MAX + BODY_LEN_BYTES);
    put_meta(&mut out, meta, BODY_FSOP);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out
}

/// The part of a WRITE record after its data: the record's payload is `data ‖ trailer`.
pub fn write_trailer(
    meta: &RecordMeta,
    target: Fid,
    offset: u64,
    data_len: usize,
    time_ns: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(META_BYTES_MAX + BODY_LEN_BYTES);
    put_meta(&mut out, meta, BODY_WRITE);
    for v in [target.ino, target.gen, offset, time_ns] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    out
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| RecordError(format!("truncated meta at {}", self.at)))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let mut w = [0u8; 4];
        w.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(w))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w))
    }
    fn flag(&mut self) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(RecordError(format!("bad flag {v}"))),
        }
    }
}

/// Decodes a payload; checks every length and tag, never panics.
pub fn decode(payload: &[u8]) -> Result<OpRecord, RecordError> {
    let split = payload
        .len()
        .checked_sub(BODY_LEN_BYTES)
        .ok_or_else(|| RecordError("shorter than its length word".into()))?;
    let mut w = [0u8; 4];
    w.copy_from_slice(&payload[split..]);
    let body_len = u32::from_le_bytes(w) as usize;
    if body_len > split {
        return Err(RecordError(format!("body length {body_len} > {split}")));
    }
    let (body, meta_bytes) = payload[..split].split_at(body_len);
    let mut c = Cursor {
        b: meta_bytes,
        at: 0,
    };
    let version = c.u8()?;
    if version != RECORD_VERSION {
        return Err(RecordError(format!("version {version}")));
    }
    let kind = c.u8()?;
    let drc_key = if c.flag()? {
        let mut k = [0u8; DRC_KEY_BYTES];
        k.copy_from_slice(c.take(DRC_KEY_BYTES)?);
        Some(DrcKey::from_bytes(&k).ok_or_else(|| RecordError("bad DRC key".into()))?)
    } else {
        None
    };
    let proc_ = c.u32()?;
    let export_id = c.u32()?;
    let flags = c.u8()?;
    if flags & !(FLAG_GUARD | FLAG_TRUNCATE_EXISTING) != 0 {
        return Err(RecordError(format!("unknown flags {flags:#x}")));
    }
    let guard = if flags & FLAG_GUARD != 0 {
        Some(NfsTime3 {
            seconds: c.u32()?,
            nseconds: c.u32()?,
        })
    } else {
        None
    };
    let meta = RecordMeta {
        drc_key,
        proc_,
        export_id,
        guard,
        truncate_existing: flags & FLAG_TRUNCATE_EXISTING != 0,
    };
    let op = match kind {
        BODY_FSOP => FsOp::decode(body).map_err(|e| RecordError(e.to_string()))?,
        BODY_WRITE => {
            let target = Fid {
                ino: c.u64()?,
                gen: c.u64()?,
            };
            let offset = c.u64()?;
            let time_ns = c.u64()?;
            if body.len() > wafl::WRITE_BYTES_MAX {
                return Err(RecordError(format!("write of {} bytes", body.len())));
            }
            FsOp::Write {
                target,
                offset,
                data: Bytes::copy_from_slice(body),
                time_ns,
            }
        }
        k => return Err(RecordError(format!("body kind {k}"))),
    };
    if c.at != meta_bytes.len() {
        return Err(RecordError(format!(
            "{} trailing meta bytes",
            meta_bytes.len() - c.at
        )));
    }
    Ok(OpRecord { meta, op })
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinfiler_proto::rpc::{CallHeader, Credential, OpaqueAuth};

    fn meta(guard: bool) -> RecordMeta {
        let h = CallHeader {
            xid: 77,
            prog: 100_003,
            vers: 3,
            proc_: 7,
            cred: Credential::None,
            verf: OpaqueAuth::none(),
        };
        RecordMeta {
            drc_key: Some(DrcKey::new(
                "10.0.0.1:800".parse().unwrap(),
                &h,
                &[9; 40],
                0,
            )),
            proc_: 7,
            export_id: 0xdead_beef,
            guard: guard.then_some(NfsTime3 {
                seconds: 5,
                nseconds: 6,
            }),
            truncate_existing: !guard,
        }
    }

    #[test]
    fn round_trips() {
        let op = FsOp::Remove {
            dir: Fid::ROOT,
            name: b"x".to_vec(),
            time_ns: 42,
        };
        for g in [false, true] {
            let m = meta(g);
            let p = encode(&m, &op);
            assert_eq!(
                decode(&p).unwrap(),
                OpRecord {
                    meta: m,
                    op: op.clone()
                }
            );
        }
        let mut m = meta(false);
        m.drc_key = None;
        let target = Fid { ino: 20, gen: 3 };
        let mut p = b"hello".to_vec();
        p.extend_from_slice(&write_trailer(&m, target, 4096, 5, 99));
        let want = FsOp::Write {
            target,
            offset: 4096,
            data: Bytes::from_static(b"hello"),
            time_ns: 99,
        };
        assert_eq!(decode(&p).unwrap().op, want);
    }

    #[test]
    fn garbage_never_panics() {
        let good = encode(
            &meta(true),
            &FsOp::Rmdir {
                dir: Fid::ROOT,
                name: b"d".to_vec(),
                time_ns: 1,
            },
        );
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err());
        }
        for _ in 0..20_000 {
            let mut b = good.clone();
            let flips = 1 + next() % 4;
            for _ in 0..flips {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            let _ = decode(&b);
            let n = (next() % 96) as usize;
            let rnd: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let _ = decode(&rnd);
        }
    }
}
