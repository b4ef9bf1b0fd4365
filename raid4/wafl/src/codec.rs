//! Little-endian encoding helpers, block pointers and block checksums.
//!
//! Every decoder here checks bounds and returns `DecodeError` on bad bytes; none panics.

/// Bytes could not be decoded: truncated, out of range or of an unknown type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("decode error: {0}")]
pub struct DecodeError(pub String);

/// Appends little-endian values to a byte vector.
#[derive(Default)]
pub struct Writer {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer { buf: Vec::new() }
    }
    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Appends a u16.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends raw bytes.
    pub fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Appends a u16 length then the bytes (`v.len()` must fit in a u16).
    pub fn bytes16(&mut self, v: &[u8]) {
        assert!(v.len() <= u16::MAX as usize);
        self.u16(v.len() as u16);
        self.raw(v);
    }
    /// Appends a u32 length then the bytes.
    pub fn bytes32(&mut self, v: &[u8]) {
        assert!(v.len() <= u32::MAX as usize);
        self.u32(v.len() as u32);
        self.raw(v);
    }
    /// Appends an optional u64 as a presence byte and the value.
    pub fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(x) => {
                self.u8(1);
                self.u64(x);
            }
            None => self.u8(0),
        }
    }
    /// Appends a block pointer (20 bytes).
    pub fn ptr(&mut self, p: &BlockPtr) {
        self.u64(p.addr);
        self.u64(p.birth);
        self.u32(p.csum);
    }
}

/// Reads little-endian values from a byte slice with bounds checks.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError(format!(
                "need {n} bytes at offset {}, have {}",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    /// Reads a u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// Reads a u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    /// Reads a u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// Reads a u16-length-prefixed byte string of at most `max` bytes.
    pub fn bytes16(&mut self, max: usize) -> Result<Vec<u8>, DecodeError> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(DecodeError(format!("length {n} above limit {max}")));
        }
        Ok(self.take(n)?.to_vec())
    }
    /// Reads a u32-length-prefixed byte string of at most `max` bytes.
    pub fn bytes32(&mut self, max: usize) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError(format!("length {n} above limit {max}")));
        }
        Ok(self.take(n)?.to_vec())
    }
    /// Reads an optional u64 (presence byte 0 or 1).
    pub fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u64()?)),
            t => Err(DecodeError(format!("bad option tag {t}"))),
        }
    }
    /// Reads a block pointer.
    pub fn ptr(&mut self) -> Result<BlockPtr, DecodeError> {
        Ok(BlockPtr {
            addr: self.u64()?,
            birth: self.u64()?,
            csum: self.u32()?,
        })
    }
    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

/// Bytes of an encoded `BlockPtr`.
pub const PTR_BYTES: usize = 20;

/// A pointer to one 4 KiB block: where it is, the CP that wrote it, and its checksum.
/// Parents carry their children's checksums, so the tree is a Merkle tree rooted in the
/// superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockPtr {
    /// Logical block number.
    pub addr: u64,
    /// Generation (CP number) in which the block was written.
    pub birth: u64,
    /// `block_checksum(addr, contents)`.
    pub csum: u32,
}

/// CRC-32C over the block address then the contents: a block read from the wrong place
/// (misdirected write, stale copy) fails like a corrupted one.
pub fn block_checksum(addr: u64, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&addr.to_le_bytes()), data)
}

/// FNV-1a, 64 bit: the directory name hash (stable forever: it is part of the format).
pub fn name_hash(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
