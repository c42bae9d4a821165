//! Which IP addresses are "inside": the host itself, the local networks,
//! cloud metadata endpoints. The proxy runs on the host, so a session that
//! could make it connect there would reach what its sandbox hides.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True for addresses a session may reach only through a host name the
/// allowlist names exactly: loopback, link-local (169.254/16, where cloud
/// metadata lives; fe80::/10), private (10/8, 172.16/12, 192.168/16,
/// fc00::/7), CGNAT (100.64/10), "this network" (0/8), multicast,
/// unspecified, broadcast, and IPv6 forms that embed such an IPv4 address
/// (mapped, compatible, NAT64).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        // 0.0.0.0/8: "this network"; Linux connects 0.0.0.0 to the host.
        || a == 0
        // 100.64.0.0/10: carrier-grade NAT, often a provider's own network.
        || (a == 100 && (b & 0xc0) == 64)
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return true;
    }
    // fc00::/7 unique local, fe80::/10 link-local.
    if (seg[0] & 0xfe00) == 0xfc00 || (seg[0] & 0xffc0) == 0xfe80 {
        return true;
    }
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated but
    // still routed to the IPv4 address by some stacks).
    if seg[..5] == [0; 5] && (seg[5] == 0xffff || seg[5] == 0) {
        return is_internal_v4(embedded(seg[6], seg[7]));
    }
    // 64:ff9b::/96, the well-known NAT64 prefix.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_internal_v4(embedded(seg[6], seg[7]));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        for inside in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_internal(inside.parse().unwrap()), "{inside}");
        }
        for outside in [
            "1.1.1.1",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "100.63.255.255",
            "169.255.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
            "fec0::1",
        ] {
            assert!(!is_internal(outside.parse().unwrap()), "{outside}");
        }
    }
}
