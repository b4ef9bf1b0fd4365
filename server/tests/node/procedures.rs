//! Every NFSv3 and MOUNT procedure end to end over a real node, with the `nfs3_client`
//! crate as an independent client; export rules, squashing, permissions, the
//! duplicate-request cache, stale and bad handles, BAD_COOKIE.

use std::collections::BTreeSet;

use nfs3_client::nfs3_types::mount::{dirpath, mountstat3};
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::portmap::{mapping, IPPROTO_TCP, IPPROTO_UDP};
use nfs3_client::nfs3_types::xdr_codec::{Opaque, Void};
use nfs3_client::tokio::TokioIo;
use nfs3_client::{MountError, PortmapperClient};
use twinfiler::node::Node;

use crate::client::*;
use crate::common::{pattern, Opts, Setup};

/// Exports of these tests: `/` open to 127.0.0.1 without squashing; `/sq` root-squashed;
/// `/all` squashing everyone to 1234; `/ro` read-only.
const EXPORTS: &str = r#"
[[export]]
path = "/"
rules = ["127.0.0.1(rw,no_root_squash,insecure)"]

[[export]]
path = "/sq"
rules = ["127.0.0.1(rw,root_squash,insecure)"]

[[export]]
path = "/all"
rules = ["127.0.0.1(rw,all_squash,anonuid=1234,anongid=1234,insecure)"]

[[export]]
path = "/ro"
rules = ["127.0.0.1(ro,insecure)"]
"#;

struct Env {
    _s: Setup,
    node: Node,
    root: nfs_fh3,
    c: Nfs,
}

async fn env() -> Env {
    let s = Setup::new();
    let node = s
        .start(&Opts {
            exports: EXPORTS.into(),
            ..Opts::default()
        })
        .await;
    let l = node.listeners();
    let root = mount(l.mount_tcp, LOCAL, "/", &Cred::root())
        .await
        .expect("MNT /");
    let c = nfs(l.nfs_tcp, LOCAL, &Cred::root()).await;
    Env {
        _s: s,
        node,
        root,
        c,
    }
}

fn ok<T, E: std::fmt::Debug>(r: Nfs3Result<T, E>, what: &str) -> T {
    match r {
        Nfs3Result::Ok(v) => v,
        Nfs3Result::Err((s, e)) => panic!("{what}: {s} ({e:?})"),
    }
}

fn err<T: std::fmt::Debug, E>(r: Nfs3Result<T, E>) -> nfsstat3 {
    match r {
        Nfs3Result::Ok(v) => panic!("expected an error, got {v:?}"),
        Nfs3Result::Err((s, _)) => s,
    }
}

