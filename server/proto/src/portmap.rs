//! Portmapper (PMAP v2, RFC 1833 §3) and rpcbind (v3/v4, RFC 1833 §2): argument and result
//! types, universal addresses, and a small sans-IO [`Registry`] that answers the calls.
//!
//! Linux `mount.nfs` asks rpcbind v4/v3 GETADDR first and falls back to PMAP v2 GETPORT, so
//! both must answer. The registry stores (program, version, netid, port); the host part of a
//! universal address is the local address the question arrived on, supplied by the caller,
//! so the answer is reachable from that client even on a multi-homed or taken-over node.

use std::net::{IpAddr, SocketAddr};

use crate::rpc::CallHeader;
use crate::xdr::{xdr_enum, xdr_struct, Decoder, Xdr, XdrError, XdrResult, XdrWrite};
use crate::ArgsError;

/// RPC program number of the portmapper / rpcbind.
pub const PMAP_PROGRAM: u32 = 100_000;
/// Portmapper protocol version.
pub const PMAP_V2: u32 = 2;
/// rpcbind version 3.
pub const RPCB_V3: u32 = 3;
/// rpcbind version 4.
pub const RPCB_V4: u32 = 4;
/// IP protocol number of TCP in PMAP mappings.
pub const IPPROTO_TCP: u32 = 6;
/// IP protocol number of UDP in PMAP mappings.
pub const IPPROTO_UDP: u32 = 17;
/// Longest netid, universal address or owner string we accept.
pub const RPCB_STRING_BYTES_MAX: usize = 256;
/// Most registrations the registry holds (we register a handful of services).
pub const REGISTRATIONS_MAX: usize = 64;
/// Most entries in a decoded DUMP reply (a client's view).
pub const DUMP_ENTRIES_MAX: usize = 1024;

xdr_enum! {
    /// PMAP v2 procedures.
    pub enum PmapProc {
        /// Ping.
        Null = 0,
        /// Register a mapping.
        Set = 1,
        /// Remove a mapping.
        Unset = 2,
        /// Port of a program.
        Getport = 3,
        /// All mappings.
        Dump = 4,
        /// Indirect call (not supported: PROC_UNAVAIL).
        Callit = 5,
    }
}

xdr_enum! {
    /// rpcbind v3/v4 procedures (v4 adds 9–12).
    pub enum RpcbProc {
        /// Ping.
        Null = 0,
        /// Register.
        Set = 1,
        /// Unregister.
        Unset = 2,
        /// Universal address of a program.
        Getaddr = 3,
        /// All registrations.
        Dump = 4,
        /// Indirect call / broadcast (not supported).
        Callit = 5,
        /// Server time.
        Gettime = 6,
        /// Universal to transport address (not supported).
        Uaddr2taddr = 7,
        /// Transport to universal address (not supported).
        Taddr2uaddr = 8,
        /// v4: GETADDR with an exact version match.
        Getversaddr = 9,
        /// v4: indirect call (not supported).
        Indirect = 10,
        /// v4: address list (not supported).
        Getaddrlist = 11,
        /// v4: statistics (not supported).
        Getstat = 12,
    }
}

xdr_struct! {
    /// A PMAP v2 mapping.
    pub struct Mapping {
        /// Program.
        pub prog: u32,
        /// Version.
        pub vers: u32,
        /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
        pub prot: u32,
        /// Port (0 in GETPORT questions; 0 in the answer means "not registered").
        pub port: u32,
    }
}

/// Decodes a bounded rpcbind string.
fn rpcb_string(dec: &mut Decoder<'_>) -> XdrResult<String> {
    dec.string_utf8("rpcb string", RPCB_STRING_BYTES_MAX)
}

/// An rpcbind registration or question (`rpcb`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rpcb {
    /// Program.
    pub r_prog: u32,
    /// Version.
    pub r_vers: u32,
    /// Network id ("tcp", "udp", "tcp6", "udp6"); empty in GETADDR means "the transport
    /// this question came on".
    pub r_netid: String,
    /// Universal address.
    pub r_addr: String,
    /// Owner of the registration.
    pub r_owner: String,
}

