//! Reads just enough of an OTLP/HTTP export request to name the services it carries.
//!
//! The policy engine lets a caller send telemetry only for the services it owns, so it needs
//! the `service.name` of every resource in a request before the request goes upstream. The
//! reader is hand-written over the protobuf wire format rather than generated: it walks
//! request → `Resource{Spans,Metrics,Logs}` → `resource` → `attributes` → `KeyValue` →
//! `AnyValue` and skips everything else (spans, metrics, log records) by length, so its cost
//! grows with the resources' attributes, not with the body.
//!
//! Field numbers, checked against opentelemetry-proto: `Export*ServiceRequest.resource_* = 1`,
//! `Resource{Spans,Metrics,Logs}.resource = 1`, `Resource.attributes = 1`, `KeyValue.key = 1`,
//! `KeyValue.value = 2`, `AnyValue` oneof `string_value = 1`, `bool_value = 2`,
//! `int_value = 3`, `double_value = 4`, `array_value = 5`, `kvlist_value = 6`,
//! `bytes_value = 7`. The three signals share these numbers, so a protobuf body is read the
//! same way whatever the signal; the signal only picks the JSON key.
//!
//! Decisions, each made so that this reader never sees *fewer* services than the upstream
//! receiver would (refusing is always safe, reading less is a policy bypass):
//! - [`services`] returns each name once, in order of first appearance: the policy needs a
//!   set, and a body of many tiny resources must not turn into a much larger list.
//! - A resource without `service.name` gives `""` (the SDKs always set one, so `""` is for the
//!   policy to allow or refuse).
//! - A `service.name` whose value is not a string (an int, an empty `AnyValue`, no value at
//!   all, or in JSON more than one value member) is refused with
//!   [`OtlpError::ServiceNameNotString`]: a backend may render it as a name we never checked.
//! - A resource with `service.name` twice is refused ([`OtlpError::DuplicateServiceName`]):
//!   keys must be unique, and receivers disagree about which one wins.
//! - Protobuf merge rules are followed: a `resource` field appearing twice in one entry is
//!   merged (attributes concatenated), a repeated `key` keeps the last, and for `AnyValue`
//!   the last oneof member set wins.
//! - On the path to `service.name` a field with the wrong wire type is refused (as prost
//!   does; protobuf-go would skip it as unknown, so refusing is the stricter reading).
//!   Fields off that path are skipped by wire type without being looked into, so a body this
//!   reader accepts may still be refused upstream.
//! - Groups (wire types 3 and 4) and the undefined wire types 6 and 7 are refused: OTLP has
//!   no groups, and skipping one needs unbounded nesting.
//! - Attribute keys and string values of resource attributes must be valid UTF-8.
//! - JSON follows the OTLP/HTTP spec (lowerCamelCase keys, unknown fields ignored, `null` as
//!   absent), and also accepts the original snake_case names (`resource_spans`,
//!   `string_value`, ...) because protobuf JSON parsers do: ignoring them would let a body
//!   carry resources this reader never saw. On the objects it reads, a key given twice, and
//!   a key that only a lax parser would take for one of its fields (`ResourceSpans`,
//!   `KEY`, `re\u{17f}ourceSpans`: decoders that fold case exist), are refused; so are
//!   arrays where an object belongs, and a body that is not UTF-8 throughout.
//! - Gzip bodies may hold several concatenated members, all of which are read (Go's gzip
//!   reader, used by OTLP receivers, reads them all); anything after the last member is
//!   refused.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Read;
use std::ops::Range;

use flate2::read::MultiGzDecoder;
use serde::Deserialize;
use serde::de::{Error as _, IgnoredAny, MapAccess, Visitor};

/// The kind of telemetry a request carries, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

/// How a request body is encoded, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Why a body could not be classified. Every variant means "refuse the request" (400, or 413
/// for [`OtlpError::TooLarge`]); offsets are bytes from the start of the (decompressed) body.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("protobuf body ends inside the field starting at byte {offset}")]
    Truncated { offset: usize },
    #[error("protobuf field at byte {offset} runs past the end of its enclosing message")]
    Overrun { offset: usize },
    #[error("protobuf varint at byte {offset} is longer than 64 bits")]
    VarintOverflow { offset: usize },
    #[error("protobuf field number {field} at byte {offset} is out of range")]
    InvalidFieldNumber { offset: usize, field: u64 },
    #[error(
        "protobuf field {field} at byte {offset} has wire type {wire_type}, expected {expected}"
    )]
    UnexpectedWireType {
        offset: usize,
        field: u32,
        wire_type: u8,
        expected: u8,
    },
    #[error(
        "protobuf field {field} at byte {offset} has wire type {wire_type} (group or undefined)"
    )]
    UnsupportedWireType {
        offset: usize,
        field: u32,
        wire_type: u8,
    },
    #[error("string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: usize },
    #[error("malformed JSON at line {line}, column {column}")]
    Json {
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("JSON at line {line}, column {column} does not have the shape of an OTLP request")]
    JsonShape {
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("service.name of resource {resource} is not a string")]
    ServiceNameNotString { resource: usize },
    #[error("resource {resource} has more than one service.name")]
    DuplicateServiceName { resource: usize },
    #[error("body is larger than {max} bytes once decompressed")]
    TooLarge { max: usize },
    #[error("no Content-Type")]
    MissingContentType,
    #[error("unsupported Content-Type {0:?}")]
    UnsupportedContentType(String),
    #[error("bad gzip body")]
    Gzip(#[source] std::io::Error),
}

/// The signal an OTLP/HTTP path names, `None` for any other path (which should be refused
/// rather than forwarded unclassified). Exact matches only: no trailing slash, no prefix.
pub fn signal_from_path(path: &str) -> Option<Signal> {
    match path {
        "/v1/traces" | "/traces/otlp/v0.9" => Some(Signal::Traces),
        "/v1/metrics" | "/metrics/otlp/v0.9" => Some(Signal::Metrics),
        "/v1/logs" => Some(Signal::Logs),
        _ => None,
    }
}

/// The encoding a `Content-Type` names. Only the media type counts (case-insensitively);
/// parameters such as `charset` are ignored. Anything but the two OTLP types is refused, as
/// the receiver would not know how to read it either.
pub fn encoding_from_content_type(ct: Option<&str>) -> Result<Encoding, OtlpError> {
    let ct = ct.ok_or(OtlpError::MissingContentType)?;
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/x-protobuf") {
        Ok(Encoding::Protobuf)
    } else if essence.eq_ignore_ascii_case("application/json") {
        Ok(Encoding::Json)
    } else {
        Err(OtlpError::UnsupportedContentType(ct.to_owned()))
    }
}

