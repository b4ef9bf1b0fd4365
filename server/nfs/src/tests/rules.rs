//! Export rules, squashing, permissions, and stale / bad / foreign handles.

use twinfiler_proto::fh::{FhView, FileHandle};
use twinfiler_proto::nfs3::*;

use super::*;

#[tokio::test]
async fn ro_denied_and_squash_rules() {
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
    let f = env.create_file(&r, &dir, "rootfile", 0o644).await;

    // Read-only client: reads work, writes are ROFS (even for its root).
    let ro = who("127.0.0.2:700", 0, 0);
    ok(env.getattr(&ro, &f).await);
    ok(env.read(&ro, &f, 0, 10).await);
    assert_eq!(stat(&env.write(&ro, &f, 0, b"x").await), NfsStat3::Rofs);
    let c = env
        .create(&ro, &dir, "n", CreateHow3::Guarded(Sattr3::default()))
        .await;
    assert_eq!(stat(&c), NfsStat3::Rofs);
    assert_eq!(
        stat(&env.remove(&ro, &dir, "rootfile").await),
        NfsStat3::Rofs
    );

    // A client outside the rules, holding a valid handle: ACCES on everything.
    let out = who("10.7.7.7:700", 0, 0);
    assert_eq!(stat(&env.getattr(&out, &f).await), NfsStat3::Acces);
    assert_eq!(stat(&env.read(&out, &f, 0, 1).await), NfsStat3::Acces);
    assert_eq!(
        stat(&env.remove(&out, &dir, "rootfile").await),
        NfsStat3::Acces
    );
    // A client of a `secure` rule from an unprivileged port: ACCES; privileged: fine.
    assert_eq!(
        stat(&env.getattr(&who("127.0.0.5:40000", 0, 0), &f).await),
        NfsStat3::Acces
    );
    ok(env.getattr(&who("127.0.0.5:999", 0, 0), &f).await);

    // root_squash (default): root becomes 65534, cannot write root's 0644 file.
    let squashed = who("127.0.0.3:700", 0, 0);
    assert_eq!(
        stat(&env.write(&squashed, &f, 0, b"x").await),
        NfsStat3::Acces
    );
    let sf = env.create_file(&squashed, &dir, "squashed", 0o644).await;
    let a = ok(env.getattr(&r, &sf).await).obj_attributes;
    assert_eq!((a.uid, a.gid), (65534, 65534));
    // A normal user through the root_squash rule keeps its ids.
    let uf = env
        .create_file(&who("127.0.0.3:700", 1234, 99), &dir, "user", 0o644)
        .await;
    let a = ok(env.getattr(&r, &uf).await).obj_attributes;
    assert_eq!((a.uid, a.gid), (1234, 99));
    // all_squash with anonuid/anongid.
    let all = who("127.0.0.4:700", 1234, 99);
    let af = env.create_file(&all, &dir, "all", 0o644).await;
    let a = ok(env.getattr(&r, &af).await).obj_attributes;
    assert_eq!((a.uid, a.gid), (1000, 1000));
    // no_root_squash: root stays root.
    let a = ok(env.getattr(&r, &f).await).obj_attributes;
    assert_eq!(a.uid, 0);
    ok(env.write(&r, &f, 0, b"root writes").await);
    // Squashed root may not chown.
    let s = env
        .setattr(
            &squashed,
            &sf,
            Sattr3 {
                uid: Some(0),
                ..Default::default()
            },
            None,
        )
        .await;
    assert_eq!(stat(&s), NfsStat3::Perm);
}

