//! W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage, as the gateway reads and
//! writes them.
//!
//! Decisions:
//! - Parsing is strict where the specification is strict (lower-case hex only, `ff` and
//!   all-zero ids invalid, exactly 55 characters for version `00`) and follows the
//!   specification's forward-compatibility rule for later versions (read the version-00
//!   fields by position, and ignore what follows a `-` after them). Anything else makes the
//!   context absent: the gateway then starts a new trace rather than guessing.
//! - Two `traceparent` headers are ambiguous (an intermediary and the client may each have
//!   set one), so the context is treated as absent, as the specification asks.
//! - `tracestate` is only kept beside a valid `traceparent`, and only when every member is
//!   well formed: a value the gateway cannot parse is not passed on.
//! - Baggage is rewritten rather than appended to: entries under `gatehouse.` are the
//!   gateway's to set, so a client's are removed, and the limits of the specification are met
//!   by giving up the client's entries, never the gateway's.
//! - Ids come from the per-thread generator in `crate::random`: they must be unique and
//!   random (the specification's SHOULD) but guard nothing, so they cost no DRBG call.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `baggage`.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The W3C limits for a `baggage` header.
pub const BAGGAGE_MAX_ENTRIES: usize = 64;
pub const BAGGAGE_MAX_BYTES: usize = 8192;

/// Keys in this namespace are the gateway's; a client's are dropped.
pub const GATEWAY_BAGGAGE_PREFIX: &str = "gatehouse.";

/// The tracestate specification allows at most this many list members.
const TRACESTATE_MAX_MEMBERS: usize = 32;

/// The caller's trace, read from its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the gateway's server span.
    pub parent_span_id: [u8; 8],
    pub sampled: bool,
    /// Passed on unchanged when well formed (several headers joined with `,`).
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// The context of a request, or `None` when it has none or it is not valid.
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceContext> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let (trace_id, parent_span_id, flags) = parse_traceparent(value.as_bytes())?;
        Some(TraceContext {
            trace_id,
            parent_span_id,
            sampled: flags & 0x01 != 0,
            tracestate: tracestate(headers),
        })
    }
}

/// Parses a `traceparent` value into trace id, parent id and flags.
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let value = trim_ows(value);
    if value.len() < 55 {
        return None;
    }
    let version = from_hex::<1>(&value[0..2])?[0];
    if version == 0xff {
        return None;
    }
    if version == 0x00 && value.len() != 55 {
        return None;
    }
    // A later version may append fields, but only after a `-`.
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = from_hex::<16>(&value[3..35])?;
    let span_id = from_hex::<8>(&value[36..52])?;
    let flags = from_hex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags))
}

/// The request's `tracestate` headers joined into one, if every member is well formed.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut members: Vec<&[u8]> = Vec::new();
    for value in headers.get_all(TRACESTATE) {
        for member in value.as_bytes().split(|b| *b == b',') {
            let member = trim_ows(member);
            if !member.is_empty() {
                members.push(member);
            }
        }
    }
    if members.is_empty() || members.len() > TRACESTATE_MAX_MEMBERS {
        return None;
    }
    let mut keys: Vec<&[u8]> = Vec::with_capacity(members.len());
    for member in &members {
        let eq = member.iter().position(|b| *b == b'=')?;
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        if !tracestate_key(key) || !tracestate_value(value) || keys.contains(&key) {
            return None;
        }
        keys.push(key);
    }
    HeaderValue::from_bytes(&members.join(&b","[..])).ok()
}

fn tracestate_key(key: &[u8]) -> bool {
    let rest_ok = |b: &u8| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
    };
    match key.iter().position(|b| *b == b'@') {
        None => {
            (1..=256).contains(&key.len())
                && key[0].is_ascii_lowercase()
                && key[1..].iter().all(rest_ok)
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant[1..].iter().all(rest_ok)
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system[1..].iter().all(rest_ok)
        }
    }
}

fn tracestate_value(value: &[u8]) -> bool {
    let printable = |b: &u8| matches!(b, 0x20..=0x7e) && *b != b',' && *b != b'=';
    (1..=256).contains(&value.len())
        && value.iter().all(printable)
        && value.last().is_some_and(|b| *b != b' ')
}

