//! Transports carry mirror frames between the pair. The engine only sees these traits; TCP
//! is in [`crate::tcp`], RDMA (feature `rdma`) in `crate::rdma`.

use crate::proto::{DecodeError, Frame};

/// Why a transport operation failed; the connection is unusable afterwards.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Socket or device error.
    #[error("mirror transport I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A frame failed authentication: the peer lacks the pre-shared key.
    #[error("mirror peer {peer} refused: {source}")]
    Auth {
        /// Peer address.
        peer: String,
        /// The decode failure.
        source: DecodeError,
    },
    /// A frame was malformed.
    #[error("mirror peer {peer} sent a malformed frame: {source}")]
    Malformed {
        /// Peer address.
        peer: String,
        /// The decode failure.
        source: DecodeError,
    },
    /// The peer closed the connection.
    #[error("mirror peer closed the connection")]
    Closed,
    /// The transport cannot do this here (e.g. no RDMA device).
    #[error("mirror transport unavailable: {0}")]
    Unavailable(String),
}

/// The sending half of a connection.
pub trait FrameSink: Send {
    /// Sends `frames` in order (one vectored write where the transport allows).
    fn send(&mut self, frames: &[Frame]) -> Result<(), TransportError>;
    /// Closes the connection (both directions), waking a blocked receiver.
    fn close(&mut self);
}

/// The receiving half of a connection.
pub trait FrameSource: Send {
    /// Next authenticated frame, or `None` if none arrived within the transport's poll
    /// interval (so the caller can run timers).
    fn recv(&mut self) -> Result<Option<Frame>, TransportError>;
    /// Whether a complete or partial frame is already buffered (more input is imminent:
    /// the receiver delays its coalesced ack).
    fn has_buffered(&self) -> bool;
    /// Peer description for logs.
    fn peer(&self) -> String;
}

/// Both halves of one connection.
pub type Connection = (Box<dyn FrameSink>, Box<dyn FrameSource>);

/// Opens connections to the partner's mirror listener.
pub trait Connector: Send + Sync {
    /// One connection attempt, bounded by the transport's connect timeout.
    fn connect(&self) -> Result<Connection, TransportError>;
}

/// Accepts connections from the partner.
pub trait Acceptor: Send {
    /// Waits up to the transport's poll interval for a connection.
    fn accept(&mut self) -> Result<Option<Connection>, TransportError>;
}
