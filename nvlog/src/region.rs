//! The NVRAM region: a mapping of a device-DAX device, an fs-dax file (MAP_SYNC) or a plain
//! file (msync), plus the persistence barrier that goes with each.
//!
//! Layout: region header block, own log (two halves), mirror of the partner's log (two
//! halves). See `docs/format.md`.

use crate::format::{self, HeaderError, RegionHeader, HALF_BYTES_MIN, REGION_HEADER_BYTES};
use crate::persist::{self, FlushInsn};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Device-DAX mappings must be aligned to (and sized in) the device alignment, 2 MiB here.
pub const DEVDAX_ALIGN_BYTES: usize = 2 << 20;
/// Page size assumed for msync ranges.
const PAGE_BYTES: usize = 4096;
/// Default half size: 32 MiB (a region is then 128 MiB + 4 KiB).
pub const HALF_BYTES_DEFAULT: u64 = 32 << 20;
/// Default plain-file region path: /dev/shm survives a crash of the process.
pub const REGION_PATH_DEFAULT: &str = "/dev/shm/twinfiler-nvram";

/// How the region is mapped and made durable; reported in logs, status and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersistMode {
    /// Device-DAX character device: cache write-back + sfence.
    DevDax(FlushInsn),
    /// fs-dax file mapped MAP_SHARED_VALIDATE|MAP_SYNC: cache write-back + sfence.
    FsDaxMapSync(FlushInsn),
    /// Plain shared file mapping: msync(MS_SYNC) of the written pages.
    FileMsync,
    /// Plain shared mapping of a file on tmpfs/ramfs (e.g. `/dev/shm`): a store into the
    /// mapping *is* the page-cache page, so it survives a crash of the process the moment
    /// it is made, and nothing (msync included) makes it survive the host. msync there is
    /// a syscall that writes nothing (`noop_fsync`), so the barrier is only a fence that
    /// keeps the records' stores before the committed-end store.
    FileTmpfs,
    /// Anonymous memory (tests and simulation only): nothing survives the process.
    Memory,
}

impl std::fmt::Display for PersistMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PersistMode::DevDax(i) => write!(f, "devdax+{}+sfence", i.name()),
            PersistMode::FsDaxMapSync(i) => write!(f, "fsdax-map_sync+{}+sfence", i.name()),
            PersistMode::FileMsync => write!(f, "file+msync"),
            PersistMode::FileTmpfs => write!(f, "file+tmpfs"),
            PersistMode::Memory => write!(f, "memory(volatile)"),
        }
    }
}

