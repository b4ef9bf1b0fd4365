//! IP takeover in network namespaces the test creates: three "hosts" (a, b: filers; c: client)
//! on a bridge. The VIP moves a -> b with our netlink calls and gratuitous ARP; the client's
//! neighbour entry must follow to b's MAC without waiting for it to expire.
//! Needs root and `ip` (iproute2); skipped otherwise.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::ipaddr::{self, Ipv4Cidr};

const NET: &str = "198.51.100";
const NEIGH_WAIT_MS: u64 = 3_000;
const PORT: u16 = 8080;

struct Lab {
    prefix: String,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Lab {
    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    fn setup() -> Result<Lab, String> {
        let lab = Lab {
            prefix: format!("tfh5-{}-", std::process::id()),
        };
        for h in ["br", "a", "b", "c"] {
            ip(&["netns", "add", &lab.ns(h)])?;
            ip(&["-n", &lab.ns(h), "link", "set", "lo", "up"])?;
        }
        let br = lab.ns("br");
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (i, h) in ["a", "b", "c"].iter().enumerate() {
            let v = format!("v-{h}");
            let ns = lab.ns(h);
            ip(&[
                "link", "add", &v, "netns", &br, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &v, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{NET}.{}/24", 11 + i),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    /// Runs `f` on a thread that entered `host`'s network namespace.
    fn run_in<T: Send + 'static>(&self, host: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns(host));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this (fresh, short-lived) thread only.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }

    fn neigh_mac(&self, host: &str, addr: Ipv4Addr) -> Option<String> {
        let out = ip(&["-n", &self.ns(host), "neigh", "show", &addr.to_string()]).ok()?;
        out.split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .map(str::to_owned)
    }

    /// A TCP server in `host` on every address: answers each connection with the host name.
    /// Its thread lives until the test process ends (it holds the namespace until then).
    fn serve(&self, host: &'static str) {
        let path = format!("/run/netns/{}", self.ns(host));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            let listener = std::net::TcpListener::bind(("0.0.0.0", PORT)).expect("bind");
            tx.send(()).expect("ready");
            for mut c in listener.incoming().flatten() {
                let _ = std::io::Write::write_all(&mut c, host.as_bytes());
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server ready");
    }

    /// Which host answers a TCP connection to `addr` from `host` (None: no answer within 1 s).
    fn who_answers(&self, host: &str, addr: Ipv4Addr) -> Option<String> {
        self.run_in(host, move || {
            let to = std::net::SocketAddr::from((addr, PORT));
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            let mut name = String::new();
            std::io::Read::read_to_string(&mut s, &mut name).ok()?;
            Some(name)
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in ["a", "b", "c", "br"] {
            let _ = ip(&["netns", "del", &self.ns(h)]);
        }
    }
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn vip_moves_between_namespaces_with_gratuitous_arp() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = match Lab::setup() {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("skipped: cannot build the namespace lab: {e}");
            return;
        }
    };
    let vip: Ipv4Addr = format!("{NET}.100").parse().expect("vip");
    let cidr = Ipv4Cidr {
        addr: vip,
        prefix_len: 24,
    };
    let mac_a = lab
        .run_in("a", || ipaddr::interface_mac("eth0"))
        .expect("mac a");
    let mac_b = lab
        .run_in("b", || ipaddr::interface_mac("eth0"))
        .expect("mac b");
    assert_ne!(mac_a, mac_b);

    lab.run_in("a", move || ipaddr::raise("eth0", cidr))
        .expect("a raises the VIP");
    lab.run_in("a", move || ipaddr::add_address("eth0", cidr))
        .expect("adding twice is fine");
    assert!(ip(&["-n", &lab.ns("a"), "addr", "show", "dev", "eth0"])
        .expect("show")
        .contains(&format!("{vip}/24")));
    lab.serve("a");
    lab.serve("b");
    assert_eq!(
        lab.who_answers("c", vip).as_deref(),
        Some("a"),
        "client reaches the VIP on a"
    );
    assert_eq!(lab.neigh_mac("c", vip), Some(mac_string(mac_a)));

    let t0 = Instant::now();
    lab.run_in("a", move || ipaddr::remove_address("eth0", cidr))
        .expect("a releases");
    lab.run_in("a", move || ipaddr::remove_address("eth0", cidr))
        .expect("removing twice is fine");
    lab.run_in("b", move || {
        ipaddr::add_address("eth0", cidr)?;
        ipaddr::send_gratuitous_arp("eth0", vip, 2, 20)
    })
    .expect("b raises the VIP");
    let mut moved = None;
    while t0.elapsed() < Duration::from_millis(NEIGH_WAIT_MS) {
        if lab.neigh_mac("c", vip) == Some(mac_string(mac_b)) {
            moved = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let moved = moved.unwrap_or_else(|| {
        panic!(
            "client's neighbour entry still {:?}",
            lab.neigh_mac("c", vip)
        )
    });
    println!("ipaddr.vip_move_to_client_neigh_ms {}", moved.as_millis());
    assert_eq!(
        lab.who_answers("c", vip).as_deref(),
        Some("b"),
        "client reaches the VIP on b"
    );
    assert!(!ip(&["-n", &lab.ns("a"), "addr", "show", "dev", "eth0"])
        .expect("show")
        .contains(&format!("{vip}/")));

    assert!(matches!(
        lab.run_in("b", move || ipaddr::add_address("nosuch0", cidr)),
        Err(ipaddr::IpError::NoInterface(_))
    ));
}
