//! Where a policy applies: the `to` entries of a policy (address ranges, ports, a protocol, and
//! the identity of the destination), and the destination of one connect they are tested
//! against.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use labels::{LabelSet, TrustMap};
use serde::Serialize;

use crate::node::{Located, Node, Position};
use crate::policy::{Selector, compile_selectors};

/// An address range: an address and a prefix length, both in the IPv6 space (an IPv4 range is
/// mapped into `::ffff:0:0/96`, so one range type covers both families).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The first address of the range.
    pub network: Ipv6Addr,
    /// Leading bits that must match, 0 to 128.
    pub prefix: u8,
}

impl Cidr {
    /// Every address, IPv4 and IPv6.
    pub const ANY: Cidr = Cidr {
        network: Ipv6Addr::UNSPECIFIED,
        prefix: 0,
    };

    /// Parses `10.0.0.0/8`, `fd00::/8`, or a single address (`10.1.2.3`, `::1`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("invalid address {address:?} in CIDR {text:?}"))?;
        let (mapped, offset, max) = match address {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped(), 96, 32),
            IpAddr::V6(v6) => (v6, 0, 128),
        };
        let prefix = match prefix {
            None => max,
            Some(prefix) => match prefix.trim().parse::<u8>() {
                Ok(prefix) if prefix <= max => prefix,
                _ => {
                    return Err(format!(
                        "invalid prefix length {prefix:?} in CIDR {text:?}: expected 0 to {max}"
                    ));
                }
            },
        };
        let prefix = offset + prefix;
        let cidr = Self {
            network: mask(mapped, prefix),
            prefix,
        };
        if cidr.network != mapped {
            return Err(format!(
                "CIDR {text:?} has host bits set: its network is {}",
                cidr.display_text()
            ));
        }
        Ok(cidr)
    }

    /// Whether `address` is in the range.
    pub fn contains(&self, address: IpAddr) -> bool {
        mask(to_v6(address), self.prefix) == self.network
    }

    /// The range as written: IPv4 ranges in IPv4 notation.
    pub fn display_text(&self) -> String {
        match self.network.to_ipv4_mapped() {
            Some(v4) if self.prefix >= 96 => format!("{v4}/{}", self.prefix - 96),
            _ => format!("{}/{}", self.network, self.prefix),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_text())
    }
}

/// `address` in the IPv6 space (IPv4 mapped into `::ffff:0:0/96`).
pub fn to_v6(address: IpAddr) -> Ipv6Addr {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn mask(address: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(address);
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    };
    Ipv6Addr::from(bits & mask)
}

/// The transport a `to` entry applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP connects.
    Tcp,
    /// UDP connects and sends.
    Udp,
    /// Both.
    Any,
}

impl Protocol {
    /// Parses `tcp`, `udp` or `any`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            "any" => Some(Self::Any),
            _ => None,
        }
    }

    /// Whether a connect over `protocol` is covered.
    pub fn covers(self, protocol: Protocol) -> bool {
        self == Self::Any || self == protocol
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    /// Parses `443` or `8000-8100`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let number = |part: &str| {
            part.trim()
                .parse::<u16>()
                .map_err(|_| format!("invalid port {part:?}: expected a number from 0 to 65535"))
        };
        match text.split_once('-') {
            None => {
                let port = number(text)?;
                Ok(Self {
                    first: port,
                    last: port,
                })
            }
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if first > last {
                    return Err(format!(
                        "invalid port range {text:?}: the first port is above the last"
                    ));
                }
                Ok(Self { first, last })
            }
        }
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

fn listed<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    items.iter().map(show).collect::<Vec<_>>().join(", ")
}

/// One `to` entry: a destination a policy applies to. Every part given must hold.
#[derive(Debug, Clone)]
pub struct To {
    /// Address ranges (any of); empty: any address.
    pub cidrs: Vec<Cidr>,
    /// Port ranges (any of); empty: every port.
    pub ports: Vec<PortRange>,
    /// The transport.
    pub protocol: Protocol,
    /// The destination's identity (any of these selector maps); empty: any destination.
    pub selectors: Vec<Selector>,
    /// Where it was written.
    pub at: Position,
}

