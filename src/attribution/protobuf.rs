//! Adds attributes to the resources of a protobuf OTLP export request without decoding the
//! spans, metrics or log records.
//!
//! An export request is a list of entries (`ResourceSpans`, `ResourceMetrics`,
//! `ResourceLogs`, all field 1, all with their `Resource` in field 1 and the signal data
//! after it). Protobuf merges a message field that appears twice, so appending a second
//! `resource` field holding only the new `KeyValue`s to an entry adds them to its resource:
//! the entry's own length prefix is the only one that changes, and everything else, spans
//! included, is copied as it came. Cost: one scan of each entry's fields (the signal data is
//! skipped by its length) and one copy of the body.
//!
//! Overwriting (when configured) has to remove the old `KeyValue`s, or the resource would
//! carry a key twice and receivers disagree about which one wins: the `resource` fields that
//! held them are written again without them, with their new length.
//!
//! Field numbers are those of `classify/otlp.rs` (checked against opentelemetry-proto).

use std::ops::Range;

use crate::classify::otlp::{Cursor, OtlpError, WT_LEN};

use super::{Additions, EntryFacts};

/// One `KeyValue` of an entry's resource.
#[derive(Debug, Clone)]
struct Attribute {
    /// The whole field, tag included, within the body.
    field: Range<usize>,
    /// Index into [`KEYS`], for the keys the gateway may add.
    ours: Option<usize>,
}

/// One `resource` field of an entry (an entry may carry several: they merge).
#[derive(Debug, Clone)]
struct ResourcePiece {
    /// Tag and length prefix.
    header: Range<usize>,
    contents: Range<usize>,
    attributes: Vec<Attribute>,
}

/// An entry of the request as the splicer needs it.
#[derive(Debug, Clone)]
struct Entry {
    header: Range<usize>,
    contents: Range<usize>,
    pieces: Vec<ResourcePiece>,
}

/// The request, scanned: what each entry says about itself and where its parts are.
#[derive(Debug)]
pub struct Scanned {
    entries: Vec<Entry>,
    facts: Vec<EntryFacts>,
}

impl Scanned {
    pub fn facts(&self) -> &[EntryFacts] {
        &self.facts
    }
}

/// Reads the entries of an export request (any signal) and their resources' attributes.
pub fn scan(body: &[u8]) -> Result<Scanned, OtlpError> {
    let mut request = Cursor::new(body);
    let mut entries = Vec::new();
    let mut facts = Vec::new();
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
        let mut pieces = Vec::new();
        let mut fact = EntryFacts::default();
        while !entry.at_end() {
            let tag = entry.tag()?;
            if tag.field != 1 {
                entry.skip(tag)?;
                continue;
            }
            tag.expect(WT_LEN)?;
            let resource = entry.len_delimited(tag.offset)?;
            pieces.push(scan_resource(tag.offset, resource, &mut fact)?);
        }
        entries.push(Entry {
            header,
            contents,
            pieces,
        });
        facts.push(fact);
    }
    Ok(Scanned { entries, facts })
}

fn scan_resource(
    start: usize,
    mut resource: Cursor<'_>,
    fact: &mut EntryFacts,
) -> Result<ResourcePiece, OtlpError> {
    let header = start..resource.pos;
    let contents = resource.pos..resource.end;
    let mut attributes = Vec::new();
    while !resource.at_end() {
        let tag = resource.tag()?;
        if tag.field != 1 {
            resource.skip(tag)?;
            continue;
        }
        tag.expect(WT_LEN)?;
        let mut kv = resource.len_delimited(tag.offset)?;
        let field = tag.offset..kv.end;
        let mut key = "";
        let mut string = None;
        while !kv.at_end() {
            let tag = kv.tag()?;
            match tag.field {
                1 => {
                    tag.expect(WT_LEN)?;
                    key = kv.len_delimited(tag.offset)?.utf8()?;
                }
                2 => {
                    tag.expect(WT_LEN)?;
                    merge_any(kv.len_delimited(tag.offset)?, &mut string)?;
                }
                _ => kv.skip(tag)?,
            }
        }
        let ours = fact.note(key, string);
        attributes.push(Attribute { field, ours });
    }
    Ok(ResourcePiece {
        header,
        contents,
        attributes,
    })
}

