//! Every NFSv3 procedure: success and main error paths.

use twinfiler_proto::nfs3::*;
use twinfiler_proto::xdr::Xdr;

use super::*;

#[tokio::test]
async fn null_getattr_fsinfo_pathconf_fsstat() {
    let env = Env::new();
    let r = root();
    let reply = env.nfs_raw(5, &r, Nfs3Proc::Null, &[]).await.unwrap();
    let _: () = decode_result(&reply, 5);
    let fh = env.root_fh().await;
    let a = ok(env.getattr(&r, &fh).await).obj_attributes;
    assert_eq!(
        (a.ftype, a.mode, a.fileid),
        (Ftype3::Dir, 0o755, wafl::ROOT_INO)
    );
    let args = FsRootArgs { object: fh };
    let info = ok(env.nfs::<_, FsinfoRes>(&r, Nfs3Proc::Fsinfo, &args).await);
    assert_eq!((info.rtmax, info.wtmax), (1 << 20, 1 << 20));
    assert_eq!(info.maxfilesize, wafl::FILE_SIZE_MAX);
    let pc = ok(env
        .nfs::<_, PathconfRes>(&r, Nfs3Proc::Pathconf, &args)
        .await);
    assert_eq!(pc.name_max, 255);
    assert!(pc.no_trunc && pc.case_preserving && !pc.case_insensitive);
    let st = ok(env.nfs::<_, FsstatRes>(&r, Nfs3Proc::Fsstat, &args).await);
    assert!(st.tbytes > 0 && st.fbytes > 0 && st.fbytes <= st.tbytes);
    let stats = env.svc.stats();
    assert_eq!(stats.ops_by_proc[Nfs3Proc::Fsinfo as usize], 1);
    assert_eq!(stats.ops_by_proc[Nfs3Proc::Getattr as usize], 1);
}

#[tokio::test]
async fn create_write_read_commit() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let res = ok(env
        .create(
            &r,
            &dir,
            "f",
            CreateHow3::Guarded(Sattr3 {
                mode: Some(0o640),
                ..Default::default()
            }),
        )
        .await);
    let fh = res.obj.unwrap();
    let a = res.obj_attributes.unwrap();
    assert_eq!((a.ftype, a.mode, a.size, a.uid), (Ftype3::Reg, 0o640, 0, 0));
    // wcc of the directory: before and after, and the directory changed.
    let before = res.dir_wcc.before.unwrap();
    let after = res.dir_wcc.after.unwrap();
    assert!(
        after.mtime.seconds > before.mtime.seconds || after.mtime.nseconds != before.mtime.nseconds
    );

    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let w = ok(env.write(&r, &fh, 0, &data).await);
    assert_eq!(
        (w.count, w.committed),
        (data.len() as u32, StableHow::FileSync)
    );
    assert_eq!(w.file_wcc.before.unwrap().size, 0);
    assert_eq!(w.file_wcc.after.unwrap().size, data.len() as u64);
    // A second write at an odd offset, extending the file.
    let w2 = ok(env.write(&r, &fh, 299_999, b"xyz").await);
    assert_eq!(w2.verf, w.verf, "write verifier fixed per aggregate");

    let rd = ok(env.read(&r, &fh, 0, 1 << 20).await);
    assert!(rd.eof);
    assert_eq!(rd.count as usize, 300_002);
    assert!(rd.data[..299_999] == data[..299_999], "data read back");
    assert_eq!(&rd.data[299_999..], b"xyz");
    let part = ok(env.read(&r, &fh, 10, 5).await);
    assert_eq!((part.data.as_slice(), part.eof), (&data[10..15], false));
    let past = ok(env.read(&r, &fh, 1 << 30, 10).await);
    assert!(past.eof && past.data.is_empty());

    let c = ok(env
        .nfs::<_, CommitRes>(
            &r,
            Nfs3Proc::Commit,
            &CommitArgs {
                file: fh,
                offset: 0,
                count: 0,
            },
        )
        .await);
    assert_eq!(c.verf, w.verf);
    // READ of a directory, COMMIT of a directory.
    assert_eq!(stat(&env.read(&r, &dir, 0, 10).await), NfsStat3::Isdir);
    let s = env.stats_after();
    assert_eq!(s.bytes_written, 300_003);
    assert!(s.bytes_read >= 300_002);
}