impl Xdr for Rpcb {
    fn encode(&self, out: &mut Vec<u8>) {
        for s in [&self.r_netid, &self.r_addr, &self.r_owner] {
            assert!(s.len() <= RPCB_STRING_BYTES_MAX);
        }
        out.put_u32(self.r_prog);
        out.put_u32(self.r_vers);
        out.put_opaque(self.r_netid.as_bytes());
        out.put_opaque(self.r_addr.as_bytes());
        out.put_opaque(self.r_owner.as_bytes());
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        Ok(Rpcb {
            r_prog: dec.u32()?,
            r_vers: dec.u32()?,
            r_netid: rpcb_string(dec)?,
            r_addr: rpcb_string(dec)?,
            r_owner: rpcb_string(dec)?,
        })
    }
}

/// The PMAP DUMP reply (`pmaplist`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PmapList(pub Vec<Mapping>);

impl Xdr for PmapList {
    fn encode(&self, out: &mut Vec<u8>) {
        crate::xdr::put_list(out, &self.0);
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        Ok(PmapList(dec.list(
            "pmaplist",
            DUMP_ENTRIES_MAX,
            Mapping::decode,
        )?))
    }
}

/// The rpcbind DUMP reply (`rpcblist`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RpcbList(pub Vec<Rpcb>);

impl Xdr for RpcbList {
    fn encode(&self, out: &mut Vec<u8>) {
        crate::xdr::put_list(out, &self.0);
    }
    fn decode(dec: &mut Decoder<'_>) -> XdrResult<Self> {
        Ok(RpcbList(dec.list(
            "rpcblist",
            DUMP_ENTRIES_MAX,
            Rpcb::decode,
        )?))
    }
}

/// Formats a universal address (RFC 5665 §5.2.3): `h1.h2.h3.h4.p1.p2` for IPv4, the IPv6
/// text form followed by `.p1.p2` for IPv6.
pub fn format_uaddr(addr: SocketAddr) -> String {
    let port = addr.port();
    format!("{}.{}.{}", addr.ip(), port >> 8, port & 0xff)
}

/// Parses a universal address; `None` if malformed.
pub fn parse_uaddr(uaddr: &str) -> Option<SocketAddr> {
    let (rest, p2) = uaddr.rsplit_once('.')?;
    let (host, p1) = rest.rsplit_once('.')?;
    let p1: u8 = p1.parse().ok()?;
    let p2: u8 = p2.parse().ok()?;
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, u16::from(p1) << 8 | u16::from(p2)))
}

/// The netid a PMAP protocol number stands for.
pub fn netid_of_prot(prot: u32) -> Option<&'static str> {
    match prot {
        IPPROTO_TCP => Some("tcp"),
        IPPROTO_UDP => Some("udp"),
        _ => None,
    }
}

fn prot_of_netid(netid: &str) -> Option<u32> {
    match netid {
        "tcp" => Some(IPPROTO_TCP),
        "udp" => Some(IPPROTO_UDP),
        _ => None,
    }
}

/// One registered service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Program.
    pub prog: u32,
    /// Version.
    pub vers: u32,
    /// Network id.
    pub netid: String,
    /// Port on every local address.
    pub port: u16,
    /// Owner string reported by DUMP.
    pub owner: String,
}

/// Facts about one incoming portmap call that the registry cannot know by itself.
#[derive(Debug, Clone)]
pub struct CallContext<'a> {
    /// Local address the call arrived on (host part of returned universal addresses).
    pub local_ip: IpAddr,
    /// Netid of the transport the call arrived on ("tcp", "udp", …).
    pub netid: &'a str,
    /// Current time in seconds since the epoch (GETTIME).
    pub now_unix_s: u32,
    /// Whether SET/UNSET are allowed from this caller (the server allows them only from
    /// loopback, or not at all).
    pub may_modify: bool,
}

