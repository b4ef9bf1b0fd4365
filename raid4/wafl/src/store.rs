//! The layer below the file system: a store of whole stripes of 4 KiB blocks.
//!
//! The file system only ever writes whole stripes (so RAID-4 parity is computed in memory with
//! no read-modify-write) and reads single blocks. `MemStore` and `FileStore` serve tests and
//! benchmarks; `CrashStore` simulates a power failure after the k-th stripe write.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Size of one block in bytes; every address in the file system counts these.
pub const BLOCK_SIZE: usize = 4096;

/// Errors of the layer below.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The device reported an error.
    #[error("io error: {0}")]
    Io(String),
    /// An address beyond the end of the store or a buffer of the wrong size.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The simulated power failure of `CrashStore` happened: nothing more is written.
    #[error("device stopped (simulated power failure)")]
    Crashed,
}

/// What the file system needs from the RAID group below it.
pub trait StripeStore: Send + Sync {
    /// Number of 4 KiB data blocks in one full stripe.
    fn stripe_data_blocks(&self) -> usize;
    /// Number of stripes.
    fn stripe_count(&self) -> u64;
    /// Writes whole stripes starting at `first_stripe`; `data.len()` is a multiple of a stripe.
    fn write_stripes(&self, first_stripe: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Reads whole blocks; logical block = stripe * stripe_data_blocks + index in stripe.
    fn read_blocks(&self, block: u64, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), StoreError>;
}

impl<T: StripeStore + ?Sized> StripeStore for Arc<T> {
    fn stripe_data_blocks(&self) -> usize {
        (**self).stripe_data_blocks()
    }
    fn stripe_count(&self) -> u64 {
        (**self).stripe_count()
    }
    fn write_stripes(&self, first_stripe: u64, data: &[u8]) -> Result<(), StoreError> {
        (**self).write_stripes(first_stripe, data)
    }
    fn read_blocks(&self, block: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        (**self).read_blocks(block, buf)
    }
    fn flush(&self) -> Result<(), StoreError> {
        (**self).flush()
    }
}

/// Checks a stripe write request against the geometry; returns the byte offset.
fn check_write(sdb: usize, stripes: u64, first_stripe: u64, len: usize) -> Result<u64, StoreError> {
    let stripe_bytes = sdb * BLOCK_SIZE;
    if len == 0 || !len.is_multiple_of(stripe_bytes) {
        return Err(StoreError::OutOfRange(format!(
            "write of {len} bytes is not a whole number of {stripe_bytes}-byte stripes"
        )));
    }
    let count = (len / stripe_bytes) as u64;
    if first_stripe
        .checked_add(count)
        .is_none_or(|end| end > stripes)
    {
        return Err(StoreError::OutOfRange(format!(
            "stripes {first_stripe}+{count} beyond {stripes}"
        )));
    }
    Ok(first_stripe * stripe_bytes as u64)
}

/// Checks a block read request; returns the byte offset.
fn check_read(sdb: usize, stripes: u64, block: u64, len: usize) -> Result<u64, StoreError> {
    let total = stripes * sdb as u64;
    if len == 0 || !len.is_multiple_of(BLOCK_SIZE) {
        return Err(StoreError::OutOfRange(format!("read of {len} bytes")));
    }
    let count = (len / BLOCK_SIZE) as u64;
    if block.checked_add(count).is_none_or(|end| end > total) {
        return Err(StoreError::OutOfRange(format!(
            "blocks {block}+{count} beyond {total}"
        )));
    }
    Ok(block * BLOCK_SIZE as u64)
}

/// A store in memory: for tests (crash images are cheap to copy).
pub struct MemStore {
    sdb: usize,
    stripes: u64,
    bytes: RwLock<Vec<u8>>,
}

impl MemStore {
    /// A zeroed store of `stripes` stripes of `sdb` data blocks.
    pub fn new(sdb: usize, stripes: u64) -> Self {
        assert!(sdb >= 1 && stripes >= 4);
        let len = sdb * BLOCK_SIZE * stripes as usize;
        MemStore {
            sdb,
            stripes,
            bytes: RwLock::new(vec![0; len]),
        }
    }

    /// A copy of every byte: the "disk image" at this instant.
    pub fn image(&self) -> Vec<u8> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A store holding a previously taken image.
    pub fn from_image(sdb: usize, image: Vec<u8>) -> Self {
        let stripes = (image.len() / (sdb * BLOCK_SIZE)) as u64;
        assert_eq!(image.len(), stripes as usize * sdb * BLOCK_SIZE);
        MemStore {
            sdb,
            stripes,
            bytes: RwLock::new(image),
        }
    }

