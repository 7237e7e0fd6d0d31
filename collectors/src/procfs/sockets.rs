//! Listening sockets from procfs: `net/tcp`, `net/tcp6`, `net/udp` and `net/udp6` (of a
//! network namespace: `<proc>/net/...` for the reader's own, `<proc>/<pid>/net/...` for a
//! process's), and which of them a process holds (the socket inodes its `fd` links name).
//!
//! They give `process:network:binding` (`<proto>/<address>:<port>`, IPv6 addresses in brackets)
//! and, for the agent, who listens at a local address.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::process::ProcDir;

/// TCP's `LISTEN` state in `net/tcp`.
const TCP_LISTEN: u8 = 0x0A;

/// At most this many file descriptors of one process are looked at.
pub const MAX_FDS: usize = 65_536;

/// The transport of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A listening TCP socket, or a bound, unconnected UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Listening {
    /// Its transport.
    pub transport: Transport,
    /// The local address (unspecified: every address).
    pub address: IpAddr,
    /// The local port.
    pub port: u16,
    /// The socket's inode, as `fd` links name it (`socket:[<inode>]`).
    pub inode: u64,
}

impl Listening {
    /// `tcp/127.0.0.1:5432`, `udp/[::]:53`.
    pub fn binding(&self) -> String {
        let transport = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        match self.address {
            IpAddr::V4(v4) => format!("{transport}/{v4}:{}", self.port),
            IpAddr::V6(v6) => format!("{transport}/[{v6}]:{}", self.port),
        }
    }
}

/// The listening sockets in the four tables of `read` (a reader of `net/<table>` files).
pub fn listening(read: impl Fn(&str) -> std::io::Result<Vec<u8>>) -> Vec<Listening> {
    let mut found = Vec::new();
    for (table, transport, v6) in [
        ("tcp", Transport::Tcp, false),
        ("tcp6", Transport::Tcp, true),
        ("udp", Transport::Udp, false),
        ("udp6", Transport::Udp, true),
    ] {
        let Ok(content) = read(table) else {
            continue;
        };
        let text = String::from_utf8_lossy(&content);
        found.extend(
            text.lines()
                .skip(1)
                .filter_map(|line| parse_line(line, transport, v6)),
        );
    }
    found
}

/// One line of a `net/tcp*` or `net/udp*` table, when it is a listening socket.
fn parse_line(line: &str, transport: Transport, v6: bool) -> Option<Listening> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (local, remote, state, inode) = (
        fields.get(1)?,
        fields.get(2)?,
        fields.get(3)?,
        fields.get(9)?,
    );
    let (address, port) = parse_endpoint(local, v6)?;
    let (_, remote_port) = parse_endpoint(remote, v6)?;
    let state = u8::from_str_radix(state, 16).ok()?;
    let listening = match transport {
        Transport::Tcp => state == TCP_LISTEN,
        // Bound and not connected.
        Transport::Udp => remote_port == 0 && port != 0,
    };
    listening.then_some(Listening {
        transport,
        address,
        port,
        inode: inode.parse().ok()?,
    })
}

/// `0100007F:1F90` (IPv4: the address as the kernel's 32-bit word in host order, in hex) or 32
/// hex digits (IPv6: four such words), then the port in hex.
fn parse_endpoint(text: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_le_bytes);
    let address = if v6 {
        if address.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, chunk) in bytes.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&word(address.get(i * 8..i * 8 + 8)?)?);
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::from(word(address)?))
    };
    Some((address, port))
}

/// The inodes of the sockets process `dir` holds (at most [`MAX_FDS`] descriptors looked at;
/// the second value says whether there were more).
pub fn socket_inodes(dir: &ProcDir) -> std::io::Result<(HashSet<u64>, bool)> {
    let fds = dir.read_dir("fd")?;
    let cut = fds.len() > MAX_FDS;
    let inodes = fds
        .iter()
        .take(MAX_FDS)
        .filter_map(|fd| {
            let target = dir.read_link(&format!("fd/{fd}")).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    Ok((inodes, cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 41021 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1538 01 00000000:00000000 00:00000000 00000000  1000        0 52213 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0
  124: 0100007F:C350 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 778 2 0000000000000000 0
";

    #[test]
    fn listening_sockets_are_read_from_the_four_tables() {
        let found = listening(|table| match table {
            "tcp" => Ok(TCP.as_bytes().to_vec()),
            "tcp6" => Ok(TCP6.as_bytes().to_vec()),
            "udp" => Ok(UDP.as_bytes().to_vec()),
            _ => Err(std::io::ErrorKind::NotFound.into()),
        });
        let bindings: Vec<(String, u64)> = found.iter().map(|l| (l.binding(), l.inode)).collect();
        assert_eq!(
            bindings,
            [
                ("tcp/127.0.0.1:5432".to_owned(), 41021),
                ("tcp/[::]:80".to_owned(), 1234),
                ("tcp/[::1]:8080".to_owned(), 1235),
                ("udp/0.0.0.0:53".to_owned(), 777),
            ]
        );
    }

    #[test]
    fn this_process_listening_is_found_through_its_fds() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let roots = crate::HostRoots::default();
        let dir = ProcDir::open(&roots, std::process::id()).unwrap();
        let (inodes, cut) = socket_inodes(&dir).unwrap();
        assert!(!cut);
        let ours: Vec<_> = listening(|table| dir.read(&format!("net/{table}")))
            .into_iter()
            .filter(|l| inodes.contains(&l.inode))
            .map(|l| l.binding())
            .collect();
        assert!(ours.contains(&format!("tcp/127.0.0.1:{port}")), "{ours:?}");
    }
}