/// The portmap/rpcbind registry: a bounded list of registrations and the logic answering
/// PMAP v2 and rpcbind v3/v4 calls.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    entries: Vec<Registration>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registrations in insertion order.
    pub fn entries(&self) -> &[Registration] {
        &self.entries
    }

    /// Adds a registration. Returns false if (prog, vers, netid) is already registered or the
    /// registry is full (the rpcbind semantics: SET does not overwrite).
    pub fn set(&mut self, reg: Registration) -> bool {
        let exists = self
            .entries
            .iter()
            .any(|e| e.prog == reg.prog && e.vers == reg.vers && e.netid == reg.netid);
        if exists || self.entries.len() >= REGISTRATIONS_MAX {
            return false;
        }
        self.entries.push(reg);
        true
    }

    /// Removes registrations of (prog, vers) on `netid`, or on every netid if `None`.
    /// Returns true if anything was removed.
    pub fn unset(&mut self, prog: u32, vers: u32, netid: Option<&str>) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|e| !(e.prog == prog && e.vers == vers && netid.is_none_or(|n| n == e.netid)));
        self.entries.len() != before
    }

    /// The port of (prog, vers) on `netid`. Without `exact_version`, another version of the
    /// program is returned when the asked one is absent (what rpcbind does for GETPORT and
    /// GETADDR, so the client can then learn the range from PROG_MISMATCH).
    pub fn lookup(&self, prog: u32, vers: u32, netid: &str, exact_version: bool) -> Option<u16> {
        let mut candidate = None;
        for e in self
            .entries
            .iter()
            .filter(|e| e.prog == prog && e.netid == netid)
        {
            if e.vers == vers {
                return Some(e.port);
            }
            candidate.get_or_insert(e.port);
        }
        if exact_version {
            None
        } else {
            candidate
        }
    }

    /// Answers one call to [`PMAP_PROGRAM`]: returns the encoded results (to follow a SUCCESS
    /// reply header), or why the call cannot be answered.
    pub fn handle(
        &mut self,
        call: &CallHeader,
        record: &[u8],
        args_offset: usize,
        ctx: &CallContext<'_>,
    ) -> Result<Vec<u8>, ArgsError> {
        debug_assert_eq!(call.prog, PMAP_PROGRAM);
        let mut dec = Decoder::new_at(record, args_offset);
        let mut out = Vec::new();
        match call.vers {
            PMAP_V2 => self.handle_v2(call.proc_, &mut dec, ctx, &mut out)?,
            RPCB_V3 | RPCB_V4 => {
                self.handle_rpcb(call.vers, call.proc_, &mut dec, ctx, &mut out)?
            }
            _ => {
                return Err(ArgsError::ProgMismatch {
                    low: PMAP_V2,
                    high: RPCB_V4,
                })
            }
        }
        dec.finish()?;
        Ok(out)
    }

    fn handle_v2(
        &mut self,
        proc_: u32,
        dec: &mut Decoder<'_>,
        ctx: &CallContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), ArgsError> {
        let p = PmapProc::from_u32(proc_).ok_or(ArgsError::ProcUnavail { proc_ })?;
        match p {
            PmapProc::Null => {}
            PmapProc::Set | PmapProc::Unset => {
                let m = Mapping::decode(dec)?;
                let ok = ctx.may_modify
                    && match (p, netid_of_prot(m.prot), u16::try_from(m.port)) {
                        (PmapProc::Set, Some(netid), Ok(port)) => self.set(Registration {
                            prog: m.prog,
                            vers: m.vers,
                            netid: netid.to_owned(),
                            port,
                            owner: String::new(),
                        }),
                        // PMAP UNSET ignores prot and port: it removes every transport.
                        (PmapProc::Unset, _, _) => {
                            let a = self.unset(m.prog, m.vers, Some("tcp"));
                            let b = self.unset(m.prog, m.vers, Some("udp"));
                            a || b
                        }
                        _ => false,
                    };
                out.put_bool(ok);
            }
            PmapProc::Getport => {
                let m = Mapping::decode(dec)?;
                let port = netid_of_prot(m.prot)
                    .and_then(|netid| self.lookup(m.prog, m.vers, netid, false))
                    .unwrap_or(0);
                out.put_u32(u32::from(port));
            }
            PmapProc::Dump => {
                let list = self
                    .entries
                    .iter()
                    .filter_map(|e| {
                        Some(Mapping {
                            prog: e.prog,
                            vers: e.vers,
                            prot: prot_of_netid(&e.netid)?,
                            port: u32::from(e.port),
                        })
                    })
                    .collect();
                PmapList(list).encode(out);
            }
            PmapProc::Callit => return Err(ArgsError::ProcUnavail { proc_ }),
        }
        Ok(())
    }

    fn handle_rpcb(
        &mut self,
        vers: u32,
        proc_: u32,
        dec: &mut Decoder<'_>,
        ctx: &CallContext<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), ArgsError> {
        let p = RpcbProc::from_u32(proc_).ok_or(ArgsError::ProcUnavail { proc_ })?;
        match p {
            RpcbProc::Null => {}
            RpcbProc::Set => {
                let r = Rpcb::decode(dec)?;
                let ok = ctx.may_modify
                    && match parse_uaddr(&r.r_addr) {
                        Some(addr) if !r.r_netid.is_empty() => self.set(Registration {
                            prog: r.r_prog,
                            vers: r.r_vers,
                            netid: r.r_netid,
                            port: addr.port(),
                            owner: r.r_owner,
                        }),
                        _ => false,
                    };
                out.put_bool(ok);
            }
            RpcbProc::Unset => {
                let r = Rpcb::decode(dec)?;
                let netid = (!r.r_netid.is_empty()).then_some(r.r_netid.as_str());
                let ok = ctx.may_modify && self.unset(r.r_prog, r.r_vers, netid);
                out.put_bool(ok);
            }
            RpcbProc::Getaddr | RpcbProc::Getversaddr => {
                if p == RpcbProc::Getversaddr && vers != RPCB_V4 {
                    return Err(ArgsError::ProcUnavail { proc_ });
                }
                let r = Rpcb::decode(dec)?;
                let netid = if r.r_netid.is_empty() {
                    ctx.netid
                } else {
                    r.r_netid.as_str()
                };
                let exact = p == RpcbProc::Getversaddr;
                // An empty string means "not registered" (RFC 1833 §2.2.1).
                let uaddr = self
                    .lookup(r.r_prog, r.r_vers, netid, exact)
                    .map(|port| format_uaddr(SocketAddr::new(ctx.local_ip, port)))
                    .unwrap_or_default();
                out.put_opaque(uaddr.as_bytes());
            }
            RpcbProc::Dump => {
                let list = self
                    .entries
                    .iter()
                    .map(|e| Rpcb {
                        r_prog: e.prog,
                        r_vers: e.vers,
                        r_netid: e.netid.clone(),
                        r_addr: format_uaddr(SocketAddr::new(ctx.local_ip, e.port)),
                        r_owner: e.owner.clone(),
                    })
                    .collect();
                RpcbList(list).encode(out);
            }
            RpcbProc::Gettime => out.put_u32(ctx.now_unix_s),
            RpcbProc::Callit
            | RpcbProc::Uaddr2taddr
            | RpcbProc::Taddr2uaddr
            | RpcbProc::Indirect
            | RpcbProc::Getaddrlist
            | RpcbProc::Getstat => return Err(ArgsError::ProcUnavail { proc_ }),
        }
        Ok(())
    }
}