/// Decompresses a gzip body (Content-Encoding: gzip) refusing output larger than `max` (gzip
/// bombs): decompression stops one byte past `max`, whatever the trailer claims.
pub fn gunzip_capped(body: &[u8], max: usize) -> Result<Vec<u8>, OtlpError> {
    if body.is_empty() {
        return Err(OtlpError::Gzip(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max).min(1 << 20));
    MultiGzDecoder::new(body)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(OtlpError::Gzip)?;
    if out.len() > max {
        return Err(OtlpError::TooLarge { max });
    }
    Ok(out)
}

/// The service names of every resource, in order of first appearance and each once;
/// a resource without `service.name` gives `""`. See the module docs for what is refused.
pub fn services(signal: Signal, encoding: Encoding, body: &[u8]) -> Result<Vec<String>, OtlpError> {
    match encoding {
        Encoding::Protobuf => {
            let mut names = Names::default();
            for_each_protobuf_resource(body, |entry| names.push(entry.service_name.unwrap_or("")))?;
            Ok(names.out)
        }
        Encoding::Json => json_services(signal, body),
    }
}

/// One `ResourceSpans`, `ResourceMetrics` or `ResourceLogs` entry of a protobuf request.
///
/// The ranges are what a splicer needs: appending a second `resource` field (tag `0x0a`) to
/// `contents` adds attributes to the entry's resource by protobuf merge rules, and then only
/// the length prefix in `header` changes (the request itself has no length prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceEntry<'a> {
    /// Position of the entry among the request's entries, from 0.
    pub index: usize,
    /// The entry's tag and length prefix.
    pub header: Range<usize>,
    /// The bytes the length prefix counts.
    pub contents: Range<usize>,
    /// The resource's `service.name`, `None` if it has none.
    pub service_name: Option<&'a str>,
}

/// Calls `visit` for each resource entry of a protobuf export request, in order. Stops at the
/// first error; entries before it have already been visited, so a caller that must not act
/// on a refused body should collect first and act after `Ok`.
pub fn for_each_protobuf_resource<'a>(
    body: &'a [u8],
    mut visit: impl FnMut(ResourceEntry<'a>),
) -> Result<(), OtlpError> {
    let mut request = Cursor::new(body);
    let mut index = 0;
    while !request.at_end() {
        let tag = request.tag()?;
        if tag.field != 1 {
            request.skip(tag)?;
            continue;
        }
        tag.expect(WT_LEN)?;
        let mut entry = request.len_delimited(tag.offset)?;
        let header = tag.offset..entry.pos;
        let contents = entry.pos..entry.end;
        let mut service = ServiceScan::new(index);
        while !entry.at_end() {
            let tag = entry.tag()?;
            if tag.field != 1 {
                entry.skip(tag)?;
                continue;
            }
            tag.expect(WT_LEN)?;
            scan_resource(entry.len_delimited(tag.offset)?, &mut service)?;
        }
        visit(ResourceEntry {
            index,
            header,
            contents,
            service_name: service.name,
        });
        index += 1;
    }
    Ok(())
}

/// `Resource`: only its `attributes` (field 1) matter.
fn scan_resource<'a>(
    mut resource: Cursor<'a>,
    service: &mut ServiceScan<'a>,
) -> Result<(), OtlpError> {
    while !resource.at_end() {
        let tag = resource.tag()?;
        if tag.field != 1 {
            resource.skip(tag)?;
            continue;
        }
        tag.expect(WT_LEN)?;
        let mut kv = resource.len_delimited(tag.offset)?;
        let mut key = "";
        let mut value = AnyValueScan::default();
        while !kv.at_end() {
            let tag = kv.tag()?;
            match tag.field {
                1 => {
                    tag.expect(WT_LEN)?;
                    key = kv.len_delimited(tag.offset)?.utf8()?;
                }
                2 => {
                    tag.expect(WT_LEN)?;
                    value.merge(kv.len_delimited(tag.offset)?)?;
                }
                _ => kv.skip(tag)?,
            }
        }
        if key == SERVICE_NAME {
            let string = match value.last {
                Some(1) => value.string,
                _ => None,
            };
            service.record(string)?;
        }
    }
    Ok(())
}

const SERVICE_NAME: &str = "service.name";

/// What an `AnyValue` (possibly given in several merged pieces) holds, as far as we care.
#[derive(Default)]
struct AnyValueScan<'a> {
    /// The oneof member set last; the one in force after merging.
    last: Option<u32>,
    /// The last `string_value`.
    string: Option<&'a str>,
}

impl<'a> AnyValueScan<'a> {
    fn merge(&mut self, mut any: Cursor<'a>) -> Result<(), OtlpError> {
        while !any.at_end() {
            let tag = any.tag()?;
            let expected = match tag.field {
                1 | 5 | 6 | 7 => WT_LEN,
                // 8: `string_value_strindex` (a dictionary index, opentelemetry-proto 1.7):
                // not a string, so a name that ends as one is not a name we checked.
                2 | 3 | 8 => WT_VARINT,
                4 => WT_I64,
                _ => {
                    any.skip(tag)?;
                    continue;
                }
            };
            tag.expect(expected)?;
            if tag.field == 1 {
                self.string = Some(any.len_delimited(tag.offset)?.utf8()?);
            } else {
                any.skip(tag)?;
            }
            self.last = Some(tag.field);
        }
        Ok(())
    }
}

/// The `service.name` of one resource, shared by the protobuf and JSON readers.
struct ServiceScan<'s> {
    resource: usize,
    seen: bool,
    name: Option<&'s str>,
}

impl<'s> ServiceScan<'s> {
    fn new(resource: usize) -> Self {
        ServiceScan {
            resource,
            seen: false,
            name: None,
        }
    }

    /// One `service.name` attribute: `Some` if its value is a string.
    fn record(&mut self, string: Option<&'s str>) -> Result<(), OtlpError> {
        if self.seen {
            return Err(OtlpError::DuplicateServiceName {
                resource: self.resource,
            });
        }
        self.seen = true;
        self.name = Some(string.ok_or(OtlpError::ServiceNameNotString {
            resource: self.resource,
        })?);
        Ok(())
    }
}

/// Names in order of first appearance, each once.
#[derive(Default)]
struct Names<'s> {
    seen: HashSet<&'s str>,
    out: Vec<String>,
}

impl<'s> Names<'s> {
    fn push(&mut self, name: &'s str) {
        if self.seen.insert(name) {
            self.out.push(name.to_owned());
        }
    }
}

pub(crate) const WT_VARINT: u8 = 0;
pub(crate) const WT_I64: u8 = 1;
pub(crate) const WT_LEN: u8 = 2;
pub(crate) const WT_I32: u8 = 5;
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Tag {
    pub(crate) offset: usize,
    pub(crate) field: u32,
    pub(crate) wire_type: u8,
}