#[tokio::test]
async fn permissions_user_vs_other_and_sticky() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let (alice, bob) = (user(1000), user(1001));
    // A 0755 root-owned directory: users may not create in it.
    let c = env
        .create(&alice, &dir, "a", CreateHow3::Guarded(Sattr3::default()))
        .await;
    assert_eq!(stat(&c), NfsStat3::Acces);
    // A world-writable sticky directory.
    let tmp = ok(env.mkdir(&r, &dir, "tmp", 0o1777).await).obj.unwrap();
    let af = env.create_file(&alice, &tmp, "alice", 0o600).await;
    ok(env.write(&alice, &af, 0, b"secret").await);
    assert_eq!(stat(&env.read(&bob, &af, 0, 10).await), NfsStat3::Acces);
    assert_eq!(stat(&env.write(&bob, &af, 0, b"x").await), NfsStat3::Acces);
    assert_eq!(ok(env.read(&alice, &af, 0, 10).await).data, b"secret");
    ok(env.read(&r, &af, 0, 10).await);
    // Owner override: alice's own 0400 file still takes her writes (open(O_CREAT, 0400)).
    let ro_own = env.create_file(&alice, &tmp, "ro", 0o400).await;
    ok(env.write(&alice, &ro_own, 0, b"mine").await);
    // Sticky: bob cannot remove or rename alice's file; alice and root can.
    assert_eq!(
        stat(&env.remove(&bob, &tmp, "alice").await),
        NfsStat3::Acces
    );
    let rn = RenameArgs {
        from: dirop(&tmp, "alice"),
        to: dirop(&tmp, "bobs"),
    };
    assert_eq!(
        stat(&env.nfs::<_, RenameRes>(&bob, Nfs3Proc::Rename, &rn).await),
        NfsStat3::Acces
    );
    ok(env.remove(&alice, &tmp, "alice").await);
    ok(env.remove(&r, &tmp, "ro").await);
    // Lookup needs search permission on the directory.
    let priv_dir = ok(env.mkdir(&alice, &tmp, "private", 0o700).await)
        .obj
        .unwrap();
    env.create_file(&alice, &priv_dir, "x", 0o644).await;
    assert_eq!(
        stat(&env.lookup(&bob, &priv_dir, "x").await),
        NfsStat3::Acces
    );
    ok(env.lookup(&alice, &priv_dir, "x").await);
    let args = ReaddirArgs {
        dir: priv_dir,
        cookie: 0,
        cookieverf: [0; 8],
        count: 4096,
    };
    assert_eq!(
        stat(
            &env.nfs::<_, ReaddirRes>(&bob, Nfs3Proc::Readdir, &args)
                .await
        ),
        NfsStat3::Acces
    );
    // Device nodes need root.
    let mk = MknodArgs {
        where_: dirop(&tmp, "dev"),
        what: MknodData3::Blk(
            Sattr3::default(),
            Specdata3 {
                specdata1: 8,
                specdata2: 0,
            },
        ),
    };
    assert_eq!(
        stat(&env.nfs::<_, DirOpRes>(&alice, Nfs3Proc::Mknod, &mk).await),
        NfsStat3::Perm
    );
    // Set-group-id directories pass their group on.
    let sg = ok(env.mkdir(&r, &dir, "sg", 0o2777).await).obj.unwrap();
    ok(env
        .setattr(
            &r,
            &sg,
            Sattr3 {
                gid: Some(500),
                ..Default::default()
            },
            None,
        )
        .await);
    let inner = ok(env.mkdir(&alice, &sg, "inner", 0o755).await)
        .obj_attributes
        .unwrap();
    assert_eq!((inner.gid, inner.mode & 0o2000), (500, 0o2000));
}

#[tokio::test]
async fn stale_bad_and_foreign_handles() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let f = env.create_file(&r, &dir, "f", 0o644).await;
    // Corrupted, truncated, empty handles → BADHANDLE.
    let mut b = f.as_bytes().to_vec();
    b[30] ^= 1;
    let bad = NfsFh3::new(&b).unwrap();
    assert_eq!(stat(&env.getattr(&r, &bad).await), NfsStat3::Badhandle);
    assert_eq!(
        stat(&env.getattr(&r, &NfsFh3::new(&b[..20]).unwrap()).await),
        NfsStat3::Badhandle
    );
    assert_eq!(
        stat(&env.getattr(&r, &NfsFh3::default()).await),
        NfsStat3::Badhandle
    );
    assert_eq!(stat(&env.remove(&r, &bad, "f").await), NfsStat3::Badhandle);
    // Removed file → STALE (also for modifying procedures).
    let g = env.create_file(&r, &dir, "g", 0o644).await;
    ok(env.remove(&r, &dir, "g").await);
    assert_eq!(stat(&env.getattr(&r, &g).await), NfsStat3::Stale);
    assert_eq!(stat(&env.write(&r, &g, 0, b"x").await), NfsStat3::Stale);
    // Another aggregate, an unknown export, a wrong generation, an unknown snapshot: STALE.
    let good = FileHandle {
        export_id: 1,
        view: FhView::Live,
        aggregate: UUID,
        fileid: wafl::ROOT_INO,
        generation: wafl::ROOT_GEN,
    };
    assert_eq!(good.encode(&KEY), dir);
    for fh in [
        FileHandle {
            aggregate: [1; 16],
            ..good
        },
        FileHandle {
            export_id: 77,
            ..good
        },
        FileHandle {
            generation: 999,
            ..good
        },
        FileHandle {
            fileid: 123_456,
            ..good
        },
        FileHandle {
            view: FhView::Snap(42),
            ..good
        },
    ] {
        assert_eq!(
            stat(&env.getattr(&r, &fh.encode(&KEY)).await),
            NfsStat3::Stale,
            "{fh:?}"
        );
    }
    // A handle signed with another key → BADHANDLE.
    let forged = good.encode(&twinfiler_proto::fh::FhKey([1; 32]));
    assert_eq!(stat(&env.getattr(&r, &forged).await), NfsStat3::Badhandle);
    // A handle of the /sub export presented by a client only the / export admits → ACCES.
    ok(env.mkdir(&r, &dir, "sub", 0o755).await);
    let sub = env.mount(&r, "/sub").await.unwrap();
    let other = who("127.0.0.3:700", 1000, 1000);
    assert_eq!(stat(&env.getattr(&other, &sub).await), NfsStat3::Acces);
    ok(env.getattr(&other, &dir).await);
    // RENAME / LINK across exports → XDEV.
    let xf = env.create_file(&r, &sub, "x", 0o644).await;
    let la = LinkArgs {
        file: xf,
        link: dirop(&dir, "x"),
    };
    assert_eq!(
        stat(&env.nfs::<_, LinkRes>(&r, Nfs3Proc::Link, &la).await),
        NfsStat3::Xdev
    );
    let rn = RenameArgs {
        from: dirop(&sub, "x"),
        to: dirop(&dir, "x"),
    };
    assert_eq!(
        stat(&env.nfs::<_, RenameRes>(&r, Nfs3Proc::Rename, &rn).await),
        NfsStat3::Xdev
    );
}