/// A new random trace id (never all zero, which would be invalid).
pub fn new_trace_id() -> [u8; 16] {
    random_nonzero()
}

/// A new random span id (never all zero, which would be invalid).
pub fn new_span_id() -> [u8; 8] {
    random_nonzero()
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    while id == [0; N] {
        crate::random::fill(&mut id);
    }
    id
}

/// The `traceparent` (version `00`) naming `span_id` as the parent of whatever comes next.
pub fn traceparent_value(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut text = String::with_capacity(55);
    text.push_str("00-");
    push_hex(&mut text, trace_id);
    text.push('-');
    push_hex(&mut text, span_id);
    text.push_str(if sampled { "-01" } else { "-00" });
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Lower-case hex, as trace ids are written.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    push_hex(&mut text, bytes);
    text
}

fn push_hex(text: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Exactly `2 * N` lower-case hex digits into `N` bytes; upper case is refused, as the trace
/// context specification requires.
pub fn from_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The `baggage` to send on: the client's entries minus any it may not set, then `entries`
/// (values percent-encoded). Entries whose key is not a token are skipped. `None` when
/// nothing is left.
pub fn baggage_with(existing: &HeaderMap, entries: &[(&str, &str)]) -> Option<HeaderValue> {
    let ours: Vec<String> = entries
        .iter()
        .filter(|(k, _)| crate::http_token::is_token(k.as_bytes()))
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    // The gateway's entries always go out; the client's fill what the limits leave.
    let ours_bytes: usize = ours.iter().map(String::len).sum::<usize>() + ours.len();
    let mut room_bytes = BAGGAGE_MAX_BYTES.saturating_sub(ours_bytes);
    let mut room_entries = BAGGAGE_MAX_ENTRIES.saturating_sub(ours.len());

    let mut out = String::new();
    for value in existing.get_all(BAGGAGE) {
        for member in value.as_bytes().split(|b| *b == b',') {
            let Some((key, text)) = baggage_member(member) else {
                continue;
            };
            let reserved = key.len() >= GATEWAY_BAGGAGE_PREFIX.len()
                && key[..GATEWAY_BAGGAGE_PREFIX.len()]
                    .eq_ignore_ascii_case(GATEWAY_BAGGAGE_PREFIX.as_bytes());
            let replaced = entries
                .iter()
                .any(|(k, _)| k.as_bytes().eq_ignore_ascii_case(key));
            if reserved || replaced {
                continue;
            }
            if room_entries == 0 || text.len() + 1 > room_bytes {
                continue;
            }
            room_entries -= 1;
            room_bytes -= text.len() + 1;
            out.push_str(&text);
            out.push(',');
        }
    }
    for entry in &ours {
        out.push_str(entry);
        out.push(',');
    }
    out.pop();
    if out.is_empty() {
        return None;
    }
    HeaderValue::try_from(out).ok()
}

/// A well-formed list member as `(key, normalised text)`: OWS removed around `=`, `;` and
/// the member. Malformed members are dropped one by one, as OpenTelemetry's propagators do.
fn baggage_member(member: &[u8]) -> Option<(&[u8], String)> {
    let member = trim_ows(member);
    if member.is_empty() {
        return None;
    }
    let mut parts = member.split(|b| *b == b';');
    let first = parts.next()?;
    let eq = first.iter().position(|b| *b == b'=')?;
    let key = trim_ows(&first[..eq]);
    let value = trim_ows(&first[eq + 1..]);
    if !crate::http_token::is_token(key) || !value.iter().all(|b| is_baggage_octet(*b)) {
        return None;
    }
    let mut text = Vec::with_capacity(member.len());
    text.extend_from_slice(key);
    text.push(b'=');
    text.extend_from_slice(value);
    for property in parts {
        let property = trim_ows(property);
        match property.iter().position(|b| *b == b'=') {
            None if crate::http_token::is_token(property) => {
                text.push(b';');
                text.extend_from_slice(property);
            }
            Some(eq) => {
                let (pk, pv) = (trim_ows(&property[..eq]), trim_ows(&property[eq + 1..]));
                if !crate::http_token::is_token(pk) || !pv.iter().all(|b| is_baggage_octet(*b)) {
                    return None;
                }
                text.push(b';');
                text.extend_from_slice(pk);
                text.push(b'=');
                text.extend_from_slice(pv);
            }
            None => return None,
        }
    }
    // Only ASCII was accepted above.
    let text = String::from_utf8(text).ok()?;
    Some((key, text))
}

/// W3C baggage `baggage-octet`: printable ASCII except space, `"`, `,`, `;` and `\`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// Percent-encodes everything that is not a baggage octet, and `%` itself, so any UTF-8 value
/// survives and decodes back unchanged.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if is_baggage_octet(b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            push_hex_upper(&mut out, b);
        }
    }
    out
}