/// Checks that a string decoded from a reply is a universal address (a client's helper).
pub fn decode_uaddr_result(dec: &mut Decoder<'_>) -> XdrResult<Option<SocketAddr>> {
    let s = rpcb_string(dec)?;
    if s.is_empty() {
        return Ok(None);
    }
    parse_uaddr(&s).map(Some).ok_or(XdrError::NotUtf8 {
        what: "universal address (unparsable)",
    })
}

#[cfg(test)]
mod arb_impls {
    use super::*;
    use crate::arb::{arb_vec, Arb, Gen};

    fn arb_string(g: &mut Gen) -> String {
        let n = g.below(20);
        (0..n).map(|_| (b'a' + g.below(26) as u8) as char).collect()
    }
    impl Arb for Rpcb {
        fn arb(g: &mut Gen) -> Self {
            Rpcb {
                r_prog: g.u32(),
                r_vers: g.u32(),
                r_netid: arb_string(g),
                r_addr: arb_string(g),
                r_owner: arb_string(g),
            }
        }
    }
    impl Arb for PmapList {
        fn arb(g: &mut Gen) -> Self {
            PmapList(arb_vec(g, 5))
        }
    }
    impl Arb for RpcbList {
        fn arb(g: &mut Gen) -> Self {
            RpcbList(arb_vec(g, 5))
        }
    }
}
