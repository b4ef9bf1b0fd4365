//! The portmapper / rpcbind program (100000: PMAP v2, rpcbind v3 and v4) as a [`Program`],
//! over the sans-IO [`Registry`] of `twinfiler-proto`.
//!
//! - Universal addresses in GETADDR and DUMP replies carry the local address the question
//!   arrived on ([`Call::local`]): a node serving two identities on two addresses answers
//!   each client with the address it used, so after a takeover the partner's clients are
//!   sent to the partner's (now local) address.
//! - SET and UNSET are honoured only from a loopback peer; a remote one gets `false`.
//!   Remote registration would let anyone on the network redirect our clients.
//! - DUMP over UDP from a remote peer answers PROC_UNAVAIL: a large reply to a small
//!   datagram with a forgeable source is a traffic amplifier. DUMP over TCP works for anyone.
//! - rpcbind v4 GETADDRLIST (`rpcinfo -l`) is answered here (the registry does not): every
//!   transport (prog, vers) is registered on, with our local address.
//! - CALLIT / INDIRECT and the taddr conversions answer PROC_UNAVAIL (as the registry says):
//!   indirect calls turn a portmapper into a reflector and nobody we serve needs them.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::debug;
use twinfiler_proto::portmap::{
    format_uaddr, CallContext, Registration, Registry, Rpcb, PMAP_PROGRAM, PMAP_V2, RPCB_V3,
    RPCB_V4,
};
use twinfiler_proto::rpc::{AcceptStat, ReplyHeader};
use twinfiler_proto::xdr::{self, Xdr, XdrWrite};

use crate::{BoxFuture, Call, Outcome, Program, Reply, Transport};

/// Owner string of the registrations the node makes for itself (shown by DUMP).
pub const OWNER: &str = "twinfiler";

/// The netid of a transport for an address family ("tcp", "udp", "tcp6", "udp6").
pub fn netid(transport: Transport, ip: IpAddr) -> &'static str {
    match (transport, ip.to_canonical()) {
        (Transport::Tcp, IpAddr::V4(_)) => "tcp",
        (Transport::Udp, IpAddr::V4(_)) => "udp",
        (Transport::Tcp, IpAddr::V6(_)) => "tcp6",
        (Transport::Udp, IpAddr::V6(_)) => "udp6",
    }
}

/// The portmapper/rpcbind service. Register it on an
/// [`RpcServer`](crate::server::RpcServer) under [`PMAP_PROGRAM`].
#[derive(Debug, Default)]
pub struct PortmapService {
    registry: Mutex<Registry>,
}

