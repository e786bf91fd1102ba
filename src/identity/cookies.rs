//! Cookies the gateway reads and writes.
//!
//! Every cookie the gateway sets uses the `__Host-` prefix, so browsers only accept it with
//! `Secure`, `Path=/` and no `Domain`: it can be neither set nor read by a sibling host.

use http::header::{self, HeaderMap, HeaderValue};

/// The session (first piece; further pieces are `__Host-gatehouse.1` ...).
pub const SESSION: &str = "__Host-gatehouse";
/// Pre-login state, one per login in progress: `__Host-gatehouse-login-<state prefix>`.
pub const LOGIN_PREFIX: &str = "__Host-gatehouse-login-";
/// Gogs cookies sealed to the person they were issued to: `__Host-gatehouse-g-<name>`.
pub const GOGS_PREFIX: &str = "__Host-gatehouse-g-";
/// Everything the gateway owns starts with this; none of it is ever forwarded upstream.
pub const OWN_PREFIX: &str = "__Host-gatehouse";

/// Most bytes one cookie value may carry (browsers allow about 4096 per name=value pair).
pub const PIECE: usize = 3800;
/// Most pieces a session may be split into.
pub const MAX_PIECES: usize = 4;

/// `name=value` pairs from every `Cookie` header (HTTP/2 sends one header per cookie).
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            Some((name.trim(), value.trim().trim_matches('"')))
        })
}

/// The first value of cookie `name`.
pub fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    pairs(headers).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// Attributes for a gateway cookie.
#[derive(Debug, Clone, Copy)]
pub struct Attributes {
    /// Seconds; `None` for a browser-session cookie, `Some(0)` to delete.
    pub max_age: Option<u64>,
    /// `Lax` lets top-level navigations (the provider's redirect back) carry the cookie.
    pub same_site_lax: bool,
}

/// A `Set-Cookie` value with the `__Host-` rules applied.
pub fn set(name: &str, value: &str, attrs: Attributes) -> HeaderValue {
    let mut text = format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite={}",
        if attrs.same_site_lax { "Lax" } else { "Strict" }
    );
    if let Some(age) = attrs.max_age {
        text.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&text).unwrap_or_else(|_| {
        HeaderValue::from_static("__Host-gatehouse-invalid=; Path=/; Secure; Max-Age=0")
    })
}

/// A `Set-Cookie` value deleting `name`.
pub fn delete(name: &str) -> HeaderValue {
    set(
        name,
        "",
        Attributes {
            max_age: Some(0),
            same_site_lax: true,
        },
    )
}

/// Name of session piece `i`.
pub fn session_piece(i: usize) -> String {
    if i == 0 {
        SESSION.to_string()
    } else {
        format!("{SESSION}.{i}")
    }
}

/// Splits a sealed session into cookie pieces: the first carries the piece count.
pub fn split_session(sealed: &str) -> Option<Vec<(String, String)>> {
    let count = sealed.len().div_ceil(PIECE).max(1);
    if count > MAX_PIECES {
        return None;
    }
    Some(
        (0..count)
            .map(|i| {
                let chunk = &sealed[i * PIECE..((i + 1) * PIECE).min(sealed.len())];
                let value = if i == 0 {
                    format!("{count}~{chunk}")
                } else {
                    chunk.to_string()
                };
                (session_piece(i), value)
            })
            .collect(),
    )
}

/// Joins the session pieces a request carries; `None` when any is missing or malformed.
pub fn join_session(headers: &HeaderMap) -> Option<String> {
    let first = get(headers, SESSION)?;
    let (count, chunk) = first.split_once('~')?;
    let count: usize = count
        .parse()
        .ok()
        .filter(|c| (1..=MAX_PIECES).contains(c))?;
    let mut sealed = chunk.to_string();
    for i in 1..count {
        sealed.push_str(get(headers, &session_piece(i))?);
    }
    Some(sealed)
}

/// The request's `Cookie` header without the gateway's own cookies, or `None` if nothing
/// remains. `keep` decides for every other cookie (and may rewrite it).
pub fn filtered<'h>(
    headers: &'h HeaderMap,
    mut keep: impl FnMut(&'h str, &'h str) -> Option<String>,
) -> Option<HeaderValue> {
    let mut out = String::new();
    for (name, value) in pairs(headers) {
        if let Some(pair) = keep(name, value) {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&pair);
        }
    }
    if out.is_empty() {
        None
    } else {
        HeaderValue::from_str(&out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_read_across_several_headers() {
        let h = headers(&["a=1; b=2", "c=\"3\""]);
        assert_eq!(
            pairs(&h).collect::<Vec<_>>(),
            [("a", "1"), ("b", "2"), ("c", "3")]
        );
        assert_eq!(get(&h, "b"), Some("2"));
    }

    #[test]
    fn sessions_split_and_join_across_pieces() {
        let sealed = "x".repeat(PIECE * 2 + 10);
        let pieces = split_session(&sealed).unwrap();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[1].0, "__Host-gatehouse.1");
        let cookie: Vec<String> = pieces.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let h = headers(&[&cookie.join("; ")]);
        assert_eq!(join_session(&h).unwrap(), sealed);
        // A missing piece spoils the whole session.
        let h = headers(&[&format!("{}; {}", cookie[0], cookie[2])]);
        assert!(join_session(&h).is_none());
        assert!(split_session(&"x".repeat(PIECE * MAX_PIECES + 1)).is_none());
    }

    #[test]
    fn set_cookie_follows_host_prefix_rules() {
        let v = set(
            SESSION,
            "abc",
            Attributes {
                max_age: Some(60),
                same_site_lax: true,
            },
        );
        assert_eq!(
            v,
            "__Host-gatehouse=abc; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=60"
        );
        assert!(!v.to_str().unwrap().contains("Domain"));
        assert!(delete("x").to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn filtering_drops_and_rewrites() {
        let h = headers(&["__Host-gatehouse=s; i_like_gogs=raw; lang=en"]);
        let kept = filtered(&h, |n, v| {
            (!n.starts_with(OWN_PREFIX) && n != "i_like_gogs").then(|| format!("{n}={v}"))
        });
        assert_eq!(kept.unwrap(), "lang=en");
        assert!(filtered(&h, |_, _| None).is_none());
    }
}
