//! Permission checks with AUTH_SYS identities (after squashing): owner/group/other bits,
//! root bypass, the owner override for READ/WRITE, sticky directories, and ACCESS.

use twinfiler_proto::nfs3::access;
use wafl::{Attr, FileType};

use crate::exports::Identity;

/// Read permission bit (in the rwx triplet).
pub const R: u32 = 4;
/// Write permission bit.
pub const W: u32 = 2;
/// Execute / search permission bit.
pub const X: u32 = 1;

/// Whether `id` has all of `want` (rwx bits) on the object. Root has everything, except
/// execute on a non-directory with no execute bit at all (as POSIX does).
pub fn may(a: &Attr, id: &Identity, want: u32) -> bool {
    if id.is_root() {
        return want & X == 0 || a.kind == FileType::Directory || a.mode & 0o111 != 0;
    }
    let bits = if id.uid == a.uid {
        a.mode >> 6
    } else if id.in_group(a.gid) {
        a.mode >> 3
    } else {
        a.mode
    } & 7;
    bits & want == want
}

/// READ and WRITE let the owner through regardless of the mode, like Linux knfsd: a file
/// created with mode 0444 by `open(O_CREAT|O_WRONLY)` must still take the writes of the
/// process that created it.
pub fn may_io(a: &Attr, id: &Identity, want: u32) -> bool {
    id.uid == a.uid || may(a, id, want)
}

/// Whether `id` may delete or rename away `victim` from the sticky directory `dir`.
pub fn sticky_allows(dir: &Attr, victim: &Attr, id: &Identity) -> bool {
    dir.mode & 0o1000 == 0 || id.is_root() || id.uid == dir.uid || id.uid == victim.uid
}

/// The ACCESS bits granted out of `asked`.
pub fn access_bits(a: &Attr, id: &Identity, asked: u32, read_only: bool) -> u32 {
    let dir = a.kind == FileType::Directory;
    let mut granted = 0;
    if may(a, id, R) {
        granted |= access::READ;
    }
    if !read_only && may(a, id, W) {
        granted |= access::MODIFY | access::EXTEND;
        if dir {
            granted |= access::DELETE;
        }
    }
    if may(a, id, X) {
        granted |= if dir { access::LOOKUP } else { access::EXECUTE };
    }
    granted & asked
}

#[cfg(test)]
mod tests {
    use super::*;
    use wafl::Handle;

    fn attr(kind: FileType, mode: u32, uid: u32, gid: u32) -> Attr {
        Attr {
            handle: Handle::live(20, 1),
            kind,
            mode,
            uid,
            gid,
            nlink: 1,
            size: 0,
            used: 0,
            fileid: 20,
            gen: 1,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            change: 0,
            rdev: (0, 0),
        }
    }
    fn who(uid: u32, gid: u32, gids: &[u32]) -> Identity {
        Identity {
            uid,
            gid,
            gids: gids.to_vec(),
        }
    }

    #[test]
    fn owner_group_other_and_root() {
        let f = attr(FileType::Regular, 0o640, 10, 20);
        assert!(may(&f, &who(10, 1, &[]), R | W));
        assert!(may(&f, &who(11, 20, &[]), R) && !may(&f, &who(11, 20, &[]), W));
        assert!(may(&f, &who(11, 1, &[20]), R));
        assert!(!may(&f, &who(11, 1, &[]), R));
        assert!(may(&f, &who(0, 0, &[]), R | W));
        assert!(!may(&f, &who(0, 0, &[]), X));
        // Owner bits apply to the owner even when group bits would allow more.
        let g = attr(FileType::Regular, 0o070, 10, 20);
        assert!(!may(&g, &who(10, 20, &[]), R));
        assert!(may_io(&g, &who(10, 20, &[]), R));
        let d = attr(FileType::Directory, 0o1777, 10, 20);
        assert!(sticky_allows(
            &d,
            &attr(FileType::Regular, 0o644, 11, 1),
            &who(11, 1, &[])
        ));
        assert!(!sticky_allows(
            &d,
            &attr(FileType::Regular, 0o644, 12, 1),
            &who(11, 1, &[])
        ));
        assert_eq!(
            access_bits(&d, &who(11, 1, &[]), 0x3f, false),
            access::READ | access::MODIFY | access::EXTEND | access::DELETE | access::LOOKUP
        );
        assert_eq!(
            access_bits(&d, &who(11, 1, &[]), 0x3f, true),
            access::READ | access::LOOKUP
        );
    }
}
