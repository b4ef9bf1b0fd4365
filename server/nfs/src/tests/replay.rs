//! The duplicate-request cache and replay after a restart.

use twinfiler_proto::nfs3::*;
use twinfiler_proto::xdr::to_vec;

use super::*;

#[tokio::test]
async fn same_xid_twice_same_reply_single_execution() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    env.create_file(&r, &dir, "victim", 0o644).await;

    // REMOVE twice with one xid: OK both times, byte-identical, executed once.
    let args = to_vec(&RemoveArgs {
        object: dirop(&dir, "victim"),
    });
    let seq_before = env.fs.applied_seq();
    let a = env.nfs_raw(500, &r, Nfs3Proc::Remove, &args).await.unwrap();
    let b = env.nfs_raw(500, &r, Nfs3Proc::Remove, &args).await.unwrap();
    assert_eq!(stat(&decode_result::<RemoveRes>(&a, 500)), NfsStat3::Ok);
    assert_eq!(a, b);
    assert_eq!(env.fs.applied_seq(), seq_before + 1, "one execution");
    assert_eq!(env.svc.stats().drc_hits, 1);
    // A new xid re-executes: NOENT now.
    assert_eq!(stat(&env.remove(&r, &dir, "victim").await), NfsStat3::Noent);
    // Another client with the same xid is another request.
    let other = who("127.0.0.1:701", 0, 0);
    let c = env
        .nfs_raw(500, &other, Nfs3Proc::Remove, &args)
        .await
        .unwrap();
    assert_eq!(stat(&decode_result::<RemoveRes>(&c, 500)), NfsStat3::Noent);

    // CREATE GUARDED twice with one xid: OK both times, same handle.
    let args = to_vec(&CreateArgs {
        where_: dirop(&dir, "once"),
        how: CreateHow3::Guarded(Sattr3::default()),
    });
    let a = env.nfs_raw(600, &r, Nfs3Proc::Create, &args).await.unwrap();
    let b = env.nfs_raw(600, &r, Nfs3Proc::Create, &args).await.unwrap();
    assert_eq!(a, b);
    assert!(ok(decode_result::<DirOpRes>(&b, 600)).obj.is_some());
    // WRITE is cached too (not logged twice).
    let fh = ok(env.lookup(&r, &dir, "once").await).object;
    let seq = env.fs.applied_seq();
    let a = env.write_args(&r, 700, &fh, 0, b"data").await;
    let b = env.write_args(&r, 700, &fh, 0, b"data").await;
    assert_eq!(a, b);
    assert_eq!(env.fs.applied_seq(), seq + 1);
    // Idempotent procedures are not cached: a GETATTR retransmission is re-executed.
    let g = to_vec(&GetattrArgs { object: fh });
    let hits = env.svc.stats().drc_hits;
    env.nfs_raw(800, &r, Nfs3Proc::Getattr, &g).await.unwrap();
    env.nfs_raw(800, &r, Nfs3Proc::Getattr, &g).await.unwrap();
    assert_eq!(env.svc.stats().drc_hits, hits);
}

