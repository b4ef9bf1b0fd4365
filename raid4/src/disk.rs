//! One disk: a regular file or a block device, opened for direct IO when the file system
//! allows it, with a per-disk fault injector for tests and drills.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::Raid4Error;

/// An IO error injected on a disk (tests, `aggr fail-disk` drills): the engine completes the
/// matching requests with EIO without touching the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No injected error.
    None = 0,
    /// Reads fail.
    Reads = 1,
    /// Writes (and flushes) fail.
    Writes = 2,
    /// Everything fails.
    All = 3,
}

/// An open disk.
pub struct Disk {
    path: PathBuf,
    file: File,
    direct: bool,
    size_bytes: u64,
    fault: AtomicU8,
}

/// `BLKGETSIZE64`: size of a block device in bytes (linux/fs.h, _IOR(0x12, 114, size_t)).
const IOCTL_BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl Disk {
    /// Opens `path` read-write, with O_DIRECT if the file system supports it. Falls back to
    /// buffered IO (logged with the reason) where it does not, e.g. on some tmpfs versions.
    pub fn open(path: &Path) -> Result<Disk, Raid4Error> {
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    disk = %path.display(),
                    "O_DIRECT refused by the file system ({e}); using buffered IO with fdatasync on flush"
                );
                let f = open(false).map_err(|e| Raid4Error::open(path, e))?;
                (f, false)
            }
            Err(e) => return Err(Raid4Error::open(path, e)),
        };
        let meta = file.metadata().map_err(|e| Raid4Error::open(path, e))?;
        let size_bytes = if meta.file_type().is_block_device() {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), IOCTL_BLKGETSIZE64 as _, &mut size) };
            if rc != 0 {
                return Err(Raid4Error::open(path, std::io::Error::last_os_error()));
            }
            size
        } else if meta.file_type().is_file() {
            meta.len()
        } else {
            return Err(Raid4Error::InvalidArgument(format!(
                "{} is neither a regular file nor a block device; give disk files or devices",
                path.display()
            )));
        };
        Ok(Disk {
            path: path.to_path_buf(),
            file,
            direct,
            size_bytes,
            fault: AtomicU8::new(Fault::None as u8),
        })
    }

    /// The path the disk was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether IO bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Size in bytes when opened.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Injects (or with [`Fault::None`] clears) an IO error on this disk.
    pub fn inject_fault(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Whether an injected fault applies to a read (`write == false`) or write.
    pub(crate) fn faulted(&self, write: bool) -> bool {
        match self.fault.load(Ordering::SeqCst) {
            1 => !write,
            2 => write,
            3 => true,
            _ => false,
        }
    }
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Disk({}, direct={})", self.path.display(), self.direct)
    }
}