/// Errors opening or formatting a region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// An OS call failed.
    #[error("nvram region {path}: {what}: {source}")]
    Io {
        /// Region path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The header is not one this build can use.
    #[error("nvram region {path} refused: {source}")]
    Header {
        /// Region path.
        path: PathBuf,
        /// Why.
        source: HeaderError,
    },
    /// The configuration does not fit the device.
    #[error("nvram region {path}: {reason}")]
    Config {
        /// Region path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Which of the two log areas of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// This node's own log.
    Own,
    /// The mirror of the partner's log.
    Mirror,
}

/// An open, mapped NVRAM region.
pub struct Region {
    ptr: *mut u8,
    map_len: usize,
    len: usize,
    half_bytes: u64,
    mode: PersistMode,
    path: PathBuf,
    _file: Option<File>,
}

// SAFETY: the mapping is plain shared memory; all mutation goes through `LogArea`, whose
// owners serialise writes to disjoint ranges (documented on `bytes_mut`).
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Bytes a region with halves of `half_bytes` needs.
    pub fn bytes_for(half_bytes: u64) -> u64 {
        REGION_HEADER_BYTES + 4 * half_bytes
    }

    /// Opens (formatting when blank) the region at `path`: a device-DAX char device, else a
    /// file mapped with MAP_SYNC when its file system supports it, else a plain file mapping.
    /// `half_bytes` is used when formatting; an existing region keeps its own geometry.
    pub fn open(path: &Path, half_bytes: u64) -> Result<Region, RegionError> {
        let io = |what| {
            move |source| RegionError::Io {
                path: path.to_owned(),
                what,
                source,
            }
        };
        if half_bytes < HALF_BYTES_MIN || !half_bytes.is_multiple_of(DEVDAX_ALIGN_BYTES as u64) {
            return Err(RegionError::Config {
                path: path.to_owned(),
                reason: format!(
                    "half_bytes {half_bytes} must be a multiple of 2 MiB and >= {HALF_BYTES_MIN}"
                ),
            });
        }
        let want = Self::bytes_for(half_bytes) as usize;
        let is_chardev = std::fs::metadata(path).map(|m| m.file_type().is_char_device());
        let region = if matches!(is_chardev, Ok(true)) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io("open"))?;
            Self::map_devdax(path, file, want)?
        } else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io("open"))?;
            let size = file.metadata().map_err(io("stat"))?.len();
            if size < want as u64 {
                // A fresh (or smaller, never formatted) file: grow it; the header check below
                // refuses a formatted region of another geometry.
                file.set_len(want as u64).map_err(io("grow file"))?;
            }
            let size = file.metadata().map_err(io("stat"))?.len() as usize;
            Self::map_file(path, file, size)?
        };
        region.format_or_check(half_bytes)
    }

    fn map_devdax(path: &Path, file: File, want: usize) -> Result<Region, RegionError> {
        let map_len = want.div_ceil(DEVDAX_ALIGN_BYTES) * DEVDAX_ALIGN_BYTES;
        let dev_size = devdax_size(path).unwrap_or(map_len as u64);
        if dev_size < map_len as u64 {
            return Err(RegionError::Config {
                path: path.to_owned(),
                reason: format!("device-DAX size {dev_size} < needed {map_len}"),
            });
        }
        // SAFETY: fresh mapping of a file we hold open; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(RegionError::Io {
                path: path.to_owned(),
                what: "mmap device-DAX",
                source: std::io::Error::last_os_error(),
            });
        }
        if !(ptr as usize).is_multiple_of(DEVDAX_ALIGN_BYTES) {
            // SAFETY: unmapping exactly what we mapped.
            unsafe { libc::munmap(ptr, map_len) };
            return Err(RegionError::Config {
                path: path.to_owned(),
                reason: "device-DAX mapping not 2 MiB aligned".into(),
            });
        }
        Ok(Region {
            ptr: ptr.cast(),
            map_len,
            len: want,
            half_bytes: 0,
            mode: PersistMode::DevDax(persist::detected()),
            path: path.to_owned(),
            _file: Some(file),
        })
    }

    /// Maps with MAP_POPULATE: NVRAM should be resident from the start, so no append pays
    /// for a page fault (first touch of a /dev/shm page costs a clear and a charge).
    fn map_file(path: &Path, file: File, len: usize) -> Result<Region, RegionError> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let fd = file.as_raw_fd();
        // First choice: MAP_SYNC, which the kernel only grants on fs-dax (EOPNOTSUPP otherwise).
        // SAFETY: fresh mapping of a file we hold open; checked for MAP_FAILED.
        let sync_ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        let (ptr, mode) = if sync_ptr != libc::MAP_FAILED {
            (sync_ptr, PersistMode::FsDaxMapSync(persist::detected()))
        } else {
            let flags = libc::MAP_SHARED | libc::MAP_POPULATE;
            // SAFETY: as above.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
            if p == libc::MAP_FAILED {
                return Err(RegionError::Io {
                    path: path.to_owned(),
                    what: "mmap file",
                    source: std::io::Error::last_os_error(),
                });
            }
            let mode = if is_memory_fs(&file) {
                PersistMode::FileTmpfs
            } else {
                PersistMode::FileMsync
            };
            (p, mode)
        };
        Ok(Region {
            ptr: ptr.cast(),
            map_len: len,
            len,
            half_bytes: 0,
            mode,
            path: path.to_owned(),
            _file: Some(file),
        })
    }

    /// A volatile region in anonymous memory, for tests and the simulator.
    pub fn anonymous(half_bytes: u64) -> Region {
        let len = Self::bytes_for(half_bytes) as usize;
        // SAFETY: anonymous private mapping; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            ptr != libc::MAP_FAILED,
            "anonymous mmap of {len} bytes failed"
        );
        let region = Region {
            ptr: ptr.cast(),
            map_len: len,
            len,
            half_bytes: 0,
            mode: PersistMode::Memory,
            path: PathBuf::from("(anonymous)"),
            _file: None,
        };
        match region.format_or_check(half_bytes) {
            Ok(r) => r,
            Err(e) => panic!("formatting anonymous region: {e}"),
        }
    }

    fn format_or_check(mut self, half_bytes: u64) -> Result<Region, RegionError> {
        let head = self.bytes(0, REGION_HEADER_BYTES as usize);
        if head.iter().all(|b| *b == 0) {
            let mut block = vec![0u8; REGION_HEADER_BYTES as usize];
            RegionHeader { half_bytes }.encode(&mut block);
            // Both areas start with free halves: zero the half header blocks.
            self.half_bytes = half_bytes;
            for area in [Area::Own, Area::Mirror] {
                for half in 0..2 {
                    let off = self.half_offset(area, half);
                    // SAFETY: formatting happens before the region is shared.
                    unsafe { self.bytes_mut(off, format::HALF_HEADER_BYTES as usize) }.fill(0);
                    self.persist(off, format::HALF_HEADER_BYTES as usize);
                }
            }
            // SAFETY: as above.
            unsafe { self.bytes_mut(0, block.len()) }.copy_from_slice(&block);
            self.persist(0, block.len());
            tracing::info!(path = %self.path.display(), half_bytes, "nvram region formatted");
        }
        let header = RegionHeader::decode(self.bytes(0, REGION_HEADER_BYTES as usize)).map_err(
            |source| RegionError::Header {
                path: self.path.clone(),
                source,
            },
        )?;
        if Self::bytes_for(header.half_bytes) as usize > self.len {
            return Err(RegionError::Header {
                path: self.path.clone(),
                source: HeaderError::BadGeometry(format!(
                    "half_bytes {} needs {} bytes, region has {}",
                    header.half_bytes,
                    Self::bytes_for(header.half_bytes),
                    self.len
                )),
            });
        }
        if header.half_bytes != half_bytes {
            tracing::warn!(
                path = %self.path.display(), configured = half_bytes, found = header.half_bytes,
                "nvram region keeps its formatted half size"
            );
        }
        self.half_bytes = header.half_bytes;
        Ok(self)
    }

    /// How this region persists stores.
    pub fn mode(&self) -> PersistMode {
        self.mode
    }

    /// Path the region was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes per half (including its header block).
    pub fn half_bytes(&self) -> u64 {
        self.half_bytes
    }

    /// Region offset of `half` of `area`.
    pub fn half_offset(&self, area: Area, half: usize) -> usize {
        assert!(half < 2);
        let area_index = match area {
            Area::Own => 0,
            Area::Mirror => 2,
        };
        REGION_HEADER_BYTES as usize + (area_index + half) * self.half_bytes as usize
    }

    /// Reads `len` bytes at `offset`.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds of the live mapping.
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset), len) }
    }

    /// Mutable view of `len` bytes at `offset`.
    ///
    /// # Safety
    /// The caller must be the only writer of this range and no reader may read it while it
    /// is written (the log writer owns the bytes past its durable end; the mirror receiver
    /// owns the mirror area).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }

    /// An aligned 8-byte word of the region, for single-store (atomic) updates.
    pub fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.len);
        // SAFETY: aligned, in bounds, lives as long as the mapping.
        unsafe { &*(self.ptr.add(offset) as *const AtomicU64) }
    }

    /// Makes `[offset, offset+len)` durable with this region's barrier.
    pub fn persist(&self, offset: usize, len: usize) {
        assert!(offset + len <= self.len);
        match self.mode {
            PersistMode::DevDax(insn) | PersistMode::FsDaxMapSync(insn) => {
                // SAFETY: in bounds of the mapping.
                unsafe { persist::flush_range(insn, self.ptr.add(offset), len) }
            }
            PersistMode::FileMsync => {
                let start = offset & !(PAGE_BYTES - 1);
                let end = offset + len;
                // SAFETY: page-aligned range inside the mapping.
                let rc =
                    unsafe { libc::msync(self.ptr.add(start).cast(), end - start, libc::MS_SYNC) };
                // msync on a live shared mapping only fails on a kernel bug: a silent
                // failure here would acknowledge writes that are not durable.
                assert_eq!(rc, 0, "msync failed: {}", std::io::Error::last_os_error());
            }
            PersistMode::FileTmpfs | PersistMode::Memory => {
                std::sync::atomic::fence(Ordering::SeqCst)
            }
        }
    }

    /// Bumps and persists the writer epoch (once per open of the own log); returns it.
    pub fn bump_epoch(&self) -> u64 {
        let word = self.word(format::REGION_EPOCH_OFFSET);
        let epoch = word.load(Ordering::Acquire) + 1;
        word.store(epoch, Ordering::Release);
        self.persist(format::REGION_EPOCH_OFFSET, 8);
        epoch
    }

    /// Highest partner epoch accepted into the mirror area so far.
    pub fn partner_epoch_max(&self) -> u64 {
        self.word(format::REGION_PARTNER_EPOCH_OFFSET)
            .load(Ordering::Acquire)
    }

    /// Records (durably) that the partner's epoch `epoch` was accepted.
    pub fn set_partner_epoch_max(&self, epoch: u64) {
        self.word(format::REGION_PARTNER_EPOCH_OFFSET)
            .store(epoch, Ordering::Release);
        self.persist(format::REGION_PARTNER_EPOCH_OFFSET, 8);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what was mapped; no borrow outlives the Region.
        unsafe { libc::munmap(self.ptr.cast(), self.map_len) };
    }
}

/// Size of a device-DAX device from sysfs, if readable.
/// Whether `file` lives on tmpfs or ramfs (pages only in memory: see
/// [`PersistMode::FileTmpfs`]). Any doubt (fstatfs failing) answers no, keeping msync.
fn is_memory_fs(file: &File) -> bool {
    /// `f_type` of tmpfs (and /dev/shm), from linux/magic.h.
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    /// `f_type` of ramfs, from linux/magic.h.
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: fstatfs fills the struct we pass for an fd we hold open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let f_type = st.f_type as i64;
    f_type == TMPFS_MAGIC || f_type == RAMFS_MAGIC
}

fn devdax_size(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(path).ok()?.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let text = std::fs::read_to_string(format!("/sys/dev/char/{major}:{minor}/size")).ok()?;
    text.trim().parse().ok()
}
