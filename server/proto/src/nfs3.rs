//! NFS version 3 (RFC 1813): every procedure's arguments and results, the shared types
//! (`fattr3`, `sattr3`, `wcc_data`, …), zero-copy WRITE/READ data handling, and byte-budget
//! encoders for READDIR and READDIRPLUS replies.
//!
//! Names follow the RFC in Rust case (`fattr3` → [`Fattr3`], `READ3resok` → [`ReadResOk`]).
//! Results are [`NfsRes<Ok, Fail>`]: the `nfsstat3` discriminant, then the ok or fail arm.

use std::ops::Range;

use crate::xdr::{
    opaque_size, xdr_bytes, xdr_enum, xdr_struct, Decoder, Xdr, XdrError, XdrResult, XdrWrite,
};
use crate::ArgsError;

/// RPC program number of NFS.
pub const NFS_PROGRAM: u32 = 100_003;
/// The NFS version implemented here.
pub const NFS_V3: u32 = 3;

/// Largest NFSv3 file handle (RFC 1813 `NFS3_FHSIZE`).
pub const FH_BYTES_MAX: usize = 64;
/// Size of cookie, create and write verifiers.
pub const VERIFIER_BYTES: usize = 8;
/// Largest file name component we accept (`filename3`): the POSIX NAME_MAX. A longer name
/// still decodes (up to [`NAME_WIRE_BYTES_MAX`]) so the handler can answer
/// NFS3ERR_NAMETOOLONG, as RFC 1813 asks, instead of GARBAGE_ARGS.
pub const NAME_BYTES_MAX: usize = 255;
/// Longest `filename3` the decoder takes off the wire (RFC 1813 sets no bound): room for
/// any name a client may try, yet bounded so a hostile length fails before allocation.
pub const NAME_WIRE_BYTES_MAX: usize = 1024;
/// Largest path (`nfspath3`, symlink targets): the Linux PATH_MAX is 4096 but RFC 1813 MOUNT
/// caps dirpath at 1024; we use 1024 for symlink data too, and say so in PATHCONF/FSINFO.
pub const PATH_BYTES_MAX: usize = 1024;
/// Largest READ/WRITE payload: the `rtmax`/`wtmax` we advertise in FSINFO (1 MiB). Clients
/// never send more, so there is no slack; a longer WRITE is garbage.
pub const IO_BYTES_MAX: usize = 1024 * 1024;

/// A cookie verifier (READDIR/READDIRPLUS).
pub type CookieVerf3 = [u8; VERIFIER_BYTES];
/// An exclusive-create verifier.
pub type CreateVerf3 = [u8; VERIFIER_BYTES];
/// A write verifier (changes when uncommitted data may have been lost).
pub type WriteVerf3 = [u8; VERIFIER_BYTES];

xdr_enum! {
    /// NFSv3 procedure numbers.
    pub enum Nfs3Proc {
        /// Do nothing (ping).
        Null = 0,
        /// Get attributes.
        Getattr = 1,
        /// Set attributes.
        Setattr = 2,
        /// Look up a name.
        Lookup = 3,
        /// Check access permission.
        Access = 4,
        /// Read a symbolic link.
        Readlink = 5,
        /// Read from a file.
        Read = 6,
        /// Write to a file.
        Write = 7,
        /// Create a file.
        Create = 8,
        /// Create a directory.
        Mkdir = 9,
        /// Create a symbolic link.
        Symlink = 10,
        /// Create a special device.
        Mknod = 11,
        /// Remove a file.
        Remove = 12,
        /// Remove a directory.
        Rmdir = 13,
        /// Rename.
        Rename = 14,
        /// Create a hard link.
        Link = 15,
        /// Read a directory.
        Readdir = 16,
        /// Read a directory with attributes and handles.
        Readdirplus = 17,
        /// File system dynamic information.
        Fsstat = 18,
        /// File system static information.
        Fsinfo = 19,
        /// POSIX information.
        Pathconf = 20,
        /// Commit cached data.
        Commit = 21,
    }
}

impl Nfs3Proc {
    /// True for procedures whose re-execution is harmless; the others go through the
    /// duplicate-request cache. WRITE is idempotent at a fixed offset but is still cached so a
    /// retransmit is not logged twice.
    pub fn is_idempotent(self) -> bool {
        use Nfs3Proc::*;
        matches!(
            self,
            Null | Getattr
                | Lookup
                | Access
                | Readlink
                | Read
                | Readdir
                | Readdirplus
                | Fsstat
                | Fsinfo
                | Pathconf
                | Commit
        )
    }
}

xdr_enum! {
    /// NFSv3 status codes (`nfsstat3`), all of RFC 1813 §2.6.
    pub enum NfsStat3 {
        /// Success.
        Ok = 0,
        /// Not owner.
        Perm = 1,
        /// No such file or directory.
        Noent = 2,
        /// I/O error.
        Io = 5,
        /// No such device or address.
        Nxio = 6,
        /// Permission denied.
        Acces = 13,
        /// File exists.
        Exist = 17,
        /// Cross-device link.
        Xdev = 18,
        /// No such device.
        Nodev = 19,
        /// Not a directory.
        Notdir = 20,
        /// Is a directory.
        Isdir = 21,
        /// Invalid argument.
        Inval = 22,
        /// File too large.
        Fbig = 27,
        /// No space left.
        Nospc = 28,
        /// Read-only file system.
        Rofs = 30,
        /// Too many hard links.
        Mlink = 31,
        /// Name too long.
        Nametoolong = 63,
        /// Directory not empty.
        Notempty = 66,
        /// Quota exceeded.
        Dquot = 69,
        /// Stale file handle.
        Stale = 70,
        /// Too many levels of remote in path.
        Remote = 71,
        /// Illegal (malformed) file handle.
        Badhandle = 10001,
        /// SETATTR guard mismatch.
        NotSync = 10002,
        /// READDIR cookie is stale.
        BadCookie = 10003,
        /// Operation not supported.
        Notsupp = 10004,
        /// Buffer or request too small.
        Toosmall = 10005,
        /// Server error without a better code.
        Serverfault = 10006,
        /// Object type not supported (MKNOD).
        Badtype = 10007,
        /// Try again later (used while draining for a takeover).
        Jukebox = 10008,
    }
}

xdr_enum! {
    /// File type (`ftype3`).
    pub enum Ftype3 {
        /// Regular file.
        Reg = 1,
        /// Directory.
        Dir = 2,
        /// Block device.
        Blk = 3,
        /// Character device.
        Chr = 4,
        /// Symbolic link.
        Lnk = 5,
        /// Socket.
        Sock = 6,
        /// Named pipe.
        Fifo = 7,
    }
}

