//! MOUNT protocol version 3 (RFC 1813 appendix I): NULL, MNT, DUMP, UMNT, UMNTALL, EXPORT.

use crate::nfs3::NfsFh3;
use crate::xdr::{xdr_bytes, xdr_enum, Decoder, Xdr, XdrResult, XdrWrite};
use crate::ArgsError;

/// RPC program number of MOUNT.
pub const MOUNT_PROGRAM: u32 = 100_005;
/// The MOUNT version implemented (the one that goes with NFSv3).
pub const MOUNT_V3: u32 = 3;

/// Longest export path (`MNTPATHLEN`).
pub const DIRPATH_BYTES_MAX: usize = 1024;
/// Longest host or group name (`MNTNAMLEN`).
pub const NAME_BYTES_MAX: usize = 255;
/// Most auth flavors listed in an MNT reply.
pub const AUTH_FLAVORS_MAX: usize = 16;
/// Most entries in a decoded DUMP reply (a client's view).
pub const MOUNTLIST_ENTRIES_MAX: usize = 4096;
/// Most exports in a decoded EXPORT reply.
pub const EXPORTS_MAX: usize = 1024;
/// Most client names (groups) per export in an EXPORT reply.
pub const EXPORT_GROUPS_MAX: usize = 256;

xdr_bytes! {
    /// An export path (`dirpath`, ≤ 1024 bytes).
    pub struct DirPath; max = DIRPATH_BYTES_MAX;
}

xdr_bytes! {
    /// A host or group name (`name`, ≤ 255 bytes).
    pub struct MountName; max = NAME_BYTES_MAX;
}

xdr_enum! {
    /// MOUNT procedure numbers.
    pub enum MountProc {
        /// Ping.
        Null = 0,
        /// Mount: path → root handle.
        Mnt = 1,
        /// List mounts.
        Dump = 2,
        /// Unmount one path.
        Umnt = 3,
        /// Unmount everything of this client.
        Umntall = 4,
        /// List exports.
        Export = 5,
    }
}

xdr_enum! {
    /// MOUNT status (`mountstat3`).
    pub enum MountStat3 {
        /// Success.
        Ok = 0,
        /// Not owner.
        Perm = 1,
        /// No such path.
        Noent = 2,
        /// I/O error.
        Io = 5,
        /// Client not allowed by the export rules.
        Acces = 13,
        /// Not a directory.
        Notdir = 20,
        /// Invalid argument.
        Inval = 22,
        /// Path too long.
        Nametoolong = 63,
        /// Not supported.
        Notsupp = 10004,
        /// Server fault.
        Serverfault = 10006,
    }
}

/// The MNT reply (`mountres3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountRes3 {
    /// Success: the export's root handle and the auth flavors the client may use.
    Ok {
        /// Root file handle.
        fhandle: NfsFh3,
        /// Accepted flavors (≤ [`AUTH_FLAVORS_MAX`]), e.g. `[AUTH_SYS]`.
        auth_flavors: Vec<u32>,
    },
    /// Failure (status must not be `Ok`).
    Err(MountStat3),
}

impl Xdr for MountRes3 {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MountRes3::Ok {
                fhandle,
                auth_flavors,
            } => {
                assert!(auth_flavors.len() <= AUTH_FLAVORS_MAX);
                MountStat3::Ok.encode(out);
                fhandle.encode(out);
                out.put_u32(auth_flavors.len() as u32);
                for f in auth_flavors {
                    out.put_u32(*f);
                }
            }
            MountRes3::Err(stat) => {
                assert_ne!(*stat, MountStat3::Ok);
                stat.encode(out);
            }
        }
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        match MountStat3::decode(dec)? {
            MountStat3::Ok => Ok(MountRes3::Ok {
                fhandle: NfsFh3::decode(dec)?,
                auth_flavors: dec.array("auth_flavors", AUTH_FLAVORS_MAX, 4, |d| d.u32())?,
            }),
            stat => Ok(MountRes3::Err(stat)),
        }
    }
}

/// One DUMP entry (`mountbody`): a client host and the path it mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountBody {
    /// Client host name.
    pub hostname: MountName,
    /// Mounted path.
    pub directory: DirPath,
}

/// The DUMP reply (`mountlist`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountList(pub Vec<MountBody>);

