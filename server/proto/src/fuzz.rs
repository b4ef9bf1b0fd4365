//! One entry point that pushes arbitrary bytes through every decoder, for `cargo fuzz` (see
//! `fuzz/`) and for the random-input tests of the normal suite. It must never panic.

use std::net::{IpAddr, Ipv4Addr};

use crate::mount::{MountCall, MountProc};
use crate::nfs3::{Nfs3Call, Nfs3Proc};
use crate::portmap::{CallContext, Registry, PMAP_PROGRAM};
use crate::record::RecordDecoder;
use crate::rpc::{decode_call, decode_reply, CallHeader};
use crate::xdr::{Decoder, Xdr};

/// Record cap used while fuzzing: small, so size checks are exercised.
const FUZZ_RECORD_BYTES_MAX: usize = 64 * 1024;

/// Feeds `data` as a byte stream to the record decoder (in chunks whose sizes come from the
/// data), decodes each record as a CALL and its arguments with every program's decoder, and
/// also decodes `data` directly as each procedure's arguments and as replies.
pub fn decode_everything(data: &[u8]) {
    // The raw bytes as arguments of every procedure, so argument decoders are reached even
    // when the fuzzer has not found a valid RPC header.
    decode_all_args(data, 0);
    let _ = decode_reply(data);
    let _ = crate::nfs3::ReaddirplusRes::decode(&mut Decoder::new(data));
    let _ = crate::nfs3::ReaddirRes::decode(&mut Decoder::new(data));
    let _ = crate::mount::MountRes3::decode(&mut Decoder::new(data));
    let _ = crate::mount::Exports::decode(&mut Decoder::new(data));
    // File handles: bounds and MAC checks on garbage.
    let fh_bytes = &data[..data.len().min(crate::nfs3::FH_BYTES_MAX)];
    if let Some(fh) = crate::nfs3::NfsFh3::new(fh_bytes) {
        let _ = crate::fh::FileHandle::decode(&fh, &crate::fh::FhKey([0; 32]));
    }

    // The bytes as a TCP stream.
    let mut rec = RecordDecoder::new(FUZZ_RECORD_BYTES_MAX);
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut input = data;
    let mut steps = 0;
    // Each step consumes ≥ 1 byte or ends the loop; the bound is belt and braces.
    while !input.is_empty() && steps < data.len() + 1 {
        steps += 1;
        let take = input.len().min(chunk);
        let fed = match rec.feed(&input[..take]) {
            Ok(fed) => fed,
            Err(_) => break,
        };
        assert!(fed.consumed <= take);
        if fed.consumed == 0 {
            break;
        }
        input = &input[fed.consumed..];
        if let Some(record) = fed.record {
            decode_record(&record);
        }
    }
}

fn decode_record(record: &[u8]) {
    let (call, offset) = match decode_call(record) {
        Ok(ok) => ok,
        Err(e) => {
            let _ = e.reply();
            return;
        }
    };
    decode_all_args(record, offset);
    if call.prog == PMAP_PROGRAM {
        answer_portmap(&call, record, offset);
    }
}

fn decode_all_args(record: &[u8], offset: usize) {
    for p in Nfs3Proc::ALL {
        if let Err(e) = Nfs3Call::decode(*p as u32, record, offset) {
            let _ = e.reply(0);
        }
    }
    for p in MountProc::ALL {
        let _ = MountCall::decode(*p as u32, record, offset);
    }
    let _ = Nfs3Call::decode(22, record, offset);
    let mut registry = Registry::new();
    for vers in 2..=4 {
        for proc_ in 0..=13 {
            let call = CallHeader {
                xid: 0,
                prog: PMAP_PROGRAM,
                vers,
                proc_,
                cred: crate::rpc::Credential::None,
                verf: crate::rpc::OpaqueAuth::none(),
            };
            let _ = registry.handle(&call, record, offset, &context());
        }
    }
}

fn context() -> CallContext<'static> {
    CallContext {
        local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        netid: "tcp",
        now_unix_s: 0,
        may_modify: true,
    }
}

fn answer_portmap(call: &CallHeader, record: &[u8], offset: usize) {
    let mut registry = Registry::new();
    let _ = registry.handle(call, record, offset, &context());
}
