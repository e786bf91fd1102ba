//! The session a person gets after signing in: everything needed to serve them, sealed into
//! cookies, so any replica holding the keys can serve any request (no server-side state).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::Identity;
use super::cookies::{self, Attributes};
use super::keyring::KeyRing;
use crate::config::SessionConfig;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a session cookie holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    /// Random id, new at every login (rotation) and used to tie CSRF tokens to the session.
    pub sid: String,
    pub iss: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Login time.
    pub created: u64,
    /// Last request seen (for the idle lifetime).
    pub seen: u64,
    /// When the provider's tokens expire (refresh before, sign in again after).
    pub expires: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Kept for RP-initiated logout (`id_token_hint`); dropped first if the cookie is too big.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

/// Where a session stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Valid,
    /// Valid, but the provider's tokens should be refreshed now.
    Refresh,
    Expired(&'static str),
}

impl Session {
    pub fn standing(&self, now: u64, cfg: &SessionConfig) -> Standing {
        if now >= self.created.saturating_add(cfg.absolute_lifetime.as_secs()) {
            return Standing::Expired("absolute lifetime reached");
        }
        if now >= self.seen.saturating_add(cfg.idle_lifetime.as_secs()) {
            return Standing::Expired("idle lifetime reached");
        }
        if now + cfg.refresh_before.as_secs() >= self.expires {
            return if self.refresh_token.is_some() {
                Standing::Refresh
            } else if now >= self.expires {
                Standing::Expired("provider tokens expired and no refresh token")
            } else {
                Standing::Valid
            };
        }
        Standing::Valid
    }

    pub fn identity(&self) -> Identity {
        Identity {
            subject: self.sub.clone(),
            issuer: self.iss.clone(),
            username: self.username.clone(),
            email: self.email.clone(),
            email_verified: self.email_verified,
            groups: self.groups.clone(),
            client_id: None,
            expires_at: self.expires,
        }
    }
}

/// Reads and writes sessions for one host.
pub struct SessionCodec {
    ring: Arc<KeyRing>,
    pub config: SessionConfig,
}

/// `last seen` is only rewritten this often, so most requests set no cookie.
const SEEN_GRANULARITY: u64 = 60;

impl SessionCodec {
    pub fn new(ring: Arc<KeyRing>, config: SessionConfig) -> Self {
        SessionCodec { ring, config }
    }

    pub fn ring(&self) -> &Arc<KeyRing> {
        &self.ring
    }

    fn context(host: &str) -> Vec<u8> {
        format!("gatehouse session\0{}", cookie_scope(host)).into_bytes()
    }

    /// The session in the request's cookies, if it opens for this host. Tampered, foreign
    /// and malformed cookies are simply absent.
    pub fn read(&self, headers: &HeaderMap, host: &str) -> Option<Session> {
        let sealed = cookies::join_session(headers)?;
        let plain = self.ring.open(&Self::context(host), &sealed)?;
        serde_json::from_slice(&plain).ok()
    }

    /// Whether `seen` is stale enough to be rewritten on this response.
    pub fn should_touch(&self, session: &Session, now: u64) -> bool {
        now >= session.seen + SEEN_GRANULARITY
    }

    /// `Set-Cookie` values storing `session` for `host`, clearing pieces a previous, larger
    /// session left behind. The ID token is dropped if the session would not fit otherwise.
    pub fn write(&self, session: &Session, host: &str) -> Vec<HeaderValue> {
        let max_age = session
            .created
            .saturating_add(self.config.absolute_lifetime.as_secs())
            .saturating_sub(now());
        let mut candidate = session.clone();
        let pieces = loop {
            let json = serde_json::to_vec(&candidate).unwrap_or_default();
            let sealed = self.ring.seal(&Self::context(host), &json);
            match cookies::split_session(&sealed) {
                Some(pieces) => break pieces,
                None if candidate.id_token.is_some() => candidate.id_token = None,
                None => {
                    tracing::warn!(sub = %session.sub, "session too large for cookies even without the ID token; signing out");
                    return self.clear();
                }
            }
        };
        let mut out: Vec<HeaderValue> = pieces
            .iter()
            .map(|(name, value)| {
                cookies::set(
                    name,
                    value,
                    Attributes {
                        max_age: Some(max_age),
                        same_site_lax: true,
                    },
                )
            })
            .collect();
        for i in pieces.len()..cookies::MAX_PIECES {
            out.push(cookies::delete(&cookies::session_piece(i)));
        }
        out
    }

    /// `Set-Cookie` values deleting every session piece.
    pub fn clear(&self) -> Vec<HeaderValue> {
        (0..cookies::MAX_PIECES)
            .map(|i| cookies::delete(&cookies::session_piece(i)))
            .collect()
    }

    /// Seals arbitrary data for `purpose` on `host` (login state, Gogs cookies).
    pub fn seal(&self, purpose: &str, host: &str, plain: &[u8]) -> String {
        self.ring.seal(
            format!("{purpose}\0{}", cookie_scope(host)).as_bytes(),
            plain,
        )
    }

