//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies them) on connections from
//! configured balancers: a TCP balancer in front of several replicas passes the client's
//! address this way, so the audit log, `X-Forwarded-For` and policy see the client, not the
//! balancer. Read before TLS, exactly the header's bytes and no more.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, `\r\n` included (the specification's limit).
const V1_MAX: usize = 107;
/// Addresses and TLVs after the v2 prefix; HAProxy's own TLVs fit well within it.
const V2_MAX: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header (the balancer must send one)")]
    Missing,
    #[error("malformed PROXY protocol v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY protocol v2 header: {0}")]
    V2(&'static str),
    #[error("connection closed before the PROXY protocol header ended")]
    Truncated,
}

/// Reads one header from `io`: the client's address, or `None` when the balancer speaks for
/// itself (v2 `LOCAL`, v1 `UNKNOWN`, or an address family other than TCP over IP).
pub async fn read<IO: AsyncRead + Unpin>(
    io: &mut IO,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut start = [0u8; 12];
    fill(io, &mut start).await?;
    if &start == V2_SIGNATURE {
        let mut head = [0u8; 4];
        fill(io, &mut head).await?;
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        if len > V2_MAX {
            return Err(ProxyHeaderError::V2("longer than 1024 bytes"));
        }
        let mut rest = vec![0u8; len];
        fill(io, &mut rest).await?;
        return parse_v2(head[0], head[1], &rest);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Missing);
    }
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(&start);
    // One byte at a time: whatever follows the line belongs to TLS.
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::V1("longer than 107 bytes"));
        }
        let mut b = [0u8; 1];
        fill(io, &mut b).await?;
        line.push(b[0]);
    }
    parse_v1(&line[..line.len() - 2])
}

async fn fill<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut [u8]) -> Result<(), ProxyHeaderError> {
    io.read_exact(buf)
        .await
        .map(drop)
        .map_err(|_| ProxyHeaderError::Truncated)
}

/// `PROXY TCP4 src dst sport dport` (without the `\r\n`).
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let text = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::V1("not ASCII"))?;
    let mut parts = text.split(' ');
    parts.next(); // "PROXY"
    let family = parts.next().ok_or(ProxyHeaderError::V1("no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let (src, dst, sport, dport) = match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(a), Some(b), Some(c), Some(d), None) => (a, b, c, d),
        _ => return Err(ProxyHeaderError::V1("expected 6 fields")),
    };
    let (ip, dst_ok) = match family {
        "TCP4" => (
            src.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| ProxyHeaderError::V1("bad IPv4 source"))?,
            dst.parse::<Ipv4Addr>().is_ok(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| ProxyHeaderError::V1("bad IPv6 source"))?,
            dst.parse::<Ipv6Addr>().is_ok(),
        ),
        _ => {
            return Err(ProxyHeaderError::V1(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    if !dst_ok {
        return Err(ProxyHeaderError::V1("bad destination address"));
    }
    let port = v1_port(sport).ok_or(ProxyHeaderError::V1("bad source port"))?;
    v1_port(dport).ok_or(ProxyHeaderError::V1("bad destination port"))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// Decimal without sign or leading zeros, as the specification writes ports.
fn v1_port(text: &str) -> Option<u16> {
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_v2(ver_cmd: u8, family: u8, rest: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::V2("version is not 2"));
    }
    match ver_cmd & 0x0f {
        0 => return Ok(None), // LOCAL: the balancer's own connection (health checks)
        1 => {}
        _ => return Err(ProxyHeaderError::V2("unknown command")),
    }
    match family {
        0x11 => {
            let a = rest
                .get(..12)
                .ok_or(ProxyHeaderError::V2("IPv4 addresses cut short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            )))
        }
        0x21 => {
            let a = rest
                .get(..36)
                .ok_or(ProxyHeaderError::V2("IPv6 addresses cut short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([a[32], a[33]]),
            )))
        }
        // UNSPEC, UDP, unix sockets: nothing to say about a TCP client.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut io = bytes;
        let r = read(&mut io).await;
        (r, io.to_vec())
    }

    fn v2(cmd: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | cmd);
        b.push(family);
        b.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        b.extend_from_slice(addrs);
        b
    }

    #[tokio::test]
    async fn v1_lines_name_the_client_and_leave_the_rest_unread() {
        let (r, rest) =
            read_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n\x16\x03\x01").await;
        assert_eq!(r, Ok(Some("203.0.113.7:51234".parse().unwrap())));
        assert_eq!(rest, b"\x16\x03\x01");
        let (r, _) = read_all(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n").await;
        assert_eq!(r, Ok(Some("[2001:db8::1]:4000".parse().unwrap())));
        let (r, rest) = read_all(b"PROXY UNKNOWN\r\nxyz").await;
        assert_eq!((r, rest.as_slice()), (Ok(None), &b"xyz"[..]));
    }

    #[tokio::test]
    async fn v2_headers_name_the_client_and_skip_their_tlvs() {
        let mut addrs = vec![192, 0, 2, 9, 10, 0, 0, 1, 0xc3, 0x50, 0x01, 0xbb];
        addrs.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // a NOOP TLV
        let mut b = v2(1, 0x11, &addrs);
        b.extend_from_slice(b"tls");
        let (r, rest) = read_all(&b).await;
        assert_eq!(r, Ok(Some("192.0.2.9:50000".parse().unwrap())));
        assert_eq!(rest, b"tls");
        let mut six = vec![0u8; 36];
        six[0] = 0x20;
        six[1] = 0x01;
        six[15] = 7;
        six[32] = 0x10;
        let (r, _) = read_all(&v2(1, 0x21, &six)).await;
        assert_eq!(r, Ok(Some("[2001::7]:4096".parse().unwrap())));
        let (r, _) = read_all(&v2(0, 0x00, &[])).await;
        assert_eq!(r, Ok(None));
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 051234 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 70000 443\r\n",
            b"PROXY TCP4 ::1 10.0.0.1 1 443\r\n",
            b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
            b"PROXY TCP4 1.2.3.4",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 \r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 +1 443\r\n",
            b"PROXY TCP4 203.0.113.7 ::1 1 443\r\n",
            b"PROXY TCP4 203.0.113.7  1 443\r\n",
        ] {
            let (r, _) = read_all(bad).await;
            assert!(
                r.is_err(),
                "{:?} accepted: {r:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert_eq!(
            read_all(long.as_bytes()).await.0,
            Err(ProxyHeaderError::V1("longer than 107 bytes"))
        );
        let mut b = v2(1, 0x11, &[1, 2, 3]);
        assert!(read_all(&b).await.0.is_err(), "short IPv4 block");
        b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert_eq!(
            read_all(&b).await.0,
            Err(ProxyHeaderError::V2("version is not 2"))
        );
        b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(read_all(&b).await.0.is_err(), "65535-byte header");
    }
}
