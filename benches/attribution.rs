//! Enriching an OTLP protobuf export: a 1 MB `ExportTraceServiceRequest` of 1,000 spans in 10
//! resources, every resource naming a known commit (the worst case: all ten get attributes).
//!
//! - `splice`: the gateway's path without the lookups (scan + splice).
//! - `enrich`: `AttributionConfig::enrich` end to end, commits answered by the warm cache.
//! - `prost_baseline`: what a proxy that decodes and re-encodes does (prost decode, push the
//!   same attributes, encode).
//!
//! Throughput is reported per body byte, on one thread.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse::attribution::{AttributionConfig, CommitAttributes, CommitCache, KEYS, protobuf};
use gatehouse::classify::otlp::{Encoding, Signal};
use gatehouse::webhook::store::{CommitRecord, Delivery, HookStore, SqliteStore};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Event};
use prost::Message;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn sha(i: usize) -> String {
    format!("{:02x}{:038x}", 0xa0 + i, 0xfeed_u64)
}

fn record(i: usize) -> CommitRecord {
    CommitRecord {
        sha: sha(i),
        repo: format!("platform/service-{i}"),
        repo_url: format!("https://git.example.com/platform/service-{i}"),
        git_ref: "refs/heads/main".into(),
        author_name: "Alice Example".into(),
        author_email: "alice@example.com".into(),
        author_username: "alice".into(),
        title: "Cache prices per region".into(),
        timestamp: "2026-11-26T10:00:00Z".into(),
        url: format!(
            "https://git.example.com/platform/service-{i}/commit/{}",
            sha(i)
        ),
        pusher: "gatehouse-broker".into(),
        ..Default::default()
    }
}

/// 10 resources of 100 spans, about 1 MB.
fn request() -> ExportTraceServiceRequest {
    let resource_spans = (0..10)
        .map(|r| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", &format!("service-{r}")),
                    kv("service.version", &sha(r)[..12]),
                    kv("host.name", "ip-10-0-3-17.eu-west-1.compute.internal"),
                    kv("telemetry.sdk.language", "python"),
                    kv("telemetry.sdk.name", "opentelemetry"),
                    kv("telemetry.sdk.version", "1.45.2"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry.instrumentation.flask".into(),
                    version: "0.66b2".into(),
                    ..Default::default()
                }),
                spans: (0..100)
                    .map(|s| Span {
                        trace_id: (0..16).map(|b| (b * 7 + s) as u8).collect(),
                        span_id: (0..8).map(|b| (b * 3 + s + r) as u8).collect(),
                        parent_span_id: (0..8).map(|b| (b * 5 + s) as u8).collect(),
                        name: format!("GET /api/v2/orders/{{order_id}}/items/{s}"),
                        kind: 2,
                        start_time_unix_nano: 1_764_151_200_000_000_000 + s as u64,
                        end_time_unix_nano: 1_764_151_200_012_000_000 + s as u64,
                        attributes: (0..10)
                            .map(|a| {
                                kv(
                                    &format!("app.attribute.number.{a}"),
                                    &format!("value-{a:02}-of-span-{s:04}-in-resource-{r:02}-padded-to-size"),
                                )
                            })
                            .collect(),
                        events: vec![Event {
                            time_unix_nano: 1_764_151_200_006_000_000,
                            name: "cache miss".into(),
                            attributes: vec![kv("cache.key", "orders:eu-west-1:42")],
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

fn bench(c: &mut Criterion) {
    let body = request().encode_to_vec();
    let commits: Vec<Arc<CommitAttributes>> = (0..10)
        .map(|i| Arc::new(CommitAttributes::from_record(&record(i))))
        .collect();

    // A warm cache over a real store holding the ten commits.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("hooks.db")).unwrap());
    for i in 0..10 {
        let commits = [record(i)];
        store
            .receive(&Delivery {
                id: &format!("d-{i}"),
                body_sha: &format!("b-{i}"),
                event: "push",
                repo: &commits[0].repo,
                source: "gogs",
                body: b"{}",
                pushed: None,
                commits: &commits,
                markers: &[],
                forwards: &[],
                now_ms: 0,
                replay_window_ms: 1,
            })
            .unwrap();
    }
    let cache = CommitCache::new(Some(store));
    let config = AttributionConfig::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let warm = rt.block_on(config.enrich(
        Encoding::Protobuf,
        Signal::Traces,
        &body,
        &cache,
        Some("ci-checkout"),
    ));
    let warm = warm.unwrap();
    assert_eq!(warm.resources, 10);
    let enriched = warm.body.unwrap();
    eprintln!(
        "body {} bytes, {} spans in 10 resources; enriched {} bytes",
        body.len(),
        request()
            .resource_spans
            .iter()
            .map(|r| r.scope_spans[0].spans.len())
            .sum::<usize>(),
        enriched.len()
    );

    let mut g = c.benchmark_group("otlp_enrichment_1MB");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("splice", |b| {
        b.iter(|| {
            let scanned = protobuf::scan(&body).unwrap();
            let additions: Vec<_> = scanned
                .facts()
                .iter()
                .zip(&commits)
                .map(|(f, c)| c.additions(f.present, Some("ci-checkout"), false))
                .collect();
            protobuf::splice(&body, &scanned, &additions).unwrap()
        })
    });
    g.bench_function("enrich", |b| {
        b.iter(|| {
            rt.block_on(config.enrich(
                Encoding::Protobuf,
                Signal::Traces,
                &body,
                &cache,
                Some("ci-checkout"),
            ))
            .unwrap()
            .body
            .unwrap()
        })
    });
    g.bench_function("prost_baseline", |b| {
        b.iter(|| {
            let mut req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            for (rs, c) in req.resource_spans.iter_mut().zip(&commits) {
                let attrs = &mut rs.resource.as_mut().unwrap().attributes;
                for (k, v) in &c.values {
                    attrs.push(kv(KEYS[*k], v));
                }
                attrs.push(kv("enduser.id", "ci-checkout"));
            }
            req.encode_to_vec()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
