//! IP takeover: add or remove a data address on an interface, and announce it with
//! gratuitous ARP so clients and switches move to the new MAC at once (the lab measured a
//! 0.24 s client outage with it, 50 s without).
//!
//! Netlink by hand (`RTM_NEWADDR` / `RTM_DELADDR` on a `NETLINK_ROUTE` socket) rather than
//! the `rtnetlink` crate or the `ip` command: the two requests are fixed 40-byte messages and
//! an ack, so a synchronous call with no process to spawn and no async netlink stack (a dozen
//! crates whose API changes between minor versions) is the smaller thing to audit; the kernel
//! answers with an errno we map to a clear error. Everything acts in the calling thread's
//! network namespace.
//!
//! IPv4 only for now (IPv6 would need unsolicited neighbour advertisements instead of ARP).
//! Addresses on 127.0.0.0/8 (the demo) need neither: the node binds its listeners there.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Gratuitous ARPs sent per raise by default (a switch or client may miss one).
pub const GARP_COUNT_DEFAULT: u32 = 3;
/// Spacing between them by default.
pub const GARP_SPACING_MS_DEFAULT: u64 = 100;
/// Gratuitous ARPs per call at most.
pub const GARP_COUNT_MAX: u32 = 16;

/// An IPv4 address with its prefix length, e.g. 10.0.0.100/24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix_len: u8,
}

/// Why an address operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpError {
    /// The interface does not exist (in this network namespace).
    #[error("interface {0:?} not found")]
    NoInterface(String),
    /// The prefix length is out of range.
    #[error("prefix length {0} out of range (0..=32)")]
    Prefix(u8),
    /// The kernel refused.
    #[error("{op} {addr} on {ifname}: {source}")]
    Kernel {
        /// What we asked.
        op: &'static str,
        /// The address.
        addr: Ipv4Addr,
        /// The interface.
        ifname: String,
        /// The errno.
        source: io::Error,
    },
    /// Socket setup or IO failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] io::Error),
}

/// The index of `ifname` in the calling thread's network namespace.
pub fn interface_index(ifname: &str) -> Result<u32, IpError> {
    let c = CString::new(ifname).map_err(|_| IpError::NoInterface(ifname.to_owned()))?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(IpError::NoInterface(ifname.to_owned()));
    }
    Ok(index)
}

/// Adds `cidr` to `ifname`. Adding an address already present is not an error.
pub fn add_address(ifname: &str, cidr: Ipv4Cidr) -> Result<(), IpError> {
    let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
    match address_request(ifname, cidr, libc::RTM_NEWADDR, flags, "add") {
        Err(IpError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
            Ok(())
        }
        other => other,
    }
}

/// Removes `cidr` from `ifname`. Removing an absent address is not an error.
pub fn remove_address(ifname: &str, cidr: Ipv4Cidr) -> Result<(), IpError> {
    match address_request(ifname, cidr, libc::RTM_DELADDR, 0, "remove") {
        Err(IpError::Kernel { source, .. })
            if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn socket(domain: i32, ty: i32, protocol: i32, what: &'static str) -> Result<OwnedFd, IpError> {
    // SAFETY: plain socket(2) call; the result is checked before it is owned.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(IpError::Io(what, io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const NLMSG_HDR_BYTES: usize = 16;
const IFADDRMSG_BYTES: usize = 8;
const RTA_ADDR_BYTES: usize = 8; // rtattr (4) + IPv4 (4)
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// Bound on the ack wait (the kernel answers at once; this only guards a wedged socket).
const NETLINK_ACK_TIMEOUT_MS: i64 = 2_000;

/// Builds one RTM_NEWADDR / RTM_DELADDR request (native byte order, as netlink wants).
fn address_message(index: u32, cidr: Ipv4Cidr, msg_type: u16, flags: i32, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDR_BYTES + IFADDRMSG_BYTES + 2 * RTA_ADDR_BYTES;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16;
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
                                              // struct ifaddrmsg
    m.push(libc::AF_INET as u8);
    m.push(cidr.prefix_len);
    m.push(0); // flags
    m.push(0); // scope: universe
    m.extend_from_slice(&index.to_ne_bytes());
    for attr in [IFA_LOCAL, IFA_ADDRESS] {
        m.extend_from_slice(&(RTA_ADDR_BYTES as u16).to_ne_bytes());
        m.extend_from_slice(&attr.to_ne_bytes());
        m.extend_from_slice(&cidr.addr.octets());
    }
    assert_eq!(m.len(), len);
    m
}

fn address_request(
    ifname: &str,
    cidr: Ipv4Cidr,
    msg_type: u16,
    flags: i32,
    op: &'static str,
) -> Result<(), IpError> {
    if cidr.prefix_len > 32 {
        return Err(IpError::Prefix(cidr.prefix_len));
    }
    let index = interface_index(ifname)?;
    let fd = socket(
        libc::AF_NETLINK,
        libc::SOCK_RAW,
        libc::NETLINK_ROUTE,
        "netlink socket",
    )?;
    let tv = libc::timeval {
        tv_sec: NETLINK_ACK_TIMEOUT_MS / 1000,
        tv_usec: (NETLINK_ACK_TIMEOUT_MS % 1000) * 1000,
    };
    // SAFETY: setsockopt with a correctly sized timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let seq = 1;
    let msg = address_message(index, cidr, msg_type, flags, seq);
    // SAFETY: a zeroed sockaddr_nl addressed to the kernel (pid 0).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: msg and kernel are live for the call, lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(IpError::Io("netlink send", io::Error::last_os_error()));
    }
    let mut buf = [0u8; 4096];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(IpError::Io("netlink ack", io::Error::last_os_error()));
    }
    let errno = parse_ack(&buf[..n as usize], seq)
        .ok_or_else(|| IpError::Io("netlink ack", io::Error::other("malformed ack")))?;
    if errno == 0 {
        tracing::info!(%ifname, addr = %cidr.addr, prefix = cidr.prefix_len, op, "address changed");
        Ok(())
    } else {
        Err(IpError::Kernel {
            op,
            addr: cidr.addr,
            ifname: ifname.to_owned(),
            source: io::Error::from_raw_os_error(errno),
        })
    }
}

/// The errno of the NLMSG_ERROR answering `seq` (0 = success); `None` when malformed.
fn parse_ack(buf: &[u8], seq: u32) -> Option<i32> {
    let u32_at = |at: usize| Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?));
    let len = usize::try_from(u32_at(0)?).ok()?;
    let ty = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
    if len > buf.len() || ty != libc::NLMSG_ERROR as u16 || u32_at(8)? != seq {
        return None;
    }
    let error = i32::from_ne_bytes(buf.get(16..20)?.try_into().ok()?);
    error.checked_neg()
}

