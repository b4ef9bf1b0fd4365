//! Cross-module tests: golden vectors written by hand from the RFCs, round trips of every
//! wire type, truncation at every length, oversized lengths, READDIR budgets, random input.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use proptest::prelude::*;

use crate::arb::{arb_vec, Arb, Gen};
use crate::mount::*;
use crate::nfs3::*;
use crate::portmap::*;
use crate::record::{frame, RecordDecoder};
use crate::rpc::*;
use crate::xdr::{from_slice, to_vec, Decoder, Xdr, XdrError};
use crate::{ArgsError, Program};

// ---------- generators for the RPC types ----------

impl Arb for OpaqueAuth {
    fn arb(g: &mut Gen) -> Self {
        OpaqueAuth {
            flavor: g.u32(),
            body: g.bytes(AUTH_BODY_BYTES_MAX),
        }
    }
}

impl Arb for AuthSys {
    fn arb(g: &mut Gen) -> Self {
        AuthSys {
            stamp: g.u32(),
            machinename: g.bytes(AUTH_SYS_MACHINENAME_BYTES_MAX),
            uid: g.u32(),
            gid: g.u32(),
            gids: arb_vec(g, AUTH_SYS_GIDS_MAX),
        }
    }
}

impl Arb for ReplyHeader {
    fn arb(g: &mut Gen) -> Self {
        let status = match g.below(8) {
            0 => ReplyStatus::Denied(Rejected::RpcMismatch {
                low: g.u32(),
                high: g.u32(),
            }),
            1 => ReplyStatus::Denied(Rejected::AuthError(Arb::arb(g))),
            n => ReplyStatus::Accepted {
                verf: Arb::arb(g),
                stat: match n {
                    2 => AcceptStat::Success,
                    3 => AcceptStat::ProgUnavail,
                    4 => AcceptStat::ProgMismatch {
                        low: g.u32(),
                        high: g.u32(),
                    },
                    5 => AcceptStat::ProcUnavail,
                    6 => AcceptStat::GarbageArgs,
                    _ => AcceptStat::SystemErr,
                },
            },
        };
        ReplyHeader {
            xid: g.u32(),
            status,
        }
    }
}

fn arb_credential(g: &mut Gen) -> Credential {
    match g.below(3) {
        0 => Credential::None,
        1 => Credential::Sys(Arb::arb(g)),
        _ => Credential::Other(OpaqueAuth {
            flavor: flavor::RPCSEC_GSS,
            body: g.bytes(AUTH_BODY_BYTES_MAX),
        }),
    }
}

/// Encodes a CALL record (without record mark) for `call` and `args`.
fn call_record(header: &CallHeader, args: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    header.encode(&mut out);
    out.extend_from_slice(args);
    out
}

fn header(prog: u32, vers: u32, proc_: u32, cred: Credential) -> CallHeader {
    CallHeader {
        xid: 0x0102_0304,
        prog,
        vers,
        proc_,
        cred,
        verf: OpaqueAuth::none(),
    }
}

/// A random NFSv3 call, encoded as its arguments (WRITE data included).
fn arb_nfs3_args(g: &mut Gen, p: Nfs3Proc) -> Vec<u8> {
    fn enc<T: Xdr + Arb>(g: &mut Gen) -> Vec<u8> {
        to_vec(&T::arb(g))
    }
    match p {
        Nfs3Proc::Null => Vec::new(),
        Nfs3Proc::Getattr => enc::<GetattrArgs>(g),
        Nfs3Proc::Setattr => enc::<SetattrArgs>(g),
        Nfs3Proc::Lookup => enc::<LookupArgs>(g),
        Nfs3Proc::Access => enc::<AccessArgs>(g),
        Nfs3Proc::Readlink => enc::<ReadlinkArgs>(g),
        Nfs3Proc::Read => enc::<ReadArgs>(g),
        Nfs3Proc::Write => {
            let data = g.bytes(100);
            let args = WriteArgs {
                file: Arb::arb(g),
                offset: g.u64(),
                count: data.len() as u32,
                stable: Arb::arb(g),
                data: 0..0,
            };
            let mut out = Vec::new();
            args.encode_with_data(&data, &mut out);
            out
        }
        Nfs3Proc::Create => enc::<CreateArgs>(g),
        Nfs3Proc::Mkdir => enc::<MkdirArgs>(g),
        Nfs3Proc::Symlink => enc::<SymlinkArgs>(g),
        Nfs3Proc::Mknod => enc::<MknodArgs>(g),
        Nfs3Proc::Remove | Nfs3Proc::Rmdir => enc::<RemoveArgs>(g),
        Nfs3Proc::Rename => enc::<RenameArgs>(g),
        Nfs3Proc::Link => enc::<LinkArgs>(g),
        Nfs3Proc::Readdir => enc::<ReaddirArgs>(g),
        Nfs3Proc::Readdirplus => enc::<ReaddirplusArgs>(g),
        Nfs3Proc::Fsstat | Nfs3Proc::Fsinfo | Nfs3Proc::Pathconf => enc::<FsRootArgs>(g),
        Nfs3Proc::Commit => enc::<CommitArgs>(g),
    }
}

