//! Who is at a destination, for the destinations the node can know:
//!
//! - a local process listening on the address (loopback, or an address of this host): the
//!   owner of the listening socket, resolved like any process;
//! - a workload a collector's source knows by address (a Docker container's, from the Docker
//!   API): its labels.
//!
//! A snapshot is taken every `destinations.refreshInterval`; policies' destination selectors
//! are compiled against it (a new snapshot re-judges the processes that depend on it), and
//! connect events name the destination's identity from it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, RwLock};

use collectors::process::{ProcDir, list_pids};
use collectors::procfs::sockets::{self, Listening, Transport};
use kernel_hook::maps::Prefix;
use labels::TrustMap;
use selectors::Protocol;

use crate::enforcement::compile::KnownDestination;
use crate::resolver::Resolver;

/// The destinations known at one moment.
#[derive(Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Every known destination.
    pub known: Vec<KnownDestination>,
}

impl Snapshot {
    /// Who is at `address`:`port` over `protocol`: the most specific known destination (a
    /// listener on that port before a workload at that address, a narrower prefix first).
    pub fn lookup(
        &self,
        address: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Option<&KnownDestination> {
        let host = Prefix::host(address);
        self.known
            .iter()
            .filter(|known| {
                within(&known.prefix, &host)
                    && known.port.is_none_or(|p| p == port)
                    && known
                        .protocol
                        .is_none_or(|p| p == protocol || p == Protocol::Any)
            })
            .max_by_key(|known| (known.port.is_some(), known.prefix.length))
    }
}

/// Whether `wide` holds `narrow`.
fn within(wide: &Prefix, narrow: &Prefix) -> bool {
    if wide.length > narrow.length {
        return false;
    }
    let mask = |address: Ipv6Addr| {
        let bits = u128::from(address);
        if wide.length == 0 {
            0
        } else {
            bits & (u128::MAX << (128 - u32::from(wide.length)))
        }
    };
    mask(wide.address) == mask(narrow.address)
}

/// The destination directory.
pub struct Destinations {
    resolver: Arc<Resolver>,
    current: RwLock<Arc<Snapshot>>,
    /// Listening socket inode → the process holding it, as last found.
    owners: Mutex<Owners>,
}

/// Who holds which listening socket, as last found by a scan of every process's descriptors.
#[derive(Default)]
struct Owners {
    /// Socket inode → the process holding it.
    found: HashMap<u64, u32>,
    /// Sockets a scan did not find a holder of (one in another PID namespace, or held by a
    /// process whose descriptors cannot be read), and when that scan was: they do not make
    /// every refresh scan again, only one every [`UNFOUND_RETRY`].
    unfound: HashMap<u64, std::time::Instant>,
}

/// How long a socket whose holder a scan did not find waits before it makes another scan.
const UNFOUND_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

impl Destinations {
    /// An empty directory; [`Destinations::refresh`] fills it.
    pub fn new(resolver: Arc<Resolver>) -> Self {
        Self {
            resolver,
            current: RwLock::new(Arc::new(Snapshot::default())),
            owners: Mutex::new(Owners::default()),
        }
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes a new snapshot; returns it when it differs from the previous one.
    pub async fn refresh(&self) -> Option<Arc<Snapshot>> {
        let mut known = self.listeners().await;
        known.extend(self.workloads().await);
        let snapshot = Arc::new(Snapshot { known });
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if **current == *snapshot {
            return None;
        }
        *current = Arc::clone(&snapshot);
        Some(snapshot)
    }

    /// Local processes listening on this host's addresses (in the agent's network namespace).
    async fn listeners(&self) -> Vec<KnownDestination> {
        let roots = self.resolver.roots().clone();
        let sockets = sockets::listening_at(&roots.proc);
        let owners = self.owners_of(&sockets);
        let local = local_addresses();
        let mut known = Vec::new();
        for socket in sockets {
            let Some(&pid) = owners.get(&socket.inode) else {
                continue;
            };
            let Ok(resolution) = self.resolver.resolve(pid).await else {
                continue;
            };
            let protocol = match socket.transport {
                Transport::Tcp => Protocol::Tcp,
                Transport::Udp => Protocol::Udp,
            };
            for prefix in reachable_at(&socket, &local) {
                known.push(KnownDestination {
                    prefix,
                    port: Some(socket.port),
                    protocol: Some(protocol),
                    labels: resolution.labels.clone(),
                    trust: resolution.trust.clone(),
                    what: format!("process {pid} listening on {}", socket.binding()),
                });
            }
        }
        known
    }

    /// The process holding each of `sockets`: the last answer for sockets seen before, a scan
    /// of every process's descriptors when there are new ones.
    fn owners_of(&self, sockets: &[Listening]) -> HashMap<u64, u32> {
        let mut guard = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let Owners { found, unfound } = &mut *guard;
        found.retain(|inode, _| sockets.iter().any(|s| s.inode == *inode));
        unfound.retain(|inode, _| sockets.iter().any(|s| s.inode == *inode));
        let now = std::time::Instant::now();
        let settled = |s: &Listening| {
            found.contains_key(&s.inode)
                || unfound
                    .get(&s.inode)
                    .is_some_and(|&at| now.duration_since(at) < UNFOUND_RETRY)
        };
        if sockets.iter().all(settled) {
            return found.clone();
        }
        let owners = found;
        let roots = self.resolver.roots();
        for pid in list_pids(roots) {
            let Ok(dir) = ProcDir::open(roots, pid) else {
                continue;
            };
            let Ok((inodes, _)) = sockets::socket_inodes(&dir) else {
                continue;
            };
            for socket in sockets {
                if inodes.contains(&socket.inode) {
                    owners.entry(socket.inode).or_insert(pid);
                }
            }
        }
        for socket in sockets {
            if !owners.contains_key(&socket.inode) {
                unfound.insert(socket.inode, now);
            }
        }
        owners.clone()
    }

    /// Workloads the collectors know by address (Docker containers).
    async fn workloads(&self) -> Vec<KnownDestination> {
        let catalog = self.resolver.key_catalog();
        let mut known = Vec::new();
        for registered in self.resolver.registry().collectors() {
            if !registered.enabled {
                continue;
            }
            let workloads = match registered.collector.workloads().await {
                Ok(workloads) => workloads,
                Err(error) => {
                    tracing::debug!(
                        collector = registered.collector.name(),
                        "cannot list workloads: {}",
                        collectors::error_chain(&error)
                    );
                    continue;
                }
            };
            for workload in workloads {
                // The runtime vouches for its own containers' labels.
                let trust: TrustMap = catalog.classify(&workload.labels, &[], true);
                for address in &workload.addresses {
                    known.push(KnownDestination {
                        prefix: Prefix::host(*address),
                        port: None,
                        protocol: None,
                        labels: workload.labels.clone(),
                        trust: trust.clone(),
                        what: format!("{} workload at {address}", registered.collector.name()),
                    });
                }
            }
        }
        known
    }
}

/// Where a listening socket can be reached from this host: its own address, or for a
/// wildcard, the loopback range and every local address (an IPv6 wildcard also takes IPv4,
/// unless the socket is IPv6-only, which procfs does not tell).
fn reachable_at(socket: &Listening, local: &[IpAddr]) -> Vec<Prefix> {
    let loopback4 = Prefix {
        address: Ipv4Addr::new(127, 0, 0, 0).to_ipv6_mapped(),
        length: 96 + 8,
    };
    let v4 = || {
        std::iter::once(loopback4).chain(
            local
                .iter()
                .filter(|a| a.is_ipv4())
                .map(|a| Prefix::host(*a)),
        )
    };
    let v6 = || {
        std::iter::once(Prefix::host(IpAddr::V6(Ipv6Addr::LOCALHOST))).chain(
            local
                .iter()
                .filter(|a| a.is_ipv6())
                .map(|a| Prefix::host(*a)),
        )
    };
    match socket.address {
        IpAddr::V4(v) if v.is_unspecified() => v4().collect(),
        IpAddr::V6(v) if v.is_unspecified() => v6().chain(v4()).collect(),
        address => vec![Prefix::host(address)],
    }
}

/// The addresses of this host's interfaces.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    // SAFETY: getifaddrs fills a list we walk read-only and free once with freeifaddrs.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return addresses;
        }
        let mut entry = list;
        while !entry.is_null() {
            let address = (*entry).ifa_addr;
            if !address.is_null() {
                match i32::from((*address).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(address as *const libc::sockaddr_in);
                        addresses
                            .push(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(address as *const libc::sockaddr_in6);
                        addresses.push(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;
    use labels::LabelSet;

    fn known(prefix: Prefix, port: Option<u16>, what: &str) -> KnownDestination {
        KnownDestination {
            prefix,
            port,
            protocol: port.map(|_| Protocol::Tcp),
            labels: LabelSet::new(),
            trust: TrustMap::new(),
            what: what.to_owned(),
        }
    }

    #[test]
    fn the_most_specific_destination_answers() {
        let wildcard = Listening {
            transport: Transport::Tcp,
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 80,
            inode: 1,
        };
        let local = ["10.0.0.5".parse().unwrap()];
        let prefixes = reachable_at(&wildcard, &local);
        assert_eq!(prefixes.len(), 2);
        let snapshot = Snapshot {
            known: vec![
                known(prefixes[0], Some(80), "loopback listener"),
                known(prefixes[1], Some(80), "host listener"),
                known(Prefix::host("10.0.0.5".parse().unwrap()), None, "workload"),
            ],
        };
        let who = |address: &str, port| {
            snapshot
                .lookup(address.parse().unwrap(), port, Protocol::Tcp)
                .map(|k| k.what.as_str())
        };
        assert_eq!(who("127.0.0.9", 80), Some("loopback listener"));
        assert_eq!(who("10.0.0.5", 80), Some("host listener"));
        assert_eq!(who("10.0.0.5", 81), Some("workload"));
        assert_eq!(who("127.0.0.1", 81), None);
        assert_eq!(who("::1", 80), None);
        assert_eq!(
            snapshot
                .lookup("127.0.0.1".parse().unwrap(), 80, Protocol::Udp)
                .map(|k| k.what.as_str()),
            None
        );
    }
}