xdr_enum! {
    /// How durable a WRITE must be before the reply (`stable_how`).
    pub enum StableHow {
        /// May be cached; COMMIT later.
        Unstable = 0,
        /// Data durable; metadata may lag.
        DataSync = 1,
        /// Data and metadata durable.
        FileSync = 2,
    }
}

xdr_bytes! {
    /// A file name component (`filename3`, any bytes but NUL and '/'). Decodes up to
    /// [`NAME_WIRE_BYTES_MAX`] bytes; names longer than [`NAME_BYTES_MAX`] are the
    /// handler's to refuse ([`Filename3::too_long`]).
    pub struct Filename3; max = NAME_WIRE_BYTES_MAX;
}

impl Filename3 {
    /// Whether the name exceeds [`NAME_BYTES_MAX`] (answer NFS3ERR_NAMETOOLONG).
    pub fn too_long(&self) -> bool {
        self.as_bytes().len() > NAME_BYTES_MAX
    }
}

xdr_bytes! {
    /// A path (`nfspath3`, ≤ 1024 bytes): symlink targets.
    pub struct NfsPath3; max = PATH_BYTES_MAX;
}

/// An NFSv3 file handle (`nfs_fh3`, opaque ≤ 64 bytes), stored inline: no allocation per
/// request.
#[derive(Clone, Copy)]
pub struct NfsFh3 {
    len: u8,
    bytes: [u8; FH_BYTES_MAX],
}

impl NfsFh3 {
    /// Wraps `bytes`; `None` if longer than 64.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > FH_BYTES_MAX {
            return None;
        }
        let mut fh = NfsFh3 {
            len: bytes.len() as u8,
            bytes: [0; FH_BYTES_MAX],
        };
        fh.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(fh)
    }

    /// The handle bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl Default for NfsFh3 {
    fn default() -> Self {
        NfsFh3 {
            len: 0,
            bytes: [0; FH_BYTES_MAX],
        }
    }
}

impl PartialEq for NfsFh3 {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for NfsFh3 {}
impl std::hash::Hash for NfsFh3 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}
impl std::fmt::Debug for NfsFh3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NfsFh3(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl Xdr for NfsFh3 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_opaque(self.as_bytes());
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        let bytes = dec.opaque("nfs_fh3", FH_BYTES_MAX)?;
        // The bound was checked by `opaque`, so `new` cannot fail.
        NfsFh3::new(bytes).ok_or(XdrError::TooLong {
            what: "nfs_fh3",
            len: bytes.len() as u64,
            max: FH_BYTES_MAX as u64,
        })
    }
}

#[cfg(test)]
impl crate::arb::Arb for NfsFh3 {
    fn arb(g: &mut crate::arb::Gen) -> Self {
        let bytes = g.bytes(FH_BYTES_MAX);
        NfsFh3::new(&bytes).expect("generated within bound")
    }
}

xdr_struct! {
    /// Device numbers (`specdata3`).
    pub struct Specdata3 {
        /// Major.
        pub specdata1: u32,
        /// Minor.
        pub specdata2: u32,
    }
}

xdr_struct! {
    /// A timestamp (`nfstime3`).
    pub struct NfsTime3 {
        /// Seconds since the epoch.
        pub seconds: u32,
        /// Nanoseconds.
        pub nseconds: u32,
    }
}

impl Copy for NfsTime3 {}
impl Copy for Specdata3 {}

xdr_struct! {
    /// File attributes (`fattr3`).
    pub struct Fattr3 {
        /// File type.
        pub ftype: Ftype3,
        /// Permission bits and set-id/sticky bits.
        pub mode: u32,
        /// Hard links.
        pub nlink: u32,
        /// Owner.
        pub uid: u32,
        /// Group.
        pub gid: u32,
        /// Size in bytes.
        pub size: u64,
        /// Bytes of disk used.
        pub used: u64,
        /// Device numbers (for CHR/BLK).
        pub rdev: Specdata3,
        /// File system id.
        pub fsid: u64,
        /// File id (inode number).
        pub fileid: u64,
        /// Last access.
        pub atime: NfsTime3,
        /// Last data modification.
        pub mtime: NfsTime3,
        /// Last attribute change.
        pub ctime: NfsTime3,
    }
}

/// Attributes returned after an operation, if the server has them (`post_op_attr`).
pub type PostOpAttr = Option<Fattr3>;
/// A handle returned after an operation, if any (`post_op_fh3`).
pub type PostOpFh3 = Option<NfsFh3>;

xdr_struct! {
    /// The subset of attributes for weak cache consistency (`wcc_attr`).
    pub struct WccAttr {
        /// Size before.
        pub size: u64,
        /// Modification time before.
        pub mtime: NfsTime3,
        /// Change time before.
        pub ctime: NfsTime3,
    }
}

/// Attributes before an operation (`pre_op_attr`).
pub type PreOpAttr = Option<WccAttr>;

xdr_struct! {
    /// Weak cache consistency data: before and after attributes (`wcc_data`).
    #[derive(Default)]
    pub struct WccData {
        /// Before.
        pub before: PreOpAttr,
        /// After.
        pub after: PostOpAttr,
    }
}

/// How SETATTR/CREATE set a time (`set_atime`/`set_mtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetTime {
    /// Leave unchanged.
    #[default]
    DontChange,
    /// Set to the server's current time.
    ServerTime,
    /// Set to the given time.
    ClientTime(NfsTime3),
}

impl Xdr for SetTime {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SetTime::DontChange => out.put_u32(0),
            SetTime::ServerTime => out.put_u32(1),
            SetTime::ClientTime(t) => {
                out.put_u32(2);
                t.encode(out);
            }
        }
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        match dec.u32()? {
            0 => Ok(SetTime::DontChange),
            1 => Ok(SetTime::ServerTime),
            2 => Ok(SetTime::ClientTime(NfsTime3::decode(dec)?)),
            value => Err(XdrError::BadDiscriminant {
                what: "time_how",
                value,
            }),
        }
    }
}

#[cfg(test)]
impl crate::arb::Arb for SetTime {
    fn arb(g: &mut crate::arb::Gen) -> Self {
        match g.below(3) {
            0 => SetTime::DontChange,
            1 => SetTime::ServerTime,
            _ => SetTime::ClientTime(crate::arb::Arb::arb(g)),
        }
    }
}