/// Re-encodes decoded NFSv3 arguments (the inverse of `Nfs3Call::decode`).
fn encode_nfs3_call(call: &Nfs3Call, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match call {
        Nfs3Call::Null => {}
        Nfs3Call::Getattr(a) => a.encode(&mut out),
        Nfs3Call::Setattr(a) => a.encode(&mut out),
        Nfs3Call::Lookup(a) => a.encode(&mut out),
        Nfs3Call::Access(a) => a.encode(&mut out),
        Nfs3Call::Readlink(a) => a.encode(&mut out),
        Nfs3Call::Read(a) => a.encode(&mut out),
        Nfs3Call::Write(a) => a.encode_with_data(a.data(record), &mut out),
        Nfs3Call::Create(a) => a.encode(&mut out),
        Nfs3Call::Mkdir(a) => a.encode(&mut out),
        Nfs3Call::Symlink(a) => a.encode(&mut out),
        Nfs3Call::Mknod(a) => a.encode(&mut out),
        Nfs3Call::Remove(a) | Nfs3Call::Rmdir(a) => a.encode(&mut out),
        Nfs3Call::Rename(a) => a.encode(&mut out),
        Nfs3Call::Link(a) => a.encode(&mut out),
        Nfs3Call::Readdir(a) => a.encode(&mut out),
        Nfs3Call::Readdirplus(a) => a.encode(&mut out),
        Nfs3Call::Fsstat(a) | Nfs3Call::Fsinfo(a) | Nfs3Call::Pathconf(a) => a.encode(&mut out),
        Nfs3Call::Commit(a) => a.encode(&mut out),
    }
    out
}

// ---------- golden vectors (hand-assembled from RFC 5531 / 1833 / 1813) ----------

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

#[test]
fn golden_null_call_nfs3_auth_none() {
    // Record mark: last fragment, 40 bytes.
    let mut stream = vec![0x80, 0x00, 0x00, 0x28];
    stream.extend(words(&[
        0x0000_0001, // xid
        0,           // CALL
        2,           // rpcvers
        100_003,     // NFS
        3,           // version
        0,           // NULL
        0,
        0, // cred AUTH_NONE, empty body
        0,
        0, // verf AUTH_NONE, empty body
    ]));
    let mut rec = RecordDecoder::default();
    let fed = rec.feed(&stream).unwrap();
    assert_eq!(fed.consumed, 44);
    let record = fed.record.unwrap();
    let (call, off) = decode_call(&record).unwrap();
    assert_eq!(
        call,
        CallHeader {
            xid: 1,
            prog: NFS_PROGRAM,
            vers: 3,
            proc_: 0,
            cred: Credential::None,
            verf: OpaqueAuth::none()
        }
    );
    assert_eq!(off, 40);
    assert_eq!(Nfs3Call::decode(0, &record, off), Ok(Nfs3Call::Null));
    // And our encoder produces exactly these bytes.
    assert_eq!(frame(&call_record(&call, &[])), stream);
    // The reply to NULL: xid, REPLY, MSG_ACCEPTED, verf AUTH_NONE, SUCCESS, no results.
    assert_eq!(to_vec(&ReplyHeader::success(1)), words(&[1, 1, 0, 0, 0, 0]));
}

#[test]
fn golden_getport_call_auth_sys_and_answer() {
    let record = [
        words(&[0x1234_5678, 0, 2, 100_000, 2, 3]),
        // cred AUTH_SYS, body 28 bytes: stamp, "box" padded, uid 1000, gid 100, gids [100]
        words(&[1, 28, 0x0000_00aa, 3]),
        b"box\0".to_vec(),
        words(&[1000, 100, 1, 100]),
        words(&[0, 0]), // verf
        // mapping: MOUNT v3 tcp port 0
        words(&[100_005, 3, 6, 0]),
    ]
    .concat();
    let (call, off) = decode_call(&record).unwrap();
    assert_eq!(call.xid, 0x1234_5678);
    assert_eq!((call.prog, call.vers, call.proc_), (PMAP_PROGRAM, 2, 3));
    assert_eq!(
        call.cred,
        Credential::Sys(AuthSys {
            stamp: 0xaa,
            machinename: b"box".to_vec(),
            uid: 1000,
            gid: 100,
            gids: vec![100]
        })
    );
    assert_eq!(call_record(&call, &words(&[100_005, 3, 6, 0])), record);

    let mut reg = Registry::new();
    assert!(reg.set(Registration {
        prog: MOUNT_PROGRAM,
        vers: 3,
        netid: "tcp".into(),
        port: 20048,
        owner: "twinfiler".into(),
    }));
    let results = reg.handle(&call, &record, off, &ctx(true)).unwrap();
    let mut reply = ReplyHeader::success(call.xid).to_vec_with_capacity(4);
    reply.extend_from_slice(&results);
    assert_eq!(reply, words(&[0x1234_5678, 1, 0, 0, 0, 0, 20048]));
}

#[test]
fn golden_mnt_reply() {
    let res = MountRes3::Ok {
        fhandle: NfsFh3::new(&[1, 2, 3, 4, 5]).unwrap(),
        auth_flavors: vec![flavor::AUTH_SYS],
    };
    let reply = success_reply(9, &res);
    let expected = [
        words(&[9, 1, 0, 0, 0, 0]), // header
        words(&[0, 5]),             // MNT3_OK, fhandle length 5
        vec![1, 2, 3, 4, 5, 0, 0, 0],
        words(&[1, 1]), // one flavor: AUTH_SYS
    ]
    .concat();
    assert_eq!(reply, expected);
    let (h, off) = decode_reply(&reply).unwrap();
    assert_eq!(h, ReplyHeader::success(9));
    assert_eq!(from_slice::<MountRes3>(&reply[off..]), Ok(res));
    // An error reply is just the status.
    assert_eq!(to_vec(&MountRes3::Err(MountStat3::Acces)), words(&[13]));
}

