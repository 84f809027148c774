//! Which addresses the gateway may reach when it fetches a `Send`'s media
//! by URL. The URL comes from an API caller, so without a policy any caller
//! could make the gateway read its own network (metadata services, admin
//! ports, other pods): by default only public addresses are reached. The
//! check runs on the resolved addresses, every redirect hop included, and
//! the connection goes to an address that passed it (a name that resolves
//! differently a moment later cannot slip through).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where media URLs may point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Any address, private networks and loopback included.
    pub allow_private: bool,
    /// Host names (or IP literals) reached whatever their addresses are,
    /// compared without case.
    pub allow_hosts: Vec<String>,
}

impl FetchPolicy {
    /// Whether `host` (as written in the URL) is reached whatever it
    /// resolves to.
    pub(crate) fn trusts_host(&self, host: &str) -> bool {
        self.allow_private
            || self
                .allow_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Whether an address `host` resolved to may be connected to.
    pub(crate) fn permits(&self, host: &str, addr: IpAddr) -> bool {
        self.trusts_host(host) || is_public(addr)
    }
}

/// Whether `addr` is a globally routable unicast address: not loopback,
/// private (RFC 1918, unique local), shared (CGNAT), link-local (cloud
/// metadata lives at 169.254.169.254), unspecified, multicast, broadcast,
/// documentation or benchmarking space, nor an IPv6 form of one of these.
pub(crate) fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                // fc00::/7 unique local
                || (s[0] & 0xfe00) == 0xfc00
                // fe80::/10 link-local, fec0::/10 old site-local
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // 2001:db8::/32 documentation
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                // 64:ff9b:1::/48 local-use NAT64
                || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001))
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    !(v4.is_unspecified()
        || v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_documentation()
        // 0.0.0.0/8 "this network"
        || o[0] == 0x00
        // 100.64.0.0/10 shared address space (CGNAT)
        || (o[0] == 100 && (o[1] & 0xc0) == 0x40)
        // 192.0.0.0/24 protocol assignments
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        // 198.18.0.0/15 benchmarking
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        // 240.0.0.0/4 reserved
        || o[0] >= 240)
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-
/// compatible (`::a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`) address: these
/// reach the IPv4 host, so they are judged as it is.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compatible = s[..6].iter().all(|&x| x == 0) && !v6.is_loopback() && !v6.is_unspecified();
    let nat64 = s[0] == 0x0064 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0);
    (compatible || nat64).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP address")
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(ip(s)), "{s}");
        }
        for s in [
            "8.8.8.8",
            "157.240.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2a03:2880::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(s)), "{s}");
        }
    }

    #[test]
    fn the_flag_and_the_allow_list_open_private_targets() {
        let default = FetchPolicy::default();
        assert!(!default.permits("localhost", ip("127.0.0.1")));
        assert!(default.permits("example.com", ip("93.184.216.34")));
        let listed = FetchPolicy {
            allow_private: false,
            allow_hosts: vec!["Files.Internal".into()],
        };
        assert!(listed.permits("files.internal", ip("10.0.0.5")));
        assert!(!listed.permits("other.internal", ip("10.0.0.5")));
        let open = FetchPolicy {
            allow_private: true,
            allow_hosts: Vec::new(),
        };
        assert!(open.permits("localhost", ip("::1")));
    }
}