xdr_struct! {
    /// Attributes to set (`sattr3`); `None` leaves a field unchanged.
    #[derive(Default)]
    pub struct Sattr3 {
        /// New mode.
        pub mode: Option<u32>,
        /// New owner.
        pub uid: Option<u32>,
        /// New group.
        pub gid: Option<u32>,
        /// New size (truncate/extend).
        pub size: Option<u64>,
        /// Access time.
        pub atime: SetTime,
        /// Modification time.
        pub mtime: SetTime,
    }
}

xdr_struct! {
    /// A directory and a name in it (`diropargs3`).
    pub struct DirOpArgs3 {
        /// Directory handle.
        pub dir: NfsFh3,
        /// Name.
        pub name: Filename3,
    }
}

/// Generic NFSv3 result: `nfsstat3` then the ok arm (status OK) or the fail arm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NfsRes<T, F> {
    /// NFS3_OK.
    Ok(T),
    /// Any other status with the failure body. The status must not be `Ok`.
    Err(NfsStat3, F),
}

impl<T: Xdr, F: Xdr> Xdr for NfsRes<T, F> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            NfsRes::Ok(ok) => {
                NfsStat3::Ok.encode(out);
                ok.encode(out);
            }
            NfsRes::Err(stat, fail) => {
                assert_ne!(*stat, NfsStat3::Ok, "an error result needs an error status");
                stat.encode(out);
                fail.encode(out);
            }
        }
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        match NfsStat3::decode(dec)? {
            NfsStat3::Ok => Ok(NfsRes::Ok(T::decode(dec)?)),
            stat => Ok(NfsRes::Err(stat, F::decode(dec)?)),
        }
    }
}

#[cfg(test)]
impl<T: crate::arb::Arb, F: crate::arb::Arb> crate::arb::Arb for NfsRes<T, F> {
    fn arb(g: &mut crate::arb::Gen) -> Self {
        if g.bool() {
            NfsRes::Ok(T::arb(g))
        } else {
            let errs = &NfsStat3::ALL[1..];
            NfsRes::Err(errs[g.below(errs.len())], F::arb(g))
        }
    }
}

// ---- GETATTR (1) ----

xdr_struct! {
    /// GETATTR arguments.
    pub struct GetattrArgs {
        /// Object.
        pub object: NfsFh3,
    }
}
xdr_struct! {
    /// GETATTR success.
    pub struct GetattrResOk {
        /// Attributes.
        pub obj_attributes: Fattr3,
    }
}
/// GETATTR result.
pub type GetattrRes = NfsRes<GetattrResOk, ()>;

// ---- SETATTR (2) ----

xdr_struct! {
    /// SETATTR arguments; `guard` is the client's idea of the object's ctime.
    pub struct SetattrArgs {
        /// Object.
        pub object: NfsFh3,
        /// What to change.
        pub new_attributes: Sattr3,
        /// If set, apply only if the current ctime equals it (else NFS3ERR_NOT_SYNC).
        pub guard: Option<NfsTime3>,
    }
}
xdr_struct! {
    /// SETATTR success or failure body.
    pub struct SetattrResBody {
        /// Object wcc.
        pub obj_wcc: WccData,
    }
}
/// SETATTR result.
pub type SetattrRes = NfsRes<SetattrResBody, SetattrResBody>;

// ---- LOOKUP (3) ----

xdr_struct! {
    /// LOOKUP arguments.
    pub struct LookupArgs {
        /// Directory and name.
        pub what: DirOpArgs3,
    }
}
xdr_struct! {
    /// LOOKUP success.
    pub struct LookupResOk {
        /// Handle found.
        pub object: NfsFh3,
        /// Its attributes.
        pub obj_attributes: PostOpAttr,
        /// Directory attributes.
        pub dir_attributes: PostOpAttr,
    }
}
xdr_struct! {
    /// LOOKUP failure.
    pub struct LookupResFail {
        /// Directory attributes.
        pub dir_attributes: PostOpAttr,
    }
}
/// LOOKUP result.
pub type LookupRes = NfsRes<LookupResOk, LookupResFail>;

// ---- ACCESS (4) ----

/// ACCESS bits (RFC 1813 §3.3.4).
pub mod access {
    /// Read data / read directory.
    pub const READ: u32 = 0x0001;
    /// Look up a name in a directory.
    pub const LOOKUP: u32 = 0x0002;
    /// Rewrite existing data / modify directory entries.
    pub const MODIFY: u32 = 0x0004;
    /// Write new data / add directory entries.
    pub const EXTEND: u32 = 0x0008;
    /// Delete a directory entry.
    pub const DELETE: u32 = 0x0010;
    /// Execute a file.
    pub const EXECUTE: u32 = 0x0020;
}

xdr_struct! {
    /// ACCESS arguments.
    pub struct AccessArgs {
        /// Object.
        pub object: NfsFh3,
        /// Bits asked about.
        pub access: u32,
    }
}
xdr_struct! {
    /// ACCESS success.
    pub struct AccessResOk {
        /// Object attributes.
        pub obj_attributes: PostOpAttr,
        /// Bits granted.
        pub access: u32,
    }
}
xdr_struct! {
    /// Failure body carrying only post-op attributes (ACCESS, READLINK, READ, FSSTAT, …).
    pub struct AttrFail {
        /// Object attributes.
        pub obj_attributes: PostOpAttr,
    }
}
/// ACCESS result.
pub type AccessRes = NfsRes<AccessResOk, AttrFail>;

// ---- READLINK (5) ----

xdr_struct! {
    /// READLINK arguments.
    pub struct ReadlinkArgs {
        /// Symlink.
        pub symlink: NfsFh3,
    }
}
xdr_struct! {
    /// READLINK success.
    pub struct ReadlinkResOk {
        /// Symlink attributes.
        pub symlink_attributes: PostOpAttr,
        /// Target.
        pub data: NfsPath3,
    }
}
/// READLINK result.
pub type ReadlinkRes = NfsRes<ReadlinkResOk, AttrFail>;

// ---- READ (6) ----

xdr_struct! {
    /// READ arguments.
    pub struct ReadArgs {
        /// File.
        pub file: NfsFh3,
        /// Byte offset.
        pub offset: u64,
        /// Bytes wanted (the server caps it at [`IO_BYTES_MAX`]).
        pub count: u32,
    }
}

/// READ success with owned data (a client's view, and tests). A server should instead use
/// [`encode_read_ok_head`] and send the data from its own buffer with a vectored write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResOk {
    /// File attributes.
    pub file_attributes: PostOpAttr,
    /// Bytes returned.
    pub count: u32,
    /// End of file reached.
    pub eof: bool,
    /// Data (≤ [`IO_BYTES_MAX`]).
    pub data: Vec<u8>,
}

