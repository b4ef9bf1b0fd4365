//! Network namespaces for a pair (root only): `a`, `b` (the nodes) and `c` (the client) on a
//! bridge in namespace `br` (the LAN: management and data addresses), and the interconnect on
//! its own veth pair `ic0` between a and b, so that it can be cut with both nodes alive.
//! Dropping a [`NetLab`] deletes the namespaces; [`NetLab::setup`] first removes those a dead
//! test process left behind.

use std::net::Ipv4Addr;
use std::process::Command;

use super::LabError;

/// The LAN's first three octets (TEST-NET-2 style private range, only inside the namespaces).
pub const LAN_NET: &str = "10.77.0";
/// Prefix length of LAN and data addresses.
pub const PREFIX_LEN: u8 = 24;
/// The LAN interface in each host namespace.
pub const LAN_IF: &str = "eth0";
/// The interconnect interface in a and b.
pub const IC_IF: &str = "ic0";
/// Management addresses of a and b (console).
pub const MGMT_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// See [`MGMT_A`].
pub const MGMT_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Data addresses of a and b (raised by the nodes themselves).
pub const DATA_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
/// See [`DATA_A`].
pub const DATA_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// Interconnect addresses of a and b (heartbeat and mirror).
pub const IC_A: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// See [`IC_A`].
pub const IC_B: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// Namespace names start with this, then the test process id.
const PREFIX: &str = "tfpair";

/// Runs `ip ARGS`; its stdout, or the failure with stderr.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LabError::Failed(format!("run ip: {e}")))?;
    if !out.status.success() {
        return Err(LabError::Failed(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when the process runs as root (namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The namespaces of one lab.
pub struct NetLab {
    prefix: String,
}

impl NetLab {
    /// Namespace name of `host` ("a", "b", "c", "br").
    pub fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// Builds the namespaces, the bridge, the LAN and the interconnect. `tag` tells labs of
    /// one process apart (at most a few characters: interface-free, names only).
    pub fn setup(tag: &str) -> Result<NetLab, LabError> {
        remove_stale();
        let lab = NetLab {
            prefix: format!("{PREFIX}-{}-{tag}-", std::process::id()),
        };
        // On error the Drop of `lab` removes what was made.
        for h in ["br", "a", "b", "c"] {
            ip(&["netns", "add", &lab.ns(h)])?;
            ip(&["-n", &lab.ns(h), "link", "set", "lo", "up"])?;
        }
        let br = lab.ns("br");
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (h, addr) in [("a", MGMT_A), ("b", MGMT_B), ("c", CLIENT)] {
            let v = format!("v-{h}");
            let ns = lab.ns(h);
            ip(&[
                "link", "add", &v, "netns", &br, "type", "veth", "peer", "name", LAN_IF, "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &v, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/{PREFIX_LEN}"),
                "dev",
                LAN_IF,
            ])?;
            ip(&["-n", &ns, "link", "set", LAN_IF, "up"])?;
        }
        // The interconnect: a direct veth pair a <-> b.
        ip(&[
            "link",
            "add",
            IC_IF,
            "netns",
            &lab.ns("a"),
            "type",
            "veth",
            "peer",
            "name",
            IC_IF,
            "netns",
            &lab.ns("b"),
        ])?;
        for (h, addr) in [("a", IC_A), ("b", IC_B)] {
            let ns = lab.ns(h);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                IC_IF,
            ])?;
            ip(&["-n", &ns, "link", "set", IC_IF, "up"])?;
        }
        Ok(lab)
    }

    /// Cuts the interconnect (both ends down); the LAN stays.
    pub fn cut_interconnect(&self) -> Result<(), LabError> {
        ip(&["-n", &self.ns("a"), "link", "set", IC_IF, "down"])?;
        ip(&["-n", &self.ns("b"), "link", "set", IC_IF, "down"])?;
        Ok(())
    }

    /// Restores the interconnect.
    pub fn restore_interconnect(&self) -> Result<(), LabError> {
        for h in ["a", "b"] {
            ip(&["-n", &self.ns(h), "link", "set", IC_IF, "up"])?;
        }
        Ok(())
    }

    /// The addresses on the LAN interface of `host` (for reports).
    pub fn addresses(&self, host: &str) -> String {
        ip(&["-n", &self.ns(host), "-br", "addr", "show"]).unwrap_or_else(|e| e.to_string())
    }

    /// Moves the calling thread into `host`'s namespace: sockets it (and threads it spawns
    /// afterwards) creates live there.
    pub fn enter(&self, host: &str) -> Result<(), LabError> {
        enter_netns(&self.ns(host))
    }
}

/// Moves the calling thread into the named network namespace.
pub fn enter_netns(name: &str) -> Result<(), LabError> {
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path).map_err(super::io_err(format!("open {path}")))?;
    // SAFETY: setns on the calling thread with a namespace fd we own.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(LabError::Io {
            what: format!("setns {name}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Deletes lab namespaces whose test process is gone.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for h in ["a", "b", "c", "br"] {
            let _ = ip(&["netns", "del", &self.ns(h)]);
        }
    }
}