async fn mkdir(c: &mut Nfs, dir: &nfs_fh3, n: &str, m: u32) -> Result<nfs_fh3, nfsstat3> {
    let args = MKDIR3args {
        where_: dirop(dir, n),
        attributes: mode(m),
    };
    match bounded(c.mkdir(&args)).await.expect("MKDIR rpc") {
        Nfs3Result::Ok(ok) => Ok(ok.obj.unwrap()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// Every name of a directory through READDIR pages of `count` bytes.
async fn readdir_names(c: &mut Nfs, dir: &nfs_fh3, count: u32) -> BTreeSet<String> {
    const PAGES_MAX: usize = 10_000;
    let mut names = BTreeSet::new();
    let (mut cookie, mut verf) = (0, cookieverf3::default());
    for _ in 0..PAGES_MAX {
        let args = READDIR3args {
            dir: dir.clone(),
            cookie,
            cookieverf: verf,
            count,
        };
        let page = ok(
            bounded(c.readdir(&args)).await.expect("READDIR rpc"),
            "READDIR",
        );
        verf = page.cookieverf;
        for e in page.reply.entries.0 {
            assert!(e.cookie != 0, "cookie 0 is reserved");
            cookie = e.cookie;
            let n = String::from_utf8(e.name.0.to_vec()).unwrap();
            assert!(names.insert(n.clone()), "{n} listed twice");
        }
        if page.reply.eof {
            return names;
        }
    }
    panic!("READDIR did not reach EOF in {PAGES_MAX} pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portmap_and_mount_procedures() {
    let Env { _s, node, root, .. } = env().await;
    let l = node.listeners();

    // Portmapper: GETPORT names the bound ports, for TCP and UDP.
    let io = TokioIo::new(tcp_from(LOCAL, l.portmap_tcp).await);
    let mut pm = PortmapperClient::new(io);
    bounded(pm.null()).await.expect("PMAP NULL");
    assert_eq!(
        bounded(pm.getport(100_005, 3, IPPROTO_TCP)).await.unwrap(),
        l.mount_tcp.port()
    );
    assert_eq!(
        bounded(pm.getport(100_005, 3, IPPROTO_UDP)).await.unwrap(),
        l.mount_udp.port()
    );
    assert_eq!(
        bounded(pm.getport(100_003, 3, IPPROTO_TCP)).await.unwrap(),
        l.nfs_tcp.port()
    );
    let dump = bounded(pm.dump()).await.expect("PMAP DUMP");
    assert!(dump
        .iter()
        .any(|m| m.prog == 100_003 && m.port == u32::from(l.nfs_tcp.port())));

    // Over UDP too (Linux asks portmap and MOUNT over UDP): GETPORT, and MOUNT NULL.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let getport = mapping {
        prog: 100_003,
        vers: 3,
        prot: IPPROTO_TCP,
        port: 0,
    };
    let call = raw_call(0x0dd_0001, 100_000, 2, 3, &Cred::root(), &getport);
    udp.send_to(&call[4..], l.portmap_udp).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let (n, _) = bounded(udp.recv_from(&mut buf)).await.unwrap();
    assert_eq!(n, 28, "GETPORT reply: header + port");
    assert_eq!(
        u32::from_be_bytes(buf[24..28].try_into().unwrap()),
        u32::from(l.nfs_tcp.port())
    );
    let call = raw_call(0x0dd_0002, 100_005, 3, 0, &Cred::root(), &Void);
    udp.send_to(&call[4..], l.mount_udp).await.unwrap();
    let (n, _) = bounded(udp.recv_from(&mut buf)).await.unwrap();
    assert_eq!(
        (n, &buf[..4]),
        (24, &0x0dd_0002u32.to_be_bytes()[..]),
        "MOUNT NULL over UDP"
    );

    // MOUNT: NULL, EXPORT, MNT (ok and NOENT), DUMP, UMNT, UMNTALL.
    let mut m = mount_client(l.mount_tcp, &Cred::root()).await;
    bounded(m.null()).await.expect("MOUNT NULL");
    let exports = bounded(m.export()).await.expect("MOUNT EXPORT");
    let paths: BTreeSet<String> = exports
        .0
        .iter()
        .map(|e| String::from_utf8(e.ex_dir.0.to_vec()).unwrap())
        .collect();
    assert_eq!(paths, ["/", "/all", "/ro", "/sq"].map(String::from).into());
    let again = bounded(m.mnt(dirpath(Opaque::borrowed(b"/"))))
        .await
        .expect("MNT /");
    assert_eq!(
        again.fhandle.0.as_ref(),
        root.data.as_ref(),
        "MNT gives a stable root handle"
    );
    match bounded(m.mnt(dirpath(Opaque::borrowed(b"/no/such/dir")))).await {
        Err(MountError::Denied(mountstat3::MNT3ERR_NOENT)) => {}
        other => panic!("MNT of a missing path: {other:?}"),
    }
    let list = bounded(m.dump()).await.expect("MOUNT DUMP");
    assert!(
        list.0.iter().any(|b| b.ml_directory.0.as_ref() == b"/"),
        "DUMP lists the mount"
    );
    bounded(m.umnt(dirpath(Opaque::borrowed(b"/"))))
        .await
        .expect("UMNT");
    bounded(m.umntall()).await.expect("UMNTALL");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nfs_procedure() {
    let Env {
        _s,
        node,
        root,
        mut c,
    } = env().await;
    bounded(c.null()).await.expect("NULL");

    // FSINFO, FSSTAT, PATHCONF.
    let fi = ok(
        bounded(c.fsinfo(&FSINFO3args {
            fsroot: root.clone(),
        }))
        .await
        .unwrap(),
        "FSINFO",
    );
    assert_eq!((fi.rtmax, fi.wtmax), (1 << 20, 1 << 20));
    assert!(fi.properties & (FSF3_LINK | FSF3_SYMLINK) == FSF3_LINK | FSF3_SYMLINK);
    let fs = ok(
        bounded(c.fsstat(&FSSTAT3args {
            fsroot: root.clone(),
        }))
        .await
        .unwrap(),
        "FSSTAT",
    );
    assert!(
        fs.tbytes > 0 && fs.fbytes <= fs.tbytes && fs.abytes <= fs.fbytes,
        "{fs:?}"
    );
    let pc = ok(
        bounded(c.pathconf(&PATHCONF3args {
            object: root.clone(),
        }))
        .await
        .unwrap(),
        "PATHCONF",
    );
    assert_eq!(pc.name_max, 255);

    // MKDIR (and EXIST), CREATE in all three modes.
    let d = mkdir(&mut c, &root, "d", 0o755).await.expect("MKDIR");
    assert_eq!(
        mkdir(&mut c, &root, "d", 0o755).await,
        Err(nfsstat3::NFS3ERR_EXIST)
    );
    let unchecked = |n: &'static str| CREATE3args {
        where_: dirop(&root, n),
        how: createhow3::UNCHECKED(mode(0o644)),
    };
    let u = ok(
        bounded(c.create(&unchecked("u"))).await.unwrap(),
        "CREATE UNCHECKED",
    )
    .obj
    .unwrap();
    let u2 = ok(
        bounded(c.create(&unchecked("u"))).await.unwrap(),
        "CREATE UNCHECKED again",
    )
    .obj
    .unwrap();
    assert_eq!(
        getattr(&mut c, &u).await.unwrap().fileid,
        getattr(&mut c, &u2).await.unwrap().fileid
    );
    assert_eq!(
        create(&mut c, &root, "u", 0o644).await,
        Err(nfsstat3::NFS3ERR_EXIST),
        "GUARDED"
    );
    let excl = |v: u8| CREATE3args {
        where_: dirop(&root, "x"),
        how: createhow3::EXCLUSIVE(createverf3([v; 8])),
    };
    let x1 = ok(
        bounded(c.create(&excl(7))).await.unwrap(),
        "CREATE EXCLUSIVE",
    )
    .obj
    .unwrap();
    let x2 = ok(
        bounded(c.create(&excl(7))).await.unwrap(),
        "EXCLUSIVE retry, same verifier",
    )
    .obj
    .unwrap();
    assert_eq!(
        x1, x2,
        "an EXCLUSIVE retry with the same verifier finds the same file"
    );
    assert_eq!(
        err(bounded(c.create(&excl(8))).await.unwrap()),
        nfsstat3::NFS3ERR_EXIST
    );

    // WRITE, READ (and EOF), COMMIT with the same verifier.
    let data = pattern(5, 100_000);
    let w = ok(
        bounded(c.write(&WRITE3args {
            file: u.clone(),
            offset: 0,
            count: data.len() as u32,
            stable: stable_how::UNSTABLE,
            data: Opaque::borrowed(&data),
        }))
        .await
        .unwrap(),
        "WRITE",
    );
    assert_eq!(w.committed, stable_how::FILE_SYNC);
    assert!(w.file_wcc.after.is_some(), "wcc data on WRITE");
    assert_eq!(read_all(&mut c, &u, 0, data.len()).await.unwrap(), data);
    let past = ok(
        bounded(c.read(&READ3args {
            file: u.clone(),
            offset: 200_000,
            count: 10,
        }))
        .await
        .unwrap(),
        "READ past EOF",
    );
    assert!(past.eof && past.data.is_empty());
    let cm = ok(
        bounded(c.commit(&COMMIT3args {
            file: u.clone(),
            offset: 0,
            count: 0,
        }))
        .await
        .unwrap(),
        "COMMIT",
    );
    assert_eq!(
        cm.verf, w.verf,
        "COMMIT and WRITE verifiers match (nothing was lost)"
    );

    // GETATTR, SETATTR (size, mode, the ctime guard).
    let a = getattr(&mut c, &u).await.unwrap();
    assert_eq!(
        (a.type_, a.size, a.mode & 0o7777),
        (ftype3::NF3REG, 100_000, 0o644)
    );
    let stale_guard = nfstime3 {
        seconds: a.ctime.seconds.wrapping_sub(100),
        nseconds: 0,
    };
    let set = |guard| SETATTR3args {
        object: u.clone(),
        new_attributes: sattr3 {
            mode: set_mode3::Some(0o600),
            size: set_size3::Some(10),
            ..sattr3::default()
        },
        guard,
    };
    assert_eq!(
        err(bounded(c.setattr(&set(sattrguard3::Some(stale_guard))))
            .await
            .unwrap()),
        nfsstat3::NFS3ERR_NOT_SYNC
    );
    let sa = ok(
        bounded(c.setattr(&set(sattrguard3::Some(a.ctime))))
            .await
            .unwrap(),
        "SETATTR",
    );
    assert!(
        sa.obj_wcc.before.is_some() && sa.obj_wcc.after.is_some(),
        "wcc on SETATTR"
    );
    let a = getattr(&mut c, &u).await.unwrap();
    assert_eq!((a.size, a.mode & 0o7777), (10, 0o600));
    assert_eq!(read_all(&mut c, &u, 0, 100).await.unwrap(), data[..10]);

    // LOOKUP, ACCESS.
    let lu = lookup(&mut c, &root, "u").await.unwrap();
    assert_eq!(getattr(&mut c, &lu).await.unwrap().fileid, a.fileid);
    assert_eq!(
        lookup(&mut c, &root, "nope").await,
        Err(nfsstat3::NFS3ERR_NOENT)
    );
    let all = ACCESS3_READ
        | ACCESS3_LOOKUP
        | ACCESS3_MODIFY
        | ACCESS3_EXTEND
        | ACCESS3_DELETE
        | ACCESS3_EXECUTE;
    let acc = ok(
        bounded(c.access(&ACCESS3args {
            object: u.clone(),
            access: all,
        }))
        .await
        .unwrap(),
        "ACCESS",
    );
    assert!(
        acc.access & (ACCESS3_READ | ACCESS3_MODIFY) == ACCESS3_READ | ACCESS3_MODIFY,
        "{:#x}",
        acc.access
    );

    // SYMLINK, READLINK; MKNOD.
    let sl = SYMLINK3args {
        where_: dirop(&root, "s"),
        symlink: symlinkdata3 {
            symlink_attributes: sattr3::default(),
            symlink_data: nfspath3(Opaque::borrowed(b"u")),
        },
    };
    let s = ok(bounded(c.symlink(&sl)).await.unwrap(), "SYMLINK")
        .obj
        .unwrap();
    let rl = ok(
        bounded(c.readlink(&READLINK3args { symlink: s.clone() }))
            .await
            .unwrap(),
        "READLINK",
    );
    assert_eq!(rl.data.0.as_ref(), b"u");
    assert_eq!(getattr(&mut c, &s).await.unwrap().type_, ftype3::NF3LNK);
    let mk = MKNOD3args {
        where_: dirop(&root, "p"),
        what: mknoddata3::NF3FIFO(mode(0o644)),
    };
    let p = ok(bounded(c.mknod(&mk)).await.unwrap(), "MKNOD")
        .obj
        .unwrap();
    assert_eq!(getattr(&mut c, &p).await.unwrap().type_, ftype3::NF3FIFO);

    // LINK, RENAME (also over an existing file).
    let ln = LINK3args {
        file: u.clone(),
        link: dirop(&d, "u-link"),
    };
    ok(bounded(c.link(&ln)).await.unwrap(), "LINK");
    assert_eq!(getattr(&mut c, &u).await.unwrap().nlink, 2);
    create(&mut c, &d, "victim", 0o644).await.unwrap();
    let rn = RENAME3args {
        from: dirop(&d, "u-link"),
        to: dirop(&d, "victim"),
    };
    ok(
        bounded(c.rename(&rn)).await.unwrap(),
        "RENAME over an existing file",
    );
    assert_eq!(
        lookup(&mut c, &d, "u-link").await,
        Err(nfsstat3::NFS3ERR_NOENT)
    );
    let v = lookup(&mut c, &d, "victim").await.unwrap();
    assert_eq!(getattr(&mut c, &v).await.unwrap().fileid, a.fileid);

    // READDIR / READDIRPLUS over many small pages, every name exactly once.
    let mut expected: BTreeSet<String> = ["victim".to_string()].into();
    for i in 0..60 {
        let n = format!("entry-{i:03}-with-a-longish-name");
        create(&mut c, &d, &n, 0o644).await.unwrap();
        expected.insert(n);
    }
    let listed = readdir_names(&mut c, &d, 1024).await;
    let listed: BTreeSet<String> = listed
        .into_iter()
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(listed, expected);
    let mut plus_names = BTreeSet::new();
    let (mut cookie, mut verf) = (0, cookieverf3::default());
    for _ in 0..1000 {
        let args = READDIRPLUS3args {
            dir: d.clone(),
            cookie,
            cookieverf: verf,
            dircount: 512,
            maxcount: 4096,
        };
        let page = ok(bounded(c.readdirplus(&args)).await.unwrap(), "READDIRPLUS");
        verf = page.cookieverf;
        for e in page.reply.entries.0 {
            cookie = e.cookie;
            let n = String::from_utf8(e.name.0.to_vec()).unwrap();
            if n != "." && n != ".." {
                let fh = e.name_handle.unwrap();
                assert_eq!(
                    getattr(&mut c, &fh).await.unwrap().fileid,
                    e.fileid,
                    "{n}: handle names the entry"
                );
                assert!(e.name_attributes.is_some(), "{n}: attributes");
                plus_names.insert(n);
            }
        }
        if page.reply.eof {
            break;
        }
    }
    assert_eq!(plus_names, expected);

    // REMOVE, RMDIR (NOTEMPTY first).
    let rm = RMDIR3args {
        object: dirop(&root, "d"),
    };
    assert_eq!(
        err(bounded(c.rmdir(&rm)).await.unwrap()),
        nfsstat3::NFS3ERR_NOTEMPTY
    );
    for n in &expected {
        ok(
            bounded(c.remove(&REMOVE3args {
                object: dirop(&d, n),
            }))
            .await
            .unwrap(),
            "REMOVE",
        );
    }
    ok(bounded(c.rmdir(&rm)).await.unwrap(), "RMDIR");
    assert_eq!(
        getattr(&mut c, &u).await.unwrap().nlink,
        1,
        "the link went with the directory"
    );
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_bad_handles_and_bad_cookie() {
    let Env {
        _s,
        node,
        root,
        mut c,
    } = env().await;
    // Stale: a removed file's handle.
    let f = create(&mut c, &root, "gone", 0o644).await.unwrap();
    ok(
        bounded(c.remove(&REMOVE3args {
            object: dirop(&root, "gone"),
        }))
        .await
        .unwrap(),
        "REMOVE",
    );
    assert_eq!(
        getattr(&mut c, &f).await.err(),
        Some(nfsstat3::NFS3ERR_STALE)
    );
    assert_eq!(
        read_all(&mut c, &f, 0, 10).await,
        Err(nfsstat3::NFS3ERR_STALE)
    );
    // Bad: garbage of the wrong length, and a valid handle with a byte flipped (its MAC
    // no longer verifies: never STALE-by-luck, never another file).
    let short = nfs_fh3 {
        data: Opaque::owned(vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
    };
    assert_eq!(
        getattr(&mut c, &short).await.err(),
        Some(nfsstat3::NFS3ERR_BADHANDLE)
    );
    let mut bytes = root.data.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let forged = nfs_fh3 {
        data: Opaque::owned(bytes),
    };
    assert_eq!(
        getattr(&mut c, &forged).await.err(),
        Some(nfsstat3::NFS3ERR_BADHANDLE)
    );
    let empty = nfs_fh3 {
        data: Opaque::owned(Vec::new()),
    };
    assert_eq!(
        getattr(&mut c, &empty).await.err(),
        Some(nfsstat3::NFS3ERR_BADHANDLE)
    );

    // BAD_COOKIE: continuing a listing with a cookie under a verifier the server never gave.
    for i in 0..40 {
        create(&mut c, &root, &format!("f{i:02}"), 0o644)
            .await
            .unwrap();
    }
    let first = ok(
        bounded(c.readdir(&READDIR3args {
            dir: root.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            count: 512,
        }))
        .await
        .unwrap(),
        "READDIR",
    );
    assert!(!first.reply.eof, "the first page is partial");
    let cookie = first.reply.entries.0.last().expect("entries").cookie;
    let mut wrong = first.cookieverf;
    wrong.0[0] ^= 0xff;
    let r = bounded(c.readdir(&READDIR3args {
        dir: root.clone(),
        cookie,
        cookieverf: wrong,
        count: 512,
    }))
    .await
    .unwrap();
    assert_eq!(err(r), nfsstat3::NFS3ERR_BAD_COOKIE);
    let r = bounded(c.readdir(&READDIR3args {
        dir: root.clone(),
        cookie,
        cookieverf: first.cookieverf,
        count: 512,
    }))
    .await
    .unwrap();
    ok(r, "READDIR with the server's verifier continues");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_rules_squashing_and_permissions() {
    let Env {
        _s,
        node,
        root,
        mut c,
    } = env().await;
    let l = node.listeners();
    for dir in ["sq", "all", "ro", "perm"] {
        mkdir(&mut c, &root, dir, 0o777).await.unwrap();
    }

    // A client outside the rules: MNT3ERR_ACCES, and NFS3ERR_ACCES on a handle it got
    // elsewhere.
    match mount(l.mount_tcp, OTHER, "/", &Cred::root()).await {
        Err(MountError::Denied(mountstat3::MNT3ERR_ACCES)) => {}
        other => panic!("MNT from 127.0.0.2: {other:?}"),
    }
    let mut outsider = nfs(l.nfs_tcp, OTHER, &Cred::root()).await;
    assert_eq!(
        getattr(&mut outsider, &root).await.err(),
        Some(nfsstat3::NFS3ERR_ACCES)
    );

    // root_squash: root creates as nobody; no_root_squash (on /): as root.
    let sq = mount(l.mount_tcp, LOCAL, "/sq", &Cred::root())
        .await
        .unwrap();
    let f = create(&mut c, &sq, "by-root", 0o644).await.unwrap();
    let a = getattr(&mut c, &f).await.unwrap();
    assert_eq!((a.uid, a.gid), (65534, 65534), "root is squashed on /sq");
    let g = create(&mut c, &root, "by-real-root", 0o644).await.unwrap();
    assert_eq!(
        getattr(&mut c, &g).await.unwrap().uid,
        0,
        "no_root_squash on /"
    );

    // all_squash with anonuid: a user becomes 1234.
    let all = mount(l.mount_tcp, LOCAL, "/all", &Cred::user(1000, 1000))
        .await
        .unwrap();
    let mut user = nfs(l.nfs_tcp, LOCAL, &Cred::user(1000, 1000)).await;
    let h = create(&mut user, &all, "by-user", 0o644).await.unwrap();
    let a = getattr(&mut user, &h).await.unwrap();
    assert_eq!((a.uid, a.gid), (1234, 1234), "all_squash,anonuid=1234");

    // ro: no changes through the read-only export, even as root.
    let ro = mount(l.mount_tcp, LOCAL, "/ro", &Cred::root())
        .await
        .unwrap();
    assert_eq!(
        create(&mut c, &ro, "x", 0o644).await,
        Err(nfsstat3::NFS3ERR_ROFS)
    );

    // Permissions from mode and owner with the caller's AUTH_SYS identity.
    let perm = lookup(&mut c, &root, "perm").await.unwrap();
    let private = create(&mut user, &perm, "private", 0o600).await.unwrap();
    write_all(&mut user, &private, 0, b"secret").await.unwrap();
    let mut other = nfs(l.nfs_tcp, LOCAL, &Cred::user(1001, 1001)).await;
    assert_eq!(
        read_all(&mut other, &private, 0, 6).await,
        Err(nfsstat3::NFS3ERR_ACCES)
    );
    assert_eq!(
        write_all(&mut other, &private, 0, b"x").await,
        Err(nfsstat3::NFS3ERR_ACCES)
    );
    let acc = ok(
        bounded(other.access(&ACCESS3args {
            object: private.clone(),
            access: ACCESS3_READ | ACCESS3_MODIFY,
        }))
        .await
        .unwrap(),
        "ACCESS",
    );
    assert_eq!(acc.access, 0, "no rights on someone else's 0600 file");
    assert_eq!(
        read_all(&mut c, &private, 0, 6).await.unwrap(),
        b"secret",
        "root (unsquashed) reads"
    );
    assert_eq!(
        create(&mut other, &root, "not-mine", 0o644).await,
        Err(nfsstat3::NFS3ERR_ACCES),
        "a user cannot create in root's 0755 directory"
    );
    // A group member reads a 0640 file.
    let shared = create(&mut user, &perm, "shared", 0o640).await.unwrap();
    let mut member = nfs(
        l.nfs_tcp,
        LOCAL,
        &Cred {
            uid: 1002,
            gid: 50,
            gids: vec![50, 1000],
        },
    )
    .await;
    assert_eq!(read_all(&mut member, &shared, 0, 1).await.unwrap(), b"");
    node.shutdown().await.expect("shutdown");
}

/// The same call bytes twice (same xid, same connection): one execution, the same reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_request_gets_the_original_reply() {
    let Env {
        _s,
        node,
        root,
        mut c,
    } = env().await;
    let l = node.listeners();
    let args = CREATE3args {
        where_: dirop(&root, "drc"),
        how: createhow3::GUARDED(mode(0o644)),
    };
    let call = raw_call(0x5eed_0001, 100_003, 3, 8, &Cred::root(), &args);
    let mut s = tcp_from(LOCAL, l.nfs_tcp).await;
    let first = raw_roundtrip(&mut s, &call).await;
    assert_eq!(raw_nfs_status(&first), 0, "the first CREATE succeeds");
    let second = raw_roundtrip(&mut s, &call).await;
    assert_eq!(
        first, second,
        "a retransmission gets the original reply, byte for byte"
    );
    // A new xid is a new request: GUARDED now fails, so the second one above was not run.
    let fresh = raw_call(0x5eed_0002, 100_003, 3, 8, &Cred::root(), &args);
    let third = raw_roundtrip(&mut s, &fresh).await;
    assert_eq!(raw_nfs_status(&third), nfsstat3::NFS3ERR_EXIST as u32);
    // REMOVE retransmitted: the original OK, not NOENT.
    let rm = raw_call(
        0x5eed_0003,
        100_003,
        3,
        12,
        &Cred::root(),
        &REMOVE3args {
            object: dirop(&root, "drc"),
        },
    );
    let a = raw_roundtrip(&mut s, &rm).await;
    let b = raw_roundtrip(&mut s, &rm).await;
    assert_eq!(raw_nfs_status(&a), 0);
    assert_eq!(a, b);
    assert_eq!(
        lookup(&mut c, &root, "drc").await,
        Err(nfsstat3::NFS3ERR_NOENT)
    );
    node.shutdown().await.expect("shutdown");
}