impl Xdr for ReadResOk {
    fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.data.len() <= IO_BYTES_MAX);
        self.file_attributes.encode(out);
        out.put_u32(self.count);
        out.put_bool(self.eof);
        out.put_opaque(&self.data);
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        let span = ReadResOkSpan::decode(dec)?;
        Ok(ReadResOk {
            file_attributes: span.file_attributes,
            count: span.count,
            eof: span.eof,
            data: dec.buffer()[span.data].to_vec(),
        })
    }
}

/// READ success decoded without copying the data: a client that keeps the reply record
/// hands out the slice `data` of it instead of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResOkSpan {
    /// File attributes.
    pub file_attributes: PostOpAttr,
    /// Bytes returned.
    pub count: u32,
    /// End of file reached.
    pub eof: bool,
    /// Where the data lies in the decoder's buffer (≤ [`IO_BYTES_MAX`] bytes).
    pub data: Range<usize>,
}

impl ReadResOkSpan {
    /// Decodes the READ3resok arm (the status already read).
    pub fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        Ok(ReadResOkSpan {
            file_attributes: Xdr::decode(dec)?,
            count: dec.u32()?,
            eof: dec.bool()?,
            data: dec.opaque_range("READ data", IO_BYTES_MAX)?,
        })
    }
}

#[cfg(test)]
impl crate::arb::Arb for ReadResOk {
    fn arb(g: &mut crate::arb::Gen) -> Self {
        let data = g.bytes(64);
        ReadResOk {
            file_attributes: crate::arb::Arb::arb(g),
            count: data.len() as u32,
            eof: g.bool(),
            data,
        }
    }
}

/// READ result.
pub type ReadRes = NfsRes<ReadResOk, AttrFail>;

/// Appends a successful READ result up to (and including) the data length word. The caller
/// then sends `data_len` bytes of file data followed by [`crate::xdr::padding`]`(data_len)`,
/// e.g. as three iovecs, so the data is never copied into the reply buffer.
pub fn encode_read_ok_head(
    out: &mut Vec<u8>,
    file_attributes: &PostOpAttr,
    eof: bool,
    data_len: usize,
) {
    assert!(data_len <= IO_BYTES_MAX);
    NfsStat3::Ok.encode(out);
    file_attributes.encode(out);
    out.put_u32(data_len as u32);
    out.put_bool(eof);
    out.put_u32(data_len as u32);
}

// ---- WRITE (7) ----

/// WRITE arguments. The data stays in the received record: `data` is a record-absolute byte
/// range, so the server can hand the record buffer to the file system without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteArgs {
    /// File.
    pub file: NfsFh3,
    /// Byte offset.
    pub offset: u64,
    /// Bytes to write (RFC 1813): the handler writes at most this many of the data sent,
    /// and never more than were sent.
    pub count: u32,
    /// Durability asked for.
    pub stable: StableHow,
    /// Where the data lies in the record (≤ [`IO_BYTES_MAX`] bytes).
    pub data: Range<usize>,
}

impl WriteArgs {
    /// Decodes WRITE arguments; `dec` must read the whole record so `data` is record-absolute.
    pub fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        Ok(WriteArgs {
            file: Xdr::decode(dec)?,
            offset: dec.u64()?,
            count: dec.u32()?,
            stable: Xdr::decode(dec)?,
            data: dec.opaque_range("WRITE data", IO_BYTES_MAX)?,
        })
    }

    /// The data, given the record the arguments were decoded from.
    pub fn data<'r>(&self, record: &'r [u8]) -> &'r [u8] {
        &record[self.data.clone()]
    }

    /// Encodes the arguments with `data` (a client's view; `self.data` is ignored).
    pub fn encode_with_data(&self, data: &[u8], out: &mut Vec<u8>) {
        self.encode_head(data.len(), out);
        out.extend_from_slice(data);
        out.extend_from_slice(crate::xdr::padding(data.len()));
    }

    /// Encodes the arguments up to (and including) the data length word. The caller then
    /// sends `data_len` bytes of data followed by [`crate::xdr::padding`]`(data_len)`, e.g.
    /// as more iovecs of one vectored write, so the data is never copied into the call.
    pub fn encode_head(&self, data_len: usize, out: &mut Vec<u8>) {
        assert!(data_len <= IO_BYTES_MAX);
        self.file.encode(out);
        out.put_u64(self.offset);
        out.put_u32(self.count);
        self.stable.encode(out);
        out.put_u32(data_len as u32);
    }
}

xdr_struct! {
    /// WRITE success.
    pub struct WriteResOk {
        /// File wcc.
        pub file_wcc: WccData,
        /// Bytes written.
        pub count: u32,
        /// Durability achieved.
        pub committed: StableHow,
        /// Write verifier.
        pub verf: WriteVerf3,
    }
}
xdr_struct! {
    /// Failure body carrying one wcc_data (WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE,
    /// RMDIR, COMMIT).
    pub struct WccFail {
        /// The wcc data.
        pub wcc: WccData,
    }
}
/// WRITE result.
pub type WriteRes = NfsRes<WriteResOk, WccFail>;

// ---- CREATE (8) ----

/// How to create (`createhow3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateHow3 {
    /// Create or truncate, no existence check.
    Unchecked(Sattr3),
    /// Fail with NFS3ERR_EXIST if the name exists.
    Guarded(Sattr3),
    /// Exclusive create: the verifier is stored so a retransmit is recognised.
    Exclusive(CreateVerf3),
}

impl Xdr for CreateHow3 {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            CreateHow3::Unchecked(a) => {
                out.put_u32(0);
                a.encode(out);
            }
            CreateHow3::Guarded(a) => {
                out.put_u32(1);
                a.encode(out);
            }
            CreateHow3::Exclusive(v) => {
                out.put_u32(2);
                v.encode(out);
            }
        }
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        match dec.u32()? {
            0 => Ok(CreateHow3::Unchecked(Xdr::decode(dec)?)),
            1 => Ok(CreateHow3::Guarded(Xdr::decode(dec)?)),
            2 => Ok(CreateHow3::Exclusive(Xdr::decode(dec)?)),
            value => Err(XdrError::BadDiscriminant {
                what: "createmode3",
                value,
            }),
        }
    }
}

#[cfg(test)]
impl crate::arb::Arb for CreateHow3 {
    fn arb(g: &mut crate::arb::Gen) -> Self {
        use crate::arb::Arb;
        match g.below(3) {
            0 => CreateHow3::Unchecked(Arb::arb(g)),
            1 => CreateHow3::Guarded(Arb::arb(g)),
            _ => CreateHow3::Exclusive(Arb::arb(g)),
        }
    }
}

