//! Fuzzes the record decoder, the CALL header decoder and every program's argument decoders
//! (NFSv3, MOUNT v3, portmap/rpcbind) through `twinfiler_proto::fuzz::decode_everything`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    twinfiler_proto::fuzz::decode_everything(data);
});