    pub fn open(&self, purpose: &str, host: &str, sealed: &str) -> Option<Vec<u8>> {
        self.ring.open(
            format!("{purpose}\0{}", cookie_scope(host)).as_bytes(),
            sealed,
        )
    }

    /// The CSRF token for forms posted back to the gateway by this session.
    pub fn csrf_token(&self, session: &Session) -> String {
        self.ring.tag(b"gatehouse csrf", session.sid.as_bytes())
    }

    pub fn check_csrf(&self, session: &Session, token: &str) -> bool {
        self.ring
            .verify_tag(b"gatehouse csrf", session.sid.as_bytes(), token)
    }
}

/// What a cookie is bound to: the host name without port. Browsers keep cookies per host,
/// not per port, so binding the port as well would only make sessions bounce between ports.
pub fn cookie_scope(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty()
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && !host.ends_with(']') =>
        {
            name
        }
        _ => host,
    }
}

/// A fresh random id (128 bits, hex).
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;
    use std::time::Duration;

    fn codec() -> SessionCodec {
        let ring = KeyRing::parse("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        SessionCodec::new(
            Arc::new(ring),
            SessionConfig {
                keys: crate::config::SecretRef::Env("X".into()),
                absolute_lifetime: Duration::from_secs(3600),
                idle_lifetime: Duration::from_secs(600),
                refresh_before: Duration::from_secs(60),
            },
        )
    }

    fn session(now: u64) -> Session {
        Session {
            sid: random_id(),
            iss: "https://idp.example.com".into(),
            sub: "alice-sub".into(),
            username: Some("alice".into()),
            email: Some("alice@example.com".into()),
            email_verified: true,
            groups: vec!["engineering".into()],
            created: now,
            seen: now,
            expires: now + 300,
            refresh_token: Some("rt".into()),
            id_token: Some("x".repeat(900)),
        }
    }

    fn request_with(set_cookies: &[HeaderValue]) -> HeaderMap {
        let pairs: Vec<String> = set_cookies
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
            .filter(|p| !p.ends_with('='))
            .collect();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&pairs.join("; ")).unwrap());
        h
    }

    #[test]
    fn a_session_round_trips_for_its_host_only() {
        let c = codec();
        let s = session(now());
        let set = c.write(&s, "git.example.com");
        let req = request_with(&set);
        assert_eq!(c.read(&req, "git.example.com").unwrap(), s);
        assert!(
            c.read(&req, "other.example.com").is_none(),
            "a cookie from another host opens"
        );
    }

    #[test]
    fn big_sessions_split_and_oversized_ones_drop_the_id_token() {
        let c = codec();
        let mut s = session(now());
        s.groups = (0..150).map(|i| format!("group-number-{i}")).collect();
        let set = c.write(&s, "h");
        assert!(
            set.iter()
                .filter(|v| !v.to_str().unwrap().contains("Max-Age=0"))
                .count()
                >= 2
        );
        assert_eq!(c.read(&request_with(&set), "h").unwrap(), s);
        s.id_token = Some("y".repeat(20_000));
        let set = c.write(&s, "h");
        let back = c.read(&request_with(&set), "h").unwrap();
        assert!(back.id_token.is_none());
        assert_eq!(back.groups, s.groups);
    }

    #[test]
    fn standing_follows_lifetimes() {
        let c = codec();
        let t = 1_000_000;
        let s = session(t);
        assert_eq!(s.standing(t + 10, &c.config), Standing::Valid);
        assert_eq!(s.standing(t + 250, &c.config), Standing::Refresh);
        let mut idle = s.clone();
        idle.expires = t + 10_000;
        assert_eq!(
            idle.standing(t + 601, &c.config),
            Standing::Expired("idle lifetime reached")
        );
        let mut old = idle.clone();
        old.seen = t + 3500;
        assert_eq!(
            old.standing(t + 3600, &c.config),
            Standing::Expired("absolute lifetime reached")
        );
        let mut no_refresh = s.clone();
        no_refresh.refresh_token = None;
        assert_eq!(no_refresh.standing(t + 299, &c.config), Standing::Valid);
        assert!(matches!(
            no_refresh.standing(t + 300, &c.config),
            Standing::Expired(_)
        ));
    }

    #[test]
    fn cookies_are_scoped_to_the_host_name_not_the_port() {
        assert_eq!(cookie_scope("git.example.com:8443"), "git.example.com");
        assert_eq!(cookie_scope("git.example.com"), "git.example.com");
        assert_eq!(cookie_scope("[::1]:8443"), "[::1]");
        assert_eq!(cookie_scope("[::1]"), "[::1]");
        let c = codec();
        let s = session(now());
        let req = request_with(&c.write(&s, "git.example.com:8443"));
        assert!(c.read(&req, "git.example.com").is_some());
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        let c = codec();
        let a = session(now());
        let b = session(now());
        let t = c.csrf_token(&a);
        assert!(c.check_csrf(&a, &t));
        assert!(!c.check_csrf(&b, &t));
    }
}