xdr_struct! {
    /// CREATE arguments.
    pub struct CreateArgs {
        /// Directory and name.
        pub where_: DirOpArgs3,
        /// Mode.
        pub how: CreateHow3,
    }
}
xdr_struct! {
    /// Success of CREATE, MKDIR, SYMLINK and MKNOD (`diropres3ok`).
    pub struct DirOpResOk {
        /// New object's handle.
        pub obj: PostOpFh3,
        /// Its attributes.
        pub obj_attributes: PostOpAttr,
        /// Directory wcc.
        pub dir_wcc: WccData,
    }
}
/// CREATE result (also MKDIR, SYMLINK, MKNOD).
pub type DirOpRes = NfsRes<DirOpResOk, WccFail>;

// ---- MKDIR (9) ----

xdr_struct! {
    /// MKDIR arguments.
    pub struct MkdirArgs {
        /// Directory and name.
        pub where_: DirOpArgs3,
        /// Initial attributes.
        pub attributes: Sattr3,
    }
}

// ---- SYMLINK (10) ----

xdr_struct! {
    /// SYMLINK arguments (`symlinkdata3` flattened).
    pub struct SymlinkArgs {
        /// Directory and name.
        pub where_: DirOpArgs3,
        /// Initial attributes.
        pub symlink_attributes: Sattr3,
        /// Target.
        pub symlink_data: NfsPath3,
    }
}

// ---- MKNOD (11) ----

/// What special file to create (`mknoddata3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MknodData3 {
    /// Character device.
    Chr(Sattr3, Specdata3),
    /// Block device.
    Blk(Sattr3, Specdata3),
    /// Socket.
    Sock(Sattr3),
    /// FIFO.
    Fifo(Sattr3),
    /// REG, DIR or LNK: void arm; the server answers NFS3ERR_BADTYPE.
    Other(Ftype3),
}

impl Xdr for MknodData3 {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MknodData3::Chr(a, s) | MknodData3::Blk(a, s) => {
                let t = if matches!(self, MknodData3::Chr(..)) {
                    Ftype3::Chr
                } else {
                    Ftype3::Blk
                };
                t.encode(out);
                a.encode(out);
                s.encode(out);
            }
            MknodData3::Sock(a) => {
                Ftype3::Sock.encode(out);
                a.encode(out);
            }
            MknodData3::Fifo(a) => {
                Ftype3::Fifo.encode(out);
                a.encode(out);
            }
            MknodData3::Other(t) => t.encode(out),
        }
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        Ok(match Ftype3::decode(dec)? {
            Ftype3::Chr => MknodData3::Chr(Xdr::decode(dec)?, Xdr::decode(dec)?),
            Ftype3::Blk => MknodData3::Blk(Xdr::decode(dec)?, Xdr::decode(dec)?),
            Ftype3::Sock => MknodData3::Sock(Xdr::decode(dec)?),
            Ftype3::Fifo => MknodData3::Fifo(Xdr::decode(dec)?),
            t @ (Ftype3::Reg | Ftype3::Dir | Ftype3::Lnk) => MknodData3::Other(t),
        })
    }
}

#[cfg(test)]
impl crate::arb::Arb for MknodData3 {
    fn arb(g: &mut crate::arb::Gen) -> Self {
        use crate::arb::Arb;
        match g.below(5) {
            0 => MknodData3::Chr(Arb::arb(g), Arb::arb(g)),
            1 => MknodData3::Blk(Arb::arb(g), Arb::arb(g)),
            2 => MknodData3::Sock(Arb::arb(g)),
            3 => MknodData3::Fifo(Arb::arb(g)),
            _ => MknodData3::Other([Ftype3::Reg, Ftype3::Dir, Ftype3::Lnk][g.below(3)]),
        }
    }
}

xdr_struct! {
    /// MKNOD arguments.
    pub struct MknodArgs {
        /// Directory and name.
        pub where_: DirOpArgs3,
        /// What to create.
        pub what: MknodData3,
    }
}

// ---- REMOVE (12), RMDIR (13) ----

xdr_struct! {
    /// REMOVE and RMDIR arguments.
    pub struct RemoveArgs {
        /// Directory and name.
        pub object: DirOpArgs3,
    }
}
/// REMOVE/RMDIR result (ok and fail both carry the directory wcc).
pub type RemoveRes = NfsRes<WccFail, WccFail>;

// ---- RENAME (14) ----

xdr_struct! {
    /// RENAME arguments.
    pub struct RenameArgs {
        /// Source.
        pub from: DirOpArgs3,
        /// Destination.
        pub to: DirOpArgs3,
    }
}
xdr_struct! {
    /// RENAME success or failure body.
    pub struct RenameResBody {
        /// Source directory wcc.
        pub fromdir_wcc: WccData,
        /// Destination directory wcc.
        pub todir_wcc: WccData,
    }
}
/// RENAME result.
pub type RenameRes = NfsRes<RenameResBody, RenameResBody>;

// ---- LINK (15) ----

xdr_struct! {
    /// LINK arguments.
    pub struct LinkArgs {
        /// Existing file.
        pub file: NfsFh3,
        /// New name.
        pub link: DirOpArgs3,
    }
}
xdr_struct! {
    /// LINK success or failure body.
    pub struct LinkResBody {
        /// File attributes.
        pub file_attributes: PostOpAttr,
        /// Directory wcc.
        pub linkdir_wcc: WccData,
    }
}
/// LINK result.
pub type LinkRes = NfsRes<LinkResBody, LinkResBody>;

// ---- READDIR (16) ----

xdr_struct! {
    /// READDIR arguments.
    pub struct ReaddirArgs {
        /// Directory.
        pub dir: NfsFh3,
        /// Resume after this cookie (0 = start).
        pub cookie: u64,
        /// Verifier returned with the cookie.
        pub cookieverf: CookieVerf3,
        /// Budget for the whole READDIR3resok, in bytes.
        pub count: u32,
    }
}

xdr_struct! {
    /// One READDIR entry (`entry3`).
    pub struct Entry3 {
        /// File id.
        pub fileid: u64,
        /// Name.
        pub name: Filename3,
        /// Cookie to resume after this entry.
        pub cookie: u64,
    }
}

/// Most entries a decoded READDIR/READDIRPLUS reply may carry (a client's view; memory is
/// also bounded by the record size since each entry takes ≥ 24 bytes).
pub const READDIR_ENTRIES_MAX: usize = 65_536;

