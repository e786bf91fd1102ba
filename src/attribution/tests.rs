use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use super::*;
use crate::classify::otlp::Signal;
use crate::webhook::store::{CommitRecord, Pusher};

const SHA: &str = "4f3b9c1d2e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";

fn record() -> CommitRecord {
    CommitRecord {
        sha: SHA.into(),
        repo: "platform/checkout".into(),
        repo_url: "https://git.example.com/platform/checkout".into(),
        git_ref: "refs/heads/main".into(),
        author_name: "Alice Liddell".into(),
        author_email: "alice@example.com".into(),
        author_username: "alice".into(),
        title: "Cache \"prices\"\u{2028}per region".into(),
        timestamp: "2026-11-26T10:00:00Z".into(),
        url: format!("https://git.example.com/platform/checkout/commit/{SHA}"),
        pusher: "gatehouse-bot".into(),
        verified_pusher: Some(Pusher {
            subject: "sub-alice".into(),
            username: Some("alice".into()),
            email: None,
        }),
        ..Default::default()
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn spans(n: usize) -> Vec<ScopeSpans> {
    vec![ScopeSpans {
        spans: (0..n)
            .map(|i| Span {
                trace_id: vec![1; 16],
                span_id: vec![i as u8 + 1; 8],
                name: format!("GET /items/{i}"),
                attributes: vec![kv("http.route", "/items/:id")],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }]
}

fn entry(attrs: Option<Vec<KeyValue>>) -> ResourceSpans {
    ResourceSpans {
        resource: attrs.map(|attributes| Resource {
            attributes,
            ..Default::default()
        }),
        scope_spans: spans(3),
        schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
    }
}

fn expected_pairs(commit: &CommitAttributes, enduser: &str) -> Vec<KeyValue> {
    let mut out: Vec<KeyValue> = commit.values.iter().map(|(k, v)| kv(KEYS[*k], v)).collect();
    out.push(kv("enduser.id", enduser));
    out
}

fn enrich_protobuf(body: &[u8], commit: &CommitAttributes, overwrite: bool) -> Option<Vec<u8>> {
    let scanned = protobuf::scan(body).unwrap();
    let additions: Vec<Option<Additions>> = scanned
        .facts()
        .iter()
        .map(|f| {
            f.named_commit()
                .filter(|s| SHA.starts_with(*s))
                .and_then(|_| commit.additions(f.present, Some("ci-checkout"), overwrite))
        })
        .collect();
    protobuf::splice(body, &scanned, &additions)
}

#[test]
fn protobuf_resources_with_a_known_sha_gain_exactly_the_commit_attributes() {
    let commit = CommitAttributes::from_record(&record());
    let request = ExportTraceServiceRequest {
        resource_spans: vec![
            entry(Some(vec![
                kv("service.name", "checkout"),
                kv("service.version", &SHA[..12]),
            ])),
            entry(Some(vec![
                kv("service.name", "search"),
                kv("service.version", "0123456"),
            ])),
            entry(Some(vec![kv("service.name", "cart")])),
        ],
    };
    let body = request.encode_to_vec();
    let out = enrich_protobuf(&body, &commit, false).expect("something added");
    let decoded = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();

    let mut expected = request.clone();
    let r = expected.resource_spans[0].resource.as_mut().unwrap();
    r.attributes.extend(expected_pairs(&commit, "ci-checkout"));
    assert_eq!(decoded, expected);
    // The untouched entries are the very same bytes.
    let tail = &body[body.len()
        - expected.resource_spans[1].encoded_len()
        - expected.resource_spans[2].encoded_len()
        - 4..];
    assert!(out.ends_with(tail));
}

#[test]
fn protobuf_without_a_known_commit_is_not_rewritten() {
    let commit = CommitAttributes::from_record(&record());
    let body = ExportTraceServiceRequest {
        resource_spans: vec![
            entry(Some(vec![kv("service.version", "1.4.2")])),
            entry(None),
        ],
    }
    .encode_to_vec();
    assert_eq!(enrich_protobuf(&body, &commit, false), None);
}

#[test]
fn protobuf_attribute_values_are_read_as_protobuf_merges_them() {
    // Found by the otlp_splice fuzz target: an `AnyValue` field unknown to the schema after
    // the string, or a second (empty) `value`, made the scanner lose a string prost keeps.
    fn field(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2];
        protobuf::put_varint(&mut out, payload.len() as u64);
        out.extend_from_slice(payload);
        out
    }
    let string = |s: &str| field(1, s.as_bytes());
    let revision = [
        field(1, b"vcs.ref.head.revision"),
        field(2, &string(SHA)),
        field(2, &[]),
    ]
    .concat();
    // Field 12, fixed32: not an AnyValue member.
    let unknown = [0x65, 1, 2, 3, 4];
    let version = [
        field(1, b"service.version"),
        field(2, &[string("1.2.3"), unknown.to_vec()].concat()),
    ]
    .concat();
    // bool_value set after the string: the string is gone.
    let name = [
        field(1, b"service.name"),
        field(2, &string("cart")),
        field(2, &[0x10, 0x01]),
    ]
    .concat();
    let resource = [field(1, &revision), field(1, &version), field(1, &name)].concat();
    let body = field(1, &field(1, &resource));

    let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
    let attrs = &decoded.resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    assert_eq!(attrs[0], kv("vcs.ref.head.revision", SHA));
    assert_eq!(attrs[1], kv("service.version", "1.2.3"));
    assert_eq!(
        attrs[2].value.as_ref().unwrap().value,
        Some(Value::BoolValue(true))
    );

    let scanned = protobuf::scan(&body).unwrap();
    assert_eq!(
        scanned.facts(),
        [EntryFacts {
            service_name: None,
            service_version: Some("1.2.3".into()),
            revision: Some(SHA.into()),
            present: 1,
        }]
    );
    assert_eq!(scanned.facts()[0].named_commit(), Some(SHA));
}

#[test]
fn attributes_the_sender_set_are_kept_unless_overwrite_is_on() {
    let commit = CommitAttributes::from_record(&record());
    let request = ExportTraceServiceRequest {
        resource_spans: vec![entry(Some(vec![
            kv("vcs.ref.head.revision", SHA),
            kv("service.name", "checkout"),
            kv("vcs.ref.head.name", "release-7"),
            kv("enduser.id", "someone"),
        ]))],
    };
    let body = request.encode_to_vec();

    let kept = ExportTraceServiceRequest::decode(
        enrich_protobuf(&body, &commit, false).unwrap().as_slice(),
    )
    .unwrap();
    let attrs = &kept.resource_spans[0].resource.as_ref().unwrap().attributes;
    let values = |key: &str| -> Vec<String> {
        attrs
            .iter()
            .filter(|a| a.key == key)
            .map(|a| match &a.value.as_ref().unwrap().value {
                Some(Value::StringValue(s)) => s.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(values("vcs.ref.head.name"), ["release-7"]);
    assert_eq!(values("vcs.ref.head.revision"), [SHA]);
    assert_eq!(values("enduser.id"), ["someone"]);
    assert_eq!(values("vcs.owner.name"), ["platform"]);

    let replaced = ExportTraceServiceRequest::decode(
        enrich_protobuf(&body, &commit, true).unwrap().as_slice(),
    )
    .unwrap();
    let attrs = &replaced.resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    let keys: Vec<&str> = attrs.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(
        keys.iter().filter(|k| **k == "vcs.ref.head.name").count(),
        1
    );
    assert_eq!(keys.iter().filter(|k| **k == "enduser.id").count(), 1);
    assert_eq!(keys[0], "service.name");
    assert!(attrs.contains(&kv("vcs.ref.head.name", "main")));
    assert!(attrs.contains(&kv("enduser.id", "ci-checkout")));
    assert_eq!(
        replaced.resource_spans[0].scope_spans,
        request.resource_spans[0].scope_spans
    );
}

#[test]
fn commit_attributes_follow_the_conventions() {
    let c = CommitAttributes::from_record(&CommitRecord {
        git_ref: "refs/tags/v1.2.0".into(),
        repo_url: "https://git.example.com/platform/checkout.git".into(),
        verified_pusher: None,
        ..record()
    });
    let get = |k: &str| {
        c.values
            .iter()
            .find(|(i, _)| KEYS[*i] == k)
            .map(|(_, v)| v.to_string())
    };
    assert_eq!(get("vcs.ref.head.name").as_deref(), Some("v1.2.0"));
    assert_eq!(get("vcs.ref.head.type").as_deref(), Some("tag"));
    assert_eq!(
        get("vcs.repository.url.full").as_deref(),
        Some("https://git.example.com/platform/checkout")
    );
    assert_eq!(get("vcs.repository.name").as_deref(), Some("checkout"));
    assert_eq!(get("vcs.owner.name").as_deref(), Some("platform"));
    assert_eq!(get("vcs.provider.name").as_deref(), Some("gogs"));
    assert_eq!(get("gatehouse.push.verified_pusher"), None);
}

#[test]
fn facts_name_a_commit_only_when_it_looks_like_one() {
    let mut f = EntryFacts::default();
    f.note("service.version", Some("1.2.3"));
    assert_eq!(f.named_commit(), None);
    f.note("vcs.ref.head.revision", Some("ABCDEF1"));
    assert_eq!(f.named_commit(), Some("ABCDEF1"));
    assert_eq!(f.present, 1);
    let mut g = EntryFacts::default();
    g.note("service.version", Some("abc12"));
    assert_eq!(g.named_commit(), None);
}

fn enrich_json(body: &str, commit: &CommitAttributes, overwrite: bool) -> Option<String> {
    let scanned = json::scan(Signal::Traces, body.as_bytes()).unwrap();
    let additions: Vec<Option<Additions>> = scanned
        .facts()
        .iter()
        .map(|f| {
            f.named_commit()
                .filter(|s| SHA.starts_with(*s))
                .and_then(|_| commit.additions(f.present, Some("ci-checkout"), overwrite))
        })
        .collect();
    json::splice(body.as_bytes(), &scanned, &additions).map(|b| String::from_utf8(b).unwrap())
}

fn attributes_of(v: &serde_json::Value, entry: usize) -> Vec<(String, String)> {
    v["resourceSpans"][entry]["resource"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap().to_owned(),
                kv["value"]["stringValue"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn json_is_edited_in_place_and_only_where_a_commit_is_known() {
    let commit = CommitAttributes::from_record(&record());
    let short = &SHA[..9];
    let body = format!(
        r#"{{ "resourceSpans": [
  {{"resource": {{"attributes": [{{"key":"service.name","value":{{"stringValue":"checkout"}}}}, {{"key":"service.version","value":{{"stringValue":"{short}"}}}}]}},
   "scopeSpans": [{{"spans": [{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"a\u2028b"}}]}}]}},
  {{"resource": {{"attributes": [{{"key":"service.version","value":{{"stringValue":"2.0"}}}}]}}, "scopeSpans": []}},
  {{"resource": {{"attributes": [], "droppedAttributesCount": 0}}, "scopeSpans": []}}
]}}"#
    );
    let out = enrich_json(&body, &commit, false).expect("added");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let attrs = attributes_of(&v, 0);
    assert_eq!(attrs[0], ("service.name".into(), "checkout".into()));
    assert_eq!(attrs[1], ("service.version".into(), short.into()));
    let added: Vec<(String, String)> = expected_pairs(&commit, "ci-checkout")
        .into_iter()
        .map(|kv| match kv.value.unwrap().value {
            Some(Value::StringValue(s)) => (kv.key, s),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(&attrs[2..], added.as_slice());
    // Everything else is byte-identical: removing the inserted text gives the input back.
    let insert_at = body.find(r#"}}]}"#).unwrap() + 2;
    let inserted_len = out.len() - body.len();
    assert_eq!(
        format!("{}{}", &out[..insert_at], &out[insert_at + inserted_len..]),
        body
    );
    assert_eq!(
        v["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"],
        "a\u{2028}b"
    );
    assert_eq!(attributes_of(&v, 1).len(), 1);
}

#[test]
fn json_resources_and_attributes_that_are_missing_or_null_are_created() {
    let commit = CommitAttributes::from_record(&record());
    for (case, body) in [
        (
            "no attributes",
            r#"{"resourceSpans":[{"resource":{"droppedAttributesCount":0},"scopeSpans":[],"x":{"key":"vcs.ref.head.revision"}}]}"#.to_string(),
        ),
        (
            "null attributes",
            r#"{"resourceSpans":[{"resource":{"attributes":null}}]}"#.to_string(),
        ),
        (
            "null resource",
            r#"{"resourceSpans":[{"resource":null}]}"#.to_string(),
        ),
        ("no resource", r#"{"resourceSpans":[{}]}"#.to_string()),
    ] {
        // Nothing names a commit here, so nothing changes...
        assert_eq!(enrich_json(&body, &commit, false), None, "{case}");
        // ...but the splice points are right when something does.
        let scanned = json::scan(Signal::Traces, body.as_bytes()).unwrap();
        let add = commit.additions(0, None, false);
        let out = json::splice(body.as_bytes(), &scanned, &[add]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{case}: {e}: {}", String::from_utf8_lossy(&out)));
        let attrs = attributes_of(&v, 0);
        assert_eq!(
            attrs[0],
            ("vcs.ref.head.revision".into(), SHA.into()),
            "{case}"
        );
        assert_eq!(attrs.len(), commit.values.len(), "{case}");
    }
}

#[test]
fn json_overwrite_removes_the_senders_copy() {
    let commit = CommitAttributes::from_record(&record());
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"vcs.ref.head.name","value":{{"stringValue":"old"}}}},{{"key":"service.version","value":{{"stringValue":"{SHA}"}}}}]}}}}]}}"#
    );
    let kept = enrich_json(&body, &commit, false).unwrap();
    let v: serde_json::Value = serde_json::from_str(&kept).unwrap();
    assert!(attributes_of(&v, 0).contains(&("vcs.ref.head.name".into(), "old".into())));
    let replaced = enrich_json(&body, &commit, true).unwrap();
    let v: serde_json::Value = serde_json::from_str(&replaced).unwrap();
    let attrs = attributes_of(&v, 0);
    assert_eq!(attrs[0], ("service.version".into(), SHA.into()));
    assert_eq!(
        attrs
            .iter()
            .filter(|(k, _)| k == "vcs.ref.head.name")
            .count(),
        1
    );
    assert!(attrs.contains(&("vcs.ref.head.name".into(), "main".into())));
}

