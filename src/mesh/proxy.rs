//! The PROXY protocol version 2 header (HAProxy's binary format), which
//! hands a backend the client's address: what the mesh prepends on ports
//! published with `proxy-protocol=v2`.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
const FAMILY_INET: u8 = 0x10;
const FAMILY_INET6: u8 = 0x20;
const TRANSPORT_STREAM: u8 = 0x01;
const TRANSPORT_DGRAM: u8 = 0x02;

/// The header for a connection from `client` to `local` (the published
/// address it reached). Mixed families are sent as IPv6 (v4-mapped).
pub fn header_v2(client: SocketAddr, local: SocketAddr, stream: bool) -> Vec<u8> {
    let transport = if stream {
        TRANSPORT_STREAM
    } else {
        TRANSPORT_DGRAM
    };
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    match (client.ip(), local.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(FAMILY_INET | transport);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(FAMILY_INET6 | transport);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
    out
}

/// Reads a v2 header from the start of `bytes`: the source and destination
/// addresses and the header's length. `None` when `bytes` does not start
/// with a complete PROXY (not LOCAL) header of an IP family.
#[cfg(test)]
pub fn parse_v2(bytes: &[u8]) -> Option<(SocketAddr, SocketAddr, usize)> {
    if bytes.len() < 16 || bytes[..12] != SIGNATURE || bytes[12] != VERSION_PROXY {
        return None;
    }
    let len = u16::from_be_bytes([bytes[14], bytes[15]]) as usize;
    let body = bytes.get(16..16 + len)?;
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let addrs = match bytes[13] & 0xF0 {
        FAMILY_INET if len >= 12 => {
            let src: [u8; 4] = body[0..4].try_into().ok()?;
            let dst: [u8; 4] = body[4..8].try_into().ok()?;
            (
                SocketAddr::new(IpAddr::from(src), port(8)),
                SocketAddr::new(IpAddr::from(dst), port(10)),
            )
        }
        FAMILY_INET6 if len >= 36 => {
            let src: [u8; 16] = body[0..16].try_into().ok()?;
            let dst: [u8; 16] = body[16..32].try_into().ok()?;
            (
                SocketAddr::new(IpAddr::from(src), port(32)),
                SocketAddr::new(IpAddr::from(dst), port(34)),
            )
        }
        _ => return None,
    };
    Some((addrs.0, addrs.1, 16 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_matches_the_specification_layout() {
        let client: SocketAddr = "192.0.2.7:51000".parse().unwrap();
        let local: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let h = header_v2(client, local, true);
        let mut expected = SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        expected.extend_from_slice(&[192, 0, 2, 7, 10, 0, 0, 1]);
        expected.extend_from_slice(&51000u16.to_be_bytes());
        expected.extend_from_slice(&8080u16.to_be_bytes());
        assert_eq!(h, expected);
        assert_eq!(parse_v2(&h), Some((client, local, 28)));
        assert_eq!(header_v2(client, local, false)[13], 0x12);
    }

    #[test]
    fn ipv6_and_mixed_families_use_the_inet6_layout() {
        let client: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let local: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let h = header_v2(client, local, true);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[13], 0x21);
        let (src, dst, len) = parse_v2(&h).unwrap();
        assert_eq!(src, client);
        assert_eq!(dst, "[::ffff:10.0.0.1]:80".parse().unwrap());
        assert_eq!(len, 52);
    }

    #[test]
    fn parse_refuses_what_is_not_a_whole_header() {
        let h = header_v2(
            "1.2.3.4:5".parse().unwrap(),
            "6.7.8.9:10".parse().unwrap(),
            true,
        );
        assert_eq!(parse_v2(&h[..h.len() - 1]), None);
        assert_eq!(parse_v2(b"GET / HTTP/1.0\r\n\r\n"), None);
        let mut local_cmd = h.clone();
        local_cmd[12] = 0x20;
        assert_eq!(parse_v2(&local_cmd), None);
    }
}
