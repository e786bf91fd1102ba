//! The audit record: one JSON object per line, written with a serializer.
//!
//! A request produces a `request` record holding the decision, written (and, with
//! `fsync = "always"`, flushed to disk) before anything is forwarded, and an `outcome` record
//! linked to it by `ref` once the response is done (status, bytes, duration). Sign-ins,
//! sign-outs, refused credentials, webhook deliveries and reloads have their own kinds.
//!
//! Values that come from clients are capped ([`MAX_VALUE`] bytes) and the names of capped
//! fields are listed in `truncated`; serde escapes control characters, and the writer escapes
//! U+2028/U+2029 too, so no value can break a line.

use serde::{Deserialize, Serialize};

/// Longest client-supplied value kept, in bytes.
pub const MAX_VALUE: usize = 2048;
/// Most groups, refs or services kept in one record.
pub const MAX_ITEMS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Request,
    Outcome,
    Login,
    Logout,
    LoginFailure,
    TokenRejected,
    Webhook,
    PolicyReload,
    ConfigReload,
    Admin,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Outcome => "outcome",
            Kind::Login => "login",
            Kind::Logout => "logout",
            Kind::LoginFailure => "login_failure",
            Kind::TokenRejected => "token_rejected",
            Kind::Webhook => "webhook",
            Kind::PolicyReload => "policy_reload",
            Kind::ConfigReload => "config_reload",
            Kind::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "request" => Kind::Request,
            "outcome" => Kind::Outcome,
            "login" => Kind::Login,
            "logout" => Kind::Logout,
            "login_failure" => Kind::LoginFailure,
            "token_rejected" => Kind::TokenRejected,
            "webhook" => Kind::Webhook,
            "policy_reload" => Kind::PolicyReload,
            "config_reload" => Kind::ConfigReload,
            "admin" => Kind::Admin,
            _ => return None,
        })
    }
}

/// Who the gateway authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditIdentity {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// session, bearer or basic.
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// Where the request came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The TCP peer.
    pub addr: String,
    /// Whether the peer is a configured trusted proxy.
    pub trusted_proxy: bool,
    /// The client as a trusted proxy reported it (`X-Forwarded-For`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_for: Option<String>,
}

/// A ref a push changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRef {
    pub name: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub old: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub new: String,
}

/// What the request was, as classified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// web, api, git_fetch, git_push, otlp_traces, otlp_metrics, otlp_logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<AuditRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

/// The gateway's decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDecision {
    /// allow or deny.
    pub effect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The policy that decided (first 16 hex digits of its digest); absent when the gateway
    /// decided without the policy (public routes, refused credentials, malformed requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// One line of the audit log. Field order is the order on disk; `prev` and `hash` come last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC, microseconds.
    pub time: String,
    /// This record's id (UUIDv7).
    pub id: String,
    /// Position in the chain, from 1.
    pub seq: u64,
    pub replica: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The record this one completes (an outcome names its request record).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<AuditIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<AuditDecision>,
    /// The status the client got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// Free text about the event (reload results, login failures, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Names of fields whose client-supplied value was cut to [`MAX_VALUE`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<String>,
    /// Hash of the previous record (hex SHA-256; 64 zeros for the first record ever).
    pub prev: String,
    /// SHA-256 over this line without its `hash` field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl Record {
    /// A record about the gateway itself (reloads, administration), not about a request.
    pub fn event(kind: Kind, detail: String) -> Record {
        Record {
            time: timestamp(std::time::SystemTime::now()),
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.as_str().to_string(),
            detail: Some(detail),
            ..Default::default()
        }
    }
}

