//! Reading what authorization needs from a request body, without holding more of it than that.
//!
//! A push: the ref-update commands at the start of the `git-receive-pack` body are read (a few
//! hundred bytes, at most 1 MiB of commands) and replayed in front of the rest, which streams
//! on untouched however large the pack is. An OTLP export: the body is collected (it is
//! bounded by the route's limit) so its resources can be read, then forwarded as it came.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use super::body::BodyError;
use crate::classify::pktline::{Commands, PktError, parse_commands};

/// Most command bytes read before giving up on finding the end of the commands.
pub const MAX_COMMANDS: usize = 1 << 20;

/// Why a body could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("push commands are malformed: {0}")]
    Commands(PktError),
    #[error("push commands exceed {MAX_COMMANDS} bytes")]
    TooManyCommands,
    #[error("compressed body is malformed")]
    Gzip,
}

pin_project! {
    /// `prefix`, then everything `inner` still has.
    pub struct Prefixed<B> {
        prefix: Option<Bytes>,
        #[pin]
        inner: B,
    }
}

impl<B> Prefixed<B> {
    pub fn new(prefix: Bytes, inner: B) -> Self {
        Prefixed {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Prefixed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(p) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = SizeHint::new();
        // Upper first: `set_lower` checks against the upper bound in force.
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint.set_lower(inner.lower().saturating_add(extra));
        hint
    }
}

/// Reads the push commands from the start of a receive-pack body. Returns them and the raw
/// bytes read (to be replayed before the rest of the body).
pub async fn push_commands<B>(body: &mut B, gzip: bool) -> Result<(Commands, Bytes), InspectError>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    let mut raw = BytesMut::new();
    // Parsing restarts from the first byte, so it is retried only when the buffer has doubled
    // (a sender trickling one byte per frame must not make this quadratic).
    let mut parse_at = 0usize;
    loop {
        if raw.len() >= parse_at {
            let parsed = if gzip {
                gunzip_prefix(&raw).and_then(|plain| parse_or_more(&plain))
            } else {
                parse_or_more(&raw)
            };
            match parsed {
                Ok(Some(commands)) => return Ok((commands, raw.freeze())),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            parse_at = (raw.len() * 2).max(raw.len() + 512);
        }
        if raw.len() > MAX_COMMANDS {
            return Err(InspectError::TooManyCommands);
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    raw.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(InspectError::Body(e)),
            // The body ended before the commands did.
            None => {
                let parsed = if gzip {
                    gunzip_prefix(&raw).and_then(|plain| parse_or_more(&plain))
                } else {
                    parse_or_more(&raw)
                };
                return match parsed {
                    Ok(Some(commands)) => Ok((commands, raw.freeze())),
                    Ok(None) => Err(InspectError::Commands(PktError::Incomplete)),
                    Err(e) => Err(e),
                };
            }
        }
    }
}

fn parse_or_more(buf: &[u8]) -> Result<Option<Commands>, InspectError> {
    match parse_commands(buf) {
        Ok(c) => Ok(Some(c)),
        Err(PktError::Incomplete) => Ok(None),
        Err(e) => Err(InspectError::Commands(e)),
    }
}

/// The decompressed start of a gzip stream (as much as the bytes so far give).
fn gunzip_prefix(raw: &[u8]) -> Result<Vec<u8>, InspectError> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(raw);
    let mut buf = [0u8; 8192];
    loop {
        match decoder.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_COMMANDS * 2 {
                    return Ok(out);
                }
            }
            // Not enough input yet: return what decoded so far.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(out),
            Err(_) => return Err(InspectError::Gzip),
        }
    }
}

/// Collects a whole (size-limited) body.
pub async fn collect<B>(body: B) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes, Error = BodyError>,
{
    Ok(body.collect().await?.to_bytes())
}

/// Reads and discards the rest of a body (after refusing a push, so the client, still
/// sending its pack, reads the refusal instead of a broken connection).
pub async fn drain<B>(mut body: B)
where
    B: Body<Data = Bytes> + Unpin,
{
    while let Some(Ok(_)) = body.frame().await {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn pkt(s: &str) -> Vec<u8> {
        format!("{:04x}{s}", s.len() + 4).into_bytes()
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> impl Body<Data = Bytes, Error = BodyError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        StreamBody::new(FramesStream(frames.into_iter()))
    }

    struct FramesStream(std::vec::IntoIter<Result<Frame<Bytes>, BodyError>>);
    impl futures_core::Stream for FramesStream {
        type Item = Result<Frame<Bytes>, BodyError>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.next())
        }
    }

    #[tokio::test]
    async fn commands_are_read_across_frames_and_the_body_replays_whole() {
        let zero = "0".repeat(40);
        let new = "a".repeat(40);
        let mut commands = pkt(&format!(
            "{zero} {new} refs/heads/main\0report-status side-band-64k\n"
        ));
        commands.extend_from_slice(b"0000");
        let pack = b"PACK\x00\x00\x00\x02 rest of the pack".to_vec();
        let mut whole = commands.clone();
        whole.extend_from_slice(&pack);
        let chunks: Vec<Vec<u8>> = whole.chunks(7).map(<[u8]>::to_vec).collect();
        let mut body = body_of(chunks);
        let (c, raw) = push_commands(&mut body, false).await.unwrap();
        assert_eq!(c.updates.len(), 1);
        assert_eq!(c.updates[0].name, "refs/heads/main");
        let replayed = Prefixed::new(raw, body).collect().await.unwrap().to_bytes();
        assert_eq!(replayed.as_ref(), whole.as_slice());
    }

    #[test]
    fn the_size_hint_adds_the_prefix_to_an_exact_length() {
        let inner = http_body_util::Full::new(Bytes::from_static(b"rest"));
        let p = Prefixed::new(Bytes::from_static(b"prefix"), inner);
        assert_eq!(p.size_hint().exact(), Some(10));
    }

    #[tokio::test]
    async fn gzip_compressed_commands_are_read_and_the_bytes_forwarded_as_sent() {
        use std::io::Write;
        let zero = "0".repeat(40);
        let new = "b".repeat(40);
        let mut plain = pkt(&format!("{zero} {new} refs/heads/x\0report-status\n"));
        plain.extend_from_slice(b"0000PACK....");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&plain).unwrap();
        let gz = enc.finish().unwrap();
        let mut body = body_of(gz.chunks(5).map(<[u8]>::to_vec).collect());
        let (c, raw) = push_commands(&mut body, true).await.unwrap();
        assert_eq!(c.updates[0].name, "refs/heads/x");
        let replayed = Prefixed::new(raw, body).collect().await.unwrap().to_bytes();
        assert_eq!(replayed.as_ref(), gz.as_slice());
    }

    #[tokio::test]
    async fn a_body_ending_inside_the_commands_is_an_error() {
        let mut body = body_of(vec![b"00a4".to_vec()]);
        assert!(push_commands(&mut body, false).await.is_err());
    }
}
