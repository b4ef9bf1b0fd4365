//! ONC RPC server transport of a twinfiler node, and the portmapper/rpcbind service.
//!
//! The transport owns sockets: it reads records (TCP record marking, or one UDP datagram),
//! decodes the call header, routes by program number to a [`Program`], and writes the reply.
//! Programs (portmap, MOUNT, NFS) never see a socket: they get a [`Call`] and return an
//! [`Outcome`].
//!
//! - [`server`]: [`RpcServer`], the TCP/UDP transport with explicit bounds
//!   ([`ServerConfig`]), back-pressure, out-of-order replies and graceful stop.
//! - [`portmap`]: [`PortmapService`], the portmapper/rpcbind program.
//! - [`framing`]: [`framing::RecordReader`], TCP record marking into owned buffers (also
//!   used by clients to read replies).
//!
//! A node builds one server per identity (address):
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use twinfiler_proto::portmap::PMAP_PROGRAM;
//! use twinfiler_rpc::{PortmapService, RpcServer, ServerConfig};
//!
//! let server = RpcServer::new(ServerConfig::default()).expect("valid bounds");
//! let portmap = Arc::new(PortmapService::new());
//! server.register(PMAP_PROGRAM, portmap.clone());
//! let tcp = server.listen_tcp("127.0.0.11:111".parse().unwrap()).await?;
//! let udp = server.listen_udp("127.0.0.11:111".parse().unwrap()).await?;
//! portmap.set_self(Some(tcp.port()), Some(udp.port()));
//! // ... register MOUNT and NFS the same way, then portmap.set_program(...) for them.
//! server.stop(std::time::Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod framing;
pub mod portmap;
pub mod server;

pub use portmap::PortmapService;
pub use server::{
    Peer, RpcServer, ServerConfig, ServerStats, StopReport, BUSY_POLL_AFTER_LONE_CALLS,
};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use twinfiler_proto::rpc::{CallHeader, ReplyHeader};

/// A boxed, sendable future (what [`Program::call`] returns).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How a call arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP connection (record marking).
    Tcp,
    /// A UDP datagram.
    Udp,
}

/// One decoded call handed to a program.
#[derive(Debug, Clone)]
pub struct Call {
    /// The call header (xid, program, version, procedure, credential).
    pub header: CallHeader,
    /// The whole record; the procedure's arguments start at `args_offset`.
    pub record: Bytes,
    /// Offset of the arguments in `record`.
    pub args_offset: usize,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address the call arrived on (which identity of the node it is for).
    pub local: SocketAddr,
    /// TCP or UDP.
    pub transport: Transport,
}

impl Call {
    /// The procedure's arguments (the record from `args_offset` on).
    pub fn args(&self) -> &[u8] {
        self.record.get(self.args_offset..).unwrap_or_default()
    }
}

/// A complete RPC reply message (no record mark): `head` followed by the pieces of `data`
/// on the wire. `data` lets large READ payloads go out without being copied: each piece
/// may share a buffer of the file system (a cached block), and the transport sends them
/// with one vectored write.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Reply header and results (for READ: up to and including the data length word).
    pub head: Vec<u8>,
    /// Bytes sent after `head`, in order (READ data, its XDR padding included); often
    /// empty.
    pub data: Vec<Bytes>,
}

impl Reply {
    /// A reply that is all in one buffer.
    pub fn from_vec(head: Vec<u8>) -> Self {
        Reply {
            head,
            data: Vec::new(),
        }
    }

    /// A reply of a head and one more buffer.
    pub fn with_data(head: Vec<u8>, data: Bytes) -> Self {
        Reply {
            head,
            data: vec![data],
        }
    }

    /// A reply that is only a header: an RPC-level error (PROG_MISMATCH, PROC_UNAVAIL,
    /// GARBAGE_ARGS, SYSTEM_ERR, AUTH_ERROR …) or a SUCCESS without results.
    pub fn header_only(header: &ReplyHeader) -> Self {
        Reply::from_vec(twinfiler_proto::xdr::to_vec(header))
    }

    /// Bytes on the wire (without the record mark).
    pub fn len(&self) -> usize {
        self.head.len() + self.data.iter().map(Bytes::len).sum::<usize>()
    }

    /// Whether the reply is empty (never for a real reply).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole message in one buffer (a copy: for datagrams and tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(&self.head);
        for piece in &self.data {
            out.extend_from_slice(piece);
        }
        out
    }
}

/// What a program does with a call.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Send this reply.
    Reply(Reply),
    /// Send nothing (e.g. a retransmission of a request still in progress: the client
    /// retries and gets the cached reply; or a node draining for takeover holds requests).
    Drop,
}

/// An RPC program served by the transport (portmap, MOUNT, NFS).
pub trait Program: Send + Sync + 'static {
    /// Handles one call whose program number is this program's. Version and procedure
    /// checks are the program's (reply PROG_MISMATCH / PROC_UNAVAIL / GARBAGE_ARGS).
    ///
    /// The transport runs each call in its own task, so calls of one connection execute
    /// concurrently; a call holds its in-flight permits until its reply is written, so a slow
    /// call slows its client (back-pressure) and nobody else. A panic is caught and answered
    /// with SYSTEM_ERR. The future may be dropped before completion when the server stops
    /// after its grace period.
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<Outcome>;
}