/// READDIR success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirResOk {
    /// Directory attributes.
    pub dir_attributes: PostOpAttr,
    /// Cookie verifier.
    pub cookieverf: CookieVerf3,
    /// Entries.
    pub entries: Vec<Entry3>,
    /// True if the last entry is the end of the directory.
    pub eof: bool,
}

impl Xdr for ReaddirResOk {
    fn encode(&self, out: &mut Vec<u8>) {
        self.dir_attributes.encode(out);
        self.cookieverf.encode(out);
        crate::xdr::put_list(out, &self.entries);
        out.put_bool(self.eof);
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        Ok(ReaddirResOk {
            dir_attributes: Xdr::decode(dec)?,
            cookieverf: Xdr::decode(dec)?,
            entries: dec.list("entry3", READDIR_ENTRIES_MAX, Entry3::decode)?,
            eof: dec.bool()?,
        })
    }
}

#[cfg(test)]
impl crate::arb::Arb for ReaddirResOk {
    fn arb(g: &mut crate::arb::Gen) -> Self {
        use crate::arb::Arb;
        ReaddirResOk {
            dir_attributes: Arb::arb(g),
            cookieverf: Arb::arb(g),
            entries: crate::arb::arb_vec(g, 6),
            eof: g.bool(),
        }
    }
}

/// READDIR result.
pub type ReaddirRes = NfsRes<ReaddirResOk, AttrFail>;

// ---- READDIRPLUS (17) ----

xdr_struct! {
    /// READDIRPLUS arguments.
    pub struct ReaddirplusArgs {
        /// Directory.
        pub dir: NfsFh3,
        /// Resume after this cookie.
        pub cookie: u64,
        /// Verifier returned with the cookie.
        pub cookieverf: CookieVerf3,
        /// Budget for directory information only (fileid, name, cookie), in bytes.
        pub dircount: u32,
        /// Budget for the whole READDIRPLUS3resok, in bytes.
        pub maxcount: u32,
    }
}

xdr_struct! {
    /// One READDIRPLUS entry (`entryplus3`).
    pub struct EntryPlus3 {
        /// File id.
        pub fileid: u64,
        /// Name.
        pub name: Filename3,
        /// Cookie to resume after this entry.
        pub cookie: u64,
        /// Attributes.
        pub name_attributes: PostOpAttr,
        /// Handle.
        pub name_handle: PostOpFh3,
    }
}

/// READDIRPLUS success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirplusResOk {
    /// Directory attributes.
    pub dir_attributes: PostOpAttr,
    /// Cookie verifier.
    pub cookieverf: CookieVerf3,
    /// Entries.
    pub entries: Vec<EntryPlus3>,
    /// End of directory.
    pub eof: bool,
}

impl Xdr for ReaddirplusResOk {
    fn encode(&self, out: &mut Vec<u8>) {
        self.dir_attributes.encode(out);
        self.cookieverf.encode(out);
        crate::xdr::put_list(out, &self.entries);
        out.put_bool(self.eof);
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        Ok(ReaddirplusResOk {
            dir_attributes: Xdr::decode(dec)?,
            cookieverf: Xdr::decode(dec)?,
            entries: dec.list("entryplus3", READDIR_ENTRIES_MAX, EntryPlus3::decode)?,
            eof: dec.bool()?,
        })
    }
}

#[cfg(test)]
impl crate::arb::Arb for ReaddirplusResOk {
    fn arb(g: &mut crate::arb::Gen) -> Self {
        use crate::arb::Arb;
        ReaddirplusResOk {
            dir_attributes: Arb::arb(g),
            cookieverf: Arb::arb(g),
            entries: crate::arb::arb_vec(g, 4),
            eof: g.bool(),
        }
    }
}

/// READDIRPLUS result.
pub type ReaddirplusRes = NfsRes<ReaddirplusResOk, AttrFail>;

// ---- FSSTAT (18), FSINFO (19), PATHCONF (20) ----

xdr_struct! {
    /// Arguments of FSSTAT, FSINFO and PATHCONF: one handle.
    pub struct FsRootArgs {
        /// Any handle in the file system.
        pub object: NfsFh3,
    }
}
xdr_struct! {
    /// FSSTAT success.
    pub struct FsstatResOk {
        /// Attributes of the handle.
        pub obj_attributes: PostOpAttr,
        /// Total bytes.
        pub tbytes: u64,
        /// Free bytes.
        pub fbytes: u64,
        /// Free bytes available to the caller.
        pub abytes: u64,
        /// Total file slots.
        pub tfiles: u64,
        /// Free file slots.
        pub ffiles: u64,
        /// Free file slots available to the caller.
        pub afiles: u64,
        /// Seconds for which the figures stay valid.
        pub invarsec: u32,
    }
}
/// FSSTAT result.
pub type FsstatRes = NfsRes<FsstatResOk, AttrFail>;

/// FSINFO `properties` bits.
pub mod fsf {
    /// Hard links supported.
    pub const LINK: u32 = 0x0001;
    /// Symbolic links supported.
    pub const SYMLINK: u32 = 0x0002;
    /// PATHCONF answers are the same for every file.
    pub const HOMOGENEOUS: u32 = 0x0008;
    /// SETATTR can set times to client-supplied values.
    pub const CANSETTIME: u32 = 0x0010;
}

xdr_struct! {
    /// FSINFO success.
    pub struct FsinfoResOk {
        /// Attributes of the handle.
        pub obj_attributes: PostOpAttr,
        /// Largest READ.
        pub rtmax: u32,
        /// Preferred READ size.
        pub rtpref: u32,
        /// READ size multiple.
        pub rtmult: u32,
        /// Largest WRITE.
        pub wtmax: u32,
        /// Preferred WRITE size.
        pub wtpref: u32,
        /// WRITE size multiple.
        pub wtmult: u32,
        /// Preferred READDIR size.
        pub dtpref: u32,
        /// Largest file size.
        pub maxfilesize: u64,
        /// Time granularity.
        pub time_delta: NfsTime3,
        /// [`fsf`] bits.
        pub properties: u32,
    }
}
/// FSINFO result.
pub type FsinfoRes = NfsRes<FsinfoResOk, AttrFail>;

xdr_struct! {
    /// PATHCONF success.
    pub struct PathconfResOk {
        /// Attributes of the handle.
        pub obj_attributes: PostOpAttr,
        /// Most hard links.
        pub linkmax: u32,
        /// Longest name.
        pub name_max: u32,
        /// Long names are rejected, not truncated.
        pub no_trunc: bool,
        /// Only root may chown.
        pub chown_restricted: bool,
        /// Names are case-insensitive.
        pub case_insensitive: bool,
        /// Case is preserved.
        pub case_preserving: bool,
    }
}
/// PATHCONF result.
pub type PathconfRes = NfsRes<PathconfResOk, AttrFail>;

