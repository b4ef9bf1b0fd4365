//! Random argument bytes for every procedure never panic and always get an answer.

use twinfiler_proto::mount::MOUNT_PROGRAM;
use twinfiler_proto::nfs3::*;
use twinfiler_proto::xdr::to_vec;

use super::*;

/// Rounds per procedure (each: one random and one mutated valid argument set).
const ROUNDS_PER_PROC: usize = 150;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A plausible argument encoding for each procedure, to mutate.
fn valid_args(p: Nfs3Proc, dir: NfsFh3, file: NfsFh3) -> Vec<u8> {
    let s = Sattr3 {
        mode: Some(0o644),
        size: Some(3),
        ..Default::default()
    };
    match p {
        Nfs3Proc::Null => vec![],
        Nfs3Proc::Getattr => to_vec(&GetattrArgs { object: file }),
        Nfs3Proc::Setattr => to_vec(&SetattrArgs {
            object: file,
            new_attributes: s,
            guard: None,
        }),
        Nfs3Proc::Lookup => to_vec(&LookupArgs {
            what: dirop(&dir, "f"),
        }),
        Nfs3Proc::Access => to_vec(&AccessArgs {
            object: file,
            access: 0x3f,
        }),
        Nfs3Proc::Readlink => to_vec(&ReadlinkArgs { symlink: file }),
        Nfs3Proc::Read => to_vec(&ReadArgs {
            file,
            offset: 0,
            count: 100,
        }),
        Nfs3Proc::Write => {
            let a = WriteArgs {
                file,
                offset: 2,
                count: 5,
                stable: StableHow::FileSync,
                data: 0..0,
            };
            let mut out = Vec::new();
            a.encode_with_data(b"hello", &mut out);
            out
        }
        Nfs3Proc::Create => to_vec(&CreateArgs {
            where_: dirop(&dir, "c"),
            how: CreateHow3::Unchecked(s),
        }),
        Nfs3Proc::Mkdir => to_vec(&MkdirArgs {
            where_: dirop(&dir, "m"),
            attributes: s,
        }),
        Nfs3Proc::Symlink => to_vec(&SymlinkArgs {
            where_: dirop(&dir, "s"),
            symlink_attributes: s,
            symlink_data: NfsPath3::new(&b"f"[..]).unwrap(),
        }),
        Nfs3Proc::Mknod => to_vec(&MknodArgs {
            where_: dirop(&dir, "n"),
            what: MknodData3::Fifo(s),
        }),
        Nfs3Proc::Remove | Nfs3Proc::Rmdir => to_vec(&RemoveArgs {
            object: dirop(&dir, "m"),
        }),
        Nfs3Proc::Rename => to_vec(&RenameArgs {
            from: dirop(&dir, "c"),
            to: dirop(&dir, "d"),
        }),
        Nfs3Proc::Link => to_vec(&LinkArgs {
            file,
            link: dirop(&dir, "l"),
        }),
        Nfs3Proc::Readdir => to_vec(&ReaddirArgs {
            dir,
            cookie: 0,
            cookieverf: [0; 8],
            count: 4096,
        }),
        Nfs3Proc::Readdirplus => to_vec(&ReaddirplusArgs {
            dir,
            cookie: 0,
            cookieverf: [0; 8],
            dircount: 512,
            maxcount: 4096,
        }),
        Nfs3Proc::Fsstat | Nfs3Proc::Fsinfo | Nfs3Proc::Pathconf => {
            to_vec(&FsRootArgs { object: dir })
        }
        Nfs3Proc::Commit => to_vec(&CommitArgs {
            file,
            offset: 0,
            count: 0,
        }),
    }
}

#[tokio::test]
async fn random_arguments_never_panic() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let file = env.create_file(&r, &dir, "f", 0o666).await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let whos = [
        r.clone(),
        user(1000),
        who("127.0.0.2:700", 0, 0),
        who("10.0.0.9:700", 0, 0),
    ];
    let mut xid = 1_000_000;
    for &p in Nfs3Proc::ALL {
        let valid = valid_args(p, dir, file);
        for _ in 0..ROUNDS_PER_PROC {
            xid += 1;
            let w = &whos[rng.below(whos.len())];
            // Pure noise.
            let n = rng.below(160);
            let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let reply = env.nfs_raw(xid, w, p, &noise).await;
            assert!(reply.is_some(), "{p:?} dropped a new request");
            // A valid encoding with a few bytes changed, truncated or extended.
            let mut m = valid.clone();
            match rng.below(3) {
                0 if !m.is_empty() => {
                    for _ in 0..1 + rng.below(3) {
                        let i = rng.below(m.len());
                        m[i] = rng.next() as u8;
                    }
                }
                1 => m.truncate(rng.below(m.len() + 1)),
                _ => m.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
            }
            xid += 1;
            let reply = env.nfs_raw(xid, w, p, &m).await.unwrap();
            header_of(&reply);
        }
    }
    // Unknown procedure numbers and MOUNT with noise.
    for p in [22u32, 23, 1000, u32::MAX] {
        let call = Env::call_msg(1, NFS_PROGRAM, 3, p, &r, &[1, 2, 3, 4]);
        header_of(&Env::send(&env.nfs, call).await.unwrap());
    }
    for i in 0..600u32 {
        let n = rng.below(80);
        let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        let call = Env::call_msg(i, MOUNT_PROGRAM, 3, i % 8, &r, &noise);
        header_of(&Env::send(&env.mnt, call).await.unwrap());
    }
    // The service still works.
    ok(env.getattr(&r, &dir).await);
}