/// The record's line as `serde_json::to_writer` writes it (same fields, order, skipped empty
/// fields and escapes), with U+2028 and U+2029 escaped as well, appended to `out`. Written by
/// hand because the serializer's byte-at-a-time string escaping was the largest cost of an
/// append after the hash; `the_line_writer_matches_serde_json` checks the two agree byte for
/// byte, so existing logs and the verifier are unaffected.
pub fn write_json(r: &Record, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":");
    json_str(out, &r.time);
    out.extend_from_slice(b",\"id\":");
    json_str(out, &r.id);
    out.extend_from_slice(b",\"seq\":");
    json_u64(out, r.seq);
    out.extend_from_slice(b",\"replica\":");
    json_str(out, &r.replica);
    out.extend_from_slice(b",\"kind\":");
    json_str(out, &r.kind);
    opt_field(out, b",\"request_id\":", &r.request_id);
    opt_field(out, b",\"trace_id\":", &r.trace_id);
    opt_field(out, b",\"ref\":", &r.ref_id);
    if let Some(id) = &r.identity {
        out.extend_from_slice(b",\"identity\":{\"subject\":");
        json_str(out, &id.subject);
        opt_field(out, b",\"username\":", &id.username);
        opt_field(out, b",\"email\":", &id.email);
        out.extend_from_slice(b",\"email_verified\":");
        json_bool(out, id.email_verified);
        list_field(out, b",\"groups\":", &id.groups);
        out.extend_from_slice(b",\"method\":");
        json_str(out, &id.method);
        opt_field(out, b",\"client_id\":", &id.client_id);
        opt_field(out, b",\"issuer\":", &id.issuer);
        out.push(b'}');
    }
    if let Some(s) = &r.source {
        out.extend_from_slice(b",\"source\":{\"addr\":");
        json_str(out, &s.addr);
        out.extend_from_slice(b",\"trusted_proxy\":");
        json_bool(out, s.trusted_proxy);
        opt_field(out, b",\"forwarded_for\":", &s.forwarded_for);
        out.push(b'}');
    }
    opt_field(out, b",\"route\":", &r.route);
    opt_field(out, b",\"method\":", &r.method);
    opt_field(out, b",\"path\":", &r.path);
    if let Some(a) = &r.action {
        out.extend_from_slice(b",\"action\":{");
        let at = out.len();
        opt_field(out, b",\"kind\":", &a.kind);
        opt_field(out, b",\"repository\":", &a.repository);
        if !a.refs.is_empty() {
            out.extend_from_slice(b",\"refs\":[");
            for (i, rf) in a.refs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"name\":");
                json_str(out, &rf.name);
                out.extend_from_slice(b",\"kind\":");
                json_str(out, &rf.kind);
                if !rf.old.is_empty() {
                    out.extend_from_slice(b",\"old\":");
                    json_str(out, &rf.old);
                }
                if !rf.new.is_empty() {
                    out.extend_from_slice(b",\"new\":");
                    json_str(out, &rf.new);
                }
                out.push(b'}');
            }
            out.push(b']');
        }
        list_field(out, b",\"services\":", &a.services);
        // The first member has no comma before it.
        if out.len() > at {
            out.remove(at);
        }
        out.push(b'}');
    }
    if let Some(d) = &r.decision {
        out.extend_from_slice(b",\"decision\":{\"effect\":");
        json_str(out, &d.effect);
        opt_field(out, b",\"rule\":", &d.rule);
        list_field(out, b",\"reasons\":", &d.reasons);
        opt_field(out, b",\"policy\":", &d.policy);
        out.push(b'}');
    }
    opt_num(out, b",\"status\":", r.status.map(u64::from));
    opt_num(out, b",\"bytes_in\":", r.bytes_in);
    opt_num(out, b",\"bytes_out\":", r.bytes_out);
    opt_num(out, b",\"duration_us\":", r.duration_us);
    opt_field(out, b",\"detail\":", &r.detail);
    list_field(out, b",\"truncated\":", &r.truncated);
    out.extend_from_slice(b",\"prev\":");
    json_str(out, &r.prev);
    if !r.hash.is_empty() {
        out.extend_from_slice(b",\"hash\":");
        json_str(out, &r.hash);
    }
    out.push(b'}');
}

fn opt_field(out: &mut Vec<u8>, key: &[u8], v: &Option<String>) {
    if let Some(v) = v {
        out.extend_from_slice(key);
        json_str(out, v);
    }
}

