//! The write-anywhere file system on a RAID-4 aggregate.
//!
//! A copy-on-write B+tree holds every object (inodes, directory entries, a name index and
//! file data block pointers). Nothing is overwritten in place: a consistency point (CP)
//! writes the dirty tree to free whole stripes, then one of two alternating superblocks.
//! Every block pointer carries the checksum of the block it points to. See
//! `docs/fs-format.md` for the bytes.
//!
//! The write path of a node: the front-end turns a request into an [`FsOp`] (creating ops
//! carry numbers from [`Fs::reserve_inode`] and a caller-chosen time), the NVRAM log makes
//! `op.encode()` durable under a sequence number, then [`Fs::apply`] applies it in that
//! order. A [`CpDriver`] (or [`Fs::cp`]) writes consistency points; after a crash or a
//! takeover, [`Fs::mount`] then re-applying the log records above [`Fs::applied_seq`]
//! restores the state (applying a record twice changes nothing).
//!
//! ```
//! use std::sync::Arc;
//! use wafl::{CreateHow, Fid, Fs, FsConfig, FsOp, MemStore, NewObj, ROOT_INO};
//!
//! let store = Arc::new(MemStore::new(4, 64));
//! let fs = Fs::mkfs(store.clone(), 0, FsConfig::default()).unwrap();
//! let (ino, gen) = fs.reserve_inode();
//! let new = NewObj { ino, gen, mode: 0o644, uid: 0, gid: 0 };
//! let dir = Fid::ROOT;
//! let op = FsOp::Create { dir, name: b"hello".to_vec(), new, how: CreateHow::Guarded, attr: Default::default(), time_ns: 1 };
//! assert_eq!(FsOp::decode(&op.encode()).unwrap(), op); // the NVRAM record payload
//! fs.apply(1, &op).unwrap();
//! let write = FsOp::Write { target: Fid { ino, gen }, offset: 0, data: b"world".to_vec().into(), time_ns: 2 };
//! fs.apply(2, &write).unwrap();
//! fs.cp().unwrap();
//!
//! let fs = Fs::mount(store, FsConfig::default()).unwrap();
//! assert_eq!(fs.applied_seq(), 2);
//! let file = fs.lookup(&fs.root(), b"hello").unwrap();
//! assert_eq!(fs.read(&file.handle, 0, 100).unwrap(), (b"world".to_vec(), true));
//! ```

mod alloc;
mod cache;
mod codec;
mod cp;
mod error;
mod fs;
pub mod fsck;
mod op;
mod raid4_store;
pub mod schedule;
pub mod store;
mod superblock;
mod tree;
mod types;

pub use cache::{CacheStats, CACHE_BYTES_MAX_DEFAULT, CACHE_SHARDS_MAX};
pub use codec::{BlockPtr, DecodeError};
pub use cp::{CpDriver, CpReport, CpStats, SNAPSHOTS_MAX, SNAP_NAME_BYTES_MAX};
pub use error::FsError;
pub use fs::{Fs, FsConfig, ReadData, SnapInfo, StatFs};
pub use op::{CreateAttr, CreateHow, Fid, FsOp, NewObj, SetAttr, Special, WRITE_BYTES_MAX};
pub use store::{CrashStore, FileStore, MemStore, StoreError, StripeStore, BLOCK_SIZE};
pub use types::{
    Attr, DirEntry, FileType, Handle, View, FILE_SIZE_MAX, FIRST_ENTRY_ID, NAME_BYTES_MAX,
    ROOT_GEN, ROOT_INO, SYMLINK_BYTES_MAX,
};