#[test]
fn golden_getattr_reply() {
    let attr = Fattr3 {
        ftype: Ftype3::Reg,
        mode: 0o644,
        nlink: 1,
        uid: 1000,
        gid: 1000,
        size: 0x1_0000_0002,
        used: 4096,
        rdev: Specdata3 {
            specdata1: 0,
            specdata2: 0,
        },
        fsid: 7,
        fileid: 42,
        atime: NfsTime3 {
            seconds: 10,
            nseconds: 11,
        },
        mtime: NfsTime3 {
            seconds: 20,
            nseconds: 21,
        },
        ctime: NfsTime3 {
            seconds: 30,
            nseconds: 31,
        },
    };
    let res: GetattrRes = NfsRes::Ok(GetattrResOk {
        obj_attributes: attr.clone(),
    });
    let bytes = success_reply(0xabcd, &res);
    let expected = words(&[
        0xabcd, 1, 0, 0, 0, 0, // reply header
        0, // NFS3_OK
        1, 0o644, 1, 1000, 1000, // type, mode, nlink, uid, gid
        1, 2, // size (hyper)
        0, 4096, // used
        0, 0, // rdev
        0, 7, // fsid
        0, 42, // fileid
        10, 11, 20, 21, 30, 31, // times
    ]);
    assert_eq!(bytes, expected);
    assert_eq!(post_op_attr_size(&Some(attr)), 4 + 84);
    // A stale handle: status only (resfail is void).
    assert_eq!(to_vec(&GetattrRes::Err(NfsStat3::Stale, ())), words(&[70]));
}

// ---------- round trips ----------

fn round_trip<T: Xdr + Arb + PartialEq + std::fmt::Debug>(g: &mut Gen) {
    let v = T::arb(g);
    let bytes = to_vec(&v);
    assert_eq!(bytes.len() % 4, 0, "XDR is 4-byte aligned: {v:?}");
    let back = from_slice::<T>(&bytes).unwrap_or_else(|e| panic!("{v:?}: {e}"));
    assert_eq!(back, v);
    // XDR encodings of one type are prefix-free: every strict prefix must fail.
    for len in 0..bytes.len() {
        assert!(
            from_slice::<T>(&bytes[..len]).is_err(),
            "{v:?} truncated at {len}"
        );
    }
}

macro_rules! round_trip_all {
    ($g:expr; $($t:ty),* $(,)?) => { $( round_trip::<$t>($g); )* };
}

fn round_trip_every_type(seed: u64) {
    let g = &mut Gen::new(seed);
    round_trip_all!(g;
        OpaqueAuth, AuthSys, ReplyHeader, AuthStat,
        Mapping, Rpcb, PmapList, RpcbList,
        DirPath, MountName, MountStat3, MountRes3, MountList, Exports,
        NfsFh3, Filename3, NfsPath3, Ftype3, NfsStat3, StableHow, Specdata3, NfsTime3,
        Fattr3, WccAttr, WccData, SetTime, Sattr3, DirOpArgs3, CreateHow3, MknodData3,
        Entry3, EntryPlus3,
        GetattrArgs, SetattrArgs, LookupArgs, AccessArgs, ReadlinkArgs, ReadArgs,
        CreateArgs, MkdirArgs, SymlinkArgs, MknodArgs, RemoveArgs, RenameArgs, LinkArgs,
        ReaddirArgs, ReaddirplusArgs, FsRootArgs, CommitArgs,
        GetattrRes, SetattrRes, LookupRes, AccessRes, ReadlinkRes, ReadRes, WriteRes,
        DirOpRes, RemoveRes, RenameRes, LinkRes, ReaddirRes, ReaddirplusRes,
        FsstatRes, FsinfoRes, PathconfRes, CommitRes,
    );
}