#[tokio::test]
async fn concurrent_retransmission_is_dropped_while_in_progress() {
    // Many copies of one request in flight at once: exactly one executes, the others are
    // dropped (in progress) or answered from the cache; never a second execution.
    let env = Arc::new(Env::new());
    let r = root();
    let dir = env.root_fh().await;
    let args = to_vec(&MkdirArgs {
        where_: dirop(&dir, "m"),
        attributes: Sattr3::default(),
    });
    let seq = env.fs.applied_seq();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (env, r, args) = (env.clone(), r.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            env.nfs_raw(900, &r, Nfs3Proc::Mkdir, &args).await
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        if let Some(rep) = t.await.unwrap() {
            replies.push(rep);
        }
    }
    assert!(!replies.is_empty());
    assert!(replies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        stat(&decode_result::<DirOpRes>(&replies[0], 900)),
        NfsStat3::Ok
    );
    assert_eq!(env.fs.applied_seq(), seq + 1);
    let s = env.svc.stats();
    assert_eq!(s.drc_hits + s.drc_in_progress_drops, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_restart_restores_data_handles_and_drc() {
    let env = Env::new();
    let r = root();
    let dir = env.root_fh().await;
    let d = ok(env.mkdir(&r, &dir, "d", 0o755).await).obj.unwrap();
    let f = env.create_file(&r, &d, "f", 0o644).await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ok(env.write(&r, &f, 0, &data).await);
    env.fs.cp().unwrap(); // part of the history is in a CP, the rest only in the log
    ok(env.write(&r, &f, 200_000, b"tail").await);
    env.create_file(&r, &dir, "gone", 0o644).await;
    let rm = to_vec(&RemoveArgs {
        object: dirop(&dir, "gone"),
    });
    let rm_reply = env.nfs_raw(4242, &r, Nfs3Proc::Remove, &rm).await.unwrap();
    let rn = to_vec(&RenameArgs {
        from: dirop(&d, "f"),
        to: dirop(&dir, "moved"),
    });
    let rn_reply = env.nfs_raw(4243, &r, Nfs3Proc::Rename, &rn).await.unwrap();
    let s = Sattr3 {
        mode: Some(0o600),
        mtime: SetTime::ServerTime,
        ..Default::default()
    };
    let sa = to_vec(&SetattrArgs {
        object: f,
        new_attributes: s,
        guard: None,
    });
    let sa_reply = env.nfs_raw(4244, &r, Nfs3Proc::Setattr, &sa).await.unwrap();
    let wr_reply = env.write_args(&r, 4245, &f, 200_004, b"xyz").await;
    let cr = to_vec(&CreateArgs {
        where_: dirop(&dir, "excl"),
        how: CreateHow3::Exclusive([4; 8]),
    });
    let cr_reply = env.nfs_raw(4246, &r, Nfs3Proc::Create, &cr).await.unwrap();
    let attrs_before = ok(env.getattr(&r, &f).await).obj_attributes;
    let seq_before = env.fs.applied_seq();

    let (env, report) = env.restart();
    assert_eq!(
        report.ops_already_applied, 3,
        "mkdir, create, write: the CP covered them"
    );
    assert_eq!(report.ops_replayed, 7);
    assert_eq!(report.drc_entries, 7);
    assert_eq!(report.last_seq, seq_before);
    assert_eq!(env.fs.applied_seq(), seq_before);

    // Old handles still work; data and attributes are back, times included.
    assert_eq!(ok(env.getattr(&r, &f).await).obj_attributes, attrs_before);
    let rd = ok(env.read(&r, &f, 0, 1 << 20).await);
    assert!(rd.data[..200_000] == data[..], "data back after replay");
    assert_eq!(&rd.data[200_000..], b"tailxyz");
    assert_eq!(ok(env.lookup(&r, &dir, "moved").await).object, f);
    assert_eq!(stat(&env.lookup(&r, &dir, "gone").await), NfsStat3::Noent);

    // Retransmissions after the restart get the original replies, byte for byte, and are
    // not executed again.
    let seq = env.fs.applied_seq();
    assert_eq!(
        env.nfs_raw(4242, &r, Nfs3Proc::Remove, &rm).await.unwrap(),
        rm_reply
    );
    assert_eq!(
        env.nfs_raw(4243, &r, Nfs3Proc::Rename, &rn).await.unwrap(),
        rn_reply
    );
    assert_eq!(
        env.nfs_raw(4244, &r, Nfs3Proc::Setattr, &sa).await.unwrap(),
        sa_reply
    );
    assert_eq!(env.fs.applied_seq(), seq);
    assert_eq!(
        env.write_args(&r, 4245, &f, 200_004, b"xyz").await,
        wr_reply
    );
    assert_eq!(
        env.nfs_raw(4246, &r, Nfs3Proc::Create, &cr).await.unwrap(),
        cr_reply
    );
    assert_eq!(env.fs.applied_seq(), seq);
    assert_eq!(env.svc.stats().drc_hits, 5);

    // And the restarted service keeps working and replays again.
    env.create_file(&r, &dir, "after", 0o644).await;
    let (env, report) = env.restart();
    assert_eq!(report.ops_replayed, 8);
    ok(env.lookup(&r, &dir, "after").await);
}

#[test]
fn replay_refuses_a_corrupt_record_and_skips_other_kinds() {
    let env = Env::new();
    let rec = |seq, kind, payload: &[u8]| nvlog::Record {
        seq,
        kind,
        payload: payload.to_vec(),
    };
    let op = crate::record::encode(
        &crate::record::RecordMeta {
            drc_key: None,
            proc_: 9,
            export_id: 1,
            guard: None,
            truncate_existing: false,
        },
        &wafl::FsOp::Mkdir {
            dir: wafl::Fid::ROOT,
            name: b"m".to_vec(),
            new: wafl::NewObj {
                ino: 100,
                gen: 100,
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            time_ns: 5,
        },
    );
    let report = env
        .svc
        .replay(vec![
            rec(1, 99, b"?"),
            rec(2, nvlog::kind::OP, &op),
            // A refusal recorded for a record that is no op: nothing to answer.
            rec(3, nvlog::kind::REPLY, &nvlog::encode_reply(1, b"r")),
        ])
        .unwrap();
    assert_eq!(
        (report.ops_replayed, report.other_kinds, report.drc_entries),
        (1, 2, 0)
    );
    let err = env
        .svc
        .replay(vec![rec(5, nvlog::kind::REPLY, b"xx")])
        .unwrap_err();
    assert!(err.to_string().contains("log record 5"), "{err}");
    assert!(env.fs.lookup(&env.fs.root(), b"m").is_ok());
    let err = env
        .svc
        .replay(vec![rec(4, nvlog::kind::OP, b"garbage!")])
        .unwrap_err();
    assert!(err.to_string().contains("log record 4"), "{err}");
    let err = env
        .svc
        .replay(vec![rec(9, 99, b""), rec(8, 99, b"")])
        .unwrap_err();
    assert!(err.to_string().contains("out of order"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_for_space_is_logged_and_replay_answers_from_it() {
    // A small file system (256 stripes of 4 × 4 KiB): writes fill it until NOSPC.
    let env = Env::build(tempfile::tempdir().unwrap(), 256, 8 << 20, 5_000);
    let r = root();
    let dir = env.root_fh().await;
    let f = env.create_file(&r, &dir, "big", 0o644).await;
    let chunk = vec![7u8; 256 << 10];
    let first_xid = 20_000;
    let offset = |xid: u32| u64::from(xid - first_xid) * chunk.len() as u64;
    let mut xid = first_xid;
    let refused = loop {
        assert!(xid < first_xid + 100, "the file system never filled");
        let reply = env.write_args(&r, xid, &f, offset(xid), &chunk).await;
        match stat(&decode_result::<WriteRes>(&reply, xid)) {
            NfsStat3::Ok => xid += 1,
            NfsStat3::Nospc => break reply,
            s => panic!("{s:?}"),
        }
    };
    let size = ok(env.getattr(&r, &f).await).obj_attributes.size;
    assert_eq!(size, offset(xid), "the refused write changed nothing");

    // The refusal is logged after its op, with the reply the client got.
    let records = env.log.replay_own(0).unwrap().records;
    let logged: Vec<(u64, Vec<u8>)> = records
        .iter()
        .filter(|rec| rec.kind == nvlog::kind::REPLY)
        .map(|rec| {
            let (seq, reply) = nvlog::decode_reply(&rec.payload).unwrap();
            (seq, reply.to_vec())
        })
        .collect();
    assert_eq!(logged.len(), 1, "one refusal, one REPLY record");
    let (op_seq, reply) = &logged[0];
    assert!(records
        .iter()
        .any(|rec| rec.seq == *op_seq && rec.kind == nvlog::kind::OP));
    assert_eq!(*reply, refused);

    // Replay answers the op from the record, whatever the free space is now.
    let (env, report) = env.restart();
    assert_eq!(report.ops_refused, 1);
    let seq = env.fs.applied_seq();
    assert!(seq >= *op_seq);
    assert_eq!(
        env.write_args(&r, xid, &f, offset(xid), &chunk).await,
        refused,
        "the retransmission gets the original refusal"
    );
    assert_eq!(env.fs.applied_seq(), seq, "and is not run again");
    assert_eq!(ok(env.getattr(&r, &f).await).obj_attributes.size, size);
}

#[tokio::test]
async fn full_log_answers_jukebox_uncached_then_recovers_after_cp() {
    // Two 2 MiB halves: a few 1 MiB writes fill the log while no CP releases it.
    let env = Env::build(tempfile::tempdir().unwrap(), 2048, 2 << 20, 100);
    let r = root();
    let dir = env.root_fh().await;
    let f = env.create_file(&r, &dir, "f", 0o644).await;
    let chunk = vec![1u8; 1 << 20];
    let mut xid = 10_000;
    let jukebox_xid = loop {
        xid += 1;
        assert!(xid < 10_010, "the log never filled");
        let reply = env.write_args(&r, xid, &f, 0, &chunk).await;
        match stat(&decode_result::<WriteRes>(&reply, xid)) {
            NfsStat3::Ok => continue,
            NfsStat3::Jukebox => break xid,
            s => panic!("{s:?}"),
        }
    };
    // A CP covers everything applied; the log releases it; the same request now executes
    // (the JUKEBOX reply was not cached).
    env.fs.cp().unwrap();
    env.log.release_through(env.fs.applied_seq());
    let reply = env.write_args(&r, jukebox_xid, &f, 0, &chunk).await;
    assert_eq!(
        stat(&decode_result::<WriteRes>(&reply, jukebox_xid)),
        NfsStat3::Ok
    );
}

/// A listing of everything under `dir`: names, attributes and file contents, for comparing
/// the state before and after a restart.
async fn tree_state(env: &Env, dir: NfsFh3, path: String, out: &mut Vec<String>) {
    let r = root();
    let args = ReaddirplusArgs {
        dir,
        cookie: 0,
        cookieverf: [0; 8],
        dircount: 1 << 16,
        maxcount: 1 << 20,
    };
    let res = ok(env
        .nfs::<_, ReaddirplusRes>(&r, Nfs3Proc::Readdirplus, &args)
        .await);
    assert!(res.eof);
    for e in res.entries {
        let name = String::from_utf8_lossy(e.name.as_bytes()).into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let a = e.name_attributes.unwrap();
        let p = format!("{path}/{name}");
        let mut line = format!(
            "{p} {:?} {:o} {} {} {} {:?} {:?}",
            a.ftype, a.mode, a.nlink, a.size, a.fileid, a.mtime, a.ctime
        );
        match a.ftype {
            Ftype3::Reg => {
                let data = ok(env.read(&r, &e.name_handle.unwrap(), 0, 1 << 20).await).data;
                line.push_str(&format!(" crc={:08x}", crc(&data)));
            }
            Ftype3::Dir => Box::pin(tree_state(env, e.name_handle.unwrap(), p, out)).await,
            _ => {}
        }
        out.push(line);
    }
}

fn crc(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| {
        (h ^ x as u32).wrapping_mul(0x0100_0193)
    })
}

#[tokio::test]
async fn random_history_replays_to_the_same_state() {
    // Ops to run; the namespace is small so they collide (EEXIST, ENOENT, NOTEMPTY…),
    // and failures replay too.
    const OPS: usize = 400;
    let env = Env::new();
    let r = root();
    let top = env.root_fh().await;
    let mut dirs = vec![top];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for i in 0..OPS {
        if i == OPS / 3 {
            env.fs.cp().unwrap();
        }
        let d = dirs[rnd(dirs.len())];
        let name = format!("n{}", rnd(12));
        let other = format!("n{}", rnd(12));
        match rnd(9) {
            0 => {
                let _ = env
                    .create(
                        &r,
                        &d,
                        &name,
                        CreateHow3::Unchecked(Sattr3 {
                            size: (rnd(2) == 0).then_some(0),
                            ..Default::default()
                        }),
                    )
                    .await;
            }
            1 => {
                if let NfsRes::Ok(ok) = env.mkdir(&r, &d, &name, 0o755).await {
                    dirs.push(ok.obj.unwrap());
                }
            }
            2 | 3 => {
                if let NfsRes::Ok(l) = env.lookup(&r, &d, &name).await {
                    let len = rnd(20_000);
                    let data: Vec<u8> = (0..len).map(|k| (k + i) as u8).collect();
                    let _ = env.write(&r, &l.object, rnd(50_000) as u64, &data).await;
                }
            }
            4 => {
                let _ = env.remove(&r, &d, &name).await;
            }
            5 => {
                let rm = RemoveArgs {
                    object: dirop(&d, &name),
                };
                let _ = env.nfs::<_, RemoveRes>(&r, Nfs3Proc::Rmdir, &rm).await;
            }
            6 => {
                let to = dirs[rnd(dirs.len())];
                let rn = RenameArgs {
                    from: dirop(&d, &name),
                    to: dirop(&to, &other),
                };
                let _ = env.nfs::<_, RenameRes>(&r, Nfs3Proc::Rename, &rn).await;
            }
            7 => {
                if let NfsRes::Ok(l) = env.lookup(&r, &d, &name).await {
                    let la = LinkArgs {
                        file: l.object,
                        link: dirop(&d, &other),
                    };
                    let _ = env.nfs::<_, LinkRes>(&r, Nfs3Proc::Link, &la).await;
                    let s = Sattr3 {
                        mode: Some(0o600 + rnd(0o100) as u32),
                        size: (rnd(2) == 0).then(|| rnd(30_000) as u64),
                        mtime: SetTime::ServerTime,
                        ..Default::default()
                    };
                    let _ = env.setattr(&r, &l.object, s, None).await;
                }
            }
            _ => {
                let sl = SymlinkArgs {
                    where_: dirop(&d, &name),
                    symlink_attributes: Sattr3::default(),
                    symlink_data: NfsPath3::new(other.as_bytes()).unwrap(),
                };
                let _ = env.nfs::<_, DirOpRes>(&r, Nfs3Proc::Symlink, &sl).await;
            }
        }
    }
    let mut before = Vec::new();
    tree_state(&env, top, String::new(), &mut before).await;
    assert!(before.len() > 10, "the history built something: {before:?}");
    let (env, report) = env.restart();
    assert!(
        report.ops_replayed > 100 && report.ops_already_applied > 50,
        "{report:?}"
    );
    let mut after = Vec::new();
    tree_state(&env, top, String::new(), &mut after).await;
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_history_replays_to_the_same_state() {
    // Tasks racing on shared names: whatever order the sequencing lock picked, the log has
    // the same order, so replay ends in the same state (and the same attributes and times).
    const TASKS: u64 = 4;
    const OPS_PER_TASK: usize = 120;
    let env = Arc::new(Env::new());
    let r = root();
    let top = env.root_fh().await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (env, r) = (env.clone(), r.clone());
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
            let mut rnd = |n: usize| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % n as u64) as usize
            };
            for i in 0..OPS_PER_TASK {
                let name = format!("n{}", rnd(8));
                match rnd(4) {
                    0 => {
                        let _ = env
                            .create(&r, &top, &name, CreateHow3::Unchecked(Sattr3::default()))
                            .await;
                    }
                    1 => {
                        if let NfsRes::Ok(l) = env.lookup(&r, &top, &name).await {
                            let data = vec![(t as u8) ^ (i as u8); 1 + rnd(9000)];
                            let _ = env.write(&r, &l.object, rnd(9000) as u64, &data).await;
                        }
                    }
                    2 => {
                        let _ = env.remove(&r, &top, &name).await;
                    }
                    _ => {
                        let rn = RenameArgs {
                            from: dirop(&top, &name),
                            to: dirop(&top, &format!("n{}", rnd(8))),
                        };
                        let _ = env.nfs::<_, RenameRes>(&r, Nfs3Proc::Rename, &rn).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let env = Arc::try_unwrap(env).ok().expect("tasks done");
    let mut before = Vec::new();
    tree_state(&env, top, String::new(), &mut before).await;
    let (env, report) = env.restart();
    assert!(report.ops_replayed > 100, "{report:?}");
    let mut after = Vec::new();
    tree_state(&env, top, String::new(), &mut after).await;
    assert_eq!(before, after);
}
