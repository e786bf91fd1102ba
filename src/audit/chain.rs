//! The hash chain: every line carries the hash of the line before it and its own hash.
//!
//! A line is the record serialised with `"hash"` as its last field. The hash is SHA-256 over
//! the line without that field (`{...,"prev":"..."}`), so a verifier needs no re-serialisation:
//! it cuts the hash off the text it read and hashes the rest. Editing a byte breaks that
//! line's hash; deleting, inserting or reordering lines breaks the next line's `prev`.

use aws_lc_rs::digest;
use serde::Deserialize;

use super::record::Record;

/// `prev` of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_SUFFIX_LEN: usize = ",\"hash\":\"".len() + 64 + "\"}".len();

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Lower-case hex of `bytes` into `out` (twice as long), without allocating.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 15) as usize];
    }
}

/// Replaces U+2028 and U+2029 (valid raw in JSON strings, but line breaks to some readers)
/// in `json[from..]` with their `\u` escapes. They can only occur inside strings.
fn escape_separators(json: &mut Vec<u8>, from: usize) {
    // Both start with 0xE2; `contains` on bytes is a fast scan, and most lines have none.
    if !json[from..].contains(&0xE2)
        || !json[from..]
            .windows(3)
            .any(|w| w[0] == 0xE2 && w[1] == 0x80 && (w[2] == 0xA8 || w[2] == 0xA9))
    {
        return;
    }
    let mut out = Vec::with_capacity(json.len() + 16);
    out.extend_from_slice(&json[..from]);
    let mut i = from;
    while i < json.len() {
        if i + 2 < json.len()
            && json[i] == 0xE2
            && json[i + 1] == 0x80
            && (json[i + 2] == 0xA8 || json[i + 2] == 0xA9)
        {
            out.extend_from_slice(if json[i + 2] == 0xA8 {
                b"\\u2028"
            } else {
                b"\\u2029"
            });
            i += 3;
        } else {
            out.push(json[i]);
            i += 1;
        }
    }
    *json = out;
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
/// allocated per record but the hash). `record.hash` is left empty. If the record cannot be
/// serialised (it always can: plain strings and numbers), nothing is appended.
pub fn seal_into(record: &mut Record, out: &mut Vec<u8>) -> String {
    record.hash.clear();
    let start = out.len();
    if serde_json::to_writer(&mut *out, &*record).is_err() {
        out.truncate(start);
        return String::new();
    }
    escape_separators(out, start);
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