impl Tag {
    pub(crate) fn expect(self, expected: u8) -> Result<(), OtlpError> {
        if self.wire_type == expected {
            Ok(())
        } else {
            Err(OtlpError::UnexpectedWireType {
                offset: self.offset,
                field: self.field,
                wire_type: self.wire_type,
                expected,
            })
        }
    }
}

/// A position inside one message of the body: `buf` is the whole body (so offsets in errors
/// are absolute) and `end` the end of the message being read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pub(crate) pos: usize,
    pub(crate) end: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    /// The error for a field starting at `offset` that needs bytes past `end`.
    fn short(&self, offset: usize) -> OtlpError {
        if self.end >= self.buf.len() {
            OtlpError::Truncated { offset }
        } else {
            OtlpError::Overrun { offset }
        }
    }

    /// A varint; `field` is where the field it belongs to starts, for errors.
    pub(crate) fn varint(&mut self, field: usize) -> Result<u64, OtlpError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let byte = match self.buf.get(self.pos) {
                Some(&b) if self.pos < self.end => b,
                _ => return Err(self.short(field)),
            };
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(OtlpError::VarintOverflow { offset: start });
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(OtlpError::VarintOverflow { offset: start })
    }

    pub(crate) fn tag(&mut self) -> Result<Tag, OtlpError> {
        let offset = self.pos;
        let key = self.varint(offset)?;
        let number = key >> 3;
        let field = match u32::try_from(number) {
            Ok(f) if (1..=MAX_FIELD_NUMBER).contains(&number) => f,
            _ => {
                return Err(OtlpError::InvalidFieldNumber {
                    offset,
                    field: number,
                });
            }
        };
        Ok(Tag {
            offset,
            field,
            // Masked to three bits, so it fits.
            wire_type: (key & 7) as u8,
        })
    }

    fn advance(&mut self, n: usize, field: usize) -> Result<(), OtlpError> {
        if self.end - self.pos < n {
            return Err(self.short(field));
        }
        self.pos += n;
        Ok(())
    }

    /// Reads a length prefix and returns a cursor over the bytes it counts.
    pub(crate) fn len_delimited(&mut self, field: usize) -> Result<Cursor<'a>, OtlpError> {
        let len = self.varint(field)?;
        let available = self.end - self.pos;
        let len = match usize::try_from(len) {
            Ok(n) if n <= available => n,
            _ => return Err(self.short(field)),
        };
        let inner = Cursor {
            buf: self.buf,
            pos: self.pos,
            end: self.pos + len,
        };
        self.pos += len;
        Ok(inner)
    }

    /// The rest of this cursor as a string.
    pub(crate) fn utf8(self) -> Result<&'a str, OtlpError> {
        let bytes = self
            .buf
            .get(self.pos..self.end)
            .ok_or(OtlpError::Truncated { offset: self.pos })?;
        std::str::from_utf8(bytes).map_err(|e| OtlpError::InvalidUtf8 {
            offset: self.pos + e.valid_up_to(),
        })
    }

    pub(crate) fn skip(&mut self, tag: Tag) -> Result<(), OtlpError> {
        match tag.wire_type {
            WT_VARINT => self.varint(tag.offset).map(drop),
            WT_I64 => self.advance(8, tag.offset),
            WT_LEN => self.len_delimited(tag.offset).map(drop),
            WT_I32 => self.advance(4, tag.offset),
            wire_type => Err(OtlpError::UnsupportedWireType {
                offset: tag.offset,
                field: tag.field,
                wire_type,
            }),
        }
    }
}

fn json_services(signal: Signal, body: &[u8]) -> Result<Vec<String>, OtlpError> {
    // serde_json does not check the UTF-8 of strings it skips; JSON must be UTF-8 throughout.
    let text = std::str::from_utf8(body).map_err(|e| OtlpError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let request = match signal {
        Signal::Traces => serde_json::from_str::<Msg<TracesJson>>(text).map(|r| r.0.entries),
        Signal::Metrics => serde_json::from_str::<Msg<MetricsJson>>(text).map(|r| r.0.entries),
        Signal::Logs => serde_json::from_str::<Msg<LogsJson>>(text).map(|r| r.0.entries),
    };
    let entries = request.map_err(json_error)?.unwrap_or_default();
    let mut names = Names::default();
    for (index, Msg(entry)) in entries.iter().enumerate() {
        let mut service = ServiceScan::new(index);
        let attributes = entry
            .resource
            .as_ref()
            .and_then(|r| r.0.attributes.as_deref())
            .unwrap_or_default();
        for Msg(kv) in attributes {
            if kv.key.as_ref().map(|k| &*k.0) == Some(SERVICE_NAME) {
                service.record(kv.value.as_ref().and_then(|v| v.0.only_string()))?;
            }
        }
        names.push(service.name.unwrap_or(""));
    }
    Ok(names.out)
}

fn json_error(source: serde_json::Error) -> OtlpError {
    let (line, column) = (source.line(), source.column());
    match source.classify() {
        serde_json::error::Category::Data => OtlpError::JsonShape {
            line,
            column,
            source,
        },
        _ => OtlpError::Json {
            line,
            column,
            source,
        },
    }
}

// Minimal views of the JSON messages on the path to `service.name`. Everything else (spans,
// metrics, log records, scopes) is skipped by serde without being built.

/// An OTLP message read from a JSON object, field by field.
trait JsonMessage<'de>: Default {
    /// Each field's lowerCamelCase name and its original snake_case name.
    const FIELDS: &'static [(&'static str, &'static str)];
    fn read<A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error>;
}

/// A message, which in JSON is an object only (serde's derived structs would also take an
/// array of field values, which protobuf JSON parsers refuse).
struct Msg<T>(T);

impl<'de, T: JsonMessage<'de>> Deserialize<'de> for Msg<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MsgVisitor(std::marker::PhantomData))
    }
}