impl Env {
    fn stats_after(&self) -> crate::ServiceStats {
        self.svc.stats()
    }
}

#[tokio::test]
async fn create_modes_guarded_unchecked_exclusive() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let f = env.create_file(&r, &dir, "g", 0o644).await;
    let again = env
        .create(&r, &dir, "g", CreateHow3::Guarded(Sattr3::default()))
        .await;
    assert_eq!(stat(&again), NfsStat3::Exist);
    if let NfsRes::Err(_, fail) = &again {
        assert!(fail.wcc.after.is_some(), "wcc on failure");
    }
    let un = ok(env
        .create(&r, &dir, "g", CreateHow3::Unchecked(Sattr3::default()))
        .await);
    assert_eq!(
        un.obj.unwrap(),
        f,
        "UNCHECKED on an existing file returns it"
    );
    // UNCHECKED with size 0 truncates an existing file (O_TRUNC), in one logged op.
    ok(env.write(&r, &f, 0, b"content").await);
    let trunc = Sattr3 {
        size: Some(0),
        ..Default::default()
    };
    let un = ok(env
        .create(&r, &dir, "g", CreateHow3::Unchecked(trunc.clone()))
        .await);
    assert_eq!((un.obj.unwrap(), un.obj_attributes.unwrap().size), (f, 0));
    assert_eq!(ok(env.read(&r, &f, 0, 100).await).data, b"");
    let fresh = ok(env
        .create(&r, &dir, "h", CreateHow3::Unchecked(trunc))
        .await);
    assert_eq!(fresh.obj_attributes.unwrap().size, 0);

    let v = [1, 2, 3, 4, 5, 6, 7, 8];
    let e1 = ok(env.create(&r, &dir, "x", CreateHow3::Exclusive(v)).await)
        .obj
        .unwrap();
    // Same verifier (a retransmission with another xid after the DRC forgot): same file.
    let e2 = ok(env.create(&r, &dir, "x", CreateHow3::Exclusive(v)).await)
        .obj
        .unwrap();
    assert_eq!(e1, e2);
    let other = env
        .create(&r, &dir, "x", CreateHow3::Exclusive([9; 8]))
        .await;
    assert_eq!(stat(&other), NfsStat3::Exist);
    // Names the file system refuses.
    let bad = env
        .create(&r, &dir, ".", CreateHow3::Guarded(Sattr3::default()))
        .await;
    assert_ne!(stat(&bad), NfsStat3::Ok);
    // CREATE in a file.
    let nd = env
        .create(&r, &f, "y", CreateHow3::Guarded(Sattr3::default()))
        .await;
    assert_eq!(stat(&nd), NfsStat3::Notdir);
}

