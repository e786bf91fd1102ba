//! A strict HTTP/1.1 framing check in front of hyper's lenient parser.
//!
//! hyper accepts some messages that proxies must refuse to stay in step with their upstreams:
//! both `Content-Length` and `Transfer-Encoding` (hyper silently drops the length), repeated
//! equal `Content-Length`s, bare-LF line endings, and `#` in the request target (silently
//! truncated by the URI parser). This wrapper watches the bytes hyper reads, follows message
//! boundaries (heads, fixed and chunked bodies), and records the first violation on the
//! connection; the request handler then answers 400 and closes the connection before
//! anything is forwarded. Bodies are skipped by length, so a large push costs O(chunks), not
//! O(bytes). HTTP/2 connections and upgraded streams are left alone.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use memchr::memchr;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// The first framing violation seen on a connection, shared with the request handler, and
/// whether a request head is half read (so a header timeout can tell a slow client from an
/// idle keep-alive connection).
#[derive(Debug, Default)]
pub struct FramingFlag {
    violation: OnceLock<&'static str>,
    partial_head: AtomicBool,
}

impl FramingFlag {
    pub fn violation(&self) -> Option<&'static str> {
        self.violation.get().copied()
    }

    /// Whether the bytes read so far end inside a request head.
    pub fn partial_head(&self) -> bool {
        self.partial_head.load(Ordering::Relaxed)
    }

    fn set(&self, why: &'static str) {
        let _ = self.violation.set(why);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` seen so far, `ext` inside a `;` extension.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// Expecting LF after the size line's CR.
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// Trailer section: `line_len` bytes on the current line, `cr` when a CR was seen.
    Trailer {
        line_len: usize,
        cr: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    Fixed {
        remaining: u64,
    },
    Chunked(Chunk),
    /// HTTP/2, an upgrade or a violation: nothing more to check.
    Passthrough,
}

/// The framing tracker, independent of any IO so it can be tested byte by byte.
#[derive(Debug)]
pub struct Tracker {
    state: State,
    head: Vec<u8>,
    max_head: usize,
    first: bool,
}

impl Tracker {
    pub fn new(max_head: usize) -> Self {
        Tracker {
            state: State::Head,
            head: Vec::new(),
            max_head,
            first: true,
        }
    }

    /// Feeds bytes in the order hyper reads them.
    pub fn feed(&mut self, data: &[u8], flag: &FramingFlag) {
        self.step(data, flag);
        let partial = self.state == State::Head && !self.head.is_empty();
        flag.partial_head.store(partial, Ordering::Relaxed);
    }

    fn step(&mut self, mut data: &[u8], flag: &FramingFlag) {
        while !data.is_empty() {
            match &mut self.state {
                State::Passthrough => return,
                State::Head => {
                    let (consumed, done) = self.collect_head(data);
                    data = &data[consumed..];
                    if done {
                        let next = match analyse_head(&self.head) {
                            Ok(next) => next,
                            Err(why) => {
                                flag.set(why);
                                State::Passthrough
                            }
                        };
                        self.head.clear();
                        self.state = next;
                    } else if self.state == State::Passthrough {
                        return;
                    }
                }
                State::Fixed { remaining } => {
                    let take = (*remaining).min(data.len() as u64);
                    *remaining -= take;
                    data = &data[take as usize..];
                    if *remaining == 0 {
                        self.state = State::Head;
                    }
                }
                State::Chunked(chunk) => match step_chunk(chunk, data) {
                    Ok((consumed, finished)) => {
                        data = &data[consumed..];
                        if finished {
                            self.state = State::Head;
                        }
                    }
                    Err(why) => {
                        flag.set(why);
                        self.state = State::Passthrough;
                    }
                },
            }
        }
    }

    /// Appends head bytes; returns how many were taken and whether the head is complete.
    fn collect_head(&mut self, data: &[u8]) -> (usize, bool) {
        if self.first {
            // Decide HTTP/2 on the first bytes: the preface cannot start an HTTP/1 request.
            let want = H2_PREFACE.len().saturating_sub(self.head.len());
            let probe = &data[..want.min(data.len())];
            let mut seen = self.head.clone();
            seen.extend_from_slice(probe);
            if H2_PREFACE.starts_with(&seen) {
                if seen.len() == H2_PREFACE.len() {
                    self.state = State::Passthrough;
                    return (data.len(), false);
                }
                self.head = seen;
                return (probe.len(), false);
            }
            self.first = false;
        }
        // Skip empty lines before a request line (RFC 9112 §2.2 allows CRLF there).
        if self.head.is_empty() {
            let blank = data
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                return (blank, false);
            }
        }
        let start = self.head.len();
        // The end of head is the first "\n\r\n" or "\n\n" counting already collected bytes.
        let search_from = start.saturating_sub(3);
        self.head.extend_from_slice(data);
        let end = find_head_end(&self.head[search_from..]).map(|e| e + search_from);
        match end {
            Some(end) => {
                let consumed = end - start;
                self.head.truncate(end);
                (consumed, true)
            }
            None => {
                if self.head.len() > self.max_head {
                    // hyper refuses oversized heads itself; stop tracking this connection.
                    self.head = Vec::new();
                    self.state = State::Passthrough;
                }
                (data.len(), false)
            }
        }
    }
}

/// Position just past the blank line ending a head (`\n\n` or `\n\r\n`).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = memchr(b'\n', &buf[i..]) {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// The lines of a head, without their CRLF; stops at a line ending in a bare LF.
struct Lines<'a> {
    rest: &'a [u8],
    bare_lf: bool,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let nl = memchr(b'\n', self.rest)?;
        if nl == 0 || self.rest[nl - 1] != b'\r' {
            self.bare_lf = true;
            self.rest = &[];
            return None;
        }
        let line = &self.rest[..nl - 1];
        self.rest = &self.rest[nl + 1..];
        Some(line)
    }
}

/// Checks a complete head and says how its body is framed.
fn analyse_head(head: &[u8]) -> Result<State, &'static str> {
    let mut lines = Lines {
        rest: head,
        bare_lf: false,
    };
    let Some(request_line) = lines.next() else {
        return Err(if lines.bare_lf {
            "bare LF line ending"
        } else {
            "empty request head"
        });
    };
    if has_ctl(request_line) {
        return Err("control character in request line");
    }
    let mut parts = request_line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    if memchr(b'#', target).is_some() {
        return Err("'#' in request target");
    }
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut upgrade = method == b"CONNECT";
    for line in lines.by_ref() {
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err("obsolete line folding");
        }
        let colon = memchr(b':', line).ok_or("header line without ':'")?;
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if !crate::http_token::is_token(name) {
            return Err("invalid character in header name");
        }
        // Tabs are allowed in values: only look byte by byte when the fast test finds any.
        if has_ctl(value) && value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err("control character in header value");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err("more than one Content-Length");
            }
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err("malformed Content-Length");
            }
            let text = std::str::from_utf8(value).map_err(|_| "malformed Content-Length")?;
            content_length = Some(text.parse().map_err(|_| "malformed Content-Length")?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err("more than one Transfer-Encoding");
            }
            transfer_encoding = Some(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    if lines.bare_lf {
        return Err("bare LF line ending");
    }
    let body = match (content_length, transfer_encoding) {
        (Some(_), Some(_)) => return Err("both Content-Length and Transfer-Encoding"),
        (None, Some(te)) => {
            if !te.eq_ignore_ascii_case(b"chunked") {
                return Err("Transfer-Encoding other than chunked");
            }
            State::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            })
        }
        (Some(0), None) | (None, None) => State::Head,
        (Some(n), None) => State::Fixed { remaining: n },
    };
    // After an upgrade request the stream may stop being HTTP/1 (the handler closes the
    // connection when no upgrade happens, so nothing unchecked can follow).
    Ok(if upgrade { State::Passthrough } else { body })
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Whether any byte is a control character (below 0x20, or DEL), eight bytes at a time:
/// heads carry long tokens and cookies, and this runs on every request.
fn has_ctl(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // A byte below 0x20 borrows in x - 0x20.. and had its top bit clear (exact for < 0x80).
        let below = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        // A byte equal to 0x7f becomes zero under the xor.
        let y = x ^ (ONES * 0x7f);
        let del = y.wrapping_sub(ONES) & !y & HIGH;
        if below | del != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20 || b == 0x7f)
}

/// Advances the chunked-body machine; returns bytes consumed and whether the body ended.
fn step_chunk(chunk: &mut Chunk, data: &[u8]) -> Result<(usize, bool), &'static str> {
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        match chunk {
            Chunk::Size { size, digits, ext } => {
                if *ext {
                    if b == b'\r' {
                        *chunk = Chunk::SizeLf { size: *size };
                    } else if b == b'\n' {
                        return Err("bare LF in chunk size line");
                    }
                } else if let Some(v) = (b as char).to_digit(16) {
                    *digits += 1;
                    if *digits > 16 {
                        return Err("chunk size too large");
                    }
                    *size = (*size << 4) | u64::from(v);
                } else if *digits == 0 {
                    return Err("missing chunk size");
                } else if b == b';' || b == b' ' || b == b'\t' {
                    *ext = true;
                } else if b == b'\r' {
                    *chunk = Chunk::SizeLf { size: *size };
                } else {
                    return Err("invalid chunk size");
                }
                i += 1;
            }
            Chunk::SizeLf { size } => {
                if b != b'\n' {
                    return Err("chunk size line not ended by CRLF");
                }
                *chunk = if *size == 0 {
                    Chunk::Trailer {
                        line_len: 0,
                        cr: false,
                    }
                } else {
                    Chunk::Data { remaining: *size }
                };
                i += 1;
            }
            Chunk::Data { remaining } => {
                let take = (*remaining).min((data.len() - i) as u64);
                *remaining -= take;
                i += take as usize;
                if *remaining == 0 {
                    *chunk = Chunk::DataCr;
                }
            }
            Chunk::DataCr => {
                if b != b'\r' {
                    return Err("chunk data not followed by CRLF");
                }
                *chunk = Chunk::DataLf;
                i += 1;
            }
            Chunk::DataLf => {
                if b != b'\n' {
                    return Err("chunk data not followed by CRLF");
                }
                *chunk = Chunk::Size {
                    size: 0,
                    digits: 0,
                    ext: false,
                };
                i += 1;
            }
            Chunk::Trailer { line_len, cr } => {
                i += 1;
                match (b, *cr) {
                    (b'\n', true) => {
                        if *line_len == 0 {
                            return Ok((i, true));
                        }
                        *line_len = 0;
                        *cr = false;
                    }
                    (b'\n', false) => return Err("bare LF in trailer"),
                    (b'\r', false) => *cr = true,
                    (_, true) => return Err("CR without LF in trailer"),
                    (0, false) => return Err("NUL in trailer"),
                    (_, false) => *line_len += 1,
                }
            }
        }
    }
    Ok((i, false))
}

/// The IO wrapper: every byte hyper reads passes through the [`Tracker`].
pub struct GuardedIo<T> {
    inner: T,
    tracker: Tracker,
    flag: std::sync::Arc<FramingFlag>,
}

impl<T> GuardedIo<T> {
    pub fn new(inner: T, max_head: usize, flag: std::sync::Arc<FramingFlag>) -> Self {
        GuardedIo {
            inner,
            tracker: Tracker::new(max_head),
            flag,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res
            && this.tracker.state != State::Passthrough
        {
            this.tracker.feed(&buf.filled()[before..], &this.flag);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Option<&'static str> {
        // Every split point must give the same verdict as the whole input.
        let whole = {
            let flag = FramingFlag::default();
            let mut t = Tracker::new(65536);
            t.feed(input, &flag);
            flag.violation()
        };
        for split in 1..input.len() {
            let flag = FramingFlag::default();
            let mut t = Tracker::new(65536);
            t.feed(&input[..split], &flag);
            t.feed(&input[split..], &flag);
            assert_eq!(flag.violation(), whole, "split at {split}");
        }
        whole
    }

    #[test]
    fn well_formed_pipelines_pass() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
GET /z HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(run(input), None);
    }

    #[test]
    fn smuggling_in_a_later_request_is_caught_after_bodies_are_skipped() {
        let input = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n\r\n\
GET / HTTP/1.1\r\nX: \r\n\r\n12345\
POST /y HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            run(input),
            Some("both Content-Length and Transfer-Encoding")
        );
    }

    #[test]
    fn content_length_and_transfer_encoding_in_either_order() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n"[..],
        ] {
            assert_eq!(run(head), Some("both Content-Length and Transfer-Encoding"));
        }
    }

    #[test]
    fn each_framing_violation_is_named() {
        let cases: [(&[u8], &str); 11] = [
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                "more than one Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                "malformed Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
                "malformed Content-Length",
            ),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF line ending"),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
                "obsolete line folding",
            ),
            (
                b"GET /a#/../b HTTP/1.1\r\nHost: a\r\n\r\n",
                "'#' in request target",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
                "control character in header value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                "invalid character in header name",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "missing chunk size",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
                "chunk data not followed by CRLF",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(run(input), Some(want), "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn http2_preface_turns_tracking_off() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(b"\n\n\0garbage that is not HTTP/1");
        assert_eq!(run(&input), None);
    }

    #[test]
    fn upgrade_requests_stop_tracking() {
        let input = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello\n\n";
        assert_eq!(run(input), None);
    }

    #[test]
    fn large_fixed_bodies_are_skipped_not_scanned() {
        let mut input = b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'\n', 100_000));
        input.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let flag = FramingFlag::default();
        let mut t = Tracker::new(65536);
        t.feed(&input, &flag);
        assert_eq!(flag.violation(), None);
        assert_eq!(t.state, State::Head);
    }

    #[test]
    fn a_half_read_head_is_told_from_an_idle_connection() {
        let flag = FramingFlag::default();
        let mut t = Tracker::new(65536);
        assert!(!flag.partial_head());
        t.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ", &flag);
        assert!(flag.partial_head());
        t.feed(b"a\r\n\r\n", &flag);
        assert!(!flag.partial_head(), "a complete head, then idle");
        t.feed(b"\r\n", &flag);
        assert!(
            !flag.partial_head(),
            "blank lines between requests are not a head"
        );
        t.feed(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab", &flag);
        assert!(!flag.partial_head(), "inside a body");
    }
}
