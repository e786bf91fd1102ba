//! The hash chain: every line carries the hash of the line before it and its own hash.
//!
//! A line is the record serialised with `"hash"` as its last field. The hash is SHA-256 over
//! the line without that field (`{...,"prev":"..."}`), so a verifier needs no re-serialisation:
//! it cuts the hash off the text it read and hashes the rest. Editing a byte breaks that
//! line's hash; deleting, inserting or reordering lines breaks the next line's `prev`.

use aws_lc_rs::digest;
use serde::Deserialize;

use super::record::{Record, write_json};

/// `prev` of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_SUFFIX_LEN: usize = ",\"hash\":\"".len() + 64 + "\"}".len();

pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    // Hex digits are ASCII: this never fails.
    String::from_utf8(out).unwrap_or_default()
}

/// Lower-case hex of `bytes` into `out` (twice as long), without allocating.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 15) as usize];
    }
}

/// Serialises `record` (whose `seq` and `prev` are set) into its line, newline included, and
/// returns the line and its hash.
pub fn seal(record: &mut Record) -> (Vec<u8>, String) {
    let mut line = Vec::with_capacity(1024);
    let hash = seal_into(record, &mut line);
    record.hash = hash.clone();
    (line, hash)
}

/// [`seal`] appending the line to `out` (the writer's batch buffer, so nothing is copied or
/// allocated per record but the hash). `record.hash` is left empty. The line is what
/// `serde_json` writes, with U+2028/U+2029 escaped too ([`write_json`]).
pub fn seal_into(record: &mut Record, out: &mut Vec<u8>) -> String {
    record.hash.clear();
    let start = out.len();
    write_json(record, out);
    let hash = hex(digest::digest(&digest::SHA256, &out[start..]).as_ref());
    // `{..."prev":"<hex>"}` becomes `{..."prev":"<hex>","hash":"<hex>"}\n`.
    out.pop();
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    hash
}

/// The chain fields of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
    pub id: String,
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not a complete record (no trailing hash field)")]
    NoHash,
    #[error("the record's content does not match its hash (edited)")]
    HashMismatch,
    #[error("not valid JSON: {0}")]
    Json(String),
}

#[derive(Deserialize)]
struct ChainFields<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: &'a str,
    #[serde(borrow)]
    hash: &'a str,
    #[serde(borrow)]
    id: &'a str,
    #[serde(borrow)]
    time: &'a str,
}

/// Checks a line's own hash (without parsing it) and returns the hash it carries, as hex.
/// `line` excludes the newline.
pub fn check_hash(line: &[u8]) -> Result<&[u8], LineError> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return Err(LineError::NoHash);
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    if &line[cut..cut + 9] != b",\"hash\":\"" {
        return Err(LineError::NoHash);
    }
    let claimed = &line[cut + 9..cut + 9 + 64];
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&line[..cut]);
    ctx.update(b"}");
    let mut actual = [0u8; 64];
    hex_into(ctx.finish().as_ref(), &mut actual);
    if actual != claimed {
        return Err(LineError::HashMismatch);
    }
    Ok(claimed)
}

