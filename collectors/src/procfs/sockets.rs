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

/// The listening sockets of the network namespace process `dir` is in: from `sock_diag`
/// ([`listening_here`]) when that is the agent's own, else from the process's `net/*` tables.
pub fn listening_of(dir: &ProcDir) -> Vec<Listening> {
    if dir.pins_process() && in_own_netns(dir) {
        match listening_here() {
            Ok(found) => return found,
            Err(error) => tracing::debug!("sock_diag: {error}; reading the net/* tables"),
        }
    }
    listening(|table| dir.read_table(&format!("net/{table}")))
}

/// The listening sockets of the network namespace of the proc root `proc` (`/proc/net` is the
/// reader's own): from `sock_diag` on a real procfs, else from the `net/*` files there (a
/// recorded tree).
pub fn listening_at(proc: &std::path::Path) -> Vec<Listening> {
    let real = rustix::fs::statfs(proc).is_ok_and(|fs| fs.f_type == rustix::fs::PROC_SUPER_MAGIC);
    if real {
        match listening_here() {
            Ok(found) => return found,
            Err(error) => tracing::debug!("sock_diag: {error}; reading the net/* tables"),
        }
    }
    listening(|table| std::fs::read(proc.join("net").join(table)))
}

/// Whether process `dir` shares the agent's network namespace.
fn in_own_netns(dir: &ProcDir) -> bool {
    static OWN: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let own = OWN.get_or_init(|| std::fs::read_link("/proc/self/ns/net").ok());
    own.as_ref()
        .is_some_and(|own| dir.read_link("ns/net").is_ok_and(|theirs| theirs == *own))
}

/// The listening sockets of the caller's own network namespace, from the kernel's socket
/// diagnostics (netlink `sock_diag`, as `ss -l` asks): TCP sockets in `LISTEN` and bound,
/// unconnected UDP sockets. The same sockets as [`listening`] over `/proc/net`, at a fraction of
/// its cost: reading `/proc/net/tcp` walks every bucket of the node's established-connection
/// hash (262 144 of them with 24 GiB of memory: about 5 ms per table), where a dump of
/// listeners only walks the listening hash (about 35 µs for both TCP families).
pub fn listening_here() -> std::io::Result<Vec<Listening>> {
    use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
    use netlink_packet_sock_diag::inet::StateFlags;
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut found = Vec::new();
    for (family, protocol, transport) in [
        (AF_INET, IPPROTO_TCP, Transport::Tcp),
        (AF_INET6, IPPROTO_TCP, Transport::Tcp),
        (AF_INET, IPPROTO_UDP, Transport::Udp),
        (AF_INET6, IPPROTO_UDP, Transport::Udp),
    ] {
        let states = match transport {
            Transport::Tcp => StateFlags::LISTEN,
            Transport::Udp => StateFlags::all(),
        };
        dump(&socket, family, protocol, states, |id, inode| {
            let listening = match transport {
                Transport::Tcp => true,
                // Bound and not connected.
                Transport::Udp => id.destination_port == 0 && id.source_port != 0,
            };
            if listening {
                found.push(Listening {
                    transport,
                    address: id.source_address,
                    port: id.source_port,
                    inode: u64::from(inode),
                });
            }
        })?;
    }
    Ok(found)
}

