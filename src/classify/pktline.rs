//! The ref-update commands at the start of a `git-receive-pack` request body, and the
//! report-status answer that refuses them in git's own words.
//!
//! Request grammar (gitprotocol-pack(5), "Reference Update Request and Packfile Transfer";
//! checked against `read_head_info`, `queue_command` and `read_push_options` in git's
//! `builtin/receive-pack.c` and the request writer in `send-pack.c`):
//!
//! ```text
//! update-request = *shallow command-list [push-options] [pack-file]
//! shallow        = PKT-LINE("shallow" SP obj-id)
//! command-list   = PKT-LINE(command NUL capability-list) *PKT-LINE(command) flush-pkt
//! command        = old-id SP new-id SP refname
//! push-options   = *PKT-LINE(push-option) flush-pkt    ; only with the push-options capability
//! ```
//!
//! A pkt-line is four hex digits giving its total length (header included, 4..=65520),
//! then the payload; `0000` is flush, `0001` delim, `0002` response-end. git strips one
//! trailing LF from each payload, and so does this parser.
//!
//! This parser fails closed where receive-pack would go on: a delim or response-end
//! packet inside the command list (receive-pack ends the list there, and would then run
//! the commands without a pack if they are all deletions), a signed push (`push-cert`,
//! whose commands live inside the certificate), a refname receive-pack would refuse, or
//! object ids whose length disagrees with each other or with `object-format`.

/// Longest pkt-line, header included (git's `LARGE_PACKET_MAX`).
pub const MAX_PKT_LEN: usize = 65520;
/// Most ref-update commands accepted in one push.
pub const MAX_COMMANDS: usize = 10_000;
/// Longest refname accepted, in bytes.
pub const MAX_REFNAME_LEN: usize = 4096;
/// Most `shallow` lines accepted before and between the commands.
pub const MAX_SHALLOW: usize = 10_000;
/// Most push options accepted.
pub const MAX_PUSH_OPTIONS: usize = 1_000;
/// Most capability words accepted (git sends about ten).
pub const MAX_CAPABILITIES: usize = 256;
/// Largest command section (shallow lines, commands, push options) accepted, so a caller
/// buffering until [`parse_commands`] stops answering `Incomplete` holds at most this much.
pub const MAX_COMMANDS_BYTES: usize = 8 << 20;

const MAX_PKT_DATA: usize = MAX_PKT_LEN - 4;
const SIDEBAND_DATA: usize = MAX_PKT_LEN - 5;
/// Reason given to refs that were not themselves refused but share a push with one that was.
pub const DEFAULT_REFUSAL: &str = "rejected: another update in this push was denied";
const MAX_REASON_LEN: usize = 1024;

/// What one command does to its ref.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateKind {
    /// Old id is all zeros: the ref must not exist yet.
    Create,
    /// New id is all zeros. Also when both are zero: receive-pack then deletes the ref
    /// whatever it points at.
    Delete,
    Update,
}

/// One ref-update command. Object ids are lower-case hex (git accepts either case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
    pub kind: UpdateKind,
}

/// The parsed command section of a receive-pack request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    pub updates: Vec<RefUpdate>,
    /// Capability words from every command line that carried a list (git honours them all),
    /// in order, without duplicates.
    pub capabilities: Vec<String>,
    /// Push options, present only when the client sent the `push-options` capability.
    /// receive-pack reads them only if it advertised `push-options`; trust them only then.
    pub push_options: Vec<String>,
    /// Bytes up to and including the flush ending the commands (or the push options).
    pub consumed: usize,
}

impl Commands {
    /// Whether the client asked for a capability (e.g. `side-band-64k`, `report-status`).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c == name)
    }
}

/// Why a receive-pack request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PktError {
    #[error("incomplete pkt-line stream: more bytes needed")]
    Incomplete,
    #[error("request body ended before the flush packet ending the commands")]
    MissingFlush,
    #[error("pkt-line length is not four hex digits")]
    BadLengthHex,
    #[error("pkt-line length {0} is outside 4..=65520")]
    BadLength(usize),
    #[error("unexpected delim or response-end packet in a receive-pack request")]
    UnexpectedSpecialPacket,
    #[error("command is not '<old-oid> <new-oid> <refname>'")]
    BadCommand,
    #[error("object id is not 40 or 64 hex digits")]
    BadOid,
    #[error("object ids of different lengths in one request")]
    MixedOidLength,
    #[error("object-format capability does not match the object ids")]
    ObjectFormatMismatch,
    #[error("unsupported object format")]
    UnsupportedObjectFormat,
    #[error("malformed shallow line")]
    BadShallow,
    #[error("invalid refname: {0}")]
    BadRefname(&'static str),
    #[error("refname longer than 4096 bytes")]
    RefnameTooLong,
    #[error("more than 10000 ref updates in one push")]
    TooManyCommands,
    #[error("more than 10000 shallow lines")]
    TooManyShallow,
    #[error("more than 1000 push options")]
    TooManyPushOptions,
    #[error("more than 256 capabilities")]
    TooManyCapabilities,
    #[error("push option is not UTF-8 text without NUL")]
    BadPushOption,
    #[error("signed pushes (push-cert) are not supported")]
    PushCertUnsupported,
    #[error("command section larger than 8 MiB")]
    TooLarge,
}