#[tokio::test]
async fn namespace_ops() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let d = ok(env.mkdir(&r, &dir, "d", 0o755).await).obj.unwrap();
    assert_eq!(
        stat(&env.mkdir(&r, &dir, "d", 0o755).await),
        NfsStat3::Exist
    );
    let f = env.create_file(&r, &d, "f", 0o644).await;
    ok(env.write(&r, &f, 0, b"hello").await);

    // LOOKUP: found, missing, in a file, `.` and `..`.
    let l = ok(env.lookup(&r, &d, "f").await);
    assert_eq!(l.object, f);
    assert_eq!(stat(&env.lookup(&r, &d, "nope").await), NfsStat3::Noent);
    assert_eq!(stat(&env.lookup(&r, &f, "x").await), NfsStat3::Notdir);
    assert_eq!(ok(env.lookup(&r, &d, "..").await).object, dir);
    // `..` of the export root stays there.
    assert_eq!(ok(env.lookup(&r, &dir, "..").await).object, dir);

    // SYMLINK + READLINK.
    let sl = SymlinkArgs {
        where_: dirop(&d, "s"),
        symlink_attributes: Sattr3::default(),
        symlink_data: NfsPath3::new(&b"f"[..]).unwrap(),
    };
    let s = ok(env.nfs::<_, DirOpRes>(&r, Nfs3Proc::Symlink, &sl).await);
    assert_eq!(s.obj_attributes.unwrap().ftype, Ftype3::Lnk);
    let sfh = s.obj.unwrap();
    let rl = ok(env
        .nfs::<_, ReadlinkRes>(&r, Nfs3Proc::Readlink, &ReadlinkArgs { symlink: sfh })
        .await);
    assert_eq!(rl.data.as_bytes(), b"f");
    let bad = env
        .nfs::<_, ReadlinkRes>(&r, Nfs3Proc::Readlink, &ReadlinkArgs { symlink: f })
        .await;
    assert_eq!(stat(&bad), NfsStat3::Inval);

    // MKNOD: fifo ok, char device ok for root, regular is BADTYPE.
    let mk = |name: &str, what: MknodData3| MknodArgs {
        where_: dirop(&d, name),
        what,
    };
    let fifo = env
        .nfs::<_, DirOpRes>(
            &r,
            Nfs3Proc::Mknod,
            &mk("p", MknodData3::Fifo(Sattr3::default())),
        )
        .await;
    assert_eq!(ok(fifo).obj_attributes.unwrap().ftype, Ftype3::Fifo);
    let chr = MknodData3::Chr(
        Sattr3::default(),
        Specdata3 {
            specdata1: 1,
            specdata2: 3,
        },
    );
    let c = ok(env
        .nfs::<_, DirOpRes>(&r, Nfs3Proc::Mknod, &mk("c", chr.clone()))
        .await);
    let ca = c.obj_attributes.unwrap();
    assert_eq!(
        (ca.ftype, ca.rdev.specdata1, ca.rdev.specdata2),
        (Ftype3::Chr, 1, 3)
    );
    let reg = env
        .nfs::<_, DirOpRes>(
            &r,
            Nfs3Proc::Mknod,
            &mk("r", MknodData3::Other(Ftype3::Reg)),
        )
        .await;
    assert_eq!(stat(&reg), NfsStat3::Badtype);

    // LINK: a file gets a second name; a directory cannot.
    let la = LinkArgs {
        file: f,
        link: dirop(&dir, "f2"),
    };
    let lk = ok(env.nfs::<_, LinkRes>(&r, Nfs3Proc::Link, &la).await);
    assert_eq!(lk.file_attributes.unwrap().nlink, 2);
    assert!(lk.linkdir_wcc.before.is_some() && lk.linkdir_wcc.after.is_some());
    let ld = LinkArgs {
        file: d,
        link: dirop(&dir, "d2"),
    };
    assert_eq!(
        stat(&env.nfs::<_, LinkRes>(&r, Nfs3Proc::Link, &ld).await),
        NfsStat3::Isdir
    );

    // RENAME over an existing file; wcc for both directories.
    let g = env.create_file(&r, &dir, "g", 0o644).await;
    let rn = RenameArgs {
        from: dirop(&dir, "f2"),
        to: dirop(&dir, "g"),
    };
    let body = ok(env.nfs::<_, RenameRes>(&r, Nfs3Proc::Rename, &rn).await);
    assert!(body.fromdir_wcc.after.is_some() && body.todir_wcc.before.is_some());
    assert_eq!(ok(env.lookup(&r, &dir, "g").await).object, f);
    assert_eq!(stat(&env.getattr(&r, &g).await), NfsStat3::Stale);
    let rn = RenameArgs {
        from: dirop(&dir, "nope"),
        to: dirop(&dir, "x"),
    };
    assert_eq!(
        stat(&env.nfs::<_, RenameRes>(&r, Nfs3Proc::Rename, &rn).await),
        NfsStat3::Noent
    );

    // REMOVE and RMDIR.
    let rm = |n: &str| RemoveArgs {
        object: dirop(&dir, n),
    };
    assert_eq!(
        stat(&env.nfs::<_, RemoveRes>(&r, Nfs3Proc::Rmdir, &rm("d")).await),
        NfsStat3::Notempty
    );
    assert_eq!(stat(&env.remove(&r, &dir, "nope").await), NfsStat3::Noent);
    assert_eq!(stat(&env.remove(&r, &dir, "d").await), NfsStat3::Isdir);
    for n in ["f", "s", "p", "c"] {
        ok(env.remove(&r, &d, n).await);
    }
    assert_eq!(
        ok(env.getattr(&r, &f).await).obj_attributes.nlink,
        1,
        "still linked as g"
    );
    ok(env.nfs::<_, RemoveRes>(&r, Nfs3Proc::Rmdir, &rm("d")).await);
    assert_eq!(stat(&env.getattr(&r, &d).await), NfsStat3::Stale);
}

