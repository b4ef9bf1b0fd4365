//! `FsOp`: the protocol-neutral modifying operation, and its byte encoding (the payload of
//! an NVRAM log record).
//!
//! An op carries everything that makes applying it a second time a no-op: the inode number
//! and generation of what it creates, the timestamps, the bytes it writes.

use bytes::Bytes;

use crate::codec::{DecodeError, Reader, Writer};
use crate::types::{NAME_BYTES_MAX, SYMLINK_BYTES_MAX};

/// Largest payload of one `Write` op, bytes.
pub const WRITE_BYTES_MAX: usize = 4 << 20;
/// Encoding version of `FsOp`.
const OP_VERSION: u8 = 1;

/// A live object named by inode number and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fid {
    /// Inode number.
    pub ino: u64,
    /// Generation.
    pub gen: u64,
}

impl Fid {
    /// The root directory.
    pub const ROOT: Fid = Fid {
        ino: crate::types::ROOT_INO,
        gen: crate::types::ROOT_GEN,
    };
}

/// What a creating op creates (numbers from `Fs::reserve_inode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewObj {
    /// Inode number.
    pub ino: u64,
    /// Generation.
    pub gen: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Attributes a CREATE sets besides owner and mode (NFSv3 `sattr3` of UNCHECKED/GUARDED).
/// A new file gets all of them; an existing file that an UNCHECKED create returns gets only
/// the size (like Linux knfsd: `open(O_CREAT|O_TRUNC)` relies on it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateAttr {
    /// Size (a new file is extended with a hole; an existing one truncated or extended).
    pub size: Option<u64>,
    /// Access time, ns (default: the op's time).
    pub atime_ns: Option<u64>,
    /// Modification time, ns (default: the op's time).
    pub mtime_ns: Option<u64>,
}

impl CreateAttr {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == CreateAttr::default()
    }
}

/// NFS create semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateHow {
    /// Succeed on an existing regular file (returning it).
    Unchecked,
    /// Fail if the name exists.
    Guarded,
    /// Succeed only on an object created with the same verifier (retransmission).
    Exclusive(u64),
}

/// Kinds of device and special nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device (major, minor).
    Char(u32, u32),
    /// Block device (major, minor).
    Block(u32, u32),
}

/// Attributes to set; `None` leaves one unchanged. Times are resolved by the caller
/// (SET_TO_SERVER_TIME becomes the caller's clock reading), so replay is deterministic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// Access time, ns.
    pub atime_ns: Option<u64>,
    /// Modification time, ns.
    pub mtime_ns: Option<u64>,
}

/// A modifying operation, applied by `Fs::apply`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsOp {
    /// Create a regular file.
    Create {
        /// Parent directory.
        dir: Fid,
        /// Name.
        name: Vec<u8>,
        /// The new object.
        new: NewObj,
        /// Unchecked / guarded / exclusive.
        how: CreateHow,
        /// Size and times to set (see [`CreateAttr`]).
        attr: CreateAttr,
        /// Time of the operation, ns.
        time_ns: u64,
    },
    /// Create a directory.
    Mkdir {
        /// Parent directory.
        dir: Fid,
        /// Name.
        name: Vec<u8>,
        /// The new object.
        new: NewObj,
        /// Time, ns.
        time_ns: u64,
    },
    /// Create a symbolic link.
    Symlink {
        /// Parent directory.
        dir: Fid,
        /// Name.
        name: Vec<u8>,
        /// The new object.
        new: NewObj,
        /// Link target.
        target: Vec<u8>,
        /// Time, ns.
        time_ns: u64,
    },
    /// Create a FIFO, socket or device node.
    Mknod {
        /// Parent directory.
        dir: Fid,
        /// Name.
        name: Vec<u8>,
        /// The new object.
        new: NewObj,
        /// What kind of node.
        special: Special,
        /// Time, ns.
        time_ns: u64,
    },
    /// Add a hard link to a non-directory.
    Link {
        /// The existing object.
        target: Fid,
        /// Directory of the new name.
        dir: Fid,
        /// New name.
        name: Vec<u8>,
        /// Time, ns.
        time_ns: u64,
    },
    /// Remove a non-directory name.
    Remove {
        /// Directory.
        dir: Fid,
        /// Name.
        name: Vec<u8>,
        /// Time, ns.
        time_ns: u64,
    },
    /// Remove an empty directory.
    Rmdir {
        /// Parent directory.
        dir: Fid,
        /// Name.
        name: Vec<u8>,
        /// Time, ns.
        time_ns: u64,
    },
    /// Rename, replacing a compatible target.
    Rename {
        /// Source directory.
        from_dir: Fid,
        /// Source name.
        from_name: Vec<u8>,
        /// Target directory.
        to_dir: Fid,
        /// Target name.
        to_name: Vec<u8>,
        /// Time, ns.
        time_ns: u64,
    },
    /// Set attributes, including truncate.
    SetAttr {
        /// The object.
        target: Fid,
        /// What to set.
        attr: SetAttr,
        /// Time, ns.
        time_ns: u64,
    },
    /// Write bytes to a regular file.
    Write {
        /// The file.
        target: Fid,
        /// Byte offset.
        offset: u64,
        /// Bytes (shared: a server hands in a slice of the request it received).
        data: Bytes,
        /// Time, ns.
        time_ns: u64,
    },
}