/// Every NFS/MOUNT/PMAP call through record marking, header and argument decoding, and
/// every strict prefix of the record rejected.
fn call_round_trip(seed: u64) {
    let g = &mut Gen::new(seed);
    for p in Nfs3Proc::ALL {
        let args = arb_nfs3_args(g, *p);
        let h = CallHeader {
            xid: g.u32(),
            prog: NFS_PROGRAM,
            vers: NFS_V3,
            proc_: *p as u32,
            cred: arb_credential(g),
            verf: OpaqueAuth::none(),
        };
        let record = call_record(&h, &args);
        let mut rec = RecordDecoder::default();
        let fed = rec.feed(&frame(&record)).unwrap();
        let got = fed.record.unwrap();
        assert_eq!(got, record);
        let (h2, off) = decode_call(&got).unwrap();
        assert_eq!(h2, h);
        let call = Nfs3Call::decode(h2.proc_, &got, off).unwrap();
        assert_eq!(call.proc_(), *p);
        assert_eq!(encode_nfs3_call(&call, &got), args);
        for len in 0..record.len() {
            let short = &record[..len];
            let ok = decode_call(short).and_then(|(h, off)| {
                Nfs3Call::decode(h.proc_, short, off).map_err(|_| CallError::NoXid { len })
            });
            assert!(ok.is_err(), "{p:?} prefix {len} decoded");
        }
    }
    let mnt = MountCall::Mnt(Arb::arb(g));
    let mut args = Vec::new();
    mnt.encode_args(&mut args);
    let record = call_record(&header(MOUNT_PROGRAM, 3, 1, Credential::None), &args);
    let (h, off) = decode_call(&record).unwrap();
    assert_eq!(MountCall::decode(h.proc_, &record, off), Ok(mnt));
    for len in 0..record.len() {
        let short = &record[..len];
        let r = decode_call(short).map(|(h, off)| MountCall::decode(h.proc_, short, off));
        assert!(!matches!(r, Ok(Ok(_))), "MNT prefix {len} decoded");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn prop_round_trip_every_type(seed in any::<u64>()) {
        round_trip_every_type(seed);
    }

    #[test]
    fn prop_call_round_trip_every_procedure(seed in any::<u64>()) {
        call_round_trip(seed);
    }

    #[test]
    fn prop_uaddr_round_trip(a in any::<[u8; 4]>(), v6 in any::<[u8; 16]>(), port in any::<u16>()) {
        for addr in [
            SocketAddr::new(IpAddr::from(a), port),
            SocketAddr::new(IpAddr::from(v6), port),
        ] {
            prop_assert_eq!(parse_uaddr(&format_uaddr(addr)), Some(addr));
        }
    }

    #[test]
    fn prop_records_survive_any_chunking(
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
        fragment_bytes in 1usize..64,
        chunk_bytes in 1usize..100,
    ) {
        // Each record split into fragments of `fragment_bytes`, the stream cut into reads of
        // `chunk_bytes`: the decoder must hand back exactly the records sent.
        let mut stream = Vec::new();
        for r in &records {
            let pieces: Vec<&[u8]> = if r.is_empty() { vec![&r[..]] } else { r.chunks(fragment_bytes).collect() };
            for (i, piece) in pieces.iter().enumerate() {
                stream.extend(crate::record::record_mark(piece.len(), i + 1 == pieces.len()));
                stream.extend_from_slice(piece);
            }
        }
        let mut dec = RecordDecoder::default();
        let mut got = Vec::new();
        for chunk in stream.chunks(chunk_bytes) {
            let mut input = chunk;
            while !input.is_empty() {
                let fed = dec.feed(input).unwrap();
                prop_assert!(fed.consumed > 0);
                input = &input[fed.consumed..];
                got.extend(fed.record);
            }
        }
        prop_assert_eq!(got, records);
        prop_assert!(dec.is_idle());
    }

    #[test]
    fn prop_random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        crate::fuzz::decode_everything(&data);
    }

    #[test]
    fn prop_mutated_valid_calls_never_panic(seed in any::<u64>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let g = &mut Gen::new(seed);
        let p = Nfs3Proc::ALL[g.below(Nfs3Proc::ALL.len())];
        let h = CallHeader { xid: 1, prog: NFS_PROGRAM, vers: 3, proc_: p as u32, cred: arb_credential(g), verf: OpaqueAuth::none() };
        let mut stream = frame(&call_record(&h, &arb_nfs3_args(g, p)));
        for (at, x) in flips {
            let n = stream.len();
            stream[at % n] ^= x;
        }
        crate::fuzz::decode_everything(&stream);
    }

    #[test]
    fn prop_readdir_budget_never_exceeded(
        seed in any::<u64>(),
        count in 0u32..3000,
        n in 0usize..80,
        attrs in any::<bool>(),
    ) {
        let g = &mut Gen::new(seed);
        let entries: Vec<Entry3> = (0..n).map(|_| Arb::arb(g)).collect();
        let dir_attributes: PostOpAttr = if attrs { Some(Arb::arb(g)) } else { None };
        let prefix = to_vec(&ReplyHeader::success(5));
        let mut enc = ReaddirEncoder::new(prefix.clone(), count, &dir_attributes, &[3; 8]);
        let mut pushed = 0;
        for e in &entries {
            if !enc.push(e.fileid, &e.name, e.cookie) { break; }
            pushed += 1;
        }
        prop_assert_eq!(pushed, enc.entries());
        let out = enc.finish(true);
        let body = &out[prefix.len()..];
        if pushed > 0 {
            prop_assert!(body.len() <= count as usize, "{} > {}", body.len(), count);
        }
        let res = from_slice::<ReaddirRes>(body).unwrap();
        let NfsRes::Ok(ok) = res else { panic!("not ok") };
        prop_assert_eq!(&ok.entries[..], &entries[..pushed]);
        prop_assert_eq!(ok.eof, pushed == entries.len());
        prop_assert_eq!(ok.dir_attributes, dir_attributes);
        // Maximality: if something was refused, it really would not have fit.
        if pushed < entries.len() {
            let next = ReaddirEncoder::entry_size(&entries[pushed].name);
            prop_assert!(body.len() + next > count as usize);
        }
    }

    #[test]
    fn prop_readdirplus_budgets_never_exceeded(
        seed in any::<u64>(),
        dircount in 0u32..2000,
        maxcount in 0u32..6000,
        n in 0usize..40,
    ) {
        let g = &mut Gen::new(seed);
        let entries: Vec<EntryPlus3> = (0..n).map(|_| Arb::arb(g)).collect();
        let mut enc = ReaddirplusEncoder::new(Vec::new(), dircount, maxcount, &None, &[0; 8]);
        let mut pushed = 0;
        for e in &entries {
            if !enc.push(e) { break; }
            pushed += 1;
        }
        let out = enc.finish(true);
        let res = from_slice::<ReaddirplusRes>(&out).unwrap();
        let NfsRes::Ok(ok) = res else { panic!("not ok") };
        prop_assert_eq!(&ok.entries[..], &entries[..pushed]);
        prop_assert_eq!(ok.eof, pushed == entries.len());
        if pushed > 0 {
            prop_assert!(out.len() <= maxcount as usize);
            let dir_bytes: usize = ok.entries.iter()
                .map(|e| 16 + crate::xdr::opaque_size(e.name.as_bytes().len())).sum();
            prop_assert!(dir_bytes <= dircount as usize);
        }
    }
}

// ---------- bounds and hostile lengths ----------

fn nfs_call(proc_: Nfs3Proc, args: &[u8]) -> Result<Nfs3Call, ArgsError> {
    let record = call_record(
        &header(NFS_PROGRAM, 3, proc_ as u32, Credential::None),
        args,
    );
    let (h, off) = decode_call(&record).unwrap();
    Nfs3Call::decode(h.proc_, &record, off)
}

fn is_too_long(r: Result<Nfs3Call, ArgsError>) -> bool {
    matches!(r, Err(ArgsError::Garbage(XdrError::TooLong { .. })))
}

