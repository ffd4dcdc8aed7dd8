//! Who the client is: its address behind trusted proxies.

use std::net::IpAddr;

use axum::http::HeaderMap;

/// An IP network (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(i)) => self.contains(IpAddr::V6(i.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(i)) => {
                i.to_ipv4_mapped().is_some_and(|v4| self.contains(IpAddr::V4(v4)))
            }
        }
    }

    /// `10.0.0.0/8`, `::1`, …
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// A comma-separated list (`SIGNPOST_TRUSTED_PROXIES`); the error names `key`.
    pub fn parse_list(key: &str, list: Option<&str>) -> Result<Vec<Self>, crate::config::ConfigError> {
        list.unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                Self::parse(p).ok_or_else(|| crate::config::ConfigError {
                    key: key.to_string(),
                    message: format!("{p:?} is not an IP or CIDR"),
                })
            })
            .collect()
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the
/// right-most untrusted address of `X-Forwarded-For`.
pub fn client_addr(trusted: &[Net], peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.iter().any(|n| n.contains(peer)) {
        return Some(peer);
    }
    let chain: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    Some(chain.into_iter().rev().find(|ip| !trusted.iter().any(|n| n.contains(*ip))).unwrap_or(peer))
}

/// The key a client is counted under: its address, an IPv6 host by its /64
/// (one host usually owns a whole /64).
pub fn client_key(ip: Option<IpAddr>) -> String {
    match ip {
        None => "unknown".to_string(),
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(IpAddr::V4(v4)) => {
            let (buf, len) = ipv4_text(v4);
            String::from_utf8_lossy(&buf[..len]).into_owned()
        }
        Some(other) => other.to_string(),
    }
}

/// An IPv4 address in dotted decimal, written without `fmt` (every request
/// writes its client's address once or twice): the bytes and their length.
pub fn ipv4_text(v4: std::net::Ipv4Addr) -> ([u8; 15], usize) {
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        let (hundreds, tens, ones) = (octet / 100, octet / 10 % 10, octet % 10);
        if hundreds > 0 {
            buf[len] = b'0' + hundreds;
            len += 1;
        }
        if hundreds > 0 || tens > 0 {
            buf[len] = b'0' + tens;
            len += 1;
        }
        buf[len] = b'0' + ones;
        len += 1;
    }
    (buf, len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_keyed_by_its_address_and_an_ipv6_host_by_its_64() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.30.40", "255.255.255.255", "1.100.9.199", "::ffff:10.0.0.1"]
        {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(client_key(Some(addr)), addr.to_string());
        }
        assert_eq!(client_key(Some("2001:db8:1:2:3:4:5:6".parse().unwrap())), "2001:db8:1:2::/64");
        assert_eq!(client_key(None), "unknown");
    }
}