/// Checks a line's own hash and returns its chain fields. `line` excludes the newline.
pub fn check_line(line: &[u8]) -> Result<Link, LineError> {
    check_hash(line)?;
    let fields: ChainFields<'_> =
        serde_json::from_slice(line).map_err(|e| LineError::Json(e.to_string()))?;
    Ok(Link {
        seq: fields.seq,
        prev: fields.prev.to_string(),
        hash: fields.hash.to_string(),
        id: fields.id.to_string(),
        time: fields.time.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, prev: &str, path: &str) -> Record {
        Record {
            time: "2026-01-01T00:00:00.000000Z".into(),
            id: format!("id-{seq}"),
            seq,
            replica: "r1".into(),
            kind: "request".into(),
            path: Some(path.into()),
            prev: prev.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sealed_lines_check_and_any_edit_is_caught() {
        let mut r = record(1, GENESIS, "/a");
        let (line, hash) = seal(&mut r);
        assert!(line.ends_with(b"\"}\n"));
        let body = &line[..line.len() - 1];
        let link = check_line(body).unwrap();
        assert_eq!(link.hash, hash);
        assert_eq!(link.prev, GENESIS);
        assert_eq!(link.seq, 1);
        for i in 0..body.len() {
            let mut bad = body.to_vec();
            bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
            assert!(check_line(&bad).is_err(), "edit at {i} not caught");
        }
    }

    /// What the writer wrote before `write_json`: serde_json, then U+2028/U+2029 escaped.
    fn reference_line(r: &Record) -> Vec<u8> {
        let json = serde_json::to_string(r).unwrap();
        json.replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029")
            .into_bytes()
    }

    fn nasty(n: usize) -> String {
        let pieces = [
            "a",
            "\"",
            "\\",
            "\n",
            "\r",
            "\t",
            "\u{8}",
            "\u{c}",
            "\0",
            "\u{1b}",
            "\u{1f}",
            "\u{7f}",
            " ",
            "/",
            "é",
            "\u{2028}",
            "\u{2029}",
            "\u{2027}",
            "\u{202a}",
            "\u{20ac}",
            "€\u{2028}",
            "😀",
            "<script>",
            ",",
            ";",
            "'",
            "\u{e2}",
            "xxxxxxxx",
        ];
        let mut s = String::new();
        let mut x = n.wrapping_mul(2_654_435_761) + 1;
        for _ in 0..(n % 23) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(pieces[x % pieces.len()]);
        }
        s
    }

    #[test]
    fn the_line_writer_matches_serde_json() {
        use crate::audit::record::{Action, AuditDecision, AuditIdentity, AuditRef, Source};
        for n in 0..3000 {
            let v = |k: usize| nasty(n * 31 + k);
            let some = |k: usize| !(n + k).is_multiple_of(3);
            let list = |k: usize| (0..((n + k) % 4)).map(|i| v(k * 7 + i)).collect::<Vec<_>>();
            let r = Record {
                time: v(1),
                id: v(2),
                seq: (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                replica: v(3),
                kind: v(4),
                request_id: some(5).then(|| v(5)),
                trace_id: some(6).then(|| v(6)),
                ref_id: some(7).then(|| v(7)),
                identity: some(8).then(|| AuditIdentity {
                    subject: v(9),
                    username: some(10).then(|| v(10)),
                    email: some(11).then(|| v(11)),
                    email_verified: n.is_multiple_of(2),
                    groups: list(12),
                    method: v(13),
                    client_id: some(14).then(|| v(14)),
                    issuer: some(15).then(|| v(15)),
                }),
                source: some(16).then(|| Source {
                    addr: v(16),
                    trusted_proxy: n.is_multiple_of(5),
                    forwarded_for: some(17).then(|| v(17)),
                }),
                route: some(18).then(|| v(18)),
                method: some(19).then(|| v(19)),
                path: some(20).then(|| v(20)),
                action: some(21).then(|| Action {
                    kind: some(22).then(|| v(22)),
                    repository: some(23).then(|| v(23)),
                    refs: (0..(n % 3))
                        .map(|i| AuditRef {
                            name: v(24 + i),
                            kind: v(27 + i),
                            old: if some(30 + i) {
                                v(30 + i)
                            } else {
                                String::new()
                            },
                            new: if some(33 + i) {
                                v(33 + i)
                            } else {
                                String::new()
                            },
                        })
                        .collect(),
                    services: list(36),
                }),
                decision: some(37).then(|| AuditDecision {
                    effect: v(37),
                    rule: some(38).then(|| v(38)),
                    reasons: list(39),
                    policy: some(40).then(|| v(40)),
                }),
                status: some(41).then_some((n * 7) as u16),
                bytes_in: some(42).then_some(u64::MAX - n as u64),
                bytes_out: some(43).then_some(n as u64),
                duration_us: some(44).then_some(0),
                detail: some(45).then(|| v(45)),
                truncated: list(46),
                prev: v(47),
                hash: if some(48) { v(48) } else { String::new() },
            };
            let mut mine = b"earlier bytes".to_vec();
            write_json(&r, &mut mine);
            assert_eq!(
                String::from_utf8_lossy(&mine[13..]),
                String::from_utf8_lossy(&reference_line(&r)),
                "record {n}"
            );
            let back: Record = serde_json::from_slice(&mine[13..]).unwrap();
            assert_eq!(back, r, "record {n}");
        }
        // A default record, and one with an empty action.
        for r in [
            Record::default(),
            Record {
                action: Some(Action::default()),
                ..Default::default()
            },
        ] {
            let mut mine = Vec::new();
            write_json(&r, &mut mine);
            assert_eq!(mine, reference_line(&r));
        }
    }

    #[test]
    fn injected_line_breaks_stay_inside_one_line() {
        let nasty = "/x\n{\"kind\":\"admin\"}\r\u{2028}\u{2029}\u{1b}[31m\0";
        let mut r = record(1, GENESIS, nasty);
        let (line, _) = seal(&mut r);
        let body = &line[..line.len() - 1];
        assert!(!body.contains(&b'\n') && !body.contains(&b'\r') && !body.contains(&0x1b));
        assert!(
            !body
                .windows(3)
                .any(|w| w == [0xE2, 0x80, 0xA8] || w == [0xE2, 0x80, 0xA9])
        );
        check_line(body).unwrap();
        let back: Record = serde_json::from_slice(body).unwrap();
        assert_eq!(back.path.as_deref(), Some(nasty));
    }
}