/// The destination of one connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address connected to.
    pub address: IpAddr,
    /// The port.
    pub port: u16,
    /// The transport.
    pub protocol: Protocol,
    /// Who is there, when the node knows: the labels of the process listening there, of the
    /// container or of the pod with that address, and their trust classes.
    pub identity: Option<(LabelSet, TrustMap)>,
}

impl Target {
    /// Parses `10.1.2.3:443/tcp`, `[fd00::1]:53/udp` or `10.1.2.3:443` (TCP).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (endpoint, protocol) = match text.rsplit_once('/') {
            Some((endpoint, protocol)) => (
                endpoint,
                match Protocol::parse(protocol) {
                    Some(Protocol::Any) | None => {
                        return Err(format!(
                            "invalid protocol {protocol:?} in {text:?}: expected tcp or udp"
                        ));
                    }
                    Some(protocol) => protocol,
                },
            ),
            None => (text, Protocol::Tcp),
        };
        let socket: std::net::SocketAddr = endpoint.parse().map_err(|_| {
            format!("invalid destination {text:?}: expected ADDRESS:PORT[/tcp|/udp]")
        })?;
        Ok(Self {
            address: socket.ip(),
            port: socket.port(),
            protocol,
            identity: None,
        })
    }
}

impl To {
    /// Why this entry does not cover `target`, or `None` when it does. `require_trusted`: the
    /// destination's labels must not be `self` to satisfy its selectors.
    pub fn mismatch(&self, target: &Target, require_trusted: bool) -> Option<String> {
        if !self.protocol.covers(target.protocol) {
            return Some(
                format!("protocol {:?} is not {:?}", target.protocol, self.protocol).to_lowercase(),
            );
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|p| p.contains(target.port)) {
            return Some(format!(
                "port {} is not in {}",
                target.port,
                listed(&self.ports, PortRange::to_string)
            ));
        }
        if !self.cidrs.is_empty() && !self.cidrs.iter().any(|c| c.contains(target.address)) {
            return Some(format!(
                "{} is not in {}",
                target.address,
                listed(&self.cidrs, Cidr::display_text)
            ));
        }
        if !self.selectors.is_empty() {
            let Some((labels, trust)) = &target.identity else {
                return Some(format!("who is at {} is not known", target.address));
            };
            let matched = self
                .selectors
                .iter()
                .any(|s| s.matches_with(labels, Some(trust), require_trusted));
            if !matched {
                return Some("the destination's labels match no selector".to_owned());
            }
        }
        None
    }
}

