//! The duplicate-request-cache key: what makes two calls "the same request".
//!
//! A retransmission carries the same xid from the same client with the same arguments. The
//! xid alone is not enough (clients reuse xids after wrap, and across reboots), so the key
//! also holds the program, version, procedure and a checksum of the first
//! [`DRC_ARGS_PREFIX_BYTES`] of the arguments plus their length, like Linux knfsd does. The
//! cache itself lives in the node and its entries in the NVRAM log; [`DrcKey::to_bytes`]
//! gives the stable encoding to log.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::rpc::CallHeader;

/// How many argument bytes the checksum covers: enough to include the file handle and
/// offsets of every NFSv3 call, without hashing a whole 1 MiB WRITE.
pub const DRC_ARGS_PREFIX_BYTES: usize = 256;

/// Size of [`DrcKey::to_bytes`].
pub const DRC_KEY_BYTES: usize = 44;

/// Identity of one request for the duplicate-request cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DrcKey {
    /// Client address and port (Linux clients keep their port across reconnects).
    pub client: SocketAddr,
    /// Transaction id.
    pub xid: u32,
    /// Program.
    pub prog: u32,
    /// Version.
    pub vers: u32,
    /// Procedure.
    pub proc_: u32,
    /// CRC32C of the first [`DRC_ARGS_PREFIX_BYTES`] argument bytes.
    pub args_crc: u32,
    /// Total argument length.
    pub args_len: u32,
}

impl DrcKey {
    /// The key of the call in `record` whose arguments start at `args_offset`.
    pub fn new(client: SocketAddr, call: &CallHeader, record: &[u8], args_offset: usize) -> Self {
        let args = record.get(args_offset..).unwrap_or(&[]);
        let prefix = &args[..args.len().min(DRC_ARGS_PREFIX_BYTES)];
        DrcKey {
            client,
            xid: call.xid,
            prog: call.prog,
            vers: call.vers,
            proc_: call.proc_,
            args_crc: crc32c::crc32c(prefix),
            args_len: u32::try_from(args.len()).unwrap_or(u32::MAX),
        }
    }

    /// Stable byte encoding (for the NVRAM log): family, address as IPv6 (v4-mapped),
    /// port, then the numbers, big-endian.
    pub fn to_bytes(&self) -> [u8; DRC_KEY_BYTES] {
        let mut b = [0u8; DRC_KEY_BYTES];
        let (family, ip6) = match self.client.ip() {
            IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => (6u8, v6),
        };
        b[0] = family;
        b[1..17].copy_from_slice(&ip6.octets());
        b[17..19].copy_from_slice(&self.client.port().to_be_bytes());
        // b[19] reserved (alignment).
        for (i, v) in [
            self.xid,
            self.prog,
            self.vers,
            self.proc_,
            self.args_crc,
            self.args_len,
        ]
        .iter()
        .enumerate()
        {
            b[20 + 4 * i..24 + 4 * i].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    /// Decodes [`DrcKey::to_bytes`]; `None` if the bytes are not a key.
    pub fn from_bytes(b: &[u8; DRC_KEY_BYTES]) -> Option<Self> {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&b[1..17]);
        let ip6 = Ipv6Addr::from(octets);
        let ip = match b[0] {
            4 => IpAddr::V4(ip6.to_ipv4_mapped()?),
            6 => IpAddr::V6(ip6),
            _ => return None,
        };
        if b[19] != 0 {
            return None;
        }
        let port = u16::from_be_bytes([b[17], b[18]]);
        let w = |i: usize| {
            u32::from_be_bytes([b[20 + 4 * i], b[21 + 4 * i], b[22 + 4 * i], b[23 + 4 * i]])
        };
        Some(DrcKey {
            client: SocketAddr::new(ip, port),
            xid: w(0),
            prog: w(1),
            vers: w(2),
            proc_: w(3),
            args_crc: w(4),
            args_len: w(5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Credential, OpaqueAuth};
    use std::collections::HashSet;

    fn call(xid: u32) -> CallHeader {
        CallHeader {
            xid,
            prog: 100_003,
            vers: 3,
            proc_: 8,
            cred: Credential::None,
            verf: OpaqueAuth::none(),
        }
    }

    #[test]
    fn same_request_same_key_and_differences_matter() {
        let client: SocketAddr = "10.0.0.1:799".parse().unwrap();
        let rec = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let a = DrcKey::new(client, &call(1), &rec, 4);
        assert_eq!(a, DrcKey::new(client, &call(1), &rec, 4));
        let mut keys = HashSet::new();
        keys.insert(a);
        keys.insert(DrcKey::new(client, &call(2), &rec, 4));
        keys.insert(DrcKey::new(
            "10.0.0.2:799".parse().unwrap(),
            &call(1),
            &rec,
            4,
        ));
        keys.insert(DrcKey::new(client, &call(1), &[1, 2, 3, 4, 5, 6, 7, 9], 4));
        keys.insert(DrcKey::new(client, &call(1), &rec, 5));
        assert_eq!(keys.len(), 5);
        // Out-of-range offset yields empty args, not a panic.
        let _ = DrcKey::new(client, &call(1), &rec, 100);
    }

    #[test]
    fn bytes_round_trip_v4_and_v6() {
        for client in ["192.168.1.9:1023", "[fe80::1]:2049"] {
            let k = DrcKey::new(client.parse().unwrap(), &call(77), &[9; 300], 0);
            assert_eq!(DrcKey::from_bytes(&k.to_bytes()), Some(k));
        }
        let mut bad = DrcKey::new("1.2.3.4:5".parse().unwrap(), &call(1), &[], 0).to_bytes();
        bad[0] = 9;
        assert_eq!(DrcKey::from_bytes(&bad), None);
    }
}