#[tokio::test]
async fn setattr_guard_truncate_times_and_owner_rules() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    ok(env
        .setattr(
            &r,
            &dir,
            Sattr3 {
                mode: Some(0o777),
                ..Default::default()
            },
            None,
        )
        .await);
    let u = user(1000);
    let f = env.create_file(&u, &dir, "f", 0o644).await;
    ok(env.write(&u, &f, 0, &[7u8; 10_000]).await);
    let a = ok(env.getattr(&u, &f).await).obj_attributes;
    assert_eq!((a.uid, a.gid), (1000, 1000));

    // Guard mismatch → NOT_SYNC, nothing changes.
    let wrong = NfsTime3 {
        seconds: 1,
        nseconds: 2,
    };
    let s = env
        .setattr(
            &u,
            &f,
            Sattr3 {
                size: Some(0),
                ..Default::default()
            },
            Some(wrong),
        )
        .await;
    assert_eq!(stat(&s), NfsStat3::NotSync);
    assert_eq!(ok(env.getattr(&u, &f).await).obj_attributes.size, 10_000);
    // Guard match → applied (truncate), wcc before/after.
    let body = ok(env
        .setattr(
            &u,
            &f,
            Sattr3 {
                size: Some(100),
                ..Default::default()
            },
            Some(a.ctime),
        )
        .await);
    assert_eq!(body.obj_wcc.before.unwrap().size, 10_000);
    assert_eq!(body.obj_wcc.after.unwrap().size, 100);

    // Mode by the owner; times: client time and server time.
    let t = NfsTime3 {
        seconds: 1_000_000,
        nseconds: 5,
    };
    let s = Sattr3 {
        mode: Some(0o600),
        mtime: SetTime::ClientTime(t),
        ..Default::default()
    };
    let after = ok(env.setattr(&u, &f, s, None).await)
        .obj_wcc
        .after
        .unwrap();
    assert_eq!((after.mode, after.mtime), (0o600, t));
    let s = Sattr3 {
        mtime: SetTime::ServerTime,
        ..Default::default()
    };
    let after = ok(env.setattr(&u, &f, s, None).await)
        .obj_wcc
        .after
        .unwrap();
    assert!(after.mtime.seconds > 1_600_000_000, "server time is now");
    assert_eq!(after.mtime, after.ctime, "one time per op: mtime = ctime");

    // Another user may not chmod; the owner may not chown to someone else; root may.
    let o = user(1001);
    let s = env
        .setattr(
            &o,
            &f,
            Sattr3 {
                mode: Some(0o666),
                ..Default::default()
            },
            None,
        )
        .await;
    assert_eq!(stat(&s), NfsStat3::Perm);
    let s = env
        .setattr(
            &u,
            &f,
            Sattr3 {
                uid: Some(5),
                ..Default::default()
            },
            None,
        )
        .await;
    assert_eq!(stat(&s), NfsStat3::Perm);
    ok(env
        .setattr(
            &r,
            &f,
            Sattr3 {
                uid: Some(5),
                gid: Some(6),
                ..Default::default()
            },
            None,
        )
        .await);
    let a = ok(env.getattr(&r, &f).await).obj_attributes;
    assert_eq!((a.uid, a.gid), (5, 6));
    // Truncating a directory.
    let s = env
        .setattr(
            &r,
            &dir,
            Sattr3 {
                size: Some(0),
                ..Default::default()
            },
            None,
        )
        .await;
    assert_eq!(stat(&s), NfsStat3::Isdir);
}