/// One `sock_diag` dump of `family`/`protocol` sockets in `states`, each given to `each`.
fn dump(
    socket: &netlink_sys::Socket,
    family: u8,
    protocol: u8,
    states: netlink_packet_sock_diag::inet::StateFlags,
    mut each: impl FnMut(&netlink_packet_sock_diag::inet::SocketId, u32),
) -> std::io::Result<()> {
    use netlink_packet_core::{
        NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    };
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId};
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == netlink_packet_sock_diag::constants::AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        if size == 0 {
            return Err(invalid(
                "sock_diag: the dump ended without NLMSG_DONE".into(),
            ));
        }
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buffer[offset..size])
                .map_err(|e| invalid(format!("sock_diag: an answer that does not parse: {e}")))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    each(&response.header.socket_id, response.header.inode);
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => {
                    return Err(error.to_io());
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
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
    let mut inodes = HashSet::new();
    let cut = dir.each_link_target_in("fd", MAX_FDS, |target| {
        let inode: Option<u64> = target
            .strip_prefix(b"socket:[")
            .and_then(|rest| rest.strip_suffix(b"]"))
            .and_then(|digits| std::str::from_utf8(digits).ok()?.parse().ok());
        inodes.extend(inode);
    })?;
    Ok((inodes, cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the kernel's own names count as sockets: a file whose name looks like one (its
    /// link target is a path, starting with `/`), a malformed name or a long path do not.
    #[test]
    fn only_socket_links_give_socket_inodes() {
        let tree = tempfile::tempdir().unwrap();
        let fds = tree.path().join("proc/7/fd");
        std::fs::create_dir_all(&fds).unwrap();
        let long = format!("/{}socket:[9]", "x/".repeat(100));
        for (fd, target) in [
            "socket:[7]",
            "/home/user/socket:[8]",
            "socket:[9",
            "socket:[]",
            "socket:[x10]",
            long.as_str(),
        ]
        .iter()
        .enumerate()
        {
            std::os::unix::fs::symlink(target, fds.join(fd.to_string())).unwrap();
        }
        let roots = crate::HostRoots::under(tree.path());
        let dir = ProcDir::open(&roots, 7).unwrap();
        let (inodes, cut) = socket_inodes(&dir).unwrap();
        assert_eq!(inodes, HashSet::from([7]));
        assert!(!cut);
    }

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
    fn sock_diag_finds_the_same_listeners_as_proc_net() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp6 = std::net::TcpListener::bind("[::1]:0").ok();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(udp.local_addr().unwrap()).unwrap();
        let _stream = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let mut here = listening_here().unwrap();
        let mut from_files = listening(|table| std::fs::read(format!("/proc/net/{table}")));
        let key = |l: &Listening| (l.inode, l.binding());
        here.sort_by_key(key);
        from_files.sort_by_key(key);
        // Sockets of other processes come and go between the two reads: compare ours.
        let roots = crate::HostRoots::default();
        let dir = ProcDir::open(&roots, std::process::id()).unwrap();
        let (inodes, _) = socket_inodes(&dir).unwrap();
        let ours = |all: &[Listening]| -> Vec<String> {
            all.iter()
                .filter(|l| inodes.contains(&l.inode))
                .map(Listening::binding)
                .collect()
        };
        assert_eq!(ours(&here), ours(&from_files));
        let bindings = ours(&here);
        let port = |a: std::net::SocketAddr| a.port();
        assert!(bindings.contains(&format!(
            "tcp/127.0.0.1:{}",
            port(tcp.local_addr().unwrap())
        )));
        assert!(bindings.contains(&format!(
            "udp/127.0.0.1:{}",
            port(udp.local_addr().unwrap())
        )));
        if let Some(tcp6) = &tcp6 {
            assert!(bindings.contains(&format!("tcp/[::1]:{}", port(tcp6.local_addr().unwrap()))));
        }
        let connected = port(connected.local_addr().unwrap());
        assert!(
            !bindings
                .iter()
                .any(|b| b.ends_with(&format!(":{connected}"))),
            "a connected UDP socket is not listening: {bindings:?}"
        );
        assert_eq!(
            bindings.len(),
            2 + usize::from(tcp6.is_some()),
            "{bindings:?}"
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
        let ours: Vec<_> = listening(|table| dir.read_table(&format!("net/{table}")))
            .into_iter()
            .filter(|l| inodes.contains(&l.inode))
            .map(|l| l.binding())
            .collect();
        assert!(ours.contains(&format!("tcp/127.0.0.1:{port}")), "{ours:?}");
    }
}