fn opt_num(out: &mut Vec<u8>, key: &[u8], v: Option<u64>) {
    if let Some(v) = v {
        out.extend_from_slice(key);
        json_u64(out, v);
    }
}

fn list_field(out: &mut Vec<u8>, key: &[u8], v: &[String]) {
    if v.is_empty() {
        return;
    }
    out.extend_from_slice(key);
    out.push(b'[');
    for (i, s) in v.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(out, s);
    }
    out.push(b']');
}

fn json_bool(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// Decimal digits of `n` (the JSON and CSV writers share it).
pub(crate) fn json_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Whether an eight-byte word holds a byte that may need escaping: a control character, `"`,
/// `\` or 0xE2 (the first byte of U+2028 and U+2029). Exact as a yes/no answer.
#[inline]
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let ctrl = w.wrapping_sub(ONES * 0x20) & !w;
    let eq = |c: u8| {
        let x = w ^ (ONES * u64::from(c));
        x.wrapping_sub(ONES) & !x
    };
    (ctrl | eq(b'"') | eq(b'\\') | eq(0xE2)) & HIGHS != 0
}

/// A JSON string with serde_json's escapes (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other
/// control characters as `\u00xx`), and U+2028/U+2029 as `\u2028`/`\u2029`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.push(b'"');
    // Bytes before `start` are written; the scan finds the next one that may need escaping.
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if i + 8 <= b.len() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            if !word_needs_escape(u64::from_le_bytes(w)) {
                i += 8;
                continue;
            }
        }
        let c = b[i];
        let escape: Option<&[u8]> = match c {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            0x08 => Some(b"\\b"),
            0x0C => Some(b"\\f"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0xE2 if b.get(i + 1) == Some(&0x80) && b.get(i + 2) == Some(&0xA8) => Some(b"\\u2028"),
            0xE2 if b.get(i + 1) == Some(&0x80) && b.get(i + 2) == Some(&0xA9) => Some(b"\\u2029"),
            c if c < 0x20 => {
                out.extend_from_slice(&b[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 15)]);
                i += 1;
                start = i;
                continue;
            }
            _ => None,
        };
        match escape {
            Some(e) => {
                out.extend_from_slice(&b[start..i]);
                out.extend_from_slice(e);
                // U+2028/U+2029 are three bytes.
                i += if c == 0xE2 { 3 } else { 1 };
                start = i;
            }
            None => i += 1,
        }
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Cuts `value` to [`MAX_VALUE`] bytes on a character boundary, noting `field` in `truncated`.
pub fn cap(value: &str, field: &str, truncated: &mut Vec<String>) -> String {
    if value.len() <= MAX_VALUE {
        return value.to_string();
    }
    let mut end = MAX_VALUE;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    if !truncated.iter().any(|t| t == field) {
        truncated.push(field.to_string());
    }
    format!("{}…", &value[..end])
}

/// Caps every value of a list, and the list itself.
pub fn cap_list(values: &[String], field: &str, truncated: &mut Vec<String>) -> Vec<String> {
    if values.len() > MAX_ITEMS && !truncated.iter().any(|t| t == field) {
        truncated.push(field.to_string());
    }
    values
        .iter()
        .take(MAX_ITEMS)
        .map(|v| cap(v, field, truncated))
        .collect()
}