#[test]
fn oversized_lengths_rejected() {
    let fh = to_vec(&NfsFh3::new(&[1; 32]).unwrap());
    // WRITE claiming 4 GiB of data, and one byte over the 1 MiB cap.
    for len in [u32::MAX, IO_BYTES_MAX as u32 + 1] {
        let args = [fh.clone(), words(&[0, 0, len, 2, len])].concat();
        assert!(is_too_long(nfs_call(Nfs3Proc::Write, &args)), "len {len}");
    }
    // A file handle of 65 bytes.
    let args = [words(&[65]), vec![0; 68]].concat();
    assert!(is_too_long(nfs_call(Nfs3Proc::Getattr, &args)));
    // A 256-byte name decodes (the handler answers NFS3ERR_NAMETOOLONG); one past the wire
    // bound is garbage.
    let args = [fh.clone(), words(&[256]), vec![b'a'; 256]].concat();
    match nfs_call(Nfs3Proc::Lookup, &args) {
        Ok(Nfs3Call::Lookup(a)) => assert!(a.what.name.too_long()),
        other => panic!("256-byte name: {other:?}"),
    }
    let len = NAME_WIRE_BYTES_MAX + 1;
    let args = [fh.clone(), words(&[len as u32]), vec![b'a'; len + 3]].concat();
    assert!(is_too_long(nfs_call(Nfs3Proc::Lookup, &args)));
    // A 1025-byte symlink target.
    let mut args = [fh.clone(), words(&[1]), b"a\0\0\0".to_vec()].concat();
    Sattr3::default().encode(&mut args);
    args.extend([words(&[1025]), vec![b'x'; 1028]].concat());
    assert!(is_too_long(nfs_call(Nfs3Proc::Symlink, &args)));
    // The largest legal WRITE decodes, as a range into the record.
    let data = vec![0x5a; IO_BYTES_MAX];
    let mut args = Vec::new();
    WriteArgs {
        file: NfsFh3::new(&[1; 32]).unwrap(),
        offset: 7,
        count: IO_BYTES_MAX as u32,
        stable: StableHow::FileSync,
        data: 0..0,
    }
    .encode_with_data(&data, &mut args);
    let record = call_record(&header(NFS_PROGRAM, 3, 7, Credential::None), &args);
    assert!(record.len() <= crate::record::RECORD_BYTES_MAX);
    let (h, off) = decode_call(&record).unwrap();
    let Ok(Nfs3Call::Write(w)) = Nfs3Call::decode(h.proc_, &record, off) else {
        panic!("max WRITE rejected")
    };
    assert_eq!(w.data.len(), IO_BYTES_MAX);
    assert_eq!(w.data(&record).as_ptr(), record[w.data.clone()].as_ptr());
    // MNT with a 1025-byte path.
    let record = call_record(
        &header(MOUNT_PROGRAM, 3, 1, Credential::None),
        &[words(&[1025]), vec![b'/'; 1028]].concat(),
    );
    let (h, off) = decode_call(&record).unwrap();
    assert!(matches!(
        MountCall::decode(h.proc_, &record, off),
        Err(ArgsError::Garbage(XdrError::TooLong { .. }))
    ));
}

#[test]
fn bad_credentials_give_auth_errors() {
    let base = |cred_words: Vec<u8>| {
        [
            words(&[7, 0, 2, NFS_PROGRAM, 3, 0]),
            cred_words,
            words(&[0, 0]),
        ]
        .concat()
    };
    let sys = |name_len: u32, name: Vec<u8>, ngids: u32, gids: Vec<u8>| {
        let body = [words(&[0, name_len]), name, words(&[0, 0, ngids]), gids].concat();
        [words(&[1, body.len() as u32]), body].concat()
    };
    // 17 groups.
    let r = base(sys(0, vec![], 17, vec![0; 68]));
    let err = decode_call(&r).unwrap_err();
    assert_eq!(
        err.reply(),
        Some(denied(7, Rejected::AuthError(AuthStat::BadCred)))
    );
    // 256-byte machine name.
    let r = base(sys(256, vec![b'm'; 256], 0, vec![]));
    assert!(matches!(
        decode_call(&r),
        Err(CallError::Auth {
            stat: AuthStat::BadCred,
            ..
        })
    ));
    // Body length 4 GiB.
    let r = base(words(&[1, u32::MAX]));
    assert!(matches!(
        decode_call(&r),
        Err(CallError::Auth {
            stat: AuthStat::BadCred,
            ..
        })
    ));
    // Trailing bytes inside an AUTH_SYS body.
    let mut c = sys(0, vec![], 0, vec![]);
    c[7] += 4;
    c.extend(words(&[0]));
    assert!(matches!(decode_call(&base(c)), Err(CallError::Auth { .. })));
    // A 16-group credential is fine.
    let r = base(sys(3, b"abc\0".to_vec(), 16, vec![0; 64]));
    assert!(matches!(
        decode_call(&r),
        Ok((
            CallHeader {
                cred: Credential::Sys(_),
                ..
            },
            _
        ))
    ));
    // Unknown flavor is passed up typed, for the service to refuse.
    let r = base(words(&[flavor::RPCSEC_GSS, 4, 9]));
    assert!(matches!(
        decode_call(&r),
        Ok((
            CallHeader {
                cred: Credential::Other(_),
                ..
            },
            _
        ))
    ));
}

fn denied(xid: u32, r: Rejected) -> ReplyHeader {
    ReplyHeader {
        xid,
        status: ReplyStatus::Denied(r),
    }
}