/// Parses as far as `buf` allows: `Err(Incomplete)` means "feed more bytes".
///
/// `consumed` = bytes up to and including the terminating flush (and the push options
/// block, if any). Nothing after that point is looked at, so the cost does not depend on
/// the pack that follows. Every strict prefix of an accepted input gives `Incomplete`.
/// Re-parsing from the start as bytes arrive is quadratic; callers should retry only when
/// the buffer has grown substantially (e.g. doubled) or the body has ended.
pub fn parse_commands(buf: &[u8]) -> Result<Commands, PktError> {
    let mut reader = Reader { buf, pos: 0 };
    let mut updates = Vec::new();
    let mut capabilities = Vec::new();
    let mut shallow = 0usize;
    let mut oid_len = None;
    let mut format_len = None;

    loop {
        let line = match reader.next()? {
            Pkt::Flush => break,
            Pkt::Special => return Err(PktError::UnexpectedSpecialPacket),
            Pkt::Data(line) => chomp(line),
        };
        if let Some(oid) = line.strip_prefix(b"shallow ") {
            shallow += 1;
            if shallow > MAX_SHALLOW {
                return Err(PktError::TooManyShallow);
            }
            parse_oid(oid, &mut oid_len).map_err(|e| match e {
                PktError::MixedOidLength => e,
                _ => PktError::BadShallow,
            })?;
            continue;
        }
        let (command, features) = match line.iter().position(|&b| b == 0) {
            Some(nul) => (&line[..nul], Some(&line[nul + 1..])),
            None => (line, None),
        };
        if let Some(features) = features {
            add_capabilities(&mut capabilities, features, &mut format_len)?;
        }
        if command == b"push-cert" {
            return Err(PktError::PushCertUnsupported);
        }
        if updates.len() >= MAX_COMMANDS {
            return Err(PktError::TooManyCommands);
        }
        updates.push(parse_command(command, &mut oid_len)?);
    }

    let mut push_options = Vec::new();
    // receive-pack reads push options only after a non-empty command list.
    if !updates.is_empty() && capabilities.iter().any(|c| c == "push-options") {
        loop {
            let option = match reader.next()? {
                Pkt::Flush => break,
                Pkt::Special => return Err(PktError::UnexpectedSpecialPacket),
                Pkt::Data(option) => chomp(option),
            };
            if push_options.len() >= MAX_PUSH_OPTIONS {
                return Err(PktError::TooManyPushOptions);
            }
            if option.contains(&0) {
                return Err(PktError::BadPushOption);
            }
            let option = std::str::from_utf8(option).map_err(|_| PktError::BadPushOption)?;
            push_options.push(option.to_owned());
        }
    }

    if let (Some(oids), Some(format)) = (oid_len, format_len)
        && oids != format
    {
        return Err(PktError::ObjectFormatMismatch);
    }

    Ok(Commands {
        updates,
        capabilities,
        push_options,
        consumed: reader.pos,
    })
}

/// [`parse_commands`] for a body that has ended: `Incomplete` becomes `MissingFlush`.
pub fn parse_commands_final(body: &[u8]) -> Result<Commands, PktError> {
    parse_commands(body).map_err(|e| match e {
        PktError::Incomplete => PktError::MissingFlush,
        other => other,
    })
}

enum Pkt<'a> {
    Flush,
    /// `0001` delim or `0002` response-end.
    Special,
    Data(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The next packet. Header digits are checked as soon as they arrive, so garbage is
    /// reported without waiting for more input.
    fn next(&mut self) -> Result<Pkt<'a>, PktError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let mut len = 0usize;
        for &b in rest.iter().take(4) {
            let digit = hex_val(b).ok_or(PktError::BadLengthHex)?;
            len = (len << 4) | usize::from(digit);
        }
        if rest.len() < 4 {
            return Err(PktError::Incomplete);
        }
        match len {
            0 => {
                self.advance(4)?;
                return Ok(Pkt::Flush);
            }
            1 | 2 => {
                self.advance(4)?;
                return Ok(Pkt::Special);
            }
            3 => return Err(PktError::BadLength(len)),
            _ if len > MAX_PKT_LEN => return Err(PktError::BadLength(len)),
            _ => {}
        }
        if self.pos + len > MAX_COMMANDS_BYTES {
            return Err(PktError::TooLarge);
        }
        let data = rest.get(4..len).ok_or(PktError::Incomplete)?;
        self.advance(len)?;
        Ok(Pkt::Data(data))
    }

    fn advance(&mut self, n: usize) -> Result<(), PktError> {
        if self.pos + n > MAX_COMMANDS_BYTES {
            return Err(PktError::TooLarge);
        }
        self.pos += n;
        Ok(())
    }
}