#[tokio::test]
async fn access_bits_by_identity() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    ok(env
        .setattr(
            &r,
            &dir,
            Sattr3 {
                mode: Some(0o777),
                ..Default::default()
            },
            None,
        )
        .await);
    let u = user(1000);
    let f = env.create_file(&u, &dir, "f", 0o640).await;
    let all = 0x3f;
    let acc = |w: Who, fh: NfsFh3| {
        let env = &env;
        async move {
            ok(env
                .nfs::<_, AccessRes>(
                    &w,
                    Nfs3Proc::Access,
                    &AccessArgs {
                        object: fh,
                        access: all,
                    },
                )
                .await)
            .access
        }
    };
    assert_eq!(
        acc(u.clone(), f).await,
        access::READ | access::MODIFY | access::EXTEND
    );
    // Group member: read only.
    let g = Who {
        cred: Some((2000, 1000, vec![])),
        ..u.clone()
    };
    assert_eq!(acc(g, f).await, access::READ);
    // Other: nothing.
    assert_eq!(acc(user(3000), f).await, 0);
    // Root: everything but execute of a file without x bits.
    assert_eq!(
        acc(r.clone(), f).await,
        access::READ | access::MODIFY | access::EXTEND
    );
    assert_eq!(
        acc(r.clone(), dir).await,
        access::READ | access::MODIFY | access::EXTEND | access::DELETE | access::LOOKUP
    );
    // The read-only client gets no modify bits even as root.
    let ro = who("127.0.0.2:700", 0, 0);
    assert_eq!(acc(ro, dir).await, access::READ | access::LOOKUP);
}

#[tokio::test]
async fn readdir_and_readdirplus_pages_and_cookies() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let d = ok(env.mkdir(&r, &dir, "big", 0o755).await).obj.unwrap();
    let n = 300;
    for i in 0..n {
        env.create_file(&r, &d, &format!("file-{i:04}"), 0o644)
            .await;
    }
    // READDIR in small pages.
    let mut names = Vec::new();
    let (mut cookie, mut verf) = (0u64, [0u8; 8]);
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 200);
        let args = ReaddirArgs {
            dir: d,
            cookie,
            cookieverf: verf,
            count: 1024,
        };
        let res = ok(env.nfs::<_, ReaddirRes>(&r, Nfs3Proc::Readdir, &args).await);
        verf = res.cookieverf;
        for e in &res.entries {
            names.push(String::from_utf8(e.name.as_bytes().to_vec()).unwrap());
            cookie = e.cookie;
        }
        if res.eof {
            break;
        }
        assert!(!res.entries.is_empty());
    }
    assert!(pages > 5, "small count splits the listing");
    assert_eq!(names.len(), n + 2);
    assert_eq!(&names[..2], &[".", ".."]);
    let mut sorted = names[2..].to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), n);

    // Entries removed in the middle of a listing do not disturb later cookies.
    let args = ReaddirArgs {
        dir: d,
        cookie: 0,
        cookieverf: [0; 8],
        count: 2048,
    };
    let first = ok(env.nfs::<_, ReaddirRes>(&r, Nfs3Proc::Readdir, &args).await);
    let last = first.entries.last().unwrap().cookie;
    ok(env.remove(&r, &d, "file-0000").await);
    let args = ReaddirArgs {
        dir: d,
        cookie: last,
        cookieverf: first.cookieverf,
        count: 1 << 20,
    };
    let rest = ok(env.nfs::<_, ReaddirRes>(&r, Nfs3Proc::Readdir, &args).await);
    assert!(rest.eof);
    assert_eq!(first.entries.len() + rest.entries.len(), n + 2);

    // A verifier from another directory incarnation → BAD_COOKIE.
    let args = ReaddirArgs {
        dir: d,
        cookie: last,
        cookieverf: [0xee; 8],
        count: 4096,
    };
    assert_eq!(
        stat(&env.nfs::<_, ReaddirRes>(&r, Nfs3Proc::Readdir, &args).await),
        NfsStat3::BadCookie
    );
    // A count too small for one entry → TOOSMALL.
    let args = ReaddirArgs {
        dir: d,
        cookie: 0,
        cookieverf: [0; 8],
        count: 100,
    };
    assert_eq!(
        stat(&env.nfs::<_, ReaddirRes>(&r, Nfs3Proc::Readdir, &args).await),
        NfsStat3::Toosmall
    );
    // READDIR of a file → NOTDIR.
    let f = ok(env.lookup(&r, &d, "file-0001").await).object;
    let args = ReaddirArgs {
        dir: f,
        cookie: 0,
        cookieverf: [0; 8],
        count: 4096,
    };
    assert_eq!(
        stat(&env.nfs::<_, ReaddirRes>(&r, Nfs3Proc::Readdir, &args).await),
        NfsStat3::Notdir
    );

    // READDIRPLUS: handles and attributes that work.
    let mut seen = 0;
    let (mut cookie, mut verf) = (0u64, [0u8; 8]);
    for _ in 0..100 {
        let args = ReaddirplusArgs {
            dir: d,
            cookie,
            cookieverf: verf,
            dircount: 512,
            maxcount: 8192,
        };
        let res = ok(env
            .nfs::<_, ReaddirplusRes>(&r, Nfs3Proc::Readdirplus, &args)
            .await);
        verf = res.cookieverf;
        for e in &res.entries {
            let h = e.name_handle.unwrap();
            let a = ok(env.getattr(&r, &h).await).obj_attributes;
            assert_eq!(Some(a.fileid), e.name_attributes.as_ref().map(|x| x.fileid));
            seen += 1;
            cookie = e.cookie;
        }
        if res.eof {
            break;
        }
    }
    assert_eq!(seen, n - 1 + 2);
}