/// The MAC address of `ifname` (SIOCGIFHWADDR, in the calling thread's namespace).
pub fn interface_mac(ifname: &str) -> Result<[u8; 6], IpError> {
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0, "inet socket")?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(IpError::NoInterface(ifname.to_owned()));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: req is a valid ifreq with a NUL-terminated name.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) } < 0 {
        return Err(IpError::NoInterface(ifname.to_owned()));
    }
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// A gratuitous ARP request for `addr` from `mac` (sender and target address both `addr`).
pub fn garp_packet(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&addr.octets());
    // target hardware address stays zero
    p[24..28].copy_from_slice(&addr.octets());
    p
}

/// Broadcasts `count` gratuitous ARPs for `addr` on `ifname`, `spacing_ms` apart
/// (a raw AF_PACKET socket: needs CAP_NET_RAW).
pub fn send_gratuitous_arp(
    ifname: &str,
    addr: Ipv4Addr,
    count: u32,
    spacing_ms: u64,
) -> Result<(), IpError> {
    let count = count.clamp(1, GARP_COUNT_MAX);
    let index = interface_index(ifname)?;
    let mac = interface_mac(ifname)?;
    let eth_p_arp = (libc::ETH_P_ARP as u16).to_be();
    let fd = socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from(eth_p_arp),
        "packet socket",
    )?;
    // SAFETY: sockaddr_ll is plain data.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = eth_p_arp;
    to.sll_ifindex = i32::try_from(index).map_err(|_| IpError::NoInterface(ifname.to_owned()))?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let packet = garp_packet(mac, addr);
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(spacing_ms));
        }
        // SAFETY: packet and to are live for the call, lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(IpError::Io(
                "gratuitous ARP send",
                io::Error::last_os_error(),
            ));
        }
    }
    tracing::info!(%ifname, %addr, count, "gratuitous ARP sent");
    Ok(())
}

/// Raises `cidr` on `ifname` and announces it (the takeover's `RaiseAddresses` for one
/// address).
pub fn raise(ifname: &str, cidr: Ipv4Cidr) -> Result<(), IpError> {
    add_address(ifname, cidr)?;
    send_gratuitous_arp(
        ifname,
        cidr.addr,
        GARP_COUNT_DEFAULT,
        GARP_SPACING_MS_DEFAULT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_message_layout() {
        let m = address_message(
            7,
            Ipv4Cidr {
                addr: Ipv4Addr::new(10, 0, 0, 100),
                prefix_len: 24,
            },
            libc::RTM_NEWADDR,
            0,
            1,
        );
        assert_eq!(m.len(), 40);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 24);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        assert_eq!(&m[28..32], &[10, 0, 0, 100]);
        assert_eq!(&m[36..40], &[10, 0, 0, 100]);
    }

    #[test]
    fn ack_parsing_is_bounded() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        ack[8..12].copy_from_slice(&1u32.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(parse_ack(&ack, 1), Some(libc::EEXIST));
        assert_eq!(parse_ack(&ack, 2), None);
        for len in 0..ack.len() {
            let _ = parse_ack(&ack[..len], 1);
        }
    }

    #[test]
    fn garp_layout() {
        let p = garp_packet([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[14..18], &[10, 0, 0, 9]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[10, 0, 0, 9]);
    }
}
