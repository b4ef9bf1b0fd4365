//! Objects of the file system: item kinds, the inode record, directory entries, handles and
//! attributes, with their encodings (see docs/fs-format.md).

use crate::codec::{DecodeError, Reader, Writer};

/// Item kind: the inode record of an object (offset 0).
pub const KIND_INODE: u8 = 1;
/// Item kind: a directory entry; offset = entry id = READDIR cookie.
pub const KIND_DIRENT: u8 = 2;
/// Item kind: directory name index; offset = `name_hash(name)`, value = entry ids.
pub const KIND_NAMEIDX: u8 = 3;
/// Item kind: a file data block; offset = block index in the file.
pub const KIND_EXTENT: u8 = 4;

/// Inode number of the root directory of the export.
pub const ROOT_INO: u64 = 2;
/// Generation of the root directory, fixed at mkfs (later objects take generations after it).
pub const ROOT_GEN: u64 = 1;
/// First inode number handed out to new objects.
pub const FIRST_INO: u64 = 16;
/// First directory entry id (cookies 0..FIRST_ENTRY_ID are free for `.` and `..`).
pub const FIRST_ENTRY_ID: u64 = 3;
/// Longest name in a directory, bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// Longest symlink target, bytes.
pub const SYMLINK_BYTES_MAX: usize = 1024;
/// Largest file size, bytes (2^60: block indexes stay far from u64 overflow).
pub const FILE_SIZE_MAX: u64 = 1 << 60;
/// Entry ids under one name hash (64-bit hash collisions; more is corruption).
pub const HASH_COLLISIONS_MAX: usize = 64;
/// Name of the virtual snapshot directory in every directory.
pub const SNAPSHOT_DIR_NAME: &[u8] = b".snapshot";

/// Type of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    /// Regular file.
    Regular,
    /// Directory.
    Directory,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
}

impl FileType {
    /// On-disk code.
    pub fn code(self) -> u8 {
        match self {
            FileType::Regular => 1,
            FileType::Directory => 2,
            FileType::Symlink => 3,
            FileType::Fifo => 4,
            FileType::Socket => 5,
            FileType::CharDev => 6,
            FileType::BlockDev => 7,
        }
    }
    /// From the on-disk code.
    pub fn from_code(c: u8) -> Result<FileType, DecodeError> {
        Ok(match c {
            1 => FileType::Regular,
            2 => FileType::Directory,
            3 => FileType::Symlink,
            4 => FileType::Fifo,
            5 => FileType::Socket,
            6 => FileType::CharDev,
            7 => FileType::BlockDev,
            _ => return Err(DecodeError(format!("bad file type {c}"))),
        })
    }
}

/// The inode record (value of the `KIND_INODE` item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Object type.
    pub kind: FileType,
    /// Generation: unique per creation, so an old handle never names a new object.
    pub gen: u64,
    /// Permission bits (and setuid/setgid/sticky), without the type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Data blocks held.
    pub blocks: u64,
    /// Access time, ns since the epoch.
    pub atime_ns: u64,
    /// Modification time, ns.
    pub mtime_ns: u64,
    /// Change time, ns.
    pub ctime_ns: u64,
    /// Change counter: the sequence number of the last operation that changed the object.
    pub change: u64,
    /// Device numbers of character/block nodes.
    pub rdev: (u32, u32),
    /// Directories: the parent directory (root: itself).
    pub parent: u64,
    /// Directories: the next entry id to hand out.
    pub next_entry: u64,
    /// Exclusive-create verifier, until the first SETATTR.
    pub verifier: Option<u64>,
    /// Symlinks: the target.
    pub target: Vec<u8>,
}

/// Inode record encoding version.
const INODE_VERSION: u8 = 1;

impl Inode {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(INODE_VERSION);
        w.u8(self.kind.code());
        w.u64(self.gen);
        w.u32(self.mode);
        w.u32(self.uid);
        w.u32(self.gid);
        w.u32(self.nlink);
        w.u64(self.size);
        w.u64(self.blocks);
        w.u64(self.atime_ns);
        w.u64(self.mtime_ns);
        w.u64(self.ctime_ns);
        w.u64(self.change);
        w.u32(self.rdev.0);
        w.u32(self.rdev.1);
        w.u64(self.parent);
        w.u64(self.next_entry);
        w.opt_u64(self.verifier);
        w.bytes16(&self.target);
        w.buf
    }
    /// Decodes and validates the record.
    pub fn decode(b: &[u8]) -> Result<Inode, DecodeError> {
        let mut r = Reader::new(b);
        let v = r.u8()?;
        if v != INODE_VERSION {
            return Err(DecodeError(format!("inode version {v}")));
        }
        let ino = Inode {
            kind: FileType::from_code(r.u8()?)?,
            gen: r.u64()?,
            mode: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            nlink: r.u32()?,
            size: r.u64()?,
            blocks: r.u64()?,
            atime_ns: r.u64()?,
            mtime_ns: r.u64()?,
            ctime_ns: r.u64()?,
            change: r.u64()?,
            rdev: (r.u32()?, r.u32()?),
            parent: r.u64()?,
            next_entry: r.u64()?,
            verifier: r.opt_u64()?,
            target: r.bytes16(SYMLINK_BYTES_MAX)?,
        };
        r.finish()?;
        if ino.size > FILE_SIZE_MAX {
            return Err(DecodeError(format!("inode size {}", ino.size)));
        }
        Ok(ino)
    }
}

/// A directory entry record (value of the `KIND_DIRENT` item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirRecord {
    /// Inode number of the target.
    pub ino: u64,
    /// Generation of the target.
    pub gen: u64,
    /// Type of the target.
    pub kind: FileType,
    /// Name.
    pub name: Vec<u8>,
}

