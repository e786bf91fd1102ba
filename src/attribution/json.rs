//! Adds attributes to the resources of a JSON OTLP export request (OTLP/HTTP JSON encoding)
//! by editing the text: the spans, metrics and log records are never parsed into values,
//! only validated and skipped (`serde_json::value::RawValue`), and every byte outside the
//! edited `attributes` arrays is forwarded as it came.
//!
//! Only the objects on the way to the attributes are read: the request, each entry, its
//! `resource`, the `KeyValue`s and their `value`. Both spellings protobuf JSON parsers accept
//! are read (`resourceSpans`/`resource_spans`, `stringValue`/`string_value`); a key the
//! reader needs given twice is refused, as receivers disagree about which copy wins.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{Additions, EntryFacts, KEYS};
use crate::classify::otlp::{OtlpError, Signal};

/// Where an entry's additions go.
#[derive(Debug, Clone)]
enum Spot {
    /// Insert `"resource":{...}` after the entry's `{` (`comma`: members follow).
    NoResource { at: usize, comma: bool },
    /// `"resource": null`: replace the `null`.
    NullResource(Range<usize>),
    /// Insert `"attributes":[...]` after the resource's `{`.
    NoAttributes { at: usize, comma: bool },
    /// `"attributes": null`: replace the `null`.
    NullAttributes(Range<usize>),
    /// The attributes array and its elements (with the index into `KEYS` of those the
    /// gateway adds).
    Attributes {
        array: Range<usize>,
        elements: Vec<(Range<usize>, Option<usize>)>,
    },
}

/// The request, scanned.
#[derive(Debug)]
pub struct Scanned<'b> {
    text: &'b str,
    spots: Vec<Spot>,
    facts: Vec<EntryFacts>,
}

impl Scanned<'_> {
    pub fn facts(&self) -> &[EntryFacts] {
        &self.facts
    }
}

/// An object's members in order, values left raw.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(Key(k)) = map.next_key()? {
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn shape(e: serde_json::Error) -> OtlpError {
    OtlpError::JsonShape {
        line: e.line(),
        column: e.column(),
        source: e,
    }
}

/// A shape error found by this reader rather than by serde_json.
fn refuse(what: &str) -> OtlpError {
    shape(<serde_json::Error as serde::de::Error>::custom(what))
}

fn object(raw: &RawValue) -> Result<Members<'_>, OtlpError> {
    serde_json::from_str(raw.get()).map_err(shape)
}

fn array(raw: &RawValue) -> Result<Vec<&RawValue>, OtlpError> {
    serde_json::from_str(raw.get()).map_err(shape)
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// The one member named `camel` or `snake`; two of them is refused.
fn member<'a>(
    members: &Members<'a>,
    camel: &str,
    snake: &str,
) -> Result<Option<&'a RawValue>, OtlpError> {
    let mut found = None;
    for (k, v) in &members.0 {
        if k == camel || k == snake {
            if found.is_some() {
                return Err(refuse(&format!("{camel} given more than once")));
            }
            found = Some(*v);
        }
    }
    Ok(found)
}

/// Reads the entries of an export request and their resources' attributes.
pub fn scan(signal: Signal, body: &[u8]) -> Result<Scanned<'_>, OtlpError> {
    let text = std::str::from_utf8(body).map_err(|e| OtlpError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let base = text.as_ptr() as usize;
    let at = |raw: &RawValue| raw.get().as_ptr() as usize - base;
    let range = |raw: &RawValue| at(raw)..at(raw) + raw.get().len();

    let top: &RawValue = serde_json::from_str(text).map_err(|e| OtlpError::Json {
        line: e.line(),
        column: e.column(),
        source: e,
    })?;
    let top = object(top)?;
    let (camel, snake) = match signal {
        Signal::Traces => ("resourceSpans", "resource_spans"),
        Signal::Metrics => ("resourceMetrics", "resource_metrics"),
        Signal::Logs => ("resourceLogs", "resource_logs"),
    };
    let mut spots = Vec::new();
    let mut facts = Vec::new();
    let entries = match member(&top, camel, snake)? {
        Some(raw) if !is_null(raw) => array(raw)?,
        _ => Vec::new(),
    };
    for entry in entries {
        let members = object(entry)?;
        let mut fact = EntryFacts::default();
        let spot = match member(&members, "resource", "resource")? {
            None => Spot::NoResource {
                at: at(entry) + 1,
                comma: !members.0.is_empty(),
            },
            Some(r) if is_null(r) => Spot::NullResource(range(r)),
            Some(resource) => {
                let rm = object(resource)?;
                match member(&rm, "attributes", "attributes")? {
                    None => Spot::NoAttributes {
                        at: at(resource) + 1,
                        comma: !rm.0.is_empty(),
                    },
                    Some(a) if is_null(a) => Spot::NullAttributes(range(a)),
                    Some(attrs) => {
                        let mut elements = Vec::new();
                        for kv in array(attrs)? {
                            let (key, string) = key_value(kv)?;
                            let ours = fact.note(&key, string.as_deref());
                            elements.push((range(kv), ours));
                        }
                        Spot::Attributes {
                            array: range(attrs),
                            elements,
                        }
                    }
                }
            }
        };
        spots.push(spot);
        facts.push(fact);
    }
    Ok(Scanned { text, spots, facts })
}