impl Xdr for MountList {
    fn encode(&self, out: &mut Vec<u8>) {
        for m in &self.0 {
            out.put_bool(true);
            m.hostname.encode(out);
            m.directory.encode(out);
        }
        out.put_bool(false);
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        let list = dec.list("mountlist", MOUNTLIST_ENTRIES_MAX, |d| {
            Ok(MountBody {
                hostname: Xdr::decode(d)?,
                directory: Xdr::decode(d)?,
            })
        })?;
        Ok(MountList(list))
    }
}

/// One EXPORT entry (`exportnode`): a path and the client names allowed to mount it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportNode {
    /// Export path.
    pub dir: DirPath,
    /// Allowed clients as the admin wrote them (host, CIDR, `*`).
    pub groups: Vec<MountName>,
}

/// The EXPORT reply (`exports`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exports(pub Vec<ExportNode>);

impl Xdr for Exports {
    fn encode(&self, out: &mut Vec<u8>) {
        for e in &self.0 {
            out.put_bool(true);
            e.dir.encode(out);
            crate::xdr::put_list(out, &e.groups);
        }
        out.put_bool(false);
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        let list = dec.list("exports", EXPORTS_MAX, |d| {
            Ok(ExportNode {
                dir: Xdr::decode(d)?,
                groups: d.list("groups", EXPORT_GROUPS_MAX, MountName::decode)?,
            })
        })?;
        Ok(Exports(list))
    }
}

/// The decoded arguments of one MOUNT call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    /// NULL.
    Null,
    /// MNT of a path.
    Mnt(DirPath),
    /// DUMP.
    Dump,
    /// UMNT of a path.
    Umnt(DirPath),
    /// UMNTALL.
    Umntall,
    /// EXPORT.
    Export,
}

impl MountCall {
    /// Decodes the arguments of procedure `proc_` from `record` at `args_offset`.
    pub fn decode(proc_: u32, record: &[u8], args_offset: usize) -> Result<Self, ArgsError> {
        let p = MountProc::from_u32(proc_).ok_or(ArgsError::ProcUnavail { proc_ })?;
        let mut dec = Decoder::new_at(record, args_offset);
        let call = match p {
            MountProc::Null => MountCall::Null,
            MountProc::Mnt => MountCall::Mnt(DirPath::decode(&mut dec)?),
            MountProc::Dump => MountCall::Dump,
            MountProc::Umnt => MountCall::Umnt(DirPath::decode(&mut dec)?),
            MountProc::Umntall => MountCall::Umntall,
            MountProc::Export => MountCall::Export,
        };
        dec.finish()?;
        Ok(call)
    }

    /// Appends the arguments (a client's view).
    pub fn encode_args(&self, out: &mut Vec<u8>) {
        match self {
            MountCall::Mnt(p) | MountCall::Umnt(p) => p.encode(out),
            MountCall::Null | MountCall::Dump | MountCall::Umntall | MountCall::Export => {}
        }
    }

    /// The procedure number.
    pub fn proc_(&self) -> MountProc {
        match self {
            MountCall::Null => MountProc::Null,
            MountCall::Mnt(_) => MountProc::Mnt,
            MountCall::Dump => MountProc::Dump,
            MountCall::Umnt(_) => MountProc::Umnt,
            MountCall::Umntall => MountProc::Umntall,
            MountCall::Export => MountProc::Export,
        }
    }
}

#[cfg(test)]
mod arb_impls {
    use super::*;
    use crate::arb::{arb_vec, Arb, Gen};

    impl Arb for MountRes3 {
        fn arb(g: &mut Gen) -> Self {
            if g.bool() {
                MountRes3::Ok {
                    fhandle: Arb::arb(g),
                    auth_flavors: arb_vec(g, AUTH_FLAVORS_MAX),
                }
            } else {
                let errs = &MountStat3::ALL[1..];
                MountRes3::Err(errs[g.below(errs.len())])
            }
        }
    }
    impl Arb for MountBody {
        fn arb(g: &mut Gen) -> Self {
            MountBody {
                hostname: Arb::arb(g),
                directory: Arb::arb(g),
            }
        }
    }
    impl Arb for MountList {
        fn arb(g: &mut Gen) -> Self {
            MountList(arb_vec(g, 5))
        }
    }
    impl Arb for ExportNode {
        fn arb(g: &mut Gen) -> Self {
            ExportNode {
                dir: Arb::arb(g),
                groups: arb_vec(g, 4),
            }
        }
    }
    impl Arb for Exports {
        fn arb(g: &mut Gen) -> Self {
            Exports(arb_vec(g, 4))
        }
    }
}