#[test]
fn call_header_errors_map_to_replies() {
    assert_eq!(decode_call(&[1, 2]).unwrap_err().reply(), None);
    // A REPLY sent to us is dropped, not answered.
    assert_eq!(decode_call(&words(&[5, 1, 0])).unwrap_err().reply(), None);
    // RPC version 3: RPC_MISMATCH 2..2.
    let e = decode_call(&words(&[5, 0, 3, 1, 1, 1])).unwrap_err();
    assert_eq!(
        e.reply(),
        Some(denied(5, Rejected::RpcMismatch { low: 2, high: 2 }))
    );
    assert_eq!(
        to_vec(&e.reply().unwrap()),
        words(&[5, 1, 1, 0, 2, 2]),
        "MSG_DENIED RPC_MISMATCH on the wire"
    );
    // Truncated header after the xid: GARBAGE_ARGS.
    let e = decode_call(&words(&[5, 0, 2, 100_003])).unwrap_err();
    assert_eq!(e.reply(), Some(ReplyHeader::garbage_args(5)));
    // AUTH_ERROR on the wire.
    assert_eq!(
        to_vec(&denied(6, Rejected::AuthError(AuthStat::TooWeak))),
        words(&[6, 1, 1, 1, 5])
    );
    // Argument errors.
    assert_eq!(
        to_vec(&ArgsError::ProgMismatch { low: 3, high: 3 }.reply(8)),
        words(&[8, 1, 0, 0, 0, 2, 3, 3])
    );
    assert_eq!(
        nfs_call(Nfs3Proc::Getattr, &[]).unwrap_err().reply(9),
        ReplyHeader::garbage_args(9)
    );
    let record = call_record(&header(NFS_PROGRAM, 3, 22, Credential::None), &[]);
    let (h, off) = decode_call(&record).unwrap();
    assert_eq!(
        Nfs3Call::decode(h.proc_, &record, off)
            .unwrap_err()
            .reply(1),
        ReplyHeader::accepted(1, AcceptStat::ProcUnavail)
    );
    // Trailing bytes after the arguments are garbage.
    assert!(matches!(
        nfs_call(Nfs3Proc::Null, &[0, 0, 0, 0]),
        Err(ArgsError::Garbage(XdrError::TrailingBytes { left: 4 }))
    ));
}

#[test]
fn program_routing() {
    assert_eq!(Program::route(NFS_PROGRAM, 3), Ok(Program::Nfs3));
    assert_eq!(
        Program::route(NFS_PROGRAM, 4),
        Err(AcceptStat::ProgMismatch { low: 3, high: 3 })
    );
    assert_eq!(
        Program::route(MOUNT_PROGRAM, 1),
        Err(AcceptStat::ProgMismatch { low: 3, high: 3 })
    );
    assert_eq!(Program::route(PMAP_PROGRAM, 4), Ok(Program::Portmap));
    assert_eq!(Program::route(100_021, 4), Err(AcceptStat::ProgUnavail));
}

// ---------- READ reply for vectored writes ----------

#[test]
fn read_reply_head_plus_data_decodes() {
    let data = b"hello".to_vec();
    let attrs: PostOpAttr = None;
    let mut head = ReplyHeader::success(3).to_vec_with_capacity(0);
    let results_at = head.len();
    encode_read_ok_head(&mut head, &attrs, true, data.len());
    // What writev would send: head, data, padding.
    let wire = [
        head.clone(),
        data.clone(),
        crate::xdr::padding(data.len()).to_vec(),
    ]
    .concat();
    assert_eq!(wire.len() % 4, 0);
    let res = from_slice::<ReadRes>(&wire[results_at..]).unwrap();
    assert_eq!(
        res,
        NfsRes::Ok(ReadResOk {
            file_attributes: None,
            count: 5,
            eof: true,
            data
        })
    );
}

#[test]
fn read_reply_span_points_into_the_record_and_checks_the_length() {
    let data = b"seven b".to_vec();
    let mut wire = ReplyHeader::success(9).to_vec_with_capacity(0);
    let results_at = wire.len();
    encode_read_ok_head(&mut wire, &None, false, data.len());
    wire.extend_from_slice(&data);
    wire.extend_from_slice(crate::xdr::padding(data.len()));
    let mut dec = Decoder::new_at(&wire, results_at);
    assert_eq!(NfsStat3::decode(&mut dec).unwrap(), NfsStat3::Ok);
    let span = ReadResOkSpan::decode(&mut dec).unwrap();
    dec.finish().unwrap();
    assert_eq!((span.count, span.eof), (7, false));
    assert_eq!(&wire[span.data], &data[..], "record-absolute range");
    // A reply cut inside its data is an error, not a short slice.
    let cut = &wire[..wire.len() - 4];
    let mut dec = Decoder::new_at(cut, results_at + 4);
    assert!(ReadResOkSpan::decode(&mut dec).is_err());
}

// ---------- portmap / rpcbind registry ----------

fn ctx(may_modify: bool) -> CallContext<'static> {
    CallContext {
        local_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        netid: "tcp",
        now_unix_s: 1_700_000_000,
        may_modify,
    }
}

fn pmap(
    reg: &mut Registry,
    vers: u32,
    proc_: u32,
    args: &[u8],
    may_modify: bool,
) -> Result<Vec<u8>, ArgsError> {
    let record = call_record(&header(PMAP_PROGRAM, vers, proc_, Credential::None), args);
    let (h, off) = decode_call(&record).unwrap();
    reg.handle(&h, &record, off, &ctx(may_modify))
}

