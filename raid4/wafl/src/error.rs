//! Errors of the file-system API.

/// Why a file-system operation failed. Maps one to one onto NFS/SMB status codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// No such file or directory.
    #[error("no such file or directory")]
    NotFound,
    /// The name already exists.
    #[error("file exists")]
    Exists,
    /// A directory was expected.
    #[error("not a directory")]
    NotDir,
    /// A non-directory was expected.
    #[error("is a directory")]
    IsDir,
    /// The directory is not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// The handle names an object that no longer exists (inode gone or generation differs).
    #[error("stale file handle")]
    Stale,
    /// The object is in a snapshot, or the file system is read-only.
    #[error("read-only file system")]
    ReadOnly,
    /// A name longer than `NAME_BYTES_MAX` or containing `/` or NUL.
    #[error("invalid name: {0}")]
    BadName(String),
    /// An argument is invalid (e.g. rename of a directory into itself).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// No free space for the dirty data.
    #[error("no space left on the aggregate")]
    NoSpace,
    /// Offset or size beyond the largest supported file.
    #[error("file too large")]
    FileTooBig,
    /// A read from the layer below failed or returned bad data (checksum mismatch).
    #[error("io error: {0}")]
    Io(String),
    /// Structures on disk are inconsistent (reported by fsck and decoders).
    #[error("corrupt file system: {0}")]
    Corrupt(String),
    /// The call was made memory-only (`Fs::read_resident`) and needs the disks: retry it
    /// where blocking is fine.
    #[error("needs a disk read (memory-only call)")]
    WouldBlock,
    /// A consistency point failed; the file system accepts no more changes until remounted.
    #[error("file system offline: {0}")]
    Offline(String),
}
