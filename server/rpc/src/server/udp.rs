//! UDP: one datagram is one call, and its reply is one datagram.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tracing::debug;

use super::stats::{add, bump};
use super::tasks::{acquire, reached, CallPermit, Phase};
use super::{checked_reply, complete_call_permit, Shared, UDP_DATAGRAM_BYTES_MAX};
use crate::Transport;

/// Receive buffer: larger than any IPv4 UDP payload, so no datagram is truncated.
const UDP_RECEIVE_BYTES: usize = 64 * 1024;

/// Receives calls on `socket` until the server drains. A datagram is received only while a
/// permit of the socket's bound is held, so at the bound the kernel queue absorbs the load
/// (and then drops datagrams, which clients retransmit).
pub(super) async fn serve(shared: Arc<Shared>, socket: Arc<UdpSocket>, local: SocketAddr) {
    let inflight = Arc::new(Semaphore::new(shared.config.udp_inflight_max));
    let mut buf = vec![0u8; UDP_RECEIVE_BYTES];
    let draining = reached(shared.phase(), Phase::Draining);
    tokio::pin!(draining);
    loop {
        // The socket's own bound is taken before receiving, so at the bound nothing is
        // received; the total one after, so an idle socket does not hold a slot of it.
        let local_permit = tokio::select! {
            biased;
            _ = &mut draining => break,
            permit = acquire(&inflight, &shared.counters) => permit,
        };
        let received = tokio::select! {
            biased;
            _ = &mut draining => break,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            Err(err) => {
                // E.g. ECONNREFUSED reported for an earlier reply to a vanished client.
                debug!(%local, error = %err, "UDP receive failed");
                continue;
            }
        };
        add(&shared.counters.bytes_in, len);
        let permit = tokio::select! {
            biased;
            _ = &mut draining => break,
            permit = complete_call_permit(&shared, local_permit) => permit,
        };
        let record = Bytes::copy_from_slice(&buf[..len]);
        let call = udp_call(shared.clone(), socket.clone(), record, peer, local, permit);
        shared.tasks.spawn(call);
    }
    debug!(%local, "UDP listener closed");
}

/// Runs one call and sends its reply as one datagram.
async fn udp_call(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    record: Bytes,
    peer: SocketAddr,
    local: SocketAddr,
    permit: CallPermit,
) {
    let stopped = reached(shared.phase(), Phase::Stopped);
    let reply = tokio::select! {
        biased;
        reply = shared.dispatch(record, peer, local, Transport::Udp) => reply,
        _ = stopped => return,
    };
    let Some(reply) = reply.and_then(|r| checked_reply(&shared, r, UDP_DATAGRAM_BYTES_MAX, peer))
    else {
        return;
    };
    let datagram = reply.to_vec();
    match socket.send_to(&datagram, peer).await {
        Ok(sent) => {
            add(&shared.counters.bytes_out, sent);
            bump(&shared.counters.replies);
        }
        Err(err) => debug!(%peer, error = %err, "UDP reply not sent"),
    }
    drop(permit);
}