fn served_registry() -> Registry {
    let mut reg = Registry::new();
    for (prog, vers, netid, port) in [
        (PMAP_PROGRAM, 2, "tcp", 111),
        (PMAP_PROGRAM, 4, "tcp", 111),
        (MOUNT_PROGRAM, 3, "tcp", 20048),
        (MOUNT_PROGRAM, 3, "udp", 20048),
        (NFS_PROGRAM, 3, "tcp", 2049),
    ] {
        assert!(reg.set(Registration {
            prog,
            vers,
            netid: netid.into(),
            port,
            owner: "twinfiler".into(),
        }));
    }
    reg
}

#[test]
fn rpcbind_getaddr_v3_v4_and_getversaddr() {
    let mut reg = served_registry();
    let q = |prog, vers, netid: &str| {
        to_vec(&Rpcb {
            r_prog: prog,
            r_vers: vers,
            r_netid: netid.into(),
            ..Default::default()
        })
    };
    for vers in [3, 4] {
        let out = pmap(&mut reg, vers, 3, &q(NFS_PROGRAM, 3, "tcp"), false).unwrap();
        let mut d = Decoder::new(&out);
        assert_eq!(
            decode_uaddr_result(&mut d).unwrap(),
            Some("10.1.2.3:2049".parse().unwrap())
        );
        // The string itself: "10.1.2.3.8.1" (2049 = 8*256 + 1).
        assert_eq!(&out[4..16], b"10.1.2.3.8.1");
    }
    // Empty netid: the transport of the question (tcp).
    let out = pmap(&mut reg, 4, 3, &q(MOUNT_PROGRAM, 3, ""), false).unwrap();
    assert_eq!(
        decode_uaddr_result(&mut Decoder::new(&out)).unwrap(),
        Some("10.1.2.3:20048".parse().unwrap())
    );
    // Unregistered: empty string.
    let out = pmap(&mut reg, 4, 3, &q(100_021, 4, "tcp"), false).unwrap();
    assert_eq!(out, words(&[0]));
    // GETADDR tolerates a version mismatch, GETVERSADDR does not.
    let out = pmap(&mut reg, 4, 3, &q(NFS_PROGRAM, 4, "tcp"), false).unwrap();
    assert_ne!(out, words(&[0]));
    let out = pmap(&mut reg, 4, 9, &q(NFS_PROGRAM, 4, "tcp"), false).unwrap();
    assert_eq!(out, words(&[0]));
    assert_eq!(
        pmap(&mut reg, 3, 9, &q(NFS_PROGRAM, 3, "tcp"), false),
        Err(ArgsError::ProcUnavail { proc_: 9 })
    );
    // GETTIME.
    assert_eq!(
        pmap(&mut reg, 3, 6, &[], false).unwrap(),
        words(&[1_700_000_000])
    );
    // DUMP.
    let out = pmap(&mut reg, 4, 4, &[], false).unwrap();
    let list = from_slice::<RpcbList>(&out).unwrap();
    assert_eq!(list.0.len(), 5);
    assert_eq!(list.0[2].r_addr, "10.1.2.3.78.80");
    assert_eq!(list.0[2].r_netid, "tcp");
    // Unsupported procedures and versions.
    assert_eq!(
        pmap(&mut reg, 4, 5, &[], false),
        Err(ArgsError::ProcUnavail { proc_: 5 })
    );
    assert_eq!(
        pmap(&mut reg, 4, 13, &[], false),
        Err(ArgsError::ProcUnavail { proc_: 13 })
    );
    assert_eq!(
        pmap(&mut reg, 5, 0, &[], false),
        Err(ArgsError::ProgMismatch { low: 2, high: 4 })
    );
    assert_eq!(pmap(&mut reg, 4, 0, &[], false), Ok(vec![]));
}

#[test]
fn pmap_v2_getport_dump_set_unset() {
    let mut reg = served_registry();
    let m = |prog, vers, prot| {
        to_vec(&Mapping {
            prog,
            vers,
            prot,
            port: 0,
        })
    };
    assert_eq!(
        pmap(&mut reg, 2, 3, &m(NFS_PROGRAM, 3, IPPROTO_TCP), false).unwrap(),
        words(&[2049])
    );
    assert_eq!(
        pmap(&mut reg, 2, 3, &m(NFS_PROGRAM, 3, IPPROTO_UDP), false).unwrap(),
        words(&[0])
    );
    assert_eq!(
        pmap(&mut reg, 2, 3, &m(MOUNT_PROGRAM, 3, IPPROTO_UDP), false).unwrap(),
        words(&[20048])
    );
    let dump = from_slice::<PmapList>(&pmap(&mut reg, 2, 4, &[], false).unwrap()).unwrap();
    assert_eq!(dump.0.len(), 5);
    assert!(dump.0.contains(&Mapping {
        prog: NFS_PROGRAM,
        vers: 3,
        prot: IPPROTO_TCP,
        port: 2049
    }));
    // SET/UNSET refused without permission, allowed with it.
    let set = to_vec(&Mapping {
        prog: 100_021,
        vers: 4,
        prot: IPPROTO_TCP,
        port: 4045,
    });
    assert_eq!(pmap(&mut reg, 2, 1, &set, false).unwrap(), words(&[0]));
    assert_eq!(pmap(&mut reg, 2, 1, &set, true).unwrap(), words(&[1]));
    assert_eq!(
        pmap(&mut reg, 2, 1, &set, true).unwrap(),
        words(&[0]),
        "no overwrite"
    );
    assert_eq!(
        pmap(&mut reg, 2, 3, &m(100_021, 4, IPPROTO_TCP), false).unwrap(),
        words(&[4045])
    );
    assert_eq!(pmap(&mut reg, 2, 2, &set, true).unwrap(), words(&[1]));
    assert_eq!(
        pmap(&mut reg, 2, 3, &m(100_021, 4, IPPROTO_TCP), false).unwrap(),
        words(&[0])
    );
    // rpcbind SET with a universal address, UNSET on all netids.
    let r = to_vec(&Rpcb {
        r_prog: 100_024,
        r_vers: 1,
        r_netid: "udp".into(),
        r_addr: "0.0.0.0.3.232".into(),
        r_owner: "statd".into(),
    });
    assert_eq!(pmap(&mut reg, 3, 1, &r, true).unwrap(), words(&[1]));
    assert_eq!(reg.lookup(100_024, 1, "udp", true), Some(1000));
    let r = to_vec(&Rpcb {
        r_prog: 100_024,
        r_vers: 1,
        ..Default::default()
    });
    assert_eq!(pmap(&mut reg, 3, 2, &r, true).unwrap(), words(&[1]));
    assert_eq!(reg.lookup(100_024, 1, "udp", false), None);
    assert_eq!(
        pmap(&mut reg, 2, 5, &[], false),
        Err(ArgsError::ProcUnavail { proc_: 5 })
    );
}