#[test]
fn malformed_bodies_are_refused() {
    assert!(protobuf::scan(&[0x0a, 0x05, 0x0a]).is_err());
    assert!(protobuf::scan(&[0x0a, 0x02, 0x0a, 0x05]).is_err());
    for bad in [
        "{",
        "[]",
        r#"{"resourceSpans":{}}"#,
        r#"{"resourceSpans":[1]}"#,
        r#"{"resourceSpans":[{"resource":{"attributes":{}}}]}"#,
        r#"{"resourceSpans":[],"resource_spans":[]}"#,
        r#"{"resourceSpans":[{"resource":{},"resource":{}}]}"#,
    ] {
        assert!(json::scan(Signal::Traces, bad.as_bytes()).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn the_cache_finds_commits_and_branch_heads_and_forgets_unknowns_when_told() {
    use crate::webhook::store::{Delivery, HookStore, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
    let store: Store = sqlite.clone();
    let cache = CommitCache::new(Some(store));
    let by_sha = Want::Sha(SHA[..10].to_string());
    let head = Want::Head {
        repo: "Platform/Checkout".into(),
        git_ref: "refs/heads/main".into(),
    };
    let wants = [by_sha.clone(), Want::Nothing, head.clone()];
    assert_eq!(cache.resolve(&wants).await, vec![None, None, None]);

    let commits = [record()];
    sqlite
        .receive(&Delivery {
            id: "d-1",
            body_sha: "b-1",
            event: "push",
            repo: "platform/checkout",
            source: "gogs",
            body: b"{}",
            pushed: Some(("platform/checkout", "refs/heads/main", SHA)),
            commits: &commits,
            markers: &[],
            forwards: &[],
            now_ms: crate::webhook::now_ms(),
            replay_window_ms: 60_000,
        })
        .unwrap();
    // Unknown answers are remembered for a few seconds...
    assert_eq!(cache.resolve(&wants).await, vec![None, None, None]);
    // ...unless a delivery was recorded meanwhile.
    cache.recorded();
    let found = cache.resolve(&wants).await;
    // No push was noted through the gateway, so there is no verified pusher.
    let stored = CommitRecord {
        verified_pusher: None,
        ..record()
    };
    let expected = Some(Arc::new(CommitAttributes::from_record(&stored)));
    assert_eq!(found, vec![expected.clone(), None, expected]);
}
