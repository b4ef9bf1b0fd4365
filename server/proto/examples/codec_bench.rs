//! Rough codec throughput figures (not a test): run with
//! `cargo run --release -p twinfiler-proto --example codec_bench`.

use std::hint::black_box;
use std::time::Instant;

use twinfiler_proto::nfs3::{
    EntryPlus3, Fattr3, Filename3, Ftype3, GetattrArgs, GetattrRes, GetattrResOk, Nfs3Call, NfsFh3,
    NfsRes, NfsTime3, ReaddirplusEncoder, Specdata3, StableHow, WriteArgs,
};
use twinfiler_proto::record::{frame, RecordDecoder};
use twinfiler_proto::rpc::{decode_call, AuthSys, CallHeader, Credential, OpaqueAuth, ReplyHeader};
use twinfiler_proto::xdr::Xdr;

/// Iterations per figure; each loop is bounded by this count.
const ITERATIONS: u32 = 200_000;
const WRITE_ITERATIONS: u32 = 2_000;

fn call(proc_: u32) -> CallHeader {
    CallHeader {
        xid: 1,
        prog: 100_003,
        vers: 3,
        proc_,
        cred: Credential::Sys(AuthSys {
            stamp: 1,
            machinename: b"client".to_vec(),
            uid: 1000,
            gid: 1000,
            gids: vec![1000, 27, 100],
        }),
        verf: OpaqueAuth::none(),
    }
}

fn attr() -> Fattr3 {
    let t = NfsTime3 {
        seconds: 1,
        nseconds: 2,
    };
    Fattr3 {
        ftype: Ftype3::Reg,
        mode: 0o644,
        nlink: 1,
        uid: 1000,
        gid: 1000,
        size: 4096,
        used: 4096,
        rdev: Specdata3 {
            specdata1: 0,
            specdata2: 0,
        },
        fsid: 1,
        fileid: 42,
        atime: t,
        mtime: t,
        ctime: t,
    }
}

fn main() {
    let fh = NfsFh3::new(&[7; 48]).expect("48 ≤ 64");

    // 1 MiB WRITE records through record marking + header + argument decoding.
    let data = vec![0x5a; 1024 * 1024];
    let mut record = Vec::new();
    call(7).encode(&mut record);
    WriteArgs {
        file: fh,
        offset: 0,
        count: data.len() as u32,
        stable: StableHow::Unstable,
        data: 0..0,
    }
    .encode_with_data(&data, &mut record);
    let stream = frame(&record);
    let start = Instant::now();
    let mut dec = RecordDecoder::default();
    for _ in 0..WRITE_ITERATIONS {
        let mut input = &stream[..];
        while !input.is_empty() {
            let chunk = input.len().min(64 * 1024);
            let fed = dec.feed(&input[..chunk]).expect("valid stream");
            input = &input[fed.consumed..];
            if let Some(r) = fed.record {
                let (h, off) = decode_call(&r).expect("valid call");
                black_box(Nfs3Call::decode(h.proc_, &r, off).expect("valid args"));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mib = f64::from(WRITE_ITERATIONS) * stream.len() as f64 / (1024.0 * 1024.0);
    println!("write 1MiB record feed+decode: {:.0} MiB/s", mib / secs);

    // GETATTR: decode the call, encode the reply.
    let mut record = Vec::new();
    call(1).encode(&mut record);
    GetattrArgs { object: fh }.encode(&mut record);
    let res: GetattrRes = NfsRes::Ok(GetattrResOk {
        obj_attributes: attr(),
    });
    let start = Instant::now();
    let mut out = Vec::with_capacity(256);
    for _ in 0..ITERATIONS {
        let (h, off) = decode_call(black_box(&record)).expect("valid call");
        black_box(Nfs3Call::decode(h.proc_, &record, off).expect("valid args"));
        out.clear();
        ReplyHeader::success(h.xid).encode(&mut out);
        res.encode(&mut out);
        black_box(&out);
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);
    println!("getattr decode call + encode reply: {ns:.0} ns/op");

    // READDIRPLUS of 32 KiB maxcount with attributes and handles.
    let entries: Vec<EntryPlus3> = (0..1000u64)
        .map(|i| EntryPlus3 {
            fileid: i,
            name: Filename3::new(format!("file-{i:06}").into_bytes()).expect("short"),
            cookie: i + 1,
            name_attributes: Some(attr()),
            name_handle: Some(fh),
        })
        .collect();
    let start = Instant::now();
    let mut total = 0;
    for _ in 0..ITERATIONS / 100 {
        let mut enc =
            ReaddirplusEncoder::new(Vec::with_capacity(33_000), 4096, 32_768, &None, &[0; 8])
                .without_dircount_limit();
        for e in &entries {
            if !enc.push(e) {
                break;
            }
        }
        total += enc.entries();
        black_box(enc.finish(false));
    }
    let per_entry = start.elapsed().as_nanos() as f64 / total as f64;
    println!(
        "readdirplus encode: {per_entry:.0} ns/entry ({} entries per 32 KiB reply)",
        total / (ITERATIONS / 100) as usize
    );
}