#[test]
fn registry_is_bounded() {
    let mut reg = Registry::new();
    for i in 0..REGISTRATIONS_MAX as u32 + 10 {
        reg.set(Registration {
            prog: i,
            vers: 1,
            netid: "tcp".into(),
            port: 1,
            owner: String::new(),
        });
    }
    assert_eq!(reg.entries().len(), REGISTRATIONS_MAX);
}

#[test]
fn uaddr_examples() {
    assert_eq!(
        format_uaddr("127.0.0.1:111".parse().unwrap()),
        "127.0.0.1.0.111"
    );
    assert_eq!(format_uaddr("[::1]:2049".parse().unwrap()), "::1.8.1");
    assert_eq!(
        parse_uaddr("192.168.0.1.8.1"),
        Some("192.168.0.1:2049".parse().unwrap())
    );
    for bad in [
        "",
        "1.2.3.4",
        "1.2.3.4.256.1",
        "1.2.3.4.1.-1",
        "x.1.2",
        "1.2.3.4.5.6.7",
    ] {
        assert_eq!(parse_uaddr(bad), None, "{bad}");
    }
}

// ---------- record decoder with real calls ----------

#[test]
fn pipelined_calls_in_one_read() {
    let g = &mut Gen::new(99);
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for (i, p) in Nfs3Proc::ALL.iter().enumerate() {
        let mut h = header(NFS_PROGRAM, 3, *p as u32, arb_credential(g));
        h.xid = i as u32;
        let r = call_record(&h, &arb_nfs3_args(g, *p));
        stream.extend(frame(&r));
        expected.push(r);
    }
    let mut dec = RecordDecoder::default();
    let mut input = &stream[..];
    let mut got = Vec::new();
    for _ in 0..1000 {
        if input.is_empty() {
            break;
        }
        let fed = dec.feed(input).unwrap();
        input = &input[fed.consumed..];
        got.extend(fed.record);
    }
    assert_eq!(got, expected);
    for (i, r) in got.iter().enumerate() {
        let (h, off) = decode_call(r).unwrap();
        assert_eq!(h.xid, i as u32);
        Nfs3Call::decode(h.proc_, r, off).unwrap();
    }
}

#[test]
fn readdir_too_small_budget_has_no_entries() {
    let name = Filename3::new(b"a".to_vec()).unwrap();
    let mut enc = ReaddirEncoder::new(Vec::new(), 20, &None, &[0; 8]);
    assert!(!enc.push(1, &name, 1));
    assert_eq!(enc.entries(), 0);
    let out = enc.finish(true);
    let NfsRes::Ok(ok) = from_slice::<ReaddirRes>(&out).unwrap() else {
        panic!()
    };
    assert!(ok.entries.is_empty());
    assert!(!ok.eof, "a refused entry means not at eof");
}

/// Writes valid framed calls of every procedure as a seed corpus for `cargo fuzz`:
/// `TWINFILER_FUZZ_SEEDS=fuzz/corpus/decode cargo test -p twinfiler-proto -- --ignored seeds`.
#[test]
#[ignore = "writes files; run by hand to refresh the fuzz corpus"]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("TWINFILER_FUZZ_SEEDS") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    let g = &mut Gen::new(1);
    let mut n = 0;
    let mut write = |bytes: Vec<u8>| {
        std::fs::write(format!("{dir}/seed-{n:03}"), bytes).unwrap();
        n += 1;
    };
    for p in Nfs3Proc::ALL {
        let h = header(NFS_PROGRAM, 3, *p as u32, arb_credential(g));
        write(frame(&call_record(&h, &arb_nfs3_args(g, *p))));
    }
    for (vers, proc_, args) in [
        (
            2,
            3,
            to_vec(&Mapping {
                prog: NFS_PROGRAM,
                vers: 3,
                prot: IPPROTO_TCP,
                port: 0,
            }),
        ),
        (2, 4, vec![]),
        (
            4,
            3,
            to_vec(&Rpcb {
                r_prog: NFS_PROGRAM,
                r_vers: 3,
                r_netid: "tcp".into(),
                ..Default::default()
            }),
        ),
        (
            3,
            1,
            to_vec(&Rpcb {
                r_prog: 1,
                r_vers: 1,
                r_netid: "tcp".into(),
                r_addr: "1.2.3.4.0.1".into(),
                r_owner: "x".into(),
            }),
        ),
        (4, 4, vec![]),
    ] {
        write(frame(&call_record(
            &header(PMAP_PROGRAM, vers, proc_, Credential::None),
            &args,
        )));
    }
    let mut args = Vec::new();
    MountCall::Mnt(DirPath::new(b"/export".to_vec()).unwrap()).encode_args(&mut args);
    write(frame(&call_record(
        &header(MOUNT_PROGRAM, 3, 1, Credential::None),
        &args,
    )));
}