    /// Flips one bit on the "media" (for bad-checksum tests).
    pub fn corrupt_block(&self, block: u64, byte: usize) {
        let mut b = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        b[block as usize * BLOCK_SIZE + byte] ^= 0x40;
    }
}

impl StripeStore for MemStore {
    fn stripe_data_blocks(&self) -> usize {
        self.sdb
    }
    fn stripe_count(&self) -> u64 {
        self.stripes
    }
    fn write_stripes(&self, first_stripe: u64, data: &[u8]) -> Result<(), StoreError> {
        let off = check_write(self.sdb, self.stripes, first_stripe, data.len())? as usize;
        let mut b = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        b[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn read_blocks(&self, block: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let off = check_read(self.sdb, self.stripes, block, buf.len())? as usize;
        let b = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        buf.copy_from_slice(&b[off..off + buf.len()]);
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A store in one regular file (pread/pwrite, fsync on flush).
pub struct FileStore {
    file: File,
    sdb: usize,
    stripes: u64,
}

impl FileStore {
    /// Creates (or truncates) `path` to hold `stripes` stripes of `sdb` blocks.
    pub fn create(path: &Path, sdb: usize, stripes: u64) -> Result<Self, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        file.set_len(sdb as u64 * BLOCK_SIZE as u64 * stripes)
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        Ok(FileStore { file, sdb, stripes })
    }

    /// Opens an existing image; its size must be a whole number of stripes.
    pub fn open(path: &Path, sdb: usize) -> Result<Self, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?
            .len();
        let stripe_bytes = (sdb * BLOCK_SIZE) as u64;
        if sdb == 0 || !len.is_multiple_of(stripe_bytes) || len / stripe_bytes < 4 {
            return Err(StoreError::OutOfRange(format!(
                "{}: {len} bytes is not a whole number (>= 4) of {stripe_bytes}-byte stripes",
                path.display()
            )));
        }
        Ok(FileStore {
            file,
            sdb,
            stripes: len / stripe_bytes,
        })
    }
}

impl StripeStore for FileStore {
    fn stripe_data_blocks(&self) -> usize {
        self.sdb
    }
    fn stripe_count(&self) -> u64 {
        self.stripes
    }
    fn write_stripes(&self, first_stripe: u64, data: &[u8]) -> Result<(), StoreError> {
        let off = check_write(self.sdb, self.stripes, first_stripe, data.len())?;
        self.file
            .write_all_at(data, off)
            .map_err(|e| StoreError::Io(format!("write at {off}: {e}")))
    }
    fn read_blocks(&self, block: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let off = check_read(self.sdb, self.stripes, block, buf.len())?;
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| StoreError::Io(format!("read at {off}: {e}")))
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::Io(format!("fsync: {e}")))
    }
}

/// Wraps a store and stops writing after a given number of stripe writes, as if power failed:
/// the stripe that "crashes" is torn (only its first half of blocks reach the media) and every
/// later write or flush fails.
pub struct CrashStore<S> {
    inner: S,
    writes_left: AtomicU64,
    stripes_written: AtomicU64,
    crashed: AtomicBool,
}

impl<S: StripeStore> CrashStore<S> {
    /// `writes_allowed`: stripes that complete before the failure (`u64::MAX` = never fail).
    pub fn new(inner: S, writes_allowed: u64) -> Self {
        CrashStore {
            inner,
            writes_left: AtomicU64::new(writes_allowed),
            stripes_written: AtomicU64::new(0),
            crashed: AtomicBool::new(false),
        }
    }

    /// Stripes written so far (counting the torn one).
    pub fn stripes_written(&self) -> u64 {
        self.stripes_written.load(Ordering::SeqCst)
    }

    /// Whether the simulated power failure has happened.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// The wrapped store (to "reboot" on the same media).
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: StripeStore> StripeStore for CrashStore<S> {
    fn stripe_data_blocks(&self) -> usize {
        self.inner.stripe_data_blocks()
    }
    fn stripe_count(&self) -> u64 {
        self.inner.stripe_count()
    }
    fn write_stripes(&self, first_stripe: u64, data: &[u8]) -> Result<(), StoreError> {
        if self.crashed() {
            return Err(StoreError::Crashed);
        }
        let stripe_bytes = self.inner.stripe_data_blocks() * BLOCK_SIZE;
        for (i, stripe) in data.chunks(stripe_bytes).enumerate() {
            let s = first_stripe + i as u64;
            self.stripes_written.fetch_add(1, Ordering::SeqCst);
            if self.writes_left.load(Ordering::SeqCst) == 0 {
                // Torn write: the first half of the blocks reach the media, the rest is old.
                let blocks = stripe_bytes / BLOCK_SIZE;
                let half = blocks.div_ceil(2) * BLOCK_SIZE;
                let mut torn = vec![0u8; stripe_bytes];
                self.inner.read_blocks(s * blocks as u64, &mut torn)?;
                torn[..half].copy_from_slice(&stripe[..half]);
                self.inner.write_stripes(s, &torn)?;
                self.crashed.store(true, Ordering::SeqCst);
                return Err(StoreError::Crashed);
            }
            self.writes_left.fetch_sub(1, Ordering::SeqCst);
            self.inner.write_stripes(s, stripe)?;
        }
        Ok(())
    }
    fn read_blocks(&self, block: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.inner.read_blocks(block, buf)
    }
    fn flush(&self) -> Result<(), StoreError> {
        if self.crashed() {
            return Err(StoreError::Crashed);
        }
        self.inner.flush()
    }
}
