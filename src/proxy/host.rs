//! One canonical host per request.
//!
//! Routing, `X-Forwarded-Host` and the SNI comparison all use the same parsed form, so a
//! request can never be routed by one spelling of its host and checked against another.
//! Canonical means: ASCII lower case, no trailing dot, no default port.

use std::fmt;

/// Longest DNS name we accept (RFC 1035 limits names to 253 octets without the final dot).
pub const MAX_HOST_LEN: usize = 253;

/// Why an authority was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host is longer than 253 characters")]
    TooLong,
    #[error("host contains a character outside letters, digits, '-' and '.'")]
    BadChar,
    #[error("host has an empty label")]
    EmptyLabel,
    #[error("port is not a number between 1 and 65535")]
    BadPort,
    #[error("IPv6 literal is malformed")]
    BadIpv6,
    #[error("authority carries user information")]
    UserInfo,
}

/// A parsed authority borrowing from the request. `name` keeps the client's letter case;
/// comparisons go through [`HostRef::name_eq`] or [`HostRef::lowercase_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRef<'a> {
    /// Host name without trailing dot, or an IPv6 literal including its brackets.
    pub name: &'a str,
    /// Port when it is not the scheme's default.
    pub port: Option<u16>,
    /// Whether the input was already in canonical form (so it can be reused verbatim).
    pub canonical: bool,
}

impl<'a> HostRef<'a> {
    /// Parses `host[:port]` as found in `Host`, `:authority` or an absolute-form target.
    pub fn parse(authority: &'a str, default_port: u16) -> Result<Self, HostError> {
        if authority.is_empty() {
            return Err(HostError::Empty);
        }
        if authority.contains('@') {
            return Err(HostError::UserInfo);
        }
        let (host, port_text) = if let Some(rest) = authority.strip_prefix('[') {
            let end = rest.find(']').ok_or(HostError::BadIpv6)?;
            let literal = &rest[..end];
            if literal.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(HostError::BadIpv6);
            }
            let after = &rest[end + 1..];
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(HostError::BadIpv6)?),
            };
            (&authority[..end + 2], port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let mut canonical = true;
        let port = match port_text {
            None => None,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HostError::BadPort);
                }
                let n: u16 = p.parse().map_err(|_| HostError::BadPort)?;
                if n == 0 {
                    return Err(HostError::BadPort);
                }
                if n == default_port {
                    canonical = false;
                    None
                } else {
                    Some(n)
                }
            }
        };
        let name = if host.starts_with('[') {
            if host.bytes().any(|b| b.is_ascii_uppercase()) {
                canonical = false;
            }
            host
        } else {
            let name = match host.strip_suffix('.') {
                Some(stripped) => {
                    canonical = false;
                    stripped
                }
                None => host,
            };
            check_dns_name(name)?;
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                canonical = false;
            }
            name
        };
        Ok(HostRef {
            name,
            port,
            canonical,
        })
    }

    /// Case-insensitive comparison of the host name (port ignored).
    pub fn name_eq(&self, other: &str) -> bool {
        self.name.eq_ignore_ascii_case(other)
    }

    /// Writes the lower-cased name into `buf` and returns it, without allocating.
    pub fn lowercase_into<'b>(&self, buf: &'b mut [u8; MAX_HOST_LEN + 2]) -> &'b str {
        let bytes = self.name.as_bytes();
        let out = &mut buf[..bytes.len()];
        out.copy_from_slice(bytes);
        out.make_ascii_lowercase();
        // Only ASCII was accepted by `parse`, so this cannot fail; fall back to "" regardless.
        std::str::from_utf8(out).unwrap_or("")
    }

    /// Whether two authorities name the same host and port.
    pub fn same_as(&self, other: &HostRef<'_>) -> bool {
        self.port == other.port && self.name.eq_ignore_ascii_case(other.name)
    }
}

impl fmt::Display for HostRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.name.chars() {
            write!(f, "{}", c.to_ascii_lowercase())?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

fn check_dns_name(name: &str) -> Result<(), HostError> {
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(HostError::BadChar);
        }
    }
    Ok(())
}

/// Canonical lower-case form of a configured host name (config validation uses the same rules
/// as requests, so a route can always be reached by some request).
pub fn canonical_config_host(text: &str) -> Result<String, HostError> {
    let parsed = HostRef::parse(text, 0)?;
    if parsed.port.is_some() {
        return Err(HostError::BadPort);
    }
    Ok(parsed.name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_hosts_are_reused_verbatim() {
        let h = HostRef::parse("git.example.com", 443).unwrap();
        assert_eq!(h.name, "git.example.com");
        assert_eq!(h.port, None);
        assert!(h.canonical);
        let h = HostRef::parse("git.example.com:8443", 443).unwrap();
        assert_eq!(h.port, Some(8443));
        assert!(h.canonical);
    }

    #[test]
    fn case_trailing_dot_and_default_port_are_normalised() {
        for spelling in ["GIT.Example.com", "git.example.com.", "git.example.com:443"] {
            let h = HostRef::parse(spelling, 443).unwrap();
            assert!(!h.canonical, "{spelling}");
            assert_eq!(h.to_string(), "git.example.com", "{spelling}");
        }
    }

    #[test]
    fn malformed_authorities_are_refused() {
        let cases = [
            ("", HostError::Empty),
            ("a..b", HostError::EmptyLabel),
            (".a", HostError::EmptyLabel),
            ("a.b..", HostError::EmptyLabel),
            ("a_b.example", HostError::BadChar),
            ("a b", HostError::BadChar),
            ("a%2eb", HostError::BadChar),
            ("user@host", HostError::UserInfo),
            ("host:", HostError::BadPort),
            ("host:0", HostError::BadPort),
            ("host:65536", HostError::BadPort),
            ("host:+80", HostError::BadPort),
            ("host:8a", HostError::BadPort),
            ("[::1", HostError::BadIpv6),
            ("[zz]", HostError::BadIpv6),
            ("[::1]x", HostError::BadIpv6),
        ];
        for (input, want) in cases {
            assert_eq!(HostRef::parse(input, 443), Err(want), "{input:?}");
        }
        assert_eq!(
            HostRef::parse(&"a".repeat(254), 443),
            Err(HostError::TooLong)
        );
    }

    #[test]
    fn ipv6_literals_keep_their_brackets() {
        let h = HostRef::parse("[::1]:8443", 443).unwrap();
        assert_eq!(h.name, "[::1]");
        assert_eq!(h.port, Some(8443));
    }

    #[test]
    fn comparison_ignores_case_but_not_port() {
        let a = HostRef::parse("A.example:8443", 443).unwrap();
        let b = HostRef::parse("a.EXAMPLE.:8443", 443).unwrap();
        let c = HostRef::parse("a.example", 443).unwrap();
        assert!(a.same_as(&b));
        assert!(!a.same_as(&c));
        let mut buf = [0u8; MAX_HOST_LEN + 2];
        assert_eq!(b.lowercase_into(&mut buf), "a.example");
    }

    #[test]
    fn config_hosts_must_not_carry_ports() {
        assert_eq!(
            canonical_config_host("Git.Example.COM."),
            Ok("git.example.com".into())
        );
        assert_eq!(canonical_config_host("git:80"), Err(HostError::BadPort));
    }
}