// ---- COMMIT (21) ----

xdr_struct! {
    /// COMMIT arguments.
    pub struct CommitArgs {
        /// File.
        pub file: NfsFh3,
        /// Start of the range.
        pub offset: u64,
        /// Length (0 = to end of file).
        pub count: u32,
    }
}
xdr_struct! {
    /// COMMIT success.
    pub struct CommitResOk {
        /// File wcc.
        pub file_wcc: WccData,
        /// Write verifier.
        pub verf: WriteVerf3,
    }
}
/// COMMIT result.
pub type CommitRes = NfsRes<CommitResOk, WccFail>;

// ---- Call dispatch ----

/// The decoded arguments of one NFSv3 call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nfs3Call {
    /// NULL.
    Null,
    /// GETATTR.
    Getattr(GetattrArgs),
    /// SETATTR.
    Setattr(SetattrArgs),
    /// LOOKUP.
    Lookup(LookupArgs),
    /// ACCESS.
    Access(AccessArgs),
    /// READLINK.
    Readlink(ReadlinkArgs),
    /// READ.
    Read(ReadArgs),
    /// WRITE (data as a range of the record).
    Write(WriteArgs),
    /// CREATE.
    Create(CreateArgs),
    /// MKDIR.
    Mkdir(MkdirArgs),
    /// SYMLINK.
    Symlink(SymlinkArgs),
    /// MKNOD.
    Mknod(MknodArgs),
    /// REMOVE.
    Remove(RemoveArgs),
    /// RMDIR.
    Rmdir(RemoveArgs),
    /// RENAME.
    Rename(RenameArgs),
    /// LINK.
    Link(LinkArgs),
    /// READDIR.
    Readdir(ReaddirArgs),
    /// READDIRPLUS.
    Readdirplus(ReaddirplusArgs),
    /// FSSTAT.
    Fsstat(FsRootArgs),
    /// FSINFO.
    Fsinfo(FsRootArgs),
    /// PATHCONF.
    Pathconf(FsRootArgs),
    /// COMMIT.
    Commit(CommitArgs),
}

impl Nfs3Call {
    /// Decodes the arguments of procedure `proc_` from `record` starting at `args_offset`
    /// (as returned by [`crate::rpc::decode_call`]). Trailing bytes are garbage.
    pub fn decode(proc_: u32, record: &[u8], args_offset: usize) -> Result<Self, ArgsError> {
        let p = Nfs3Proc::from_u32(proc_).ok_or(ArgsError::ProcUnavail { proc_ })?;
        let mut dec = Decoder::new_at(record, args_offset);
        let d = &mut dec;
        let call = match p {
            Nfs3Proc::Null => Nfs3Call::Null,
            Nfs3Proc::Getattr => Nfs3Call::Getattr(Xdr::decode(d)?),
            Nfs3Proc::Setattr => Nfs3Call::Setattr(Xdr::decode(d)?),
            Nfs3Proc::Lookup => Nfs3Call::Lookup(Xdr::decode(d)?),
            Nfs3Proc::Access => Nfs3Call::Access(Xdr::decode(d)?),
            Nfs3Proc::Readlink => Nfs3Call::Readlink(Xdr::decode(d)?),
            Nfs3Proc::Read => Nfs3Call::Read(Xdr::decode(d)?),
            Nfs3Proc::Write => Nfs3Call::Write(WriteArgs::decode(d)?),
            Nfs3Proc::Create => Nfs3Call::Create(Xdr::decode(d)?),
            Nfs3Proc::Mkdir => Nfs3Call::Mkdir(Xdr::decode(d)?),
            Nfs3Proc::Symlink => Nfs3Call::Symlink(Xdr::decode(d)?),
            Nfs3Proc::Mknod => Nfs3Call::Mknod(Xdr::decode(d)?),
            Nfs3Proc::Remove => Nfs3Call::Remove(Xdr::decode(d)?),
            Nfs3Proc::Rmdir => Nfs3Call::Rmdir(Xdr::decode(d)?),
            Nfs3Proc::Rename => Nfs3Call::Rename(Xdr::decode(d)?),
            Nfs3Proc::Link => Nfs3Call::Link(Xdr::decode(d)?),
            Nfs3Proc::Readdir => Nfs3Call::Readdir(Xdr::decode(d)?),
            Nfs3Proc::Readdirplus => Nfs3Call::Readdirplus(Xdr::decode(d)?),
            Nfs3Proc::Fsstat => Nfs3Call::Fsstat(Xdr::decode(d)?),
            Nfs3Proc::Fsinfo => Nfs3Call::Fsinfo(Xdr::decode(d)?),
            Nfs3Proc::Pathconf => Nfs3Call::Pathconf(Xdr::decode(d)?),
            Nfs3Proc::Commit => Nfs3Call::Commit(Xdr::decode(d)?),
        };
        dec.finish()?;
        Ok(call)
    }

    /// The procedure of this call.
    pub fn proc_(&self) -> Nfs3Proc {
        match self {
            Nfs3Call::Null => Nfs3Proc::Null,
            Nfs3Call::Getattr(_) => Nfs3Proc::Getattr,
            Nfs3Call::Setattr(_) => Nfs3Proc::Setattr,
            Nfs3Call::Lookup(_) => Nfs3Proc::Lookup,
            Nfs3Call::Access(_) => Nfs3Proc::Access,
            Nfs3Call::Readlink(_) => Nfs3Proc::Readlink,
            Nfs3Call::Read(_) => Nfs3Proc::Read,
            Nfs3Call::Write(_) => Nfs3Proc::Write,
            Nfs3Call::Create(_) => Nfs3Proc::Create,
            Nfs3Call::Mkdir(_) => Nfs3Proc::Mkdir,
            Nfs3Call::Symlink(_) => Nfs3Proc::Symlink,
            Nfs3Call::Mknod(_) => Nfs3Proc::Mknod,
            Nfs3Call::Remove(_) => Nfs3Proc::Remove,
            Nfs3Call::Rmdir(_) => Nfs3Proc::Rmdir,
            Nfs3Call::Rename(_) => Nfs3Proc::Rename,
            Nfs3Call::Link(_) => Nfs3Proc::Link,
            Nfs3Call::Readdir(_) => Nfs3Proc::Readdir,
            Nfs3Call::Readdirplus(_) => Nfs3Proc::Readdirplus,
            Nfs3Call::Fsstat(_) => Nfs3Proc::Fsstat,
            Nfs3Call::Fsinfo(_) => Nfs3Proc::Fsinfo,
            Nfs3Call::Pathconf(_) => Nfs3Proc::Pathconf,
            Nfs3Call::Commit(_) => Nfs3Proc::Commit,
        }
    }
}

