//! Single-block reads and writes that bypass the page cache, for the cluster's areas in each
//! disk's header (reservation block, mailbox slots).
//!
//! Why O_DIRECT | O_DSYNC: the partner reads these blocks from another host (or another
//! process) through its own path to the disk; a write sitting in our page cache, or in the
//! device's volatile cache, would be invisible to it or lost on power failure. A filesystem that
//! refuses O_DIRECT (tmpfs) falls back to buffered IO with O_DSYNC and says so once: two
//! processes of one host still see each other's writes through the shared page cache.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Size of one block of the cluster areas (the raid4 header's block size).
pub const BLOCK_BYTES: usize = 4096;

/// A block-sized buffer aligned for O_DIRECT (4 KiB covers every logical sector size).
pub struct AlignedBlock {
    ptr: std::ptr::NonNull<u8>,
}

// SAFETY: the buffer is uniquely owned heap memory, like a Box<[u8; 4096]>.
unsafe impl Send for AlignedBlock {}
// SAFETY: shared references give read-only access.
unsafe impl Sync for AlignedBlock {}

impl AlignedBlock {
    fn layout() -> Layout {
        Layout::from_size_align(BLOCK_BYTES, BLOCK_BYTES).expect("4 KiB aligned layout")
    }

    /// A zeroed block.
    pub fn zeroed() -> AlignedBlock {
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(Self::layout()) };
        let ptr = std::ptr::NonNull::new(raw)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout()));
        AlignedBlock { ptr }
    }

    /// A zeroed block starting with `bytes` (at most [`BLOCK_BYTES`]).
    pub fn with_prefix(bytes: &[u8]) -> AlignedBlock {
        assert!(bytes.len() <= BLOCK_BYTES, "record larger than a block");
        let mut block = AlignedBlock::zeroed();
        block.as_mut()[..bytes.len()].copy_from_slice(bytes);
        block
    }
}

impl AsRef<[u8]> for AlignedBlock {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr points to BLOCK_BYTES initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), BLOCK_BYTES) }
    }
}

impl AsMut<[u8]> for AlignedBlock {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), BLOCK_BYTES) }
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with the same layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout()) }
    }
}

/// A disk (file or block device) opened for whole-block direct IO.
#[derive(Debug)]
pub struct DirectDisk {
    file: File,
    path: PathBuf,
    direct: bool,
}

impl DirectDisk {
    /// Opens `path` read-write with O_DIRECT | O_DSYNC (buffered + O_DSYNC where the
    /// filesystem refuses O_DIRECT).
    pub fn open(path: &Path) -> std::io::Result<DirectDisk> {
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags)
                .open(path)
        };
        match open(libc::O_DIRECT | libc::O_DSYNC) {
            Ok(file) => Ok(DirectDisk {
                file,
                path: path.to_owned(),
                direct: true,
            }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "O_DIRECT refused; using buffered IO with O_DSYNC (same-host sharing only)");
                Ok(DirectDisk {
                    file: open(libc::O_DSYNC)?,
                    path: path.to_owned(),
                    direct: false,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether IO bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Reads block `block` (in [`BLOCK_BYTES`] units). A short read (disk too small) is an error.
    pub fn read_block(&self, block: u64) -> std::io::Result<AlignedBlock> {
        let mut buf = AlignedBlock::zeroed();
        self.file
            .read_exact_at(buf.as_mut(), Self::offset(block)?)?;
        Ok(buf)
    }

    /// Writes block `block`; durable when it returns (O_DSYNC).
    pub fn write_block(&self, block: u64, data: &AlignedBlock) -> std::io::Result<()> {
        self.file.write_all_at(data.as_ref(), Self::offset(block)?)
    }

    fn offset(block: u64) -> std::io::Result<u64> {
        block.checked_mul(BLOCK_BYTES as u64).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "block number overflows")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_roundtrips_and_short_disk_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(4 * BLOCK_BYTES as u64))
            .expect("create");
        let disk = DirectDisk::open(&path).expect("open");
        let block = AlignedBlock::with_prefix(b"hello");
        disk.write_block(2, &block).expect("write");
        assert_eq!(&disk.read_block(2).expect("read").as_ref()[..5], b"hello");
        assert!(disk.read_block(4).is_err(), "read past the end must fail");
    }
}
