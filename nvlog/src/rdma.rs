//! RDMA mirror transport (feature `rdma`, libibverbs via `sideway`).
//!
//! Status: compiles and opens the verbs resources (device, protection domain, a
//! registered frame buffer), then reports the transport unavailable: the reliable-connected
//! queue-pair exchange and the send/receive path are not written yet, and no RDMA NIC is
//! available to test them. The engine treats that like an unreachable partner (reconnect
//! attempts, MIRROR_DEGRADED after the bound), so selecting RDMA never loses data.
//!
//! Intended design: frames as today (same MAC), carried by RC SEND into pre-posted
//! receive buffers of `BODY_BYTES_MAX` each; the queue-pair numbers, LIDs/GIDs and PSNs
//! exchanged over a MACed TCP side channel; acks as SENDs the other way.

use crate::proto::{MirrorKey, BODY_BYTES_MAX, MAC_BYTES, PREFIX_BYTES};
use crate::transport::{Connection, Connector, TransportError};
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::AccessFlags;
use std::net::SocketAddr;

/// Connects to the partner's mirror over RDMA.
pub struct RdmaConnector {
    device: Option<String>,
    side_channel: SocketAddr,
    _key: MirrorKey,
}

impl RdmaConnector {
    /// A connector using `device` (first device when `None`), exchanging queue-pair
    /// details with the partner over `side_channel`.
    pub fn new(device: Option<String>, side_channel: SocketAddr, key: MirrorKey) -> RdmaConnector {
        RdmaConnector {
            device,
            side_channel,
            _key: key,
        }
    }
}

impl Connector for RdmaConnector {
    fn connect(&self) -> Result<Connection, TransportError> {
        let unavailable = |what: String| TransportError::Unavailable(what);
        let list =
            DeviceList::new().map_err(|e| unavailable(format!("no verbs device list: {e}")))?;
        let device = list
            .iter()
            .find(|d| self.device.as_ref().is_none_or(|want| d.name() == *want))
            .ok_or_else(|| unavailable(format!("RDMA device {:?} not found", self.device)))?;
        let context = device
            .open()
            .map_err(|e| unavailable(format!("open {}: {e}", device.name())))?;
        let pd = context
            .alloc_pd()
            .map_err(|e| unavailable(format!("alloc PD: {e}")))?;
        let frame_buffer = vec![0u8; PREFIX_BYTES + BODY_BYTES_MAX + MAC_BYTES];
        // SAFETY: the buffer outlives the registration (both dropped at the end of this call).
        let _mr = unsafe {
            pd.reg_mr(
                frame_buffer.as_ptr() as usize,
                frame_buffer.len(),
                AccessFlags::LocalWrite,
            )
        }
        .map_err(|e| unavailable(format!("register frame buffer: {e}")))?;
        Err(unavailable(format!(
            "RDMA queue-pair exchange with {} is not implemented yet (device {} opened)",
            self.side_channel,
            device.name()
        )))
    }
}