#[tokio::test]
async fn snapshot_views_are_read_only_and_in_the_handle() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let f = env.create_file(&r, &dir, "f", 0o644).await;
    ok(env.write(&r, &f, 0, b"old").await);
    env.fs.snapshot_create("s1", 5).unwrap();
    ok(env.write(&r, &f, 0, b"new").await);
    let sd = ok(env.lookup(&r, &dir, ".snapshot").await).object;
    assert_ne!(sd, dir);
    let args = ReaddirArgs {
        dir: sd,
        cookie: 0,
        cookieverf: [0; 8],
        count: 4096,
    };
    let list = ok(env.nfs::<_, ReaddirRes>(&r, Nfs3Proc::Readdir, &args).await);
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].name.as_bytes(), b"s1");
    let snap_root = ok(env.lookup(&r, &sd, "s1").await).object;
    let old = ok(env.lookup(&r, &snap_root, "f").await).object;
    assert_ne!(old, f);
    assert_eq!(ok(env.read(&r, &old, 0, 10).await).data, b"old");
    assert_eq!(ok(env.read(&r, &f, 0, 10).await).data, b"new");
    assert_eq!(stat(&env.write(&r, &old, 0, b"x").await), NfsStat3::Rofs);
    let c = env
        .create(&r, &snap_root, "n", CreateHow3::Guarded(Sattr3::default()))
        .await;
    assert_eq!(stat(&c), NfsStat3::Rofs);
}