/// Merges one `AnyValue` into `string`, the `string_value` in force, as protobuf does: a
/// `value` given twice in a `KeyValue` is one merged `AnyValue`, the oneof member set last
/// wins, and fields `AnyValue` does not have (skipped by decoders) change nothing.
fn merge_any<'a>(mut any: Cursor<'a>, string: &mut Option<&'a str>) -> Result<(), OtlpError> {
    while !any.at_end() {
        let tag = any.tag()?;
        match tag.field {
            1 if tag.wire_type == WT_LEN => {
                *string = Some(any.len_delimited(tag.offset)?.utf8()?);
            }
            // The other members (bool, int, double, array, kvlist, bytes and the profiles'
            // string_value_strindex, as in opentelemetry-proto 0.33).
            1..=8 => {
                any.skip(tag)?;
                *string = None;
            }
            _ => any.skip(tag)?,
        }
    }
    Ok(())
}

/// The body with `additions[i]` added to entry `i` (entries without additions, and the
/// bytes between entries, copied unchanged). `None` when nothing is added: the caller
/// forwards the original bytes.
pub fn splice(body: &[u8], scanned: &Scanned, additions: &[Option<Additions>]) -> Option<Vec<u8>> {
    if additions.iter().all(Option::is_none) {
        return None;
    }
    let extra: usize = additions
        .iter()
        .flatten()
        .map(|a| a.encoded_len() + 32)
        .sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut copied = 0;
    let mut piece_buf = Vec::new();
    let mut added_buf = Vec::new();
    for (entry, add) in scanned.entries.iter().zip(additions) {
        let Some(add) = add else { continue };
        out.extend_from_slice(&body[copied..entry.header.start]);
        copied = entry.contents.end;

        // The entry's contents, minus the attributes being replaced.
        piece_buf.clear();
        let mut at = entry.contents.start;
        for piece in &entry.pieces {
            let dropped: Vec<&Attribute> = piece
                .attributes
                .iter()
                .filter(|a| a.ours.is_some_and(|k| add.replaces(k)))
                .collect();
            if dropped.is_empty() {
                continue;
            }
            piece_buf.extend_from_slice(&body[at..piece.header.start]);
            let kept_len =
                piece.contents.len() - dropped.iter().map(|a| a.field.len()).sum::<usize>();
            piece_buf.push(0x0a);
            put_varint(&mut piece_buf, kept_len as u64);
            let mut from = piece.contents.start;
            for a in dropped {
                piece_buf.extend_from_slice(&body[from..a.field.start]);
                from = a.field.end;
            }
            piece_buf.extend_from_slice(&body[from..piece.contents.end]);
            at = piece.contents.end;
        }
        piece_buf.extend_from_slice(&body[at..entry.contents.end]);

        added_buf.clear();
        add.encode_protobuf(&mut added_buf);
        let mut resource_field = Vec::with_capacity(added_buf.len() + 6);
        resource_field.push(0x0a);
        put_varint(&mut resource_field, added_buf.len() as u64);

        let contents_len = piece_buf.len() + resource_field.len() + added_buf.len();
        out.push(0x0a);
        put_varint(&mut out, contents_len as u64);
        out.extend_from_slice(&piece_buf);
        out.extend_from_slice(&resource_field);
        out.extend_from_slice(&added_buf);
    }
    out.extend_from_slice(&body[copied..]);
    Some(out)
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// `KeyValue{ key, value: AnyValue{ string_value } }` as a `Resource.attributes` field.
pub(super) fn put_string_attribute(out: &mut Vec<u8>, key: &str, value: &str) {
    let any_len = 1 + varint_len(value.len() as u64) + value.len();
    let kv_len =
        1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any_len as u64) + any_len;
    out.push(0x0a);
    put_varint(out, kv_len as u64);
    out.push(0x0a);
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key.as_bytes());
    out.push(0x12);
    put_varint(out, any_len as u64);
    out.push(0x0a);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

pub(super) fn string_attribute_len(key: &str, value: &str) -> usize {
    let any_len = 1 + varint_len(value.len() as u64) + value.len();
    let kv_len =
        1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any_len as u64) + any_len;
    1 + varint_len(kv_len as u64) + kv_len
}