// ---- READDIR / READDIRPLUS budget encoders ----

/// Bytes of a `post_op_attr` on the wire.
pub fn post_op_attr_size(a: &PostOpAttr) -> usize {
    const FATTR3_BYTES: usize = 84;
    4 + if a.is_some() { FATTR3_BYTES } else { 0 }
}

/// Encodes a successful READDIR result while respecting the client's `count` budget: entries
/// are added while the whole result (status through eof) still fits, and `eof` is reported
/// only if every remaining entry was included.
///
/// The budget covers the bytes from the `nfsstat3` word to the `eof` word, which is at least
/// what RFC 1813 asks ("the size of the READDIR3resok structure") and errs on the safe side.
#[derive(Debug)]
pub struct ReaddirEncoder {
    out: Vec<u8>,
    start: usize,
    budget_bytes: usize,
    entries: usize,
    full: bool,
}

/// Bytes after the last entry: list terminator + eof.
const DIRLIST_TAIL_BYTES: usize = 8;

impl ReaddirEncoder {
    /// Starts a READDIR3resok after whatever `out` already holds (typically the RPC reply
    /// header), with the client's `count` as the budget.
    pub fn new(
        mut out: Vec<u8>,
        count: u32,
        dir_attributes: &PostOpAttr,
        cookieverf: &CookieVerf3,
    ) -> Self {
        let start = out.len();
        NfsStat3::Ok.encode(&mut out);
        dir_attributes.encode(&mut out);
        cookieverf.encode(&mut out);
        ReaddirEncoder {
            out,
            start,
            budget_bytes: count as usize,
            entries: 0,
            full: false,
        }
    }

    /// Bytes one entry takes.
    pub fn entry_size(name: &Filename3) -> usize {
        4 + 8 + opaque_size(name.as_bytes().len()) + 8
    }

    /// Adds an entry if it fits; returns false (and adds nothing more, ever) if it does not.
    pub fn push(&mut self, fileid: u64, name: &Filename3, cookie: u64) -> bool {
        if self.full {
            return false;
        }
        let used = self.out.len() - self.start;
        if used + Self::entry_size(name) + DIRLIST_TAIL_BYTES > self.budget_bytes {
            self.full = true;
            return false;
        }
        self.out.put_bool(true);
        self.out.put_u64(fileid);
        name.encode(&mut self.out);
        self.out.put_u64(cookie);
        self.entries += 1;
        true
    }

    /// Entries added so far. Zero after a refused push means the budget cannot hold even one
    /// entry: answer NFS3ERR_TOOSMALL instead.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Ends the list. `end_reached` says the caller has no entries after the last one pushed;
    /// eof is sent only if that is true and no entry was refused.
    pub fn finish(mut self, end_reached: bool) -> Vec<u8> {
        let eof = end_reached && !self.full;
        self.out.put_bool(false);
        self.out.put_bool(eof);
        // With no entries the fixed part alone may exceed a tiny budget (the caller answers
        // TOOSMALL then); with entries, each push checked the budget including the tail.
        assert!(self.entries == 0 || self.out.len() - self.start <= self.budget_bytes);
        self.out
    }
}

/// Like [`ReaddirEncoder`] for READDIRPLUS: entries must fit both `maxcount` (whole result)
/// and `dircount` (fileid + name + cookie of each entry, the directory information proper).
#[derive(Debug)]
pub struct ReaddirplusEncoder {
    out: Vec<u8>,
    start: usize,
    maxcount_bytes: usize,
    dircount_bytes: usize,
    dir_bytes_used: usize,
    entries: usize,
    full: bool,
}

impl ReaddirplusEncoder {
    /// Starts a READDIRPLUS3resok after whatever `out` holds.
    pub fn new(
        mut out: Vec<u8>,
        dircount: u32,
        maxcount: u32,
        dir_attributes: &PostOpAttr,
        cookieverf: &CookieVerf3,
    ) -> Self {
        let start = out.len();
        NfsStat3::Ok.encode(&mut out);
        dir_attributes.encode(&mut out);
        cookieverf.encode(&mut out);
        ReaddirplusEncoder {
            out,
            start,
            maxcount_bytes: maxcount as usize,
            dircount_bytes: dircount as usize,
            dir_bytes_used: 0,
            entries: 0,
            full: false,
        }
    }

    /// Stops enforcing `dircount` (only `maxcount` bounds the reply). RFC 1813 calls dircount
    /// the limit on directory information, but clients may send a dircount much smaller than
    /// maxcount; a server that treats it as a hint needs fewer round trips per listing.
    pub fn without_dircount_limit(mut self) -> Self {
        self.dircount_bytes = usize::MAX;
        self
    }

    /// Adds an entry if it fits both budgets; returns false (and refuses all later ones)
    /// otherwise.
    pub fn push(&mut self, entry: &EntryPlus3) -> bool {
        if self.full {
            return false;
        }
        let dir_bytes = 8 + opaque_size(entry.name.as_bytes().len()) + 8;
        let size = 4
            + dir_bytes
            + post_op_attr_size(&entry.name_attributes)
            + 4
            + entry
                .name_handle
                .map_or(0, |h| opaque_size(h.as_bytes().len()));
        let used = self.out.len() - self.start;
        if used + size + DIRLIST_TAIL_BYTES > self.maxcount_bytes
            || self.dir_bytes_used.saturating_add(dir_bytes) > self.dircount_bytes
        {
            self.full = true;
            return false;
        }
        let before = self.out.len();
        self.out.put_bool(true);
        entry.encode(&mut self.out);
        assert_eq!(self.out.len() - before, size, "entry size formula");
        self.dir_bytes_used += dir_bytes;
        self.entries += 1;
        true
    }

    /// Entries added so far (zero after a refusal: NFS3ERR_TOOSMALL).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Ends the list; eof only if `end_reached` and nothing was refused.
    pub fn finish(mut self, end_reached: bool) -> Vec<u8> {
        let eof = end_reached && !self.full;
        self.out.put_bool(false);
        self.out.put_bool(eof);
        assert!(self.entries == 0 || self.out.len() - self.start <= self.maxcount_bytes);
        self.out
    }
}