#[tokio::test]
async fn drain_holds_new_calls_until_it_ends() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    env.svc.set_draining(true);
    let held =
        tokio::time::timeout(std::time::Duration::from_millis(300), env.getattr(&r, &dir)).await;
    assert!(held.is_err(), "a call was answered during the drain");
    assert_eq!(env.svc.in_flight(), 0, "held calls are not in flight");
    let env = Arc::new(env);
    let e2 = env.clone();
    let d2 = dir;
    let waiting = tokio::spawn(async move { e2.getattr(&root(), &d2).await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    env.svc.set_draining(false);
    ok(waiting.await.expect("task"));
    ok(env.getattr(&r, &dir).await);
    assert_eq!(env.svc.in_flight(), 0);
}

#[tokio::test]
async fn mount_program() {
    use twinfiler_proto::mount::{Exports as MExports, MountCall, MountList, MountStat3};
    let env = Env::new();
    let r = root();
    let fh = env.mount(&r, "/").await.unwrap();
    assert_eq!(env.mount(&r, "/nope").await, Err(MountStat3::Noent));
    // /sub is exported but does not exist yet.
    assert_eq!(env.mount(&r, "/sub").await, Err(MountStat3::Noent));
    ok(env.mkdir(&r, &fh, "sub", 0o755).await);
    let sub = env.mount(&r, "/sub/").await.unwrap();
    assert_ne!(sub, fh);
    // A directory below an export can be mounted; its handle carries the export's id.
    let deeper = ok(env.mkdir(&r, &sub, "deeper", 0o755).await).obj.unwrap();
    assert_eq!(env.mount(&r, "/sub/deeper").await.unwrap(), deeper);
    assert_eq!(env.mount(&r, "/sub/missing").await, Err(MountStat3::Noent));
    env.create_file(&r, &sub, "file", 0o644).await;
    assert_eq!(env.mount(&r, "/sub/file").await, Err(MountStat3::Notdir));
    ok(env.remove(&r, &sub, "file").await);
    let rm = RemoveArgs {
        object: dirop(&sub, "deeper"),
    };
    ok(env.nfs::<_, RemoveRes>(&r, Nfs3Proc::Rmdir, &rm).await);
    // `..` of the /sub export root stays in /sub.
    assert_eq!(ok(env.lookup(&r, &sub, "..").await).object, sub);
    // Client not in the rules; secure rule with an unprivileged port.
    assert_eq!(
        env.mount(&who("10.1.1.1:700", 0, 0), "/").await,
        Err(MountStat3::Acces)
    );
    assert_eq!(
        env.mount(&who("127.0.0.5:40000", 0, 0), "/").await,
        Err(MountStat3::Acces)
    );
    assert!(env.mount(&who("127.0.0.5:1000", 0, 0), "/").await.is_ok());
    assert_eq!(
        env.mount(&who("127.0.0.2:700", 0, 0), "/sub").await,
        Err(MountStat3::Acces)
    );

    let dump: MountList = decode_result(&env.mount_call(&r, &MountCall::Dump).await, 0);
    assert_eq!(
        dump.0.len(),
        4,
        "/, /sub, /sub/deeper from 127.0.0.1; / from 127.0.0.5"
    );
    // create_export_dirs: nothing to do now; after removing /sub it is made again (logged).
    assert!(env.svc.create_export_dirs().await.unwrap().is_empty());
    let dp = twinfiler_proto::mount::DirPath::new(&b"/sub"[..]).unwrap();
    let _: () = decode_result(&env.mount_call(&r, &MountCall::Umnt(dp)).await, 0);
    let dump: MountList = decode_result(&env.mount_call(&r, &MountCall::Dump).await, 0);
    assert_eq!(dump.0.len(), 3);
    let _: () = decode_result(&env.mount_call(&r, &MountCall::Umntall).await, 0);
    let dump: MountList = decode_result(&env.mount_call(&r, &MountCall::Dump).await, 0);
    assert_eq!(dump.0.len(), 1, "only 127.0.0.5's mount is left");

    let ex: MExports = decode_result(&env.mount_call(&r, &MountCall::Export).await, 0);
    assert_eq!(ex.0.len(), 2);
    assert_eq!(ex.0[0].dir.as_bytes(), b"/");
    assert_eq!(ex.0[0].groups.len(), 5);
    assert_eq!(ex.0[0].groups[0].as_bytes(), b"127.0.0.1");
    let _: () = decode_result(&env.mount_call(&r, &MountCall::Null).await, 0);
    let rm = RemoveArgs {
        object: dirop(&fh, "sub"),
    };
    ok(env.nfs::<_, RemoveRes>(&r, Nfs3Proc::Rmdir, &rm).await);
    assert_eq!(env.mount(&r, "/sub").await, Err(MountStat3::Noent));
    assert_eq!(
        env.svc.create_export_dirs().await.unwrap(),
        vec!["/sub".to_string()]
    );
    let sub2 = env.mount(&r, "/sub").await.unwrap();
    assert_ne!(sub2, sub, "a new directory, a new generation");
    let (env, report) = env.restart();
    assert_eq!(
        report.drc_entries + 1,
        report.ops_replayed,
        "the mkdir has no DRC key"
    );
    assert_eq!(env.mount(&r, "/sub").await.unwrap(), sub2);
}

#[tokio::test]
async fn rpc_level_errors() {
    use twinfiler_proto::rpc::{AuthStat, Credential, OpaqueAuth, Rejected, ReplyStatus};
    let env = Env::new();
    let r = root();
    let fh = env.root_fh().await;
    let mut args = Vec::new();
    GetattrArgs { object: fh }.encode(&mut args);
    // Wrong version.
    let call = Env::call_msg(1, NFS_PROGRAM, 2, 1, &r, &args);
    let h = header_of(&Env::send(&env.nfs, call).await.unwrap());
    assert!(matches!(
        h.status,
        ReplyStatus::Accepted {
            stat: AcceptStat::ProgMismatch { low: 3, high: 3 },
            ..
        }
    ));
    // Unknown procedure.
    let call = Env::call_msg(2, NFS_PROGRAM, 3, 99, &r, &args);
    let h = header_of(&Env::send(&env.nfs, call).await.unwrap());
    assert!(matches!(
        h.status,
        ReplyStatus::Accepted {
            stat: AcceptStat::ProcUnavail,
            ..
        }
    ));
    // Garbage arguments (truncated handle).
    let call = Env::call_msg(3, NFS_PROGRAM, 3, 1, &r, &args[..10]);
    let h = header_of(&Env::send(&env.nfs, call).await.unwrap());
    assert!(matches!(
        h.status,
        ReplyStatus::Accepted {
            stat: AcceptStat::GarbageArgs,
            ..
        }
    ));
    // RPCSEC_GSS / AUTH_DH credentials: AUTH_ERROR TOOWEAK.
    let cred = Credential::Other(OpaqueAuth {
        flavor: 6,
        body: vec![0; 8],
    });
    let call = Env::call_with_cred(4, NFS_PROGRAM, 3, 1, r.peer, cred.clone(), &args);
    let h = header_of(&Env::send(&env.nfs, call).await.unwrap());
    assert_eq!(
        h.status,
        ReplyStatus::Denied(Rejected::AuthError(AuthStat::TooWeak))
    );
    let call = Env::call_with_cred(5, MOUNT_PROGRAM, 3, 0, r.peer, cred, &[]);
    let h = header_of(&Env::send(&env.mnt, call).await.unwrap());
    assert_eq!(
        h.status,
        ReplyStatus::Denied(Rejected::AuthError(AuthStat::TooWeak))
    );
    // AUTH_NONE works, as the anonymous user.
    let anon = Who {
        peer: r.peer,
        cred: None,
    };
    ok(env.getattr(&anon, &fh).await);
    let f = env
        .create(&anon, &fh, "anon", CreateHow3::Guarded(Sattr3::default()))
        .await;
    assert_eq!(stat(&f), NfsStat3::Acces, "root dir is 0755 root");
    assert!(env.svc.stats().rpc_errors >= 4);
}

#[tokio::test(flavor = "current_thread")]
async fn calls_behind_another_defer_their_commit_and_share_one() {
    // With another request in flight, each CREATE defers its commit and yields; the first
    // to resume commits all eight as one group. (Alone, each would lead its own.)
    const CALLS: usize = 8;
    let env = Arc::new(Env::new());
    let r = root();
    let d = env.root_fh().await;
    let _other = env.svc.engine.pretend_running();
    let before = env.log.status().group_commits;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let (env, r) = (env.clone(), r.clone());
            tokio::spawn(async move {
                let how = CreateHow3::Guarded(Sattr3::default());
                env.create(&r, &d, &format!("g{i}"), how).await
            })
        })
        .collect();
    for c in calls {
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), c).await;
        let res = answered.expect("a deferred commit never happened").unwrap();
        assert!(matches!(res, NfsRes::Ok(_)), "{res:?}");
    }
    let groups = env.log.status().group_commits - before;
    assert_eq!(groups, 1, "{CALLS} calls took {groups} group commits");
}