/// RFC 3339 UTC with microseconds (`2026-11-01T12:00:00.123456Z`), written directly: every
/// request formats two of these, and chrono's format strings cost more than the rest of the
/// record. The date and time of day change once a second, so each thread keeps the last
/// second's text and writes only the microseconds.
pub fn timestamp(t: std::time::SystemTime) -> String {
    use std::cell::Cell;
    thread_local! {
        /// (seconds since the epoch, `YYYY-MM-DDTHH:MM:SS` for them); seconds = u64::MAX: unset.
        static LAST: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let Ok(since) = t.duration_since(std::time::UNIX_EPOCH) else {
        return timestamp_uncached(t);
    };
    let secs = since.as_secs();
    let prefix = LAST.with(|last| {
        let (cached, text) = last.get();
        if cached == secs {
            return Some(text);
        }
        let full = timestamp_uncached(t);
        let text: [u8; 19] = full.as_bytes().get(..19)?.try_into().ok()?;
        // Years past 9999 are longer; they are never cached.
        (full.len() == 27).then(|| {
            last.set((secs, text));
            text
        })
    });
    let Some(prefix) = prefix else {
        return timestamp_uncached(t);
    };
    let mut b = [0u8; 27];
    b[..19].copy_from_slice(&prefix);
    b[19] = b'.';
    let mut us = since.subsec_micros();
    for i in (20..26).rev() {
        b[i] = b'0' + (us % 10) as u8;
        us /= 10;
    }
    b[26] = b'Z';
    ascii_text(&b)
}

/// The digits and separators of a timestamp as a `String`. They are ASCII, so the fast UTF-8
/// check passes at once; `from_utf8_lossy` spent ~200 instructions on each.
fn ascii_text(b: &[u8; 27]) -> String {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .unwrap_or_default()
}

fn timestamp_uncached(t: std::time::SystemTime) -> String {
    use chrono::{Datelike, Timelike};
    let dt: chrono::DateTime<chrono::Utc> = t.into();
    let (y, mo, d) = (dt.year(), dt.month(), dt.day());
    let (h, mi, s) = (dt.hour(), dt.minute(), dt.second());
    // A leap second shows as nanosecond >= 1e9; keep it within the field.
    let us = (dt.nanosecond() / 1000).min(999_999);
    if !(0..=9999).contains(&y) {
        return dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    }
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y as u32);
    put(5, 2, mo);
    put(8, 2, d);
    put(11, 2, h);
    put(14, 2, mi);
    put(17, 2, s);
    put(20, 6, us);
    ascii_text(&b)
}

/// Microseconds since the Unix epoch of a record's `time`. The writer's own format
/// (`2026-11-01T12:00:00.123456Z`) is read without a date library, since export reads
/// millions of them; any other RFC 3339 form goes through chrono.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() == 27
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[26] == b'Z'
    {
        let n = |from: usize, to: usize| -> Option<i64> {
            b[from..to].iter().try_fold(0i64, |acc, c| {
                c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
            })
        };
        return civil_micros(
            n(0, 4)?,
            n(5, 7)?,
            n(8, 10)?,
            n(11, 13)?,
            n(14, 16)?,
            n(17, 19)?,
            n(20, 26)?,
        );
    }
    let dt = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(dt.timestamp_micros())
}

/// Microseconds since the epoch of a UTC civil time (days from civil: H. Hinnant's algorithm).
pub fn civil_micros(
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    micros: i64,
) -> Option<i64> {
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
        || micros > 999_999
    {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_on_a_character_boundary_and_marked() {
        let mut t = Vec::new();
        let v = "é".repeat(MAX_VALUE);
        let c = cap(&v, "path", &mut t);
        assert!(c.len() <= MAX_VALUE + "…".len());
        assert!(c.ends_with('…'));
        assert_eq!(t, ["path"]);
        assert_eq!(cap("short", "x", &mut t), "short");
        assert_eq!(t, ["path"]);
    }

    #[test]
    fn timestamps_match_chrono_formatting() {
        for secs in [
            0u64,
            1,
            59,
            951_782_400,
            1_700_000_000,
            4_102_444_799,
            253_402_300_799,
        ] {
            for nanos in [0u32, 1_000, 999_999_999, 123_456_789] {
                let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
                let dt: chrono::DateTime<chrono::Utc> = t.into();
                assert_eq!(
                    timestamp(t),
                    dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
                );
            }
        }
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn timestamps_parse_back_to_the_same_instant() {
        for us in [
            0i64,
            1_700_000_000_123_456,
            951_782_400_000_000,
            4_102_444_799_999_999,
        ] {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us as u64);
            assert_eq!(parse_timestamp(&timestamp(t)), Some(us), "{}", timestamp(t));
        }
        assert_eq!(
            parse_timestamp("2023-11-14T23:13:20.123456+01:00"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(parse_timestamp("2023-13-14T22:13:20.123456Z"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