/// Drops one trailing LF, as git's `PACKET_READ_CHOMP_NEWLINE` does.
fn chomp(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

fn parse_command(line: &[u8], oid_len: &mut Option<usize>) -> Result<RefUpdate, PktError> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(PktError::BadCommand);
    };
    let old = parse_oid(old, oid_len)?;
    let new = parse_oid(new, oid_len)?;
    let kind = if is_zero(&new) {
        UpdateKind::Delete
    } else if is_zero(&old) {
        UpdateKind::Create
    } else {
        UpdateKind::Update
    };
    let name = check_refname(name, kind == UpdateKind::Delete)?;
    Ok(RefUpdate {
        old,
        new,
        name,
        kind,
    })
}

/// A SHA-1 (40) or SHA-256 (64) hex id, lower-cased; all ids of a request share a length.
fn parse_oid(hex: &[u8], oid_len: &mut Option<usize>) -> Result<String, PktError> {
    if !matches!(hex.len(), 40 | 64) || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(PktError::BadOid);
    }
    match *oid_len {
        Some(len) if len != hex.len() => return Err(PktError::MixedOidLength),
        _ => *oid_len = Some(hex.len()),
    }
    Ok(hex
        .iter()
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect())
}

fn is_zero(oid: &str) -> bool {
    oid.bytes().all(|b| b == b'0')
}

/// Adds one line's capability list. Each list implies an object format (`sha1` when it
/// names none), and receive-pack dies unless every list agrees with the repository's.
fn add_capabilities(
    caps: &mut Vec<String>,
    features: &[u8],
    format_len: &mut Option<usize>,
) -> Result<(), PktError> {
    let mut this_format = 40;
    for word in features.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        if let Some(format) = word.strip_prefix(b"object-format=") {
            this_format = match format {
                b"sha1" => 40,
                b"sha256" => 64,
                _ => return Err(PktError::UnsupportedObjectFormat),
            };
        }
        let word = String::from_utf8_lossy(word);
        if !caps.iter().any(|c| *c == word) {
            if caps.len() >= MAX_CAPABILITIES {
                return Err(PktError::TooManyCapabilities);
            }
            caps.push(word.into_owned());
        }
    }
    match *format_len {
        Some(len) if len != this_format => Err(PktError::ObjectFormatMismatch),
        _ => {
            *format_len = Some(this_format);
            Ok(())
        }
    }
}

