//! `attribution::protobuf::{scan, splice}` on arbitrary bytes: the first byte chooses the
//! options, the rest is the export body. Neither may panic, and what the splicer writes must
//! mean exactly the input plus the added attributes:
//!
//! - the output scans again, with the same entries, each now having the added keys (and the
//!   revision added, when it was);
//! - when the body decodes with prost as an `ExportTraceServiceRequest`, the scanner's facts
//!   are what prost reads (resource pieces merged, the last `key` and the `AnyValue` member
//!   set last in force), the output decodes too and equals the input's decoding with, for
//!   each entry given additions, the added `KeyValue`s appended to its resource (created if
//!   absent) after removing, when overwriting, the attributes with those keys. Compared by
//!   re-encoding when `==` fails, since a NaN double anywhere makes equal messages unequal.
//!
//! Option byte: bit 0 overwrite, bit 1 which commit (two records with non-ASCII values, one
//! needing 2-byte and one 3-byte length prefixes), bits 2 to 7 entry `i` gets additions when
//! bit `2 + i % 6` is set. Seeds in `fuzz/corpus/otlp_splice/` are real SDK bodies behind an
//! option byte.

#![no_main]

use std::sync::LazyLock;

use gatehouse::attribution::{Additions, CommitAttributes, EntryFacts, KEYS, protobuf};
use gatehouse::webhook::store::{CommitRecord, Pusher};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

const SHA: &str = "4f3b9c1d2e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";

/// Two commits and the `enduser.id` sent with each.
static COMMITS: LazyLock<[(CommitAttributes, String); 2]> = LazyLock::new(|| {
    let first = CommitRecord {
        sha: SHA.into(),
        repo: "platform/checkout".into(),
        repo_url: "https://git.example.com/platform/checkout.git".into(),
        git_ref: "refs/heads/main".into(),
        author_name: "Zoë Ångström-Nakamura 中村".into(),
        author_email: "zoe@example.com".into(),
        author_username: "zoe".into(),
        // Over 127 bytes: a 2-byte length prefix, and so is its KeyValue's.
        title: "Cache \"prices\"\u{2028}per région — 価格をキャッシュする ".repeat(4),
        timestamp: "2026-11-26T10:00:00+01:00".into(),
        url: format!("https://git.example.com/platform/checkout/commit/{SHA}"),
        pusher: "gatehouse-bot".into(),
        verified_pusher: Some(Pusher {
            subject: "sub-zoe".into(),
            username: Some("zoë".into()),
            email: None,
        }),
        ..Default::default()
    };
    let second = CommitRecord {
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        repo: "just-a-name".into(),
        repo_url: "https://git.example.com/just-a-name".into(),
        git_ref: "refs/tags/v2.0.0-β".into(),
        author_name: String::new(),
        author_email: "😀@example.com".into(),
        // Over 16383 bytes: 3-byte length prefixes.
        title: "x".repeat(16_380) + "ÿ😀",
        timestamp: "2026-11-26T10:00:00Z".into(),
        url: String::new(),
        pusher: "ö".into(),
        verified_pusher: None,
        ..Default::default()
    };
    [
        (CommitAttributes::from_record(&first), "ci-checkout".into()),
        (
            CommitAttributes::from_record(&second),
            "Ünïcödé user ".repeat(20),
        ),
    ]
});

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// What the scanner should say about a resource, from prost's reading of it.
fn facts_of(resource: Option<&Resource>) -> EntryFacts {
    let mut facts = EntryFacts::default();
    for a in resource.map_or(&[][..], |r| &r.attributes) {
        let string = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        };
        facts.note(&a.key, string);
    }
    facts
}

fn key_bits(add: Option<&Additions>) -> u32 {
    add.map_or(0, |a| a.pairs.iter().fold(0, |m, (k, _)| m | 1 << k))
}

fn check(flags: u8, body: &[u8]) {
    let Ok(scanned) = protobuf::scan(body) else {
        return;
    };
    let overwrite = flags & 1 != 0;
    let (commit, enduser) = &COMMITS[usize::from(flags >> 1 & 1)];
    let additions: Vec<Option<Additions>> = scanned
        .facts()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if flags >> (2 + i % 6) & 1 == 0 {
                return None;
            }
            let add = commit.additions(f.present, Some(enduser), overwrite);
            if let Some(a) = &add {
                assert_eq!(a.overwrite, overwrite);
                if !overwrite {
                    assert_eq!(key_bits(Some(a)) & f.present, 0, "{a:?} {f:?}");
                }
            }
            add
        })
        .collect();
    let out = protobuf::splice(body, &scanned, &additions);
    assert_eq!(out.is_none(), additions.iter().all(Option::is_none));
    let out = out.as_deref().unwrap_or(body);

    // Without prost: the output scans, and each entry has gained the added keys.
    let rescanned = protobuf::scan(out).expect("the splicer's output scans");
    assert_eq!(rescanned.facts().len(), scanned.facts().len());
    for ((before, after), add) in scanned
        .facts()
        .iter()
        .zip(rescanned.facts())
        .zip(&additions)
    {
        let add = add.as_ref();
        assert_eq!(after.present, before.present | key_bits(add));
        assert_eq!(after.service_name, before.service_name);
        assert_eq!(after.service_version, before.service_version);
        let revision = add.and_then(|a| a.pairs.iter().find(|(k, _)| *k == 0));
        match revision {
            Some((_, sha)) => assert_eq!(after.revision.as_deref(), Some(&**sha)),
            None => assert_eq!(after.revision, before.revision),
        }
    }

    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return;
    };
    assert_eq!(request.resource_spans.len(), scanned.facts().len());
    for (entry, facts) in request.resource_spans.iter().zip(scanned.facts()) {
        assert_eq!(&facts_of(entry.resource.as_ref()), facts);
    }

    let decoded = ExportTraceServiceRequest::decode(out).expect("the output decodes");
    let mut expected = request;
    for (entry, add) in expected.resource_spans.iter_mut().zip(&additions) {
        let Some(add) = add else { continue };
        let resource = entry.resource.get_or_insert_with(Resource::default);
        if add.overwrite {
            resource
                .attributes
                .retain(|a| !add.pairs.iter().any(|(k, _)| KEYS[*k] == a.key));
        }
        resource
            .attributes
            .extend(add.pairs.iter().map(|(k, v)| kv(KEYS[*k], v)));
    }
    if decoded != expected {
        assert_eq!(
            decoded.encode_to_vec(),
            expected.encode_to_vec(),
            "decoded {decoded:?}\nexpected {expected:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some((&flags, body)) = data.split_first() {
        check(flags, body);
    }
});
