//! Handler tests of this directory's procedures: name limits, CREATE attributes, and READs
//! served from memory or, on a miss, from a blocking thread.

use twinfiler_proto::nfs3::*;

use crate::tests::*;

/// One byte past NAME_MAX.
fn long_name() -> String {
    "n".repeat(NAME_BYTES_MAX + 1)
}

#[tokio::test]
async fn names_past_name_max_get_nametoolong() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let f = env.create_file(&r, &dir, "f", 0o644).await;
    let long = long_name();
    let lookup = env.lookup(&r, &dir, &long).await;
    assert_eq!(stat(&lookup), NfsStat3::Nametoolong);
    let create = env
        .create(&r, &dir, &long, CreateHow3::Guarded(Sattr3::default()))
        .await;
    assert_eq!(stat(&create), NfsStat3::Nametoolong);
    if let NfsRes::Err(_, fail) = &create {
        assert!(fail.wcc.after.is_some(), "the directory's wcc data");
    }
    let mkdir = env.mkdir(&r, &dir, &long, 0o755).await;
    assert_eq!(stat(&mkdir), NfsStat3::Nametoolong);
    assert_eq!(
        stat(&env.remove(&r, &dir, &long).await),
        NfsStat3::Nametoolong
    );
    let rename: RenameRes = env
        .nfs(
            &r,
            Nfs3Proc::Rename,
            &RenameArgs {
                from: dirop(&dir, "f"),
                to: dirop(&dir, &long),
            },
        )
        .await;
    assert_eq!(stat(&rename), NfsStat3::Nametoolong);
    let link: LinkRes = env
        .nfs(
            &r,
            Nfs3Proc::Link,
            &LinkArgs {
                file: f,
                link: dirop(&dir, &long),
            },
        )
        .await;
    assert_eq!(stat(&link), NfsStat3::Nametoolong);
    // NAME_MAX itself is fine.
    let max = "m".repeat(NAME_BYTES_MAX);
    env.create_file(&r, &dir, &max, 0o644).await;
    ok(env.lookup(&r, &dir, &max).await);
}

#[tokio::test]
async fn create_sets_size_and_times_also_after_replay() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let when = NfsTime3 {
        seconds: 1_000_000,
        nseconds: 7,
    };
    let s = Sattr3 {
        mode: Some(0o600),
        size: Some(5000),
        atime: SetTime::ClientTime(when),
        mtime: SetTime::ClientTime(when),
        ..Default::default()
    };
    let made = ok(env.create(&r, &dir, "sized", CreateHow3::Guarded(s)).await);
    let f = made.obj.unwrap();
    let a = made.obj_attributes.unwrap();
    assert_eq!(
        (a.mode, a.size, a.atime, a.mtime),
        (0o600, 5000, when, when)
    );
    assert!(a.ctime != when, "ctime is the server's");
    let rd = ok(env.read(&r, &f, 0, 10_000).await);
    assert!(rd.eof && rd.data.len() == 5000 && rd.data.iter().all(|&b| b == 0));
    // UNCHECKED on the existing file: only the size applies.
    ok(env.write(&r, &f, 0, b"0123456789").await);
    let s = Sattr3 {
        size: Some(4),
        mtime: SetTime::ClientTime(NfsTime3 {
            seconds: 5,
            nseconds: 0,
        }),
        ..Default::default()
    };
    let un = ok(env
        .create(&r, &dir, "sized", CreateHow3::Unchecked(s))
        .await);
    assert_eq!(un.obj.unwrap(), f);
    let ua = un.obj_attributes.unwrap();
    assert_eq!(ua.size, 4);
    assert_ne!(
        ua.mtime.seconds, 5,
        "times do not apply to an existing file"
    );
    // The log replays to the same state.
    let (env, _) = env.restart();
    let ga = ok(env.getattr(&r, &f).await).obj_attributes;
    assert_eq!((ga.size, ga.atime), (4, when));
    assert_eq!(ok(env.read(&r, &f, 0, 100).await).data, b"0123");
}

#[tokio::test]
async fn unchecked_resize_of_a_file_needs_write_permission() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let shared = env.mkdir(&r, &dir, "shared", 0o777).await;
    let shared = ok(shared).obj.unwrap();
    let f = env.create_file(&r, &shared, "ro", 0o444).await;
    ok(env.write(&r, &f, 0, b"keep").await);
    let s = Sattr3 {
        size: Some(0),
        ..Default::default()
    };
    let res = env
        .create(&user(1000), &shared, "ro", CreateHow3::Unchecked(s))
        .await;
    assert_eq!(stat(&res), NfsStat3::Acces);
    assert_eq!(ok(env.read(&r, &f, 0, 10).await).data, b"keep");
}

#[tokio::test]
async fn reads_from_memory_and_from_disk_agree() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let f = env.create_file(&r, &dir, "data", 0o644).await;
    // Two extents with a hole between them, and an odd length (XDR padding).
    let a: Vec<u8> = (0..300_001u32).map(|i| (i * 13) as u8).collect();
    ok(env.write(&r, &f, 0, &a).await);
    ok(env.write(&r, &f, 1 << 20, b"tail").await);
    let expect = |off: usize, len: usize| -> Vec<u8> {
        let mut whole = a.clone();
        whole.resize(1 << 20, 0);
        whole.extend_from_slice(b"tail");
        whole[off.min(whole.len())..(off + len).min(whole.len())].to_vec()
    };
    let ranges = [
        (0, 1 << 20),
        (4095, 3),
        (299_000, 40_000),
        (1_048_000, 4096),
    ];
    for (off, len) in ranges {
        let rd = ok(env.read(&r, &f, off as u64, len as u32).await);
        assert!(rd.data == expect(off, len), "dirty read at {off}+{len}");
    }
    env.fs.cp().unwrap();
    for (off, len) in ranges {
        let rd = ok(env.read(&r, &f, off as u64, len as u32).await);
        assert!(rd.data == expect(off, len), "cached read at {off}+{len}");
    }
    // A fresh mount has nothing in memory: the reads go to a blocking thread.
    let (env, _) = env.restart();
    let before = env.fs.cache_stats();
    for (off, len) in ranges {
        let rd = ok(env.read(&r, &f, off as u64, len as u32).await);
        assert!(rd.data == expect(off, len), "disk read at {off}+{len}");
    }
    assert!(
        env.fs.cache_stats().misses > before.misses,
        "read from the disks"
    );
}