/// A `KeyValue`'s key and, when its value is a string, the string.
fn key_value(kv: &RawValue) -> Result<(String, Option<String>), OtlpError> {
    let members = object(kv)?;
    let key = match member(&members, "key", "key")? {
        Some(k) if !is_null(k) => serde_json::from_str::<String>(k.get()).map_err(shape)?,
        _ => String::new(),
    };
    let string = match member(&members, "value", "value")? {
        Some(v) if !is_null(v) => {
            let any = object(v)?;
            match member(&any, "stringValue", "string_value")? {
                Some(s) if !is_null(s) && any.0.len() == 1 => {
                    Some(serde_json::from_str::<String>(s.get()).map_err(shape)?)
                }
                _ => None,
            }
        }
        _ => None,
    };
    Ok((key, string))
}

/// `{"key":...,"value":{"stringValue":...}}` for each addition, comma separated.
fn elements(add: &Additions, out: &mut String) {
    for (i, (k, v)) in add.pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"key\":");
        push_json_string(out, KEYS[*k]);
        out.push_str(",\"value\":{\"stringValue\":");
        push_json_string(out, v);
        out.push_str("}}");
    }
}

fn push_json_string(out: &mut String, s: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// The body with `additions[i]` added to entry `i`; `None` when nothing is added.
pub fn splice(
    body: &[u8],
    scanned: &Scanned<'_>,
    additions: &[Option<Additions>],
) -> Option<Vec<u8>> {
    if additions.iter().all(Option::is_none) {
        return None;
    }
    let text = scanned.text;
    debug_assert_eq!(text.len(), body.len());
    // (range replaced, new text), in body order.
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    for (spot, add) in scanned.spots.iter().zip(additions) {
        let Some(add) = add else { continue };
        let mut new = String::new();
        match spot {
            Spot::NoResource { at, comma } => {
                new.push_str("\"resource\":{\"attributes\":[");
                elements(add, &mut new);
                new.push_str("]}");
                if *comma {
                    new.push(',');
                }
                edits.push((*at..*at, new));
            }
            Spot::NullResource(r) => {
                new.push_str("{\"attributes\":[");
                elements(add, &mut new);
                new.push_str("]}");
                edits.push((r.clone(), new));
            }
            Spot::NoAttributes { at, comma } => {
                new.push_str("\"attributes\":[");
                elements(add, &mut new);
                new.push(']');
                if *comma {
                    new.push(',');
                }
                edits.push((*at..*at, new));
            }
            Spot::NullAttributes(r) => {
                new.push('[');
                elements(add, &mut new);
                new.push(']');
                edits.push((r.clone(), new));
            }
            Spot::Attributes {
                array,
                elements: old,
            } => {
                let replaced =
                    |e: &(Range<usize>, Option<usize>)| e.1.is_some_and(|k| add.replaces(k));
                if old.iter().any(replaced) {
                    new.push('[');
                    let mut first = true;
                    for e in old.iter().filter(|e| !replaced(e)) {
                        if !first {
                            new.push(',');
                        }
                        first = false;
                        new.push_str(&text[e.0.clone()]);
                    }
                    if !first {
                        new.push(',');
                    }
                    elements(add, &mut new);
                    new.push(']');
                    edits.push((array.clone(), new));
                } else {
                    // Before the closing bracket, keeping the original bytes.
                    if !old.is_empty() {
                        new.push(',');
                    }
                    elements(add, &mut new);
                    let end = array.end - 1;
                    edits.push((end..end, new));
                }
            }
        }
    }
    let extra: usize = edits.iter().map(|(_, t)| t.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut copied = 0;
    for (range, new) in edits {
        out.extend_from_slice(&body[copied..range.start]);
        out.extend_from_slice(new.as_bytes());
        copied = range.end;
    }
    out.extend_from_slice(&body[copied..]);
    Some(out)
}
