//! A network namespace joined to this one by a veth pair, for tests that
//! cut a robot's link or count what crosses it: the host end gets
//! `10.<net>.<id>.1/30`, the namespace end `.2/30`, addresses used only on
//! this pair (a private range no other interface here has). Needs root and
//! iproute2; [`Netns::create`] says SKIP and returns None without them.
//! Dropping it deletes the pair and the namespace, whatever the test did.

use std::process::{Command, Stdio};

pub struct Netns {
    pub name: String,
    /// The host end of the veth pair.
    pub host_if: String,
    pub host_ip: String,
    pub robot_ip: String,
}

/// What crossed the host end of the pair (its interface counters): bytes
/// are Ethernet frames, so IP-level bytes are `bytes - 14 * packets`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wire {
    pub bytes: u64,
    pub packets: u64,
}

impl std::ops::Sub for Wire {
    type Output = Wire;
    fn sub(self, o: Wire) -> Wire {
        Wire {
            bytes: self.bytes.saturating_sub(o.bytes),
            packets: self.packets.saturating_sub(o.packets),
        }
    }
}

/// Ethernet header on the veth (no preamble, FCS or VLAN on a veth).
pub const ETHERNET_HEADER: u64 = 14;

impl Wire {
    /// The same traffic without its Ethernet headers: what a point-to-point
    /// link (cellular) carries and bills.
    pub fn ip_bytes(self) -> u64 {
        self.bytes.saturating_sub(ETHERNET_HEADER * self.packets)
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    /// A namespace named `<prefix>-<pid>`, on `10.<net>.x.0/30`. `net`
    /// keeps tests that may run at once on separate ranges.
    pub fn create(prefix: &str, net: u8) -> Option<Netns> {
        let root = rustix::process::geteuid().is_root();
        let has_ip = Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !(root && has_ip) {
            eprintln!("SKIP: network namespaces need root and iproute2 (make tools)");
            return None;
        }
        let pid = std::process::id();
        let id = pid % 200 + 20;
        // Interface names hold 15 bytes: the prefix's first letter keeps
        // two tests' pairs apart.
        let tag = prefix.chars().next().unwrap_or('k');
        let n = Netns {
            name: format!("{prefix}-{pid}"),
            host_if: format!("k4h{tag}{pid}"),
            host_ip: format!("10.{net}.{id}.1"),
            robot_ip: format!("10.{net}.{id}.2"),
        };
        let robot_if = format!("k4r{tag}{pid}");
        let host_cidr = format!("{}/30", n.host_ip);
        let robot_cidr = format!("{}/30", n.robot_ip);
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &n.name],
            vec!["link", "add", &n.host_if, "type", "veth", "peer", "name", &robot_if],
            vec!["link", "set", &robot_if, "netns", &n.name],
            // IPv4 only on the pair: no router solicitations or MLD
            // reports in what a test counts.
            vec!["link", "set", &n.host_if, "addrgenmode", "none"],
            vec!["-n", &n.name, "link", "set", &robot_if, "addrgenmode", "none"],
            vec!["addr", "add", &host_cidr, "dev", &n.host_if],
            vec!["link", "set", &n.host_if, "up"],
            vec!["-n", &n.name, "addr", "add", &robot_cidr, "dev", &robot_if],
            vec!["-n", &n.name, "link", "set", &robot_if, "up"],
            vec!["-n", &n.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if !ip(&step) {
                eprintln!(
                    "SKIP: `ip {}` failed: network namespaces are not available here",
                    step.join(" ")
                );
                return None;
            }
        }
        Some(n)
    }

    /// Bring the host end down (a cut link: packets are lost, nothing is
    /// reset) or up again.
    pub fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        assert!(
            ip(&["link", "set", &self.host_if, state]),
            "ip link set {} {state}",
            self.host_if
        );
    }

    /// A TCP connection to `addr` made from inside the namespace (its
    /// socket stays there), as a robot's process would make it.
    pub fn connect_from_inside(&self, addr: std::net::SocketAddr) -> std::net::TcpStream {
        let path = format!("/var/run/netns/{}", self.name);
        // A thread of its own enters the namespace; this one stays here.
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
            std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr} from {path}: {e}"))
        })
        .join()
        .expect("the connecting thread")
    }

    /// Both ways through the host end so far.
    pub fn wire(&self) -> Wire {
        let stat = |name: &str| -> u64 {
            let path = format!("/sys/class/net/{}/statistics/{name}", self.host_if);
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        Wire {
            bytes: stat("rx_bytes") + stat("tx_bytes"),
            packets: stat("rx_packets") + stat("tx_packets"),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end deletes the pair.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