struct MsgVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: JsonMessage<'de>> Visitor<'de> for MsgVisitor<T> {
    type Value = Msg<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Msg<T>, A::Error> {
        let mut message = T::default();
        let mut seen = 0u32;
        while let Some(JsonStr(key)) = map.next_key()? {
            match field_index(&key, T::FIELDS) {
                Ok(i) => {
                    if seen & (1 << i) != 0 {
                        return Err(A::Error::custom(format_args!(
                            "field `{}` given twice",
                            T::FIELDS[i].0
                        )));
                    }
                    seen |= 1 << i;
                    message.read(i, &mut map)?;
                }
                Err(Some(near)) => {
                    return Err(A::Error::custom(format_args!(
                        "key {key:?} is not `{near}` but a parser ignoring case or underscores \
                         would read it as such"
                    )));
                }
                Err(None) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Msg(message))
    }
}

/// Which of `fields` `key` names; `Err(Some(field))` for a key only a lax parser would take
/// for `field` (JSON decoders that fold case, even Unicode folds such as `ſ` for `s`, exist
/// behind OTLP endpoints, and what they read we must read too), `Err(None)` for an unknown
/// key.
fn field_index(
    key: &str,
    fields: &[(&'static str, &'static str)],
) -> Result<usize, Option<&'static str>> {
    if let Some(i) = fields
        .iter()
        .position(|(camel, snake)| key == *camel || key == *snake)
    {
        return Ok(i);
    }
    match fields
        .iter()
        .find(|(camel, _)| folded(key).eq(folded(camel)))
    {
        Some((camel, _)) => Err(Some(camel)),
        None => Err(None),
    }
}

/// `s` without underscores or dashes, case-folded.
fn folded(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars()
        .filter(|&c| c != '_' && c != '-')
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
}

/// Defines the request message of one signal: one repeated field of resource entries.
macro_rules! request_json {
    ($name:ident, $camel:literal, $snake:literal) => {
        #[derive(Default)]
        struct $name<'a> {
            entries: Option<Vec<Msg<EntryJson<'a>>>>,
        }

        impl<'de> JsonMessage<'de> for $name<'de> {
            const FIELDS: &'static [(&'static str, &'static str)] = &[($camel, $snake)];
            fn read<A: MapAccess<'de>>(&mut self, _: usize, map: &mut A) -> Result<(), A::Error> {
                self.entries = map.next_value()?;
                Ok(())
            }
        }
    };
}

request_json!(TracesJson, "resourceSpans", "resource_spans");
request_json!(MetricsJson, "resourceMetrics", "resource_metrics");
request_json!(LogsJson, "resourceLogs", "resource_logs");

/// `ResourceSpans`, `ResourceMetrics` or `ResourceLogs`.
#[derive(Default)]
struct EntryJson<'a> {
    resource: Option<Msg<ResourceJson<'a>>>,
}

impl<'de> JsonMessage<'de> for EntryJson<'de> {
    const FIELDS: &'static [(&'static str, &'static str)] = &[("resource", "resource")];
    fn read<A: MapAccess<'de>>(&mut self, _: usize, map: &mut A) -> Result<(), A::Error> {
        self.resource = map.next_value()?;
        Ok(())
    }
}

#[derive(Default)]
struct ResourceJson<'a> {
    attributes: Option<Vec<Msg<KeyValueJson<'a>>>>,
}

impl<'de> JsonMessage<'de> for ResourceJson<'de> {
    const FIELDS: &'static [(&'static str, &'static str)] = &[("attributes", "attributes")];
    fn read<A: MapAccess<'de>>(&mut self, _: usize, map: &mut A) -> Result<(), A::Error> {
        self.attributes = map.next_value()?;
        Ok(())
    }
}

#[derive(Default)]
struct KeyValueJson<'a> {
    key: Option<JsonStr<'a>>,
    value: Option<Msg<AnyValueJson<'a>>>,
}

impl<'de> JsonMessage<'de> for KeyValueJson<'de> {
    const FIELDS: &'static [(&'static str, &'static str)] = &[("key", "key"), ("value", "value")];
    fn read<A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error> {
        match field {
            0 => self.key = map.next_value()?,
            _ => self.value = map.next_value()?,
        }
        Ok(())
    }
}

/// A string borrowed from the body unless it has escapes (serde does not borrow through
/// `Option<Cow>` directly).
#[derive(Deserialize)]
struct JsonStr<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Default)]
struct AnyValueJson<'a> {
    string_value: Option<JsonStr<'a>>,
    /// How many other (non-null) members are present.
    others: usize,
}

impl<'de> JsonMessage<'de> for AnyValueJson<'de> {
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("stringValue", "string_value"),
        ("boolValue", "bool_value"),
        ("intValue", "int_value"),
        ("doubleValue", "double_value"),
        ("arrayValue", "array_value"),
        ("kvlistValue", "kvlist_value"),
        ("bytesValue", "bytes_value"),
    ];
    fn read<A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error> {
        match field {
            0 => self.string_value = map.next_value()?,
            _ => {
                // `null` leaves a oneof member unset.
                if map.next_value::<Option<IgnoredAny>>()?.is_some() {
                    self.others += 1;
                }
            }
        }
        Ok(())
    }
}