fn push_hex_upper(out: &mut String, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.push(char::from(DIGITS[usize::from(b >> 4)]));
    out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn parse(value: &str) -> Option<TraceContext> {
        TraceContext::from_headers(&headers(&[(TRACEPARENT, value)]))
    }

    #[test]
    fn valid_traceparents_parse() {
        let c = parse(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
        assert_eq!(to_hex(&c.trace_id), TRACE);
        assert_eq!(to_hex(&c.parent_span_id), SPAN);
        assert!(c.sampled);
        assert_eq!(c.tracestate, None);

        let c = parse(&format!("00-{TRACE}-{SPAN}-00")).unwrap();
        assert!(!c.sampled);
        // Unknown flag bits are ignored; only the sampled bit counts.
        assert!(!parse(&format!("00-{TRACE}-{SPAN}-02")).unwrap().sampled);
        assert!(parse(&format!("00-{TRACE}-{SPAN}-03")).unwrap().sampled);
        // HTTP strips optional whitespace around a field value.
        assert!(parse(&format!(" 00-{TRACE}-{SPAN}-01\t")).is_some());
        // A later version: the version-00 fields by position, anything after a dash ignored.
        let c = parse(&format!("cc-{TRACE}-{SPAN}-01-what-the-future-holds")).unwrap();
        assert_eq!(to_hex(&c.trace_id), TRACE);
        assert!(c.sampled);
        assert!(parse(&format!("01-{TRACE}-{SPAN}-00")).is_some());
    }

    #[test]
    fn invalid_traceparents_are_absent() {
        let cases = [
            // version ff is forbidden
            format!("ff-{TRACE}-{SPAN}-01"),
            // upper-case hex anywhere
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            format!("0A-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-0A"),
            // all-zero ids
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            // version 00 must be exactly 55 characters
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{TRACE}-{SPAN}-010"),
            format!("00-{TRACE}-{SPAN}-1"),
            // a later version may only continue after a dash
            format!("cc-{TRACE}-{SPAN}-01x"),
            // wrong separators or field lengths
            format!("00_{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}_{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}_01"),
            format!("00-{TRACE}a-{}-01", &SPAN[1..]),
            format!("0-0{TRACE}-{SPAN}-01"),
            // non-hex
            format!("00-{}g-{SPAN}-01", &TRACE[..31]),
            format!("zz-{TRACE}-{SPAN}-01"),
            String::new(),
        ];
        for case in &cases {
            assert_eq!(parse(case), None, "{case:?} should be refused");
        }
    }

    #[test]
    fn two_traceparents_are_treated_as_none() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let map = headers(&[(TRACEPARENT, &tp), (TRACEPARENT, &tp)]);
        assert_eq!(TraceContext::from_headers(&map), None);
    }

    #[test]
    fn tracestate_is_joined_and_kept_only_when_well_formed() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let map = headers(&[
            (TRACEPARENT, &tp),
            (TRACESTATE, "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"),
            (TRACESTATE, "tenant@vendor=x y"),
        ]);
        let c = TraceContext::from_headers(&map).unwrap();
        assert_eq!(
            c.tracestate.unwrap(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7,tenant@vendor=x y"
        );
        for bad in [
            "Congo=1",
            "congo=1,congo=2",
            "congo",
            "congo=",
            "congo=a=b",
            "congo=tab\tinside",
            "a@=1",
            "@b=1",
        ] {
            let map = headers(&[(TRACEPARENT, &tp), (TRACESTATE, bad)]);
            assert_eq!(
                TraceContext::from_headers(&map).unwrap().tracestate,
                None,
                "{bad:?}"
            );
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let map = headers(&[(TRACEPARENT, &tp), (TRACESTATE, &many.join(","))]);
        assert_eq!(TraceContext::from_headers(&map).unwrap().tracestate, None);
        // No tracestate without a valid traceparent.
        let map = headers(&[(TRACESTATE, "congo=1")]);
        assert_eq!(TraceContext::from_headers(&map), None);
    }

    #[test]
    fn generated_ids_round_trip_through_traceparent() {
        let (t, s) = (new_trace_id(), new_span_id());
        assert_ne!(t, [0; 16]);
        assert_ne!(s, [0; 8]);
        assert_ne!(new_trace_id(), t);
        let v = traceparent_value(&t, &s, true);
        assert_eq!(v.len(), 55);
        let c = parse(v.to_str().unwrap()).unwrap();
        assert_eq!((c.trace_id, c.parent_span_id, c.sampled), (t, s, true));
        let v = traceparent_value(&t, &s, false);
        assert!(v.to_str().unwrap().ends_with("-00"));
        assert_eq!(from_hex::<2>(b"0aFF"), None);
        assert_eq!(from_hex::<2>(b"0aff"), Some([0x0a, 0xff]));
        assert_eq!(from_hex::<2>(b"0af"), None);
    }

    #[test]
    fn baggage_drops_client_gateway_entries_and_replaced_keys() {
        let map = headers(&[
            (
                BAGGAGE,
                "user.id = alice ; prop1 ; p2=v2, gatehouse.user=mallory, Gatehouse.Groups=admins",
            ),
            (
                BAGGAGE,
                "tenant=acme,bad key=1,also=bad\"value,route=spoofed",
            ),
        ]);
        let v = baggage_with(
            &map,
            &[("gatehouse.user", "bob smith"), ("route", "gogs/ä,;%")],
        )
        .unwrap();
        assert_eq!(
            v,
            "user.id=alice;prop1;p2=v2,tenant=acme,gatehouse.user=bob%20smith,route=gogs/%C3%A4%2C%3B%25"
        );
    }

    #[test]
    fn baggage_is_none_when_nothing_is_left() {
        let map = headers(&[(BAGGAGE, "gatehouse.x=1, ,")]);
        assert_eq!(baggage_with(&map, &[]), None);
        assert_eq!(baggage_with(&HeaderMap::new(), &[]), None);
        assert_eq!(
            baggage_with(&HeaderMap::new(), &[("a", "1")]).unwrap(),
            "a=1"
        );
    }

    #[test]
    fn baggage_limits_drop_client_entries_first() {
        // 70 client entries: only 62 fit beside the gateway's two.
        let client: Vec<String> = (0..70).map(|i| format!("c{i}=v")).collect();
        let map = headers(&[(BAGGAGE, &client.join(","))]);
        let v = baggage_with(&map, &[("gatehouse.a", "1"), ("gatehouse.b", "2")]).unwrap();
        let members: Vec<&str> = v.to_str().unwrap().split(',').collect();
        assert_eq!(members.len(), BAGGAGE_MAX_ENTRIES);
        assert_eq!(members[0], "c0=v");
        assert_eq!(members[61], "c61=v");
        assert_eq!(&members[62..], ["gatehouse.a=1", "gatehouse.b=2"]);

        // Bytes: two 4000-byte client entries fit on their own, but not beside a 300-byte
        // gateway entry.
        let big = |k: &str| format!("{k}={}", "x".repeat(4000 - k.len() - 1));
        let map = headers(&[(BAGGAGE, &format!("{},{}", big("c1"), big("c2")))]);
        let alone = baggage_with(&map, &[]).unwrap();
        assert_eq!(alone.len(), 8001);
        let ours = "y".repeat(300);
        let v = baggage_with(&map, &[("gatehouse.big", &ours)]).unwrap();
        assert!(v.len() <= BAGGAGE_MAX_BYTES, "{}", v.len());
        let text = v.to_str().unwrap();
        assert!(text.starts_with("c1="));
        assert!(!text.contains("c2="));
        assert!(text.ends_with(&format!("gatehouse.big={ours}")));
    }
}