/// receive-pack's refname rule: `refs/` followed by a name `git check-ref-format` accepts,
/// at least two levels deep unless the ref is being deleted. Also required here: UTF-8.
fn check_refname(name: &[u8], is_delete: bool) -> Result<String, PktError> {
    use PktError::BadRefname;
    if name.len() > MAX_REFNAME_LEN {
        return Err(PktError::RefnameTooLong);
    }
    let rest = name
        .strip_prefix(b"refs/")
        .ok_or(BadRefname("must start with refs/"))?;
    if let Some(&b) = rest
        .iter()
        .find(|&&b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b))
    {
        return Err(BadRefname(if b < 0x20 || b == 0x7f {
            "control character"
        } else {
            "forbidden character (space ~ ^ : ? * [ \\)"
        }));
    }
    if contains(rest, b"..") {
        return Err(BadRefname("contains .."));
    }
    if contains(rest, b"@{") {
        return Err(BadRefname("contains @{"));
    }
    if rest == b"@" {
        return Err(BadRefname("is @"));
    }
    if rest.ends_with(b".") {
        return Err(BadRefname("ends with ."));
    }
    let mut levels = 0;
    for component in rest.split(|&b| b == b'/') {
        if component.is_empty() {
            return Err(BadRefname("empty component (// or trailing /)"));
        }
        if component.starts_with(b".") {
            return Err(BadRefname("component starts with ."));
        }
        if component.ends_with(b".lock") {
            return Err(BadRefname("component ends with .lock"));
        }
        levels += 1;
    }
    if levels < 2 && !is_delete {
        return Err(BadRefname("one-level name below refs/"));
    }
    String::from_utf8(name.to_vec()).map_err(|_| BadRefname("not UTF-8"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A receive-pack result refusing every update (report-status), framed for side-band-64k
/// when `sideband` is true.
///
/// As receive-pack writes it: `unpack ok`, then `ng <ref> <reason>` per update (refs with no
/// entry in `reasons` get [`DEFAULT_REFUSAL`]), then flush. With side-band the whole report,
/// flush included, travels as band-1 data in packets of at most 65520 bytes, followed by a
/// final flush. The same text is valid for report-status-v2 clients. Reasons are cut to
/// 1 KiB and control characters become spaces, since a newline would end the status line.
pub fn report_refusal(
    updates: &[RefUpdate],
    reasons: &[(String, String)],
    sideband: bool,
) -> Vec<u8> {
    let mut report = Vec::new();
    write_pkt(&mut report, "unpack ok\n");
    for update in updates {
        let reason = reasons
            .iter()
            .find(|(name, _)| *name == update.name)
            .map_or(DEFAULT_REFUSAL, |(_, reason)| reason.as_str());
        let mut line = String::with_capacity(update.name.len() + reason.len() + 5);
        line.push_str("ng ");
        push_sanitized(&mut line, &update.name, usize::MAX);
        line.push(' ');
        push_sanitized(&mut line, reason, MAX_REASON_LEN);
        truncate_at_char(&mut line, MAX_PKT_DATA - 1);
        line.push('\n');
        write_pkt(&mut report, &line);
    }
    report.extend_from_slice(b"0000");
    if !sideband {
        return report;
    }
    let mut framed = Vec::with_capacity(report.len() + 5 * (report.len() / SIDEBAND_DATA + 1) + 4);
    for chunk in report.chunks(SIDEBAND_DATA) {
        write_len(&mut framed, chunk.len() + 5);
        framed.push(1);
        framed.extend_from_slice(chunk);
    }
    framed.extend_from_slice(b"0000");
    framed
}

/// Appends `text` with control characters replaced by spaces, cut to `max` bytes.
fn push_sanitized(out: &mut String, text: &str, max: usize) {
    let start = out.len();
    for c in text.chars() {
        if out.len() - start + c.len_utf8() > max {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Appends one pkt-line; `data` must fit (callers keep it under 65516 bytes).
fn write_pkt(out: &mut Vec<u8>, data: &str) {
    write_len(out, data.len() + 4);
    out.extend_from_slice(data.as_bytes());
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(format!("{len:04x}").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn pkt(data: &[u8]) -> Vec<u8> {
        let mut out = format!("{:04x}", data.len() + 4).into_bytes();
        out.extend_from_slice(data);
        out
    }

    fn cmd(old: &str, new: &str, name: &str) -> Vec<u8> {
        pkt(format!("{old} {new} {name}").as_bytes())
    }

    fn first(old: &str, new: &str, name: &str, caps: &str) -> Vec<u8> {
        pkt(format!("{old} {new} {name}\0{caps}").as_bytes())
    }

    fn body(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    const CAPS: &str = "report-status side-band-64k quiet object-format=sha1 agent=git/2.47.3";

    #[test]
    fn one_command_with_capabilities() {
        let b = body(&[
            first(Z, A, "refs/heads/main", CAPS),
            b"0000".to_vec(),
            b"PACK...".to_vec(),
        ]);
        let c = parse_commands(&b).unwrap();
        assert_eq!(
            c.updates,
            vec![RefUpdate {
                old: Z.into(),
                new: A.into(),
                name: "refs/heads/main".into(),
                kind: UpdateKind::Create,
            }]
        );
        assert_eq!(
            c.capabilities,
            [
                "report-status",
                "side-band-64k",
                "quiet",
                "object-format=sha1",
                "agent=git/2.47.3"
            ]
        );
        assert!(c.has_capability("side-band-64k"));
        assert!(!c.has_capability("side-band"));
        assert!(c.push_options.is_empty());
        assert_eq!(&b[c.consumed..], b"PACK...");
    }

    #[test]
    fn several_commands_and_kinds() {
        let b = body(&[
            first(A, B, "refs/heads/main", "report-status-v2 atomic"),
            cmd(Z, A, "refs/tags/v1.0"),
            cmd(B, Z, "refs/heads/old"),
            cmd(Z, Z, "refs/heads/ghost"),
            b"0000".to_vec(),
        ]);
        let c = parse_commands(&b).unwrap();
        let kinds: Vec<_> = c
            .updates
            .iter()
            .map(|u| (u.name.as_str(), u.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("refs/heads/main", UpdateKind::Update),
                ("refs/tags/v1.0", UpdateKind::Create),
                ("refs/heads/old", UpdateKind::Delete),
                // Both zero: receive-pack deletes whatever is there.
                ("refs/heads/ghost", UpdateKind::Delete),
            ]
        );
        assert_eq!(c.capabilities, ["report-status-v2", "atomic"]);
        assert_eq!(c.consumed, b.len());
    }

    #[test]
    fn newline_terminated_lines_and_upper_case_hex_are_accepted() {
        let upper = A.replace('1', "A");
        let b = body(&[
            pkt(format!("{Z} {upper} refs/heads/a\0report-status\n").as_bytes()),
            pkt(format!("{Z} {A} refs/heads/b\n").as_bytes()),
            b"0000".to_vec(),
        ]);
        let c = parse_commands(&b).unwrap();
        assert_eq!(c.updates[0].new, upper.to_lowercase());
        assert_eq!(c.updates[1].name, "refs/heads/b");
        assert_eq!(c.capabilities, ["report-status"]);
    }

    #[test]
    fn capabilities_on_later_lines_are_merged() {
        // receive-pack honours a capability list on any command line.
        let b = body(&[
            first(Z, A, "refs/heads/a", "report-status"),
            first(Z, A, "refs/heads/b", "side-band-64k report-status"),
            b"0000".to_vec(),
        ]);
        let c = parse_commands(&b).unwrap();
        assert_eq!(c.capabilities, ["report-status", "side-band-64k"]);
        assert_eq!(c.updates[1].name, "refs/heads/b");
    }

    #[test]
    fn sha256_object_ids() {
        let old = "a".repeat(64);
        let new = "b".repeat(64);
        let zero = "0".repeat(64);
        let b = body(&[
            first(
                &old,
                &new,
                "refs/heads/main",
                "report-status object-format=sha256",
            ),
            cmd(&zero, &new, "refs/heads/x"),
            b"0000".to_vec(),
        ]);
        let c = parse_commands(&b).unwrap();
        assert_eq!(c.updates[0].old, old);
        assert_eq!(c.updates[1].kind, UpdateKind::Create);

        // Lengths must agree with each other and with object-format.
        let mixed = body(&[
            first(A, &new, "refs/heads/main", "report-status"),
            b"0000".to_vec(),
        ]);
        assert_eq!(parse_commands(&mixed), Err(PktError::MixedOidLength));
        let wrong_format = body(&[
            first(&old, &new, "refs/heads/main", "report-status"),
            b"0000".to_vec(),
        ]);
        assert_eq!(
            parse_commands(&wrong_format),
            Err(PktError::ObjectFormatMismatch)
        );
        let wrong_format = body(&[
            first(A, B, "refs/heads/main", "object-format=sha256"),
            b"0000".to_vec(),
        ]);
        assert_eq!(
            parse_commands(&wrong_format),
            Err(PktError::ObjectFormatMismatch)
        );
        let unknown = body(&[
            first(A, B, "refs/heads/main", "object-format=md5"),
            b"0000".to_vec(),
        ]);
        assert_eq!(
            parse_commands(&unknown),
            Err(PktError::UnsupportedObjectFormat)
        );
        let disagreeing = body(&[
            first(&old, &new, "refs/heads/a", "object-format=sha256"),
            first(&old, &new, "refs/heads/b", "quiet"),
            b"0000".to_vec(),
        ]);
        assert_eq!(
            parse_commands(&disagreeing),
            Err(PktError::ObjectFormatMismatch)
        );
        // Without any capability list git has nothing to check against.
        let bare = body(&[cmd(&old, &new, "refs/heads/a"), b"0000".to_vec()]);
        assert_eq!(parse_commands(&bare).unwrap().updates.len(), 1);
    }

    #[test]
    fn push_options_follow_the_first_flush() {
        let b = body(&[
            first(
                A,
                B,
                "refs/heads/main",
                "report-status push-options side-band-64k",
            ),
            b"0000".to_vec(),
            pkt(b"ci.skip"),
            pkt(b"reviewer=alice\n"),
            pkt(b""),
            b"0000".to_vec(),
            b"PACK".to_vec(),
        ]);
        let c = parse_commands(&b).unwrap();
        assert_eq!(c.push_options, ["ci.skip", "reviewer=alice", ""]);
        assert_eq!(&b[c.consumed..], b"PACK");

        // Without the capability the bytes after the flush are not ours to read.
        let b = body(&[
            first(A, B, "refs/heads/main", "report-status"),
            b"0000".to_vec(),
            pkt(b"x"),
        ]);
        let c = parse_commands(&b).unwrap();
        assert!(c.push_options.is_empty());
        assert_eq!(c.consumed, b.len() - 5);

        let bad = body(&[
            first(A, B, "refs/heads/main", "push-options"),
            b"0000".to_vec(),
            pkt(b"a\0b"),
            b"0000".to_vec(),
        ]);
        assert_eq!(parse_commands(&bad), Err(PktError::BadPushOption));
        let bad = body(&[
            first(A, B, "refs/heads/main", "push-options"),
            b"0000".to_vec(),
            b"0001".to_vec(),
        ]);
        assert_eq!(parse_commands(&bad), Err(PktError::UnexpectedSpecialPacket));
    }

    #[test]
    fn shallow_lines() {
        let b = body(&[
            pkt(format!("shallow {A}").as_bytes()),
            pkt(format!("shallow {B}\n").as_bytes()),
            first(A, B, "refs/heads/main", "report-status"),
            b"0000".to_vec(),
        ]);
        let c = parse_commands(&b).unwrap();
        assert_eq!(c.updates.len(), 1);
        assert_eq!(c.consumed, b.len());

        for bad in [
            "shallow ".to_string(),
            "shallow xyz".to_string(),
            format!("shallow {A} "),
            format!("shallow {A}\0caps"),
        ] {
            let b = body(&[pkt(bad.as_bytes()), b"0000".to_vec()]);
            assert_eq!(parse_commands(&b), Err(PktError::BadShallow), "{bad:?}");
        }
        let mixed = body(&[
            pkt(format!("shallow {}", "a".repeat(64)).as_bytes()),
            cmd(A, B, "refs/heads/x"),
        ]);
        assert_eq!(parse_commands(&mixed), Err(PktError::MixedOidLength));
    }

    #[test]
    fn flush_only_body_is_an_empty_push() {
        let c = parse_commands(b"0000PACK").unwrap();
        assert!(c.updates.is_empty() && c.capabilities.is_empty() && c.push_options.is_empty());
        assert_eq!(c.consumed, 4);
        // Shallow lines alone: still no commands, and no push options are read.
        let b = body(&[
            pkt(format!("shallow {A}").as_bytes()),
            b"0000".to_vec(),
            b"0000".to_vec(),
        ]);
        assert_eq!(parse_commands(&b).unwrap().consumed, b.len() - 4);
    }

    #[test]
    fn malformed_pkt_lines() {
        let cases: &[(&[u8], PktError)] = &[
            (b"zzzz", PktError::BadLengthHex),
            (b"00g0", PktError::BadLengthHex),
            (b"x", PktError::BadLengthHex),
            (b"000", PktError::Incomplete),
            (b"0003", PktError::BadLength(3)),
            (b"fff1", PktError::BadLength(0xfff1)),
            (b"ffff", PktError::BadLength(0xffff)),
            (b"0001", PktError::UnexpectedSpecialPacket),
            (b"0002", PktError::UnexpectedSpecialPacket),
            (b"0004", PktError::BadCommand),
            (b"0005\n", PktError::BadCommand),
            (b"", PktError::Incomplete),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_commands(input).as_ref().err(),
                Some(want),
                "{input:?}"
            );
        }
        // Upper-case length digits are fine (git's hexval accepts them): 4 + 82 + 20 = 0x6A.
        let mut b = cmd(Z, A, "refs/heads/abcdefghi");
        assert_eq!(&b[..4], b"006a");
        b[..4].copy_from_slice(b"006A");
        b.extend_from_slice(b"0000");
        assert!(parse_commands(&b).is_ok());
        // A delim after a command would end receive-pack's list: refused here.
        let b = body(&[
            cmd(A, Z, "refs/heads/x"),
            b"0001".to_vec(),
            b"garbage".to_vec(),
        ]);
        assert_eq!(parse_commands(&b), Err(PktError::UnexpectedSpecialPacket));
    }

    #[test]
    fn malformed_commands() {
        let cases: &[(String, PktError)] = &[
            (format!("{A} {B}"), PktError::BadCommand),
            (format!("{A}{B} refs/heads/x"), PktError::BadCommand),
            (format!("{A}  {B} refs/heads/x"), PktError::BadOid),
            (format!("{} {B} refs/heads/x", &A[1..]), PktError::BadOid),
            (format!("{}g {B} refs/heads/x", &A[1..]), PktError::BadOid),
            (format!("{A} {B}0 refs/heads/x"), PktError::BadOid),
            (
                format!("{A} {B} "),
                PktError::BadRefname("must start with refs/"),
            ),
            ("ERR access denied".into(), PktError::BadOid),
            (
                "push-cert\0report-status".into(),
                PktError::PushCertUnsupported,
            ),
        ];
        for (line, want) in cases {
            let b = body(&[pkt(line.as_bytes()), b"0000".to_vec()]);
            assert_eq!(parse_commands(&b).as_ref().err(), Some(want), "{line:?}");
        }
    }

    #[test]
    fn invalid_refnames() {
        for name in [
            "main",
            "heads/main",
            "refs/",
            "refs/heads",
            "refs/heads/",
            "refs/heads//main",
            "refs//heads/main",
            "refs/heads/a..b",
            "refs/heads/a b",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads/a?",
            "refs/heads/a*",
            "refs/heads/a[b",
            "refs/heads/a\\b",
            "refs/heads/a\tb",
            "refs/heads/a\x7fb",
            "refs/heads/a\nb",
            "refs/heads/a.lock",
            "refs/heads/x.lock/y",
            "refs/heads/.hidden",
            "refs/heads/a/.b",
            "refs/heads/a.",
            "refs/heads/a@{1}",
            "refs/@",
        ] {
            let b = body(&[cmd(A, B, name), b"0000".to_vec()]);
            assert!(
                matches!(parse_commands(&b), Err(PktError::BadRefname(_))),
                "{name:?} gave {:?}",
                parse_commands(&b)
            );
        }
        let long = format!("refs/heads/{}", "x".repeat(MAX_REFNAME_LEN));
        let b = body(&[cmd(A, B, &long), b"0000".to_vec()]);
        assert_eq!(parse_commands(&b), Err(PktError::RefnameTooLong));
        let mut line = format!("{A} {B} refs/heads/").into_bytes();
        line.push(0xff);
        let b = body(&[pkt(&line), b"0000".to_vec()]);
        assert_eq!(parse_commands(&b), Err(PktError::BadRefname("not UTF-8")));
    }

    #[test]
    fn valid_refnames() {
        for name in [
            "refs/heads/main",
            "refs/heads/feature/x-1_2",
            "refs/tags/v1.0.0",
            "refs/heads/a.b",
            "refs/heads/@",
            "refs/heads/a@b",
            "refs/notes/commits",
            "refs/heads/caf\u{e9}",
            "refs/for/main%topic=x",
        ] {
            let b = body(&[cmd(A, B, name), b"0000".to_vec()]);
            assert_eq!(parse_commands(&b).unwrap().updates[0].name, name);
        }
        // One-level names may only be deleted (receive-pack allows that to clean up).
        let b = body(&[cmd(A, Z, "refs/stash"), b"0000".to_vec()]);
        assert_eq!(
            parse_commands(&b).unwrap().updates[0].kind,
            UpdateKind::Delete
        );
        let b = body(&[cmd(Z, A, "refs/stash"), b"0000".to_vec()]);
        assert!(matches!(parse_commands(&b), Err(PktError::BadRefname(_))));
    }

    #[test]
    fn limits() {
        let mut b = Vec::new();
        for i in 0..=MAX_COMMANDS {
            b.extend(cmd(Z, A, &format!("refs/heads/b{i}")));
        }
        b.extend_from_slice(b"0000");
        assert_eq!(parse_commands(&b), Err(PktError::TooManyCommands));

        let mut b = Vec::new();
        for _ in 0..=MAX_SHALLOW {
            b.extend(pkt(format!("shallow {A}").as_bytes()));
        }
        assert_eq!(parse_commands(&b), Err(PktError::TooManyShallow));

        let mut b = first(A, B, "refs/heads/main", "push-options");
        b.extend_from_slice(b"0000");
        for _ in 0..=MAX_PUSH_OPTIONS {
            b.extend(pkt(b"o"));
        }
        assert_eq!(parse_commands(&b), Err(PktError::TooManyPushOptions));

        let caps: Vec<String> = (0..=MAX_CAPABILITIES).map(|i| format!("c{i}")).collect();
        let b = body(&[
            first(A, B, "refs/heads/main", &caps.join(" ")),
            b"0000".to_vec(),
        ]);
        assert_eq!(parse_commands(&b), Err(PktError::TooManyCapabilities));

        // Long push-option runs hit the byte cap rather than growing without bound.
        let big = pkt(&vec![b'x'; MAX_PKT_DATA]);
        let mut b = Vec::new();
        let mut options = first(A, B, "refs/heads/main", "push-options");
        options.extend_from_slice(b"0000");
        b.extend(options);
        while b.len() <= MAX_COMMANDS_BYTES {
            b.extend_from_slice(&big);
        }
        assert_eq!(parse_commands(&b), Err(PktError::TooLarge));
    }

    #[test]
    fn every_prefix_of_a_valid_request_is_incomplete() {
        let inputs = [
            body(&[
                pkt(format!("shallow {A}").as_bytes()),
                first(Z, A, "refs/heads/main", CAPS),
                cmd(A, B, "refs/heads/dev"),
                cmd(B, Z, "refs/tags/old"),
                b"0000".to_vec(),
            ]),
            body(&[
                first(A, B, "refs/heads/main", "report-status push-options"),
                b"0000".to_vec(),
                pkt(b"ci.skip\n"),
                pkt(b""),
                b"0000".to_vec(),
            ]),
            b"0000".to_vec(),
        ];
        for input in inputs {
            let full = parse_commands(&input).unwrap();
            assert_eq!(full.consumed, input.len());
            for cut in 0..input.len() {
                assert_eq!(
                    parse_commands(&input[..cut]),
                    Err(PktError::Incomplete),
                    "cut at {cut}"
                );
                assert_eq!(
                    parse_commands_final(&input[..cut]),
                    Err(PktError::MissingFlush)
                );
            }
            // And re-parsing exactly what was consumed gives the same answer.
            assert_eq!(parse_commands(&input[..full.consumed]), Ok(full));
        }
    }

    #[test]
    fn cost_does_not_depend_on_what_follows_the_flush() {
        let head = body(&[first(Z, A, "refs/heads/main", CAPS), b"0000".to_vec()]);
        let alone = parse_commands(&head).unwrap();
        let mut with_pack = head.clone();
        with_pack.extend(std::iter::repeat_n(0xffu8, 1 << 20));
        let followed = parse_commands(&with_pack).unwrap();
        assert_eq!(alone, followed);
        assert_eq!(followed.consumed, head.len());
        // Even a body whose "pack" is an endless stream of bogus pkt headers.
        let mut garbage = head.clone();
        garbage.extend(std::iter::repeat_n(b'0', 1 << 20));
        assert_eq!(parse_commands(&garbage).unwrap().consumed, head.len());
    }

    fn update(name: &str) -> RefUpdate {
        RefUpdate {
            old: Z.into(),
            new: A.into(),
            name: name.into(),
            kind: UpdateKind::Create,
        }
    }

    #[test]
    fn refusal_without_sideband_byte_by_byte() {
        let updates = [update("refs/heads/main"), update("refs/heads/dev")];
        let reasons = [(
            "refs/heads/main".to_string(),
            "denied by policy protect-main".to_string(),
        )];
        let got = report_refusal(&updates, &reasons, false);
        let want: &[u8] = b"000eunpack ok\n\
            0035ng refs/heads/main denied by policy protect-main\n\
            0047ng refs/heads/dev rejected: another update in this push was denied\n\
            0000";
        assert_eq!(got, want, "{}", String::from_utf8_lossy(&got));
        // An empty push still gets a well-formed report.
        assert_eq!(report_refusal(&[], &[], false), b"000eunpack ok\n0000");
    }

    #[test]
    fn refusal_with_sideband_wraps_the_report_in_band_one() {
        let updates = [update("refs/heads/main")];
        let reasons = [("refs/heads/main".to_string(), "no".to_string())];
        let plain = report_refusal(&updates, &reasons, false);
        let framed = report_refusal(&updates, &reasons, true);
        let mut want = format!("{:04x}", plain.len() + 5).into_bytes();
        want.push(1);
        want.extend_from_slice(&plain);
        want.extend_from_slice(b"0000");
        assert_eq!(framed, want);
        assert_eq!(&framed[..5], b"0031\x01");
    }

    #[test]
    fn large_refusals_are_split_into_sideband_packets() {
        let updates: Vec<_> = (0..3000)
            .map(|i| update(&format!("refs/heads/branch-{i:05}")))
            .collect();
        let plain = report_refusal(&updates, &[], false);
        let framed = report_refusal(&updates, &[], true);
        assert!(plain.len() > MAX_PKT_LEN);
        // Demultiplex band 1 and compare.
        let mut pos = 0;
        let mut data = Vec::new();
        loop {
            let len =
                usize::from_str_radix(std::str::from_utf8(&framed[pos..pos + 4]).unwrap(), 16)
                    .unwrap();
            if len == 0 {
                break;
            }
            assert!(len <= MAX_PKT_LEN);
            assert_eq!(framed[pos + 4], 1);
            data.extend_from_slice(&framed[pos + 5..pos + len]);
            pos += len;
        }
        assert_eq!(pos + 4, framed.len());
        assert_eq!(data, plain);
    }

    #[test]
    fn refusal_reasons_cannot_break_the_framing() {
        let updates = [update("refs/heads/main")];
        let reasons = [(
            "refs/heads/main".to_string(),
            format!("a\nb\0c{}", "\u{e9}".repeat(2000)),
        )];
        let got = report_refusal(&updates, &reasons, false);
        let line_len =
            usize::from_str_radix(std::str::from_utf8(&got[14..18]).unwrap(), 16).unwrap();
        let line = std::str::from_utf8(&got[18..14 + line_len]).unwrap();
        assert!(line.starts_with("ng refs/heads/main a b c\u{e9}"));
        assert!(line.len() <= "ng refs/heads/main ".len() + MAX_REASON_LEN + 1);
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(&got[14 + line_len..], b"0000");

        // Absurd ref names (not from the parser) are cut to fit a pkt-line.
        let huge = [update(&format!("refs/heads/{}", "x".repeat(70_000)))];
        let got = report_refusal(&huge, &[], false);
        let line_len =
            usize::from_str_radix(std::str::from_utf8(&got[14..18]).unwrap(), 16).unwrap();
        assert!(line_len <= MAX_PKT_LEN);
        assert_eq!(got.len(), 14 + line_len + 4);
    }
}