impl AnyValueJson<'_> {
    /// The string, if `stringValue` is the one member present.
    fn only_string(&self) -> Option<&str> {
        match self.others {
            0 => self.string_value.as_ref().map(|s| &*s.0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    // A tiny protobuf encoder, enough to build requests by hand.

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(field: u32, wire_type: u8) -> Vec<u8> {
        let mut out = Vec::new();
        varint((u64::from(field) << 3) | u64::from(wire_type), &mut out);
        out
    }

    fn len_field(field: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = key(field, WT_LEN);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn varint_field(field: u32, v: u64) -> Vec<u8> {
        let mut out = key(field, WT_VARINT);
        varint(v, &mut out);
        out
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    fn any_string(s: &str) -> Vec<u8> {
        len_field(1, s.as_bytes())
    }

    /// `KeyValue{key, value: AnyValue(value)}` where `value` is an encoded AnyValue.
    fn kv(k: &str, value: &[u8]) -> Vec<u8> {
        cat(&[len_field(1, k.as_bytes()), len_field(2, value)])
    }

    /// `Resource{attributes}` payload.
    fn resource(attrs: &[Vec<u8>]) -> Vec<u8> {
        attrs
            .iter()
            .map(|a| len_field(1, a))
            .collect::<Vec<_>>()
            .concat()
    }

    /// A `ResourceSpans` payload with a resource and some spans to skip.
    fn entry(resource_payload: &[u8]) -> Vec<u8> {
        let span = cat(&[
            len_field(1, &[7; 16]),
            len_field(2, &[8; 8]),
            len_field(5, b"GET /"),
            key(7, WT_I64),
            vec![1; 8],
            len_field(9, &kv("http.method", &any_string("GET"))),
        ]);
        let scope_spans = cat(&[len_field(1, &len_field(1, b"scope")), len_field(2, &span)]);
        cat(&[
            len_field(1, resource_payload),
            len_field(2, &scope_spans),
            len_field(3, b"https://opentelemetry.io/schemas/1.26.0"),
        ])
    }

    fn request(entries: &[Vec<u8>]) -> Vec<u8> {
        entries
            .iter()
            .map(|e| len_field(1, e))
            .collect::<Vec<_>>()
            .concat()
    }

    fn named(name: &str) -> Vec<u8> {
        entry(&resource(&[
            kv("host.name", &any_string("box")),
            kv("service.name", &any_string(name)),
            kv("service.version", &any_string("abc123")),
        ]))
    }

    fn pb(body: &[u8]) -> Result<Vec<String>, OtlpError> {
        services(Signal::Traces, Encoding::Protobuf, body)
    }

    fn json(signal: Signal, body: &str) -> Result<Vec<String>, OtlpError> {
        services(signal, Encoding::Json, body.as_bytes())
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_every_resource_in_order() {
        let body = request(&[named("checkout"), named("billing"), named("cart")]);
        assert_eq!(
            pb(&body).unwrap(),
            strings(&["checkout", "billing", "cart"])
        );
        // The three signals share field numbers.
        for signal in [Signal::Metrics, Signal::Logs] {
            assert_eq!(
                services(signal, Encoding::Protobuf, &body).unwrap(),
                strings(&["checkout", "billing", "cart"])
            );
        }
    }

    #[test]
    fn empty_body_has_no_resources() {
        assert_eq!(pb(&[]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn duplicates_are_kept_once_in_first_order() {
        let body = request(&[named("a"), named("b"), named("a"), named("b"), named("c")]);
        assert_eq!(pb(&body).unwrap(), strings(&["a", "b", "c"]));
    }

    #[test]
    fn a_resource_without_service_name_gives_empty() {
        let no_name = entry(&resource(&[kv("host.name", &any_string("box"))]));
        let no_resource = len_field(2, b"");
        let empty_resource = entry(&[]);
        let body = request(&[named("a"), no_name, no_resource, empty_resource]);
        assert_eq!(pb(&body).unwrap(), strings(&["a", ""]));
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped_at_every_level() {
        let unknown = cat(&[
            varint_field(99, u64::MAX),
            key(98, WT_I64),
            vec![0xff; 8],
            len_field(97, b"\x0a\x02zz"),
            key(96, WT_I32),
            vec![0xff; 4],
            varint_field(MAX_FIELD_NUMBER as u32, 1),
        ]);
        let any = cat(&[unknown.clone(), any_string("svc"), unknown.clone()]);
        let key_value = cat(&[unknown.clone(), kv("service.name", &any), unknown.clone()]);
        let res = cat(&[
            unknown.clone(),
            len_field(1, &key_value),
            varint_field(2, 3),
        ]);
        let ent = cat(&[unknown.clone(), len_field(1, &res), unknown.clone()]);
        let body = cat(&[
            unknown.clone(),
            len_field(1, &ent),
            unknown.clone(),
            varint_field(2, 5),
        ]);
        assert_eq!(pb(&body).unwrap(), strings(&["svc"]));
    }

    #[test]
    fn fields_in_any_order() {
        // Spans before the resource, value before key, service.name first or last.
        let value_first = cat(&[
            len_field(2, &any_string("x")),
            len_field(1, b"service.name"),
        ]);
        let res = cat(&[
            len_field(1, &kv("a", &any_string("1"))),
            len_field(1, &value_first),
        ]);
        let ent = cat(&[
            len_field(2, b"\x12\x00"),
            len_field(3, b"u"),
            len_field(1, &res),
        ]);
        assert_eq!(pb(&request(&[ent])).unwrap(), strings(&["x"]));
    }

    #[test]
    fn a_repeated_resource_field_is_merged() {
        let first = resource(&[kv("host.name", &any_string("box"))]);
        let second = resource(&[kv("service.name", &any_string("late"))]);
        let ent = cat(&[
            len_field(1, &first),
            len_field(2, b""),
            len_field(1, &second),
        ]);
        assert_eq!(pb(&request(&[ent])).unwrap(), strings(&["late"]));

        let both = cat(&[
            len_field(1, &resource(&[kv("service.name", &any_string("a"))])),
            len_field(1, &resource(&[kv("service.name", &any_string("b"))])),
        ]);
        assert!(matches!(
            pb(&request(&[named("x"), both])),
            Err(OtlpError::DuplicateServiceName { resource: 1 })
        ));
    }

    #[test]
    fn service_name_twice_in_one_resource_is_refused() {
        let ent = entry(&resource(&[
            kv("service.name", &any_string("mine")),
            kv("service.name", &any_string("theirs")),
        ]));
        assert!(matches!(
            pb(&request(&[ent])),
            Err(OtlpError::DuplicateServiceName { resource: 0 })
        ));
    }

    #[test]
    fn a_repeated_key_keeps_the_last() {
        let renamed_away = cat(&[
            len_field(1, b"service.name"),
            len_field(2, &any_string("x")),
            len_field(1, b"other"),
        ]);
        let renamed_to = cat(&[
            len_field(1, b"other"),
            len_field(2, &any_string("y")),
            len_field(1, b"service.name"),
        ]);
        let body = request(&[
            entry(&resource(&[renamed_away])),
            entry(&resource(&[renamed_to])),
        ]);
        assert_eq!(pb(&body).unwrap(), strings(&["", "y"]));
    }

    #[test]
    fn any_value_follows_oneof_merge_rules() {
        let int = varint_field(3, 5);
        let case = |value: Vec<u8>| pb(&request(&[entry(&resource(&[value]))]));
        // Last member set wins, within one AnyValue and across merged pieces.
        assert_eq!(
            case(kv("service.name", &cat(&[int.clone(), any_string("s")]))).unwrap(),
            ["s"]
        );
        assert!(matches!(
            case(kv("service.name", &cat(&[any_string("s"), int.clone()]))),
            Err(OtlpError::ServiceNameNotString { resource: 0 })
        ));
        assert_eq!(
            case(kv(
                "service.name",
                &cat(&[any_string("a"), any_string("b")])
            ))
            .unwrap(),
            ["b"]
        );
        let merged = cat(&[
            len_field(1, b"service.name"),
            len_field(2, &any_string("kept")),
            len_field(2, b""),
        ]);
        assert_eq!(case(merged).unwrap(), ["kept"]);
        let switched = cat(&[
            len_field(1, b"service.name"),
            len_field(2, &any_string("s")),
            len_field(2, &len_field(5, b"")),
        ]);
        assert!(matches!(
            case(switched),
            Err(OtlpError::ServiceNameNotString { .. })
        ));
        // An empty string is a string.
        assert_eq!(case(kv("service.name", &any_string(""))).unwrap(), [""]);
        // A string index (field 8) set after the string replaces it, as prost reads it.
        assert!(matches!(
            case(kv(
                "service.name",
                &cat(&[any_string("s"), varint_field(8, 3)])
            )),
            Err(OtlpError::ServiceNameNotString { resource: 0 })
        ));
    }

    #[test]
    fn a_service_name_that_is_not_a_string_is_refused() {
        let double = cat(&[key(4, WT_I64), 1.5f64.to_le_bytes().to_vec()]);
        let values = [
            varint_field(2, 1),
            varint_field(3, 42),
            double,
            len_field(5, &len_field(1, &any_string("a"))),
            len_field(6, b""),
            len_field(7, b"svc"),
            Vec::new(),
        ];
        for value in values {
            let body = request(&[named("ok"), entry(&resource(&[kv("service.name", &value)]))]);
            assert!(
                matches!(
                    pb(&body),
                    Err(OtlpError::ServiceNameNotString { resource: 1 })
                ),
                "{value:?}"
            );
        }
        let no_value = len_field(1, b"service.name");
        assert!(matches!(
            pb(&request(&[entry(&resource(&[no_value]))])),
            Err(OtlpError::ServiceNameNotString { resource: 0 })
        ));
        // Other attributes may hold anything.
        let body = request(&[entry(&resource(&[
            kv("k", &varint_field(3, 1)),
            kv("service.name", &any_string("s")),
        ]))]);
        assert_eq!(pb(&body).unwrap(), ["s"]);
    }

    #[test]
    fn wrong_wire_types_on_the_path_are_refused() {
        let cases = [
            (varint_field(1, 3), 1u32),
            (request(&[cat(&[key(1, WT_I32), vec![0; 4]])]), 1),
            (request(&[entry(&cat(&[varint_field(1, 0)]))]), 1),
            (
                request(&[entry(&resource(&[cat(&[varint_field(1, 7)])]))]),
                1,
            ),
            (
                request(&[entry(&resource(&[cat(&[
                    len_field(1, b"k"),
                    varint_field(2, 1),
                ])]))]),
                2,
            ),
            (
                request(&[entry(&resource(&[kv("k", &varint_field(1, 1))]))]),
                1,
            ),
            (
                request(&[entry(&resource(&[kv("k", &len_field(3, b""))]))]),
                3,
            ),
            (
                request(&[entry(&resource(&[kv("k", &len_field(4, b""))]))]),
                4,
            ),
        ];
        for (body, field) in cases {
            match pb(&body) {
                Err(OtlpError::UnexpectedWireType { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn groups_and_undefined_wire_types_are_refused() {
        for wt in [3u8, 4, 6, 7] {
            let body = cat(&[named_request("a"), key(50, wt)]);
            match pb(&body) {
                Err(OtlpError::UnsupportedWireType {
                    wire_type,
                    field: 50,
                    ..
                }) => {
                    assert_eq!(wire_type, wt)
                }
                other => panic!("{wt}: {other:?}"),
            }
        }
    }

    fn named_request(name: &str) -> Vec<u8> {
        request(&[named(name)])
    }

    #[test]
    fn varints_longer_than_64_bits_are_refused() {
        let mut ten = vec![0xff; 9];
        ten.push(0x02);
        let body = cat(&[key(9, WT_VARINT), ten]);
        assert!(matches!(
            pb(&body),
            Err(OtlpError::VarintOverflow { offset: 1 })
        ));
        let eleven = cat(&[key(9, WT_VARINT), vec![0x80; 10], vec![0]]);
        assert!(matches!(
            pb(&eleven),
            Err(OtlpError::VarintOverflow { offset: 1 })
        ));
        // The largest 10-byte varint and an over-long encoding of a small one are fine.
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(
            pb(&cat(&[key(9, WT_VARINT), max])).unwrap(),
            Vec::<String>::new()
        );
        let mut padded = vec![0x8a, 0x80, 0x00];
        varint(named("p").len() as u64, &mut padded);
        padded.extend_from_slice(&named("p"));
        assert_eq!(pb(&padded).unwrap(), ["p"]);
        // A tag varint that overflows.
        assert!(matches!(
            pb(&[0xff; 11]),
            Err(OtlpError::VarintOverflow { offset: 0 })
        ));
    }

    #[test]
    fn field_numbers_out_of_range_are_refused() {
        for field in [0u64, MAX_FIELD_NUMBER + 1, u64::MAX >> 3] {
            let mut body = Vec::new();
            varint((field << 3) | 2, &mut body);
            body.push(0);
            assert!(
                matches!(pb(&body), Err(OtlpError::InvalidFieldNumber { offset: 0, field: f }) if f == field),
                "{field}"
            );
        }
    }

    #[test]
    fn lengths_beyond_the_body_or_the_parent_are_refused() {
        // Beyond the body.
        let mut body = key(1, WT_LEN);
        varint(100, &mut body);
        body.extend_from_slice(&[0; 10]);
        assert!(matches!(pb(&body), Err(OtlpError::Truncated { offset: 0 })));
        // Huge lengths.
        for len in [u64::MAX, u64::from(u32::MAX), 1 << 62] {
            let mut body = key(1, WT_LEN);
            varint(len, &mut body);
            assert!(matches!(pb(&body), Err(OtlpError::Truncated { offset: 0 })));
        }
        // A resource whose length runs past its entry, though not past the body.
        let mut ent = key(1, WT_LEN);
        varint(50, &mut ent);
        ent.extend_from_slice(&[0; 4]);
        let body = cat(&[len_field(1, &ent), named_request("after"), vec![0; 60]]);
        assert!(matches!(pb(&body), Err(OtlpError::Overrun { offset: 2 })));
        // Fixed-width fields cut by their parent.
        let ent = cat(&[key(9, WT_I64), vec![0; 3]]);
        let body = cat(&[len_field(1, &ent), named_request("after")]);
        assert!(matches!(pb(&body), Err(OtlpError::Overrun { offset: 2 })));
        let ent = cat(&[key(9, WT_I32), vec![0; 3]]);
        let body = cat(&[len_field(1, &ent), named_request("after")]);
        assert!(matches!(pb(&body), Err(OtlpError::Overrun { offset: 2 })));
        // A varint cut by its parent.
        let ent = cat(&[key(9, WT_VARINT), vec![0x80]]);
        let body = cat(&[len_field(1, &ent), named_request("after")]);
        assert!(matches!(pb(&body), Err(OtlpError::Overrun { offset: 2 })));
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_offset() {
        let body = request(&[entry(&resource(&[kv(
            "service.name",
            &len_field(1, b"ab\xffc"),
        )]))]);
        let at = body.windows(4).position(|w| w == b"ab\xffc").unwrap() + 2;
        match pb(&body) {
            Err(OtlpError::InvalidUtf8 { offset }) => assert_eq!(offset, at),
            other => panic!("{other:?}"),
        }
        let body = request(&[entry(&resource(&[cat(&[
            len_field(1, b"\xc3"),
            len_field(2, b""),
        ])]))]);
        assert!(matches!(pb(&body), Err(OtlpError::InvalidUtf8 { .. })));
        // Non-ASCII names are fine.
        assert_eq!(pb(&named_request("zähler-服务")).unwrap(), ["zähler-服务"]);
    }

    #[test]
    fn every_cut_of_a_valid_body_is_a_shorter_body_or_truncated() {
        let entries = [named("a"), named("b"), named("c")];
        let body = request(&entries);
        let mut boundaries = vec![0];
        for e in &entries {
            boundaries.push(boundaries.last().unwrap() + len_field(1, e).len());
        }
        for cut in 0..=body.len() {
            match (pb(&body[..cut]), boundaries.iter().position(|&b| b == cut)) {
                (Ok(names), Some(i)) => assert_eq!(names, strings(&["a", "b", "c"][..i])),
                (Err(OtlpError::Truncated { .. }), None) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn mutated_and_random_bodies_never_panic() {
        let body = request(&[named("a"), named("b")]);
        for i in 0..body.len() {
            for v in [0u8, 1, 2, 3, 4, 5, 6, 7, 0x0a, 0x12, 0x7f, 0x80, 0xff] {
                let mut m = body.clone();
                m[i] = v;
                let _ = pb(&m);
                let _ = services(Signal::Logs, Encoding::Json, &m);
            }
        }
        // xorshift: deterministic, no extra dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let random: Vec<u8> = (0..len).map(|_| (next() % 256) as u8).collect();
            let _ = pb(&random);
            // Splice random bytes into a valid body.
            let mut m = body.clone();
            let at = (next() as usize) % m.len();
            m.splice(at..at, random.iter().copied());
            let _ = pb(&m);
            let _ = services(Signal::Traces, Encoding::Json, &random);
        }
    }

    #[test]
    fn entries_report_where_they_are_so_a_splicer_can_append_a_resource() {
        let unnamed = entry(&resource(&[kv("host.name", &any_string("box"))]));
        let body = request(&[named("a"), unnamed.clone()]);
        let mut entries = Vec::new();
        for_each_protobuf_resource(&body, |e| entries.push(e)).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].service_name, Some("a"));
        assert_eq!(entries[1].service_name, None);
        assert_eq!(entries[1].index, 1);
        assert_eq!(&body[entries[1].contents.clone()], &unnamed[..]);
        assert_eq!(entries[1].header.end, entries[1].contents.start);
        assert_eq!(entries[1].contents.end, body.len());
        // Append `resource{service.name = spliced}` to the second entry.
        let extra = len_field(1, &resource(&[kv("service.name", &any_string("spliced"))]));
        let mut contents = body[entries[1].contents.clone()].to_vec();
        contents.extend_from_slice(&extra);
        let spliced = cat(&[
            body[..entries[1].header.start].to_vec(),
            len_field(1, &contents),
        ]);
        assert_eq!(pb(&spliced).unwrap(), ["a", "spliced"]);
    }

    #[test]
    fn signals_come_from_exact_paths() {
        assert_eq!(signal_from_path("/v1/traces"), Some(Signal::Traces));
        assert_eq!(signal_from_path("/v1/metrics"), Some(Signal::Metrics));
        assert_eq!(signal_from_path("/v1/logs"), Some(Signal::Logs));
        assert_eq!(signal_from_path("/traces/otlp/v0.9"), Some(Signal::Traces));
        assert_eq!(
            signal_from_path("/metrics/otlp/v0.9"),
            Some(Signal::Metrics)
        );
        for other in [
            "/v1/traces/",
            "/v1/trace",
            "/V1/traces",
            "v1/traces",
            "/v2/traces",
            "/",
            "",
        ] {
            assert_eq!(signal_from_path(other), None, "{other}");
        }
    }

    #[test]
    fn encodings_come_from_the_media_type() {
        let ok = [
            ("application/x-protobuf", Encoding::Protobuf),
            ("Application/X-Protobuf", Encoding::Protobuf),
            ("application/x-protobuf; charset=binary", Encoding::Protobuf),
            ("application/json", Encoding::Json),
            ("application/json; charset=utf-8", Encoding::Json),
            (" application/json ;charset=UTF-8", Encoding::Json),
        ];
        for (ct, enc) in ok {
            assert_eq!(encoding_from_content_type(Some(ct)).unwrap(), enc, "{ct}");
        }
        assert!(matches!(
            encoding_from_content_type(None),
            Err(OtlpError::MissingContentType)
        ));
        for ct in [
            "text/plain",
            "application/protobuf",
            "application/grpc",
            "",
            "application/jsonx",
        ] {
            assert!(
                matches!(encoding_from_content_type(Some(ct)), Err(OtlpError::UnsupportedContentType(c)) if c == ct),
                "{ct}"
            );
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gunzip_round_trips_and_caps() {
        let body = named_request("zipped");
        let z = gzip(&body);
        assert_eq!(gunzip_capped(&z, body.len()).unwrap(), body);
        assert!(matches!(
            gunzip_capped(&z, body.len() - 1),
            Err(OtlpError::TooLarge { .. })
        ));
        // A bomb: 64 MiB of zeros in about 64 KiB, stopped at the cap.
        let bomb = gzip(&vec![0; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        assert!(
            matches!(gunzip_capped(&bomb, 1 << 20), Err(OtlpError::TooLarge { max }) if max == 1 << 20)
        );
    }

    #[test]
    fn gunzip_reads_every_member_and_refuses_garbage() {
        let two = cat(&[
            gzip(&named_request("first")),
            gzip(&named_request("second")),
        ]);
        let out = gunzip_capped(&two, 1 << 20).unwrap();
        assert_eq!(pb(&out).unwrap(), ["first", "second"]);

        let z = gzip(&named_request("x"));
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"garbage");
        let mut bad_crc = z.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 1;
        let cut = z[..z.len() - 3].to_vec();
        for bad in [Vec::new(), b"not gzip".to_vec(), trailing, bad_crc, cut] {
            assert!(
                matches!(gunzip_capped(&bad, 1 << 20), Err(OtlpError::Gzip(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn json_names_every_resource() {
        let body = r#"{"resourceSpans":[
            {"resource":{"attributes":[
                {"key":"host.name","value":{"stringValue":"box"}},
                {"key":"service.name","value":{"stringValue":"checkout"}}]},
             "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"00","name":"x",
                "attributes":[{"key":"service.name","value":{"intValue":"1"}}]}]}]},
            {"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"b\u00e4r"}}]}},
            {"resource":{"attributes":[]}},
            {"resource":null},
            {},
            {"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}}]}}
        ],"unknownTopLevel":{"a":[1,2,{"b":null}]}}"#;
        assert_eq!(
            json(Signal::Traces, body).unwrap(),
            strings(&["checkout", "bär", ""])
        );
        let metrics = body.replace("resourceSpans", "resourceMetrics");
        assert_eq!(
            json(Signal::Metrics, &metrics).unwrap(),
            strings(&["checkout", "bär", ""])
        );
        let logs = body.replace("resourceSpans", "resourceLogs");
        assert_eq!(
            json(Signal::Logs, &logs).unwrap(),
            strings(&["checkout", "bär", ""])
        );
        // The key of another signal is an unknown field.
        assert_eq!(json(Signal::Logs, body).unwrap(), Vec::<String>::new());
        assert_eq!(json(Signal::Traces, "{}").unwrap(), Vec::<String>::new());
        assert_eq!(
            json(Signal::Traces, r#"{"resourceSpans":null}"#).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn json_accepts_original_field_names_and_refuses_keys_given_twice() {
        let snake = r#"{"resource_spans":[{"resource":{"attributes":[{"key":"service.name","value":{"string_value":"s"}}]}}]}"#;
        assert_eq!(json(Signal::Traces, snake).unwrap(), ["s"]);
        let both = r#"{"resourceSpans":[],"resource_spans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"hidden"}}]}}]}"#;
        assert!(matches!(
            json(Signal::Traces, both),
            Err(OtlpError::JsonShape { .. })
        ));
        let twice = r#"{"resourceSpans":[],"resourceSpans":[]}"#;
        assert!(matches!(
            json(Signal::Traces, twice),
            Err(OtlpError::JsonShape { .. })
        ));
        let key_twice = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","key":"x","value":{"stringValue":"s"}}]}}]}"#;
        assert!(matches!(
            json(Signal::Traces, key_twice),
            Err(OtlpError::JsonShape { .. })
        ));
    }

    #[test]
    fn json_keys_a_lax_parser_would_take_for_ours_are_refused() {
        let ok = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"s"}}]}}]}"#;
        assert_eq!(json(Signal::Traces, ok).unwrap(), ["s"]);
        let variants = [
            ("resourceSpans", "ResourceSpans"),
            ("resourceSpans", "RESOURCESPANS"),
            ("resourceSpans", "resourcespans"),
            ("resourceSpans", "Resource_Spans"),
            ("resourceSpans", "re\u{17f}ourceSpans"),
            ("\"resource\"", "\"Resource\""),
            ("attributes", "attributeS"),
            ("\"key\"", "\"\u{212a}ey\""),
            ("\"key\"", "\"KEY\""),
            ("\"value\"", "\"Value\""),
            ("stringValue", "StringValue"),
            ("stringValue", "STRING_VALUE"),
        ];
        for (from, to) in variants {
            let body = ok.replacen(from, to, 1);
            assert_ne!(body, ok);
            match json(Signal::Traces, &body) {
                Err(OtlpError::JsonShape { source, .. }) => {
                    assert!(source.to_string().contains("ignoring case"), "{source}")
                }
                other => panic!("{to}: {other:?}"),
            }
        }
        // Escapes are read as what they stand for, as every JSON parser does.
        let escaped = ok.replace("resourceSpans", "resource\\u0053pans");
        assert_eq!(json(Signal::Traces, &escaped).unwrap(), ["s"]);
        // Near misses of fields not read are unknown fields like any other.
        let other = ok.replace("}]}}]}", "}]},\"SCOPESPANS\":1,\"Schema_Url\":2}]}");
        assert_eq!(json(Signal::Traces, &other).unwrap(), ["s"]);
    }

    #[test]
    fn json_service_name_must_be_one_string() {
        let wrap = |attrs: &str| {
            format!(r#"{{"resourceLogs":[{{"resource":{{"attributes":[{attrs}]}}}}]}}"#)
        };
        for value in [
            r#"{"intValue":"5"}"#,
            r#"{"boolValue":true}"#,
            r#"{"stringValue":"a","intValue":"5"}"#,
            r#"{"stringValue":null}"#,
            r#"{"arrayValue":{"values":[{"stringValue":"a"}]}}"#,
            r#"{}"#,
            r#"null"#,
        ] {
            let body = wrap(&format!(r#"{{"key":"service.name","value":{value}}}"#));
            assert!(
                matches!(
                    json(Signal::Logs, &body),
                    Err(OtlpError::ServiceNameNotString { resource: 0 })
                ),
                "{value}"
            );
        }
        let no_value = wrap(r#"{"key":"service.name"}"#);
        assert!(matches!(
            json(Signal::Logs, &no_value),
            Err(OtlpError::ServiceNameNotString { .. })
        ));
        let dup = wrap(
            r#"{"key":"service.name","value":{"stringValue":"a"}},{"key":"service.name","value":{"stringValue":"a"}}"#,
        );
        assert!(matches!(
            json(Signal::Logs, &dup),
            Err(OtlpError::DuplicateServiceName { resource: 0 })
        ));
        let escaped_key = wrap(r#"{"key":"service\u002ename","value":{"stringValue":"esc"}}"#);
        assert_eq!(json(Signal::Logs, &escaped_key).unwrap(), ["esc"]);
    }

    #[test]
    fn json_errors_say_where() {
        match json(Signal::Traces, "{\n  \"resourceSpans\": [\n    {,\n") {
            Err(OtlpError::Json {
                line: 3, column, ..
            }) => assert_eq!(column, 6),
            other => panic!("{other:?}"),
        }
        match json(Signal::Traces, "{\"resourceSpans\": {}}") {
            Err(OtlpError::JsonShape { line: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "[]",
            "null",
            "{} {}",
            "{\"resourceSpans\":[1]}",
            "\u{feff}{}",
        ] {
            assert!(
                matches!(
                    json(Signal::Traces, bad),
                    Err(OtlpError::Json { .. } | OtlpError::JsonShape { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            services(
                Signal::Traces,
                Encoding::Json,
                b"{\"resourceSpans\":[{\"x\":\"\xff\"}]}"
            ),
            Err(OtlpError::InvalidUtf8 { offset: 24 })
        ));
        // Deep nesting is skipped without recursion (the parts read have a fixed depth), so it
        // cannot overflow the stack.
        let deep = format!(
            "{{\"resourceSpans\":[{{\"scopeSpans\":{}{}}}]}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(json(Signal::Traces, &deep).unwrap(), [""]);
        let deep_value = format!(
            "{{\"resourceSpans\":[{{\"resource\":{{\"attributes\":[{{\"key\":\"k\",\"value\":{{\"arrayValue\":{}{}}}}}]}}}}]}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(json(Signal::Traces, &deep_value).unwrap(), [""]);
    }
}