/// Compiles a policy's `to` list. Errors go to `error`; `None` when there was one.
pub(crate) fn compile_to(
    node: &Located<Node>,
    error: &mut impl FnMut(Position, String),
) -> Option<Vec<To>> {
    let Node::List(items) = &node.value else {
        error(
            node.at,
            format!(
                "`to` must be a list of destinations, found {}",
                node.value.kind()
            ),
        );
        return None;
    };
    if items.is_empty() {
        error(
            node.at,
            "`to` is empty: the policy would apply nowhere; leave `to` out to apply everywhere"
                .to_owned(),
        );
        return None;
    }
    let mut compiled = Vec::new();
    let mut ok = true;
    for item in items {
        let Node::Map(entries) = &item.value else {
            error(
                item.at,
                format!(
                    "a `to` entry must be a mapping (cidr, ports, protocol, selectors), found {}",
                    item.value.kind()
                ),
            );
            ok = false;
            continue;
        };
        let mut to = To {
            cidrs: Vec::new(),
            ports: Vec::new(),
            protocol: Protocol::Any,
            selectors: Vec::new(),
            at: item.at,
        };
        for (key, value) in entries {
            match key.value.as_str() {
                "cidr" => match scalars(value) {
                    Ok(list) => {
                        for (text, at) in list {
                            match Cidr::parse(&text) {
                                Ok(cidr) => to.cidrs.push(cidr),
                                Err(message) => {
                                    error(at, message);
                                    ok = false;
                                }
                            }
                        }
                    }
                    Err((at, message)) => {
                        error(at, format!("`cidr` {message}"));
                        ok = false;
                    }
                },
                "ports" => match scalars(value) {
                    Ok(list) => {
                        for (text, at) in list {
                            match PortRange::parse(&text) {
                                Ok(range) => to.ports.push(range),
                                Err(message) => {
                                    error(at, message);
                                    ok = false;
                                }
                            }
                        }
                    }
                    Err((at, message)) => {
                        error(at, format!("`ports` {message}"));
                        ok = false;
                    }
                },
                "protocol" => match value
                    .value
                    .scalar_text()
                    .as_deref()
                    .and_then(Protocol::parse)
                {
                    Some(protocol) => to.protocol = protocol,
                    None => {
                        let found = value
                            .value
                            .scalar_text()
                            .unwrap_or_else(|| value.value.kind().to_owned());
                        error(
                            value.at,
                            format!("invalid protocol `{found}`, expected one of tcp, udp, any"),
                        );
                        ok = false;
                    }
                },
                "selectors" => match compile_selectors(value, error) {
                    Some(selectors) => to.selectors = selectors,
                    None => ok = false,
                },
                other => {
                    error(
                        key.at,
                        format!(
                            "unknown field `{other}` in a `to` entry, expected one of cidr, \
                             ports, protocol, selectors"
                        ),
                    );
                    ok = false;
                }
            }
        }
        compiled.push(to);
    }
    ok.then_some(compiled)
}

/// The scalars of a list (or of a single scalar), with their positions.
fn scalars(node: &Located<Node>) -> Result<Vec<(String, Position)>, (Position, String)> {
    match &node.value {
        Node::Scalar(text) => Ok(vec![(text.clone(), node.at)]),
        Node::List(items) if items.is_empty() => Err((
            node.at,
            "is an empty list: it would match nothing".to_owned(),
        )),
        Node::List(items) => items
            .iter()
            .map(|item| match &item.value {
                Node::Scalar(text) => Ok((text.clone(), item.at)),
                other => Err((item.at, format!("takes scalars, found {}", other.kind()))),
            })
            .collect(),
        other => Err((
            node.at,
            format!("takes a value or a list, found {}", other.kind()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_of_both_families() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains("10.200.1.2".parse().unwrap()));
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        assert!(!ten.contains("::a00:1".parse().unwrap()));
        assert_eq!(ten.to_string(), "10.0.0.0/8");
        let ula = Cidr::parse("fd00::/8").unwrap();
        assert!(ula.contains("fd12::1".parse().unwrap()));
        assert!(!ula.contains("10.0.0.1".parse().unwrap()));
        let host = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(host.prefix, 128);
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::ANY.contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::ANY.contains("::1".parse().unwrap()));
        for (bad, why) in [
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/33", "prefix length"),
            ("300.0.0.0/8", "invalid address"),
            ("fd00::/129", "prefix length"),
        ] {
            let error = Cidr::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn ports_protocols_and_targets() {
        assert_eq!(
            PortRange::parse("443").unwrap(),
            PortRange {
                first: 443,
                last: 443
            }
        );
        let range = PortRange::parse("8000-8100").unwrap();
        assert!(range.contains(8050) && !range.contains(8101));
        assert!(PortRange::parse("80-20").unwrap_err().contains("above"));
        assert!(PortRange::parse("70000").is_err());
        let target = Target::parse("10.1.2.3:443/tcp").unwrap();
        assert_eq!((target.port, target.protocol), (443, Protocol::Tcp));
        let target = Target::parse("[fd00::1]:53/udp").unwrap();
        assert_eq!(target.protocol, Protocol::Udp);
        assert!(Target::parse("10.1.2.3/tcp").is_err());
        assert!(Target::parse("10.1.2.3:1/any").is_err());
    }
}