impl PortmapService {
    /// A portmapper with no registrations.
    pub fn new() -> Self {
        Self::default()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // The registry is a plain list: a panic elsewhere cannot leave it half-changed.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (prog, vers) on `netid` at `port` (of every local address). Returns false
    /// if that triple is already registered or the registry is full.
    pub fn set(&self, prog: u32, vers: u32, netid: &str, port: u16) -> bool {
        self.registry().set(Registration {
            prog,
            vers,
            netid: netid.to_owned(),
            port,
            owner: OWNER.to_owned(),
        })
    }

    /// Registers every version in `versions` of `prog` on TCP (if `tcp_port`) and UDP (if
    /// `udp_port`). Returns false if any registration was refused.
    pub fn set_program(
        &self,
        prog: u32,
        versions: &[u32],
        tcp_port: Option<u16>,
        udp_port: Option<u16>,
    ) -> bool {
        let mut all = true;
        for &vers in versions {
            for (netid, port) in [("tcp", tcp_port), ("udp", udp_port)] {
                if let Some(port) = port {
                    all &= self.set(prog, vers, netid, port);
                }
            }
        }
        all
    }

    /// Registers the portmapper itself (v2, v3, v4) at its own ports, as rpcbind does.
    pub fn set_self(&self, tcp_port: Option<u16>, udp_port: Option<u16>) -> bool {
        self.set_program(
            PMAP_PROGRAM,
            &[PMAP_V2, RPCB_V3, RPCB_V4],
            tcp_port,
            udp_port,
        )
    }

    /// Removes (prog, vers) on `netid`, or on every netid if `None`.
    pub fn unset(&self, prog: u32, vers: u32, netid: Option<&str>) -> bool {
        self.registry().unset(prog, vers, netid)
    }

    /// The current registrations.
    pub fn registrations(&self) -> Vec<Registration> {
        self.registry().entries().to_vec()
    }

    /// Answers one call synchronously (what [`Program::call`] wraps).
    pub fn answer(&self, call: &Call) -> Reply {
        let xid = call.header.xid;
        if call.header.vers == RPCB_V4 && call.header.proc_ == RPCBPROC_GETADDRLIST {
            return self.getaddrlist(call);
        }
        let from_loopback = call.peer.ip().to_canonical().is_loopback();
        // DUMP = 4 in every version. Its reply is 10–30 times the request: over UDP, with a
        // forged source address, that makes us a reflector (the classic portmapper
        // amplification). Remote clients dump over TCP (`rpcinfo -p` does).
        if call.transport == Transport::Udp && call.header.proc_ == 4 && !from_loopback {
            debug!(peer = %call.peer, "DUMP over UDP from a remote peer refused");
            return Reply::header_only(&ReplyHeader::accepted(xid, AcceptStat::ProcUnavail));
        }
        let may_modify = from_loopback;
        let now_unix_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let ctx = CallContext {
            local_ip: call.local.ip().to_canonical(),
            netid: netid(call.transport, call.local.ip()),
            now_unix_s,
            may_modify,
        };
        let result = self
            .registry()
            .handle(&call.header, &call.record, call.args_offset, &ctx);
        match result {
            Ok(results) => {
                // SET = 1 and UNSET = 2 in every version.
                if !may_modify && matches!(call.header.proc_, 1 | 2) {
                    debug!(peer = %call.peer, "SET/UNSET from a remote peer refused");
                }
                let mut head = ReplyHeader::success(xid).to_vec_with_capacity(results.len());
                head.extend_from_slice(&results);
                Reply::from_vec(head)
            }
            Err(err) => {
                debug!(error = %err, "portmap call rejected");
                Reply::header_only(&err.reply(xid))
            }
        }
    }
}

/// rpcbind v4 procedure number of GETADDRLIST.
const RPCBPROC_GETADDRLIST: u32 = 11;
/// `nc_semantics` of a datagram transport (netconfig NC_TPI_CLTS).
const NC_TPI_CLTS: u32 = 1;
/// `nc_semantics` of an ordered-release stream transport (netconfig NC_TPI_COTS_ORD).
const NC_TPI_COTS_ORD: u32 = 3;

impl PortmapService {
    /// rpcbind v4 GETADDRLIST: an `rpcb_entry_list` of every transport (prog, vers) is
    /// registered on, with universal addresses on the local address of the call.
    fn getaddrlist(&self, call: &Call) -> Reply {
        let xid = call.header.xid;
        let mut dec = xdr::Decoder::new_at(&call.record, call.args_offset);
        let question = match Rpcb::decode(&mut dec).and_then(|q| dec.finish().map(|()| q)) {
            Ok(question) => question,
            Err(err) => {
                debug!(error = %err, "GETADDRLIST arguments rejected");
                return Reply::header_only(&ReplyHeader::garbage_args(xid));
            }
        };
        let local_ip = call.local.ip().to_canonical();
        let family = if local_ip.is_ipv4() { "inet" } else { "inet6" };
        let mut out = ReplyHeader::success(xid).to_vec_with_capacity(256);
        for reg in self.registrations() {
            if reg.prog != question.r_prog || reg.vers != question.r_vers {
                continue;
            }
            let (semantics, proto) = match reg.netid.as_str() {
                "tcp" | "tcp6" => (NC_TPI_COTS_ORD, "tcp"),
                "udp" | "udp6" => (NC_TPI_CLTS, "udp"),
                _ => continue,
            };
            out.put_bool(true);
            out.put_opaque(format_uaddr(SocketAddr::new(local_ip, reg.port)).as_bytes());
            out.put_opaque(reg.netid.as_bytes());
            out.put_u32(semantics);
            out.put_opaque(family.as_bytes());
            out.put_opaque(proto.as_bytes());
        }
        out.put_bool(false);
        Reply::from_vec(out)
    }
}

impl Program for PortmapService {
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<Outcome> {
        let reply = self.answer(&call);
        Box::pin(std::future::ready(Outcome::Reply(reply)))
    }
}