fn fid(w: &mut Writer, f: &Fid) {
    w.u64(f.ino);
    w.u64(f.gen);
}
fn rfid(r: &mut Reader) -> Result<Fid, DecodeError> {
    Ok(Fid {
        ino: r.u64()?,
        gen: r.u64()?,
    })
}
fn new_obj(w: &mut Writer, n: &NewObj) {
    w.u64(n.ino);
    w.u64(n.gen);
    w.u32(n.mode);
    w.u32(n.uid);
    w.u32(n.gid);
}
fn rnew_obj(r: &mut Reader) -> Result<NewObj, DecodeError> {
    Ok(NewObj {
        ino: r.u64()?,
        gen: r.u64()?,
        mode: r.u32()?,
        uid: r.u32()?,
        gid: r.u32()?,
    })
}
fn opt32(w: &mut Writer, v: Option<u32>) {
    w.opt_u64(v.map(u64::from));
}
fn ropt32(r: &mut Reader) -> Result<Option<u32>, DecodeError> {
    match r.opt_u64()? {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| DecodeError(format!("{v} > u32"))),
    }
}

impl FsOp {
    /// Encodes the op (little-endian, versioned).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(OP_VERSION);
        match self {
            FsOp::Create {
                dir,
                name,
                new,
                how,
                attr,
                time_ns,
            } => {
                // Tag 11 = tag 1 + attributes; an op without them keeps the older tag 1.
                w.u8(if attr.is_empty() { 1 } else { 11 });
                fid(&mut w, dir);
                w.bytes16(name);
                new_obj(&mut w, new);
                match how {
                    CreateHow::Unchecked => w.u8(0),
                    CreateHow::Guarded => w.u8(1),
                    CreateHow::Exclusive(v) => {
                        w.u8(2);
                        w.u64(*v);
                    }
                }
                w.u64(*time_ns);
                if !attr.is_empty() {
                    w.opt_u64(attr.size);
                    w.opt_u64(attr.atime_ns);
                    w.opt_u64(attr.mtime_ns);
                }
            }
            FsOp::Mkdir {
                dir,
                name,
                new,
                time_ns,
            } => {
                w.u8(2);
                fid(&mut w, dir);
                w.bytes16(name);
                new_obj(&mut w, new);
                w.u64(*time_ns);
            }
            FsOp::Symlink {
                dir,
                name,
                new,
                target,
                time_ns,
            } => {
                w.u8(3);
                fid(&mut w, dir);
                w.bytes16(name);
                new_obj(&mut w, new);
                w.bytes16(target);
                w.u64(*time_ns);
            }
            FsOp::Mknod {
                dir,
                name,
                new,
                special,
                time_ns,
            } => {
                w.u8(4);
                fid(&mut w, dir);
                w.bytes16(name);
                new_obj(&mut w, new);
                let (t, a, b) = match special {
                    Special::Fifo => (0, 0, 0),
                    Special::Socket => (1, 0, 0),
                    Special::Char(a, b) => (2, *a, *b),
                    Special::Block(a, b) => (3, *a, *b),
                };
                w.u8(t);
                w.u32(a);
                w.u32(b);
                w.u64(*time_ns);
            }
            FsOp::Link {
                target,
                dir,
                name,
                time_ns,
            } => {
                w.u8(5);
                fid(&mut w, target);
                fid(&mut w, dir);
                w.bytes16(name);
                w.u64(*time_ns);
            }
            FsOp::Remove { dir, name, time_ns } => {
                w.u8(6);
                fid(&mut w, dir);
                w.bytes16(name);
                w.u64(*time_ns);
            }
            FsOp::Rmdir { dir, name, time_ns } => {
                w.u8(7);
                fid(&mut w, dir);
                w.bytes16(name);
                w.u64(*time_ns);
            }
            FsOp::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                time_ns,
            } => {
                w.u8(8);
                fid(&mut w, from_dir);
                w.bytes16(from_name);
                fid(&mut w, to_dir);
                w.bytes16(to_name);
                w.u64(*time_ns);
            }
            FsOp::SetAttr {
                target,
                attr,
                time_ns,
            } => {
                w.u8(9);
                fid(&mut w, target);
                opt32(&mut w, attr.mode);
                opt32(&mut w, attr.uid);
                opt32(&mut w, attr.gid);
                w.opt_u64(attr.size);
                w.opt_u64(attr.atime_ns);
                w.opt_u64(attr.mtime_ns);
                w.u64(*time_ns);
            }
            FsOp::Write {
                target,
                offset,
                data,
                time_ns,
            } => {
                w.u8(10);
                fid(&mut w, target);
                w.u64(*offset);
                w.bytes32(data);
                w.u64(*time_ns);
            }
        }
        w.buf
    }

    /// Decodes an op; checks every length and tag, never panics.
    pub fn decode(b: &[u8]) -> Result<FsOp, DecodeError> {
        let mut r = Reader::new(b);
        let v = r.u8()?;
        if v != OP_VERSION {
            return Err(DecodeError(format!("op version {v}")));
        }
        let op = match r.u8()? {
            tag @ (1 | 11) => {
                let dir = rfid(&mut r)?;
                let name = r.bytes16(NAME_BYTES_MAX)?;
                let new = rnew_obj(&mut r)?;
                let how = match r.u8()? {
                    0 => CreateHow::Unchecked,
                    1 => CreateHow::Guarded,
                    2 => CreateHow::Exclusive(r.u64()?),
                    t => return Err(DecodeError(format!("bad create mode {t}"))),
                };
                let time_ns = r.u64()?;
                let attr = if tag == 11 {
                    CreateAttr {
                        size: r.opt_u64()?,
                        atime_ns: r.opt_u64()?,
                        mtime_ns: r.opt_u64()?,
                    }
                } else {
                    CreateAttr::default()
                };
                FsOp::Create {
                    dir,
                    name,
                    new,
                    how,
                    attr,
                    time_ns,
                }
            }
            2 => FsOp::Mkdir {
                dir: rfid(&mut r)?,
                name: r.bytes16(NAME_BYTES_MAX)?,
                new: rnew_obj(&mut r)?,
                time_ns: r.u64()?,
            },
            3 => FsOp::Symlink {
                dir: rfid(&mut r)?,
                name: r.bytes16(NAME_BYTES_MAX)?,
                new: rnew_obj(&mut r)?,
                target: r.bytes16(SYMLINK_BYTES_MAX)?,
                time_ns: r.u64()?,
            },
            4 => {
                let dir = rfid(&mut r)?;
                let name = r.bytes16(NAME_BYTES_MAX)?;
                let new = rnew_obj(&mut r)?;
                let t = r.u8()?;
                let (a, b) = (r.u32()?, r.u32()?);
                let special = match t {
                    0 => Special::Fifo,
                    1 => Special::Socket,
                    2 => Special::Char(a, b),
                    3 => Special::Block(a, b),
                    _ => return Err(DecodeError(format!("bad node type {t}"))),
                };
                FsOp::Mknod {
                    dir,
                    name,
                    new,
                    special,
                    time_ns: r.u64()?,
                }
            }
            5 => FsOp::Link {
                target: rfid(&mut r)?,
                dir: rfid(&mut r)?,
                name: r.bytes16(NAME_BYTES_MAX)?,
                time_ns: r.u64()?,
            },
            6 => FsOp::Remove {
                dir: rfid(&mut r)?,
                name: r.bytes16(NAME_BYTES_MAX)?,
                time_ns: r.u64()?,
            },
            7 => FsOp::Rmdir {
                dir: rfid(&mut r)?,
                name: r.bytes16(NAME_BYTES_MAX)?,
                time_ns: r.u64()?,
            },
            8 => FsOp::Rename {
                from_dir: rfid(&mut r)?,
                from_name: r.bytes16(NAME_BYTES_MAX)?,
                to_dir: rfid(&mut r)?,
                to_name: r.bytes16(NAME_BYTES_MAX)?,
                time_ns: r.u64()?,
            },
            9 => FsOp::SetAttr {
                target: rfid(&mut r)?,
                attr: SetAttr {
                    mode: ropt32(&mut r)?,
                    uid: ropt32(&mut r)?,
                    gid: ropt32(&mut r)?,
                    size: r.opt_u64()?,
                    atime_ns: r.opt_u64()?,
                    mtime_ns: r.opt_u64()?,
                },
                time_ns: r.u64()?,
            },
            10 => FsOp::Write {
                target: rfid(&mut r)?,
                offset: r.u64()?,
                data: r.bytes32(WRITE_BYTES_MAX)?.into(),
                time_ns: r.u64()?,
            },
            t => return Err(DecodeError(format!("bad op tag {t}"))),
        };
        r.finish()?;
        Ok(op)
    }
}