impl DirRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.ino);
        w.u64(self.gen);
        w.u8(self.kind.code());
        w.bytes16(&self.name);
        w.buf
    }
    /// Decodes the record.
    pub fn decode(b: &[u8]) -> Result<DirRecord, DecodeError> {
        let mut r = Reader::new(b);
        let d = DirRecord {
            ino: r.u64()?,
            gen: r.u64()?,
            kind: FileType::from_code(r.u8()?)?,
            name: r.bytes16(NAME_BYTES_MAX)?,
        };
        r.finish()?;
        if d.name.is_empty() {
            return Err(DecodeError("empty name".into()));
        }
        Ok(d)
    }
}

/// Encodes a name-index value: the entry ids whose names share one hash.
pub fn encode_ids(ids: &[u64]) -> Vec<u8> {
    assert!(ids.len() <= HASH_COLLISIONS_MAX);
    let mut w = Writer::new();
    w.u16(ids.len() as u16);
    for &i in ids {
        w.u64(i);
    }
    w.buf
}

/// Decodes a name-index value.
pub fn decode_ids(b: &[u8]) -> Result<Vec<u64>, DecodeError> {
    let mut r = Reader::new(b);
    let n = r.u16()? as usize;
    if n == 0 || n > HASH_COLLISIONS_MAX {
        return Err(DecodeError(format!("{n} ids under one hash")));
    }
    let ids = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
    r.finish()?;
    Ok(ids)
}

/// Which tree a handle reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    /// The live file system.
    Live,
    /// The virtual `.snapshot` directory of directory `ino`.
    SnapDir,
    /// A snapshot, by id.
    Snap(u32),
}

/// A file handle: names the object and its generation in one view, never the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    /// Live, `.snapshot` directory, or snapshot.
    pub view: View,
    /// Inode number.
    pub ino: u64,
    /// Generation.
    pub gen: u64,
}

/// Bytes of an encoded handle.
pub const HANDLE_BYTES: usize = 21;

impl Handle {
    /// A live handle.
    pub fn live(ino: u64, gen: u64) -> Handle {
        Handle {
            view: View::Live,
            ino,
            gen,
        }
    }
    /// The `Fid` to name this object in an `FsOp`; snapshot views are read-only.
    pub fn writable(&self) -> Result<crate::op::Fid, crate::FsError> {
        match self.view {
            View::Live => Ok(crate::op::Fid {
                ino: self.ino,
                gen: self.gen,
            }),
            _ => Err(crate::FsError::ReadOnly),
        }
    }
    /// Encodes the handle (for NFS file handles).
    pub fn to_bytes(&self) -> [u8; HANDLE_BYTES] {
        let mut w = Writer::new();
        match self.view {
            View::Live => {
                w.u8(0);
                w.u32(0);
            }
            View::SnapDir => {
                w.u8(1);
                w.u32(0);
            }
            View::Snap(id) => {
                w.u8(2);
                w.u32(id);
            }
        }
        w.u64(self.ino);
        w.u64(self.gen);
        let mut out = [0u8; HANDLE_BYTES];
        out.copy_from_slice(&w.buf);
        out
    }
    /// Decodes a handle.
    pub fn from_bytes(b: &[u8]) -> Result<Handle, DecodeError> {
        let mut r = Reader::new(b);
        let tag = r.u8()?;
        let id = r.u32()?;
        let view = match tag {
            0 => View::Live,
            1 => View::SnapDir,
            2 => View::Snap(id),
            _ => return Err(DecodeError(format!("bad handle view {tag}"))),
        };
        let h = Handle {
            view,
            ino: r.u64()?,
            gen: r.u64()?,
        };
        r.finish()?;
        Ok(h)
    }
}

/// Attributes of an object as the protocols see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Handle of the object.
    pub handle: Handle,
    /// Type.
    pub kind: FileType,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Bytes of storage held.
    pub used: u64,
    /// Inode number.
    pub fileid: u64,
    /// Generation.
    pub gen: u64,
    /// Access time, ns.
    pub atime_ns: u64,
    /// Modification time, ns.
    pub mtime_ns: u64,
    /// Change time, ns.
    pub ctime_ns: u64,
    /// Change counter.
    pub change: u64,
    /// Device numbers.
    pub rdev: (u32, u32),
}

impl Attr {
    /// Attributes of an inode seen through `view`.
    pub fn from_inode(view: View, ino: u64, i: &Inode) -> Attr {
        Attr {
            handle: Handle {
                view,
                ino,
                gen: i.gen,
            },
            kind: i.kind,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            nlink: i.nlink,
            size: i.size,
            used: i.blocks * crate::store::BLOCK_SIZE as u64,
            fileid: ino,
            gen: i.gen,
            atime_ns: i.atime_ns,
            mtime_ns: i.mtime_ns,
            ctime_ns: i.ctime_ns,
            change: i.change,
            rdev: i.rdev,
        }
    }
}

/// One READDIR result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Cookie to continue after this entry.
    pub cookie: u64,
    /// Name.
    pub name: Vec<u8>,
    /// Handle of the target.
    pub handle: Handle,
    /// Type of the target.
    pub kind: FileType,
}

/// Checks a name for a directory entry.
pub fn check_name(name: &[u8]) -> Result<(), crate::FsError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(crate::FsError::BadName(format!("{} bytes", name.len())));
    }
    if name == b"." || name == b".." || name == SNAPSHOT_DIR_NAME {
        return Err(crate::FsError::BadName(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    if name.iter().any(|&c| c == b'/' || c == 0) {
        return Err(crate::FsError::BadName("contains '/' or NUL".into()));
    }
    Ok(())
}
