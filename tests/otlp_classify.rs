//! `classify::otlp` on real OTLP/HTTP requests made by the OpenTelemetry Python SDK and its
//! exporters (`tests/otlp/export.py`), recorded by a tiny HTTP server on 127.0.0.1.
//!
//! The Python packages come from `support::python` (a pinned venv). Set `OTLP_CORPUS_DIR` to also write the
//! (decompressed) bodies there, e.g. to refresh `fuzz/corpus/otlp_services/`.
//!
//! `throughput` (ignored, run with `--ignored --nocapture`) prints MB/s of `services()`.

mod support;

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse::classify::otlp::{
    Encoding, OtlpError, encoding_from_content_type, gunzip_capped, services, signal_from_path,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use support::python::{ok, python, run_bounded};

const MAX_BODY: usize = 64 << 20;

#[derive(Debug)]
struct Recorded {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// An OTLP/HTTP receiver on 127.0.0.1 that answers 200 and keeps every request.
async fn recording_server() -> (SocketAddr, Arc<Mutex<Vec<Recorded>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let store = recorded.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let store = store.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let json = parts
                            .headers
                            .get("content-type")
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
                        store.lock().unwrap().push(Recorded {
                            path: parts.uri.path().to_owned(),
                            headers: parts.headers,
                            body,
                        });
                        // An empty Export*ServiceResponse, in the request's encoding.
                        let (ct, answer) = if json {
                            ("application/json", &b"{}"[..])
                        } else {
                            ("application/x-protobuf", &b""[..])
                        };
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .header("content-type", ct)
                                .body(Full::new(Bytes::from_static(answer)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, recorded)
}

/// One request `export.py` made, and what it says the request carries.
#[derive(Debug, serde::Deserialize)]
struct Case {
    case: String,
    path: String,
    encoding: String,
    gzip: bool,
    expected: Option<Vec<String>>,
    error: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sdk_requests_name_their_services() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let (addr, recorded) = recording_server().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/export.py");
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python);
        cmd.arg(script).arg(format!("http://{addr}"));
        // The SDK reads these; the cases must carry only what the script sets.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        for k in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("NO_PROXY", "*");
        ok(run_bounded(cmd, Duration::from_secs(180)), "export.py")
    })
    .await
    .unwrap();
    let cases: Vec<Case> = serde_json::from_slice(&output.stdout).unwrap();
    let recorded = std::mem::take(&mut *recorded.lock().unwrap());

    // Every signal, both encodings, with and without gzip, and the refusals, were sent.
    assert_eq!(cases.len(), 20, "{cases:#?}");
    assert_eq!(recorded.len(), cases.len());
    let mut by_case: HashMap<&str, &Recorded> = HashMap::new();
    for r in &recorded {
        let name = r.headers["x-otlp-case"].to_str().unwrap();
        assert!(by_case.insert(name, r).is_none(), "{name} sent twice");
    }
    let corpus = std::env::var_os("OTLP_CORPUS_DIR").map(PathBuf::from);

    for case in &cases {
        let r = by_case[case.case.as_str()];
        assert_eq!(r.path, case.path, "{}", case.case);
        let signal = signal_from_path(&r.path).unwrap();
        let ct = r.headers.get("content-type").map(|v| v.to_str().unwrap());
        let encoding = encoding_from_content_type(ct).unwrap();
        let wanted = match case.encoding.as_str() {
            "protobuf" => Encoding::Protobuf,
            "json" => Encoding::Json,
            other => panic!("{other}"),
        };
        assert_eq!(encoding, wanted, "{}", case.case);
        let gzipped = r
            .headers
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        assert_eq!(gzipped, case.gzip, "{}", case.case);
        let body = if gzipped {
            gunzip_capped(&r.body, MAX_BODY).unwrap()
        } else {
            r.body.to_vec()
        };
        if let Some(dir) = &corpus {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join(&case.case), &body).unwrap();
        }
        let got = services(signal, encoding, &body);
        match (&case.expected, case.error.as_deref()) {
            (Some(expected), None) => {
                assert_eq!(&got.unwrap(), expected, "{}", case.case);
            }
            (None, Some("ServiceNameNotString")) => assert!(
                matches!(got, Err(OtlpError::ServiceNameNotString { .. })),
                "{}: {got:?}",
                case.case
            ),
            other => panic!("{}: unexpected case {other:?}", case.case),
        }
        // Every cut of a real body is refused or names a prefix, never panics.
        for cut in (0..body.len()).step_by(7) {
            let _ = services(signal, encoding, &body[..cut]);
        }
    }
}

// A hand-built 1 MB request for the throughput figure.

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn len_field(field: u64, payload: &[u8], out: &mut Vec<u8>) {
    varint((field << 3) | 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

fn kv(key: &str, value: &str) -> Vec<u8> {
    let mut any = Vec::new();
    len_field(1, value.as_bytes(), &mut any);
    let mut out = Vec::new();
    len_field(1, key.as_bytes(), &mut out);
    len_field(2, &any, &mut out);
    out
}

/// `resources` entries of `spans` spans each, about 1 KB a span, and `extra_resource_attrs`
/// more attributes on each resource.
fn protobuf_request(resources: usize, spans: usize, extra_resource_attrs: usize) -> Vec<u8> {
    let mut request = Vec::new();
    for r in 0..resources {
        let mut resource = Vec::new();
        let mut attrs = vec![
            kv("service.name", &format!("service-{r}")),
            kv("service.version", "3f2a9c1e5b7d"),
            kv("telemetry.sdk.language", "python"),
            kv("telemetry.sdk.name", "opentelemetry"),
            kv("telemetry.sdk.version", "1.45.2"),
            kv("host.name", "ci-runner-7"),
        ];
        for i in 0..extra_resource_attrs {
            attrs.push(kv(&format!("custom.attribute.{i}"), &"v".repeat(80)));
        }
        for a in &attrs {
            len_field(1, a, &mut resource);
        }
        let mut scope_spans = Vec::new();
        let mut scope = Vec::new();
        len_field(1, b"gatehouse.bench", &mut scope);
        len_field(1, &scope, &mut scope_spans);
        for s in 0..spans {
            let mut span = Vec::new();
            len_field(1, &[s as u8; 16], &mut span);
            len_field(2, &[r as u8; 8], &mut span);
            len_field(5, format!("GET /orders/{s}").as_bytes(), &mut span);
            span.extend_from_slice(&[0x39]); // field 7, fixed64
            span.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
            span.extend_from_slice(&[0x41]); // field 8, fixed64
            span.extend_from_slice(&1_700_000_000_001_000_000u64.to_le_bytes());
            for a in 0..8 {
                len_field(
                    9,
                    &kv(&format!("app.attribute.{a}"), &"x".repeat(100)),
                    &mut span,
                );
            }
            len_field(2, &span, &mut scope_spans);
        }
        let mut entry = Vec::new();
        len_field(1, &resource, &mut entry);
        len_field(2, &scope_spans, &mut entry);
        len_field(1, &entry, &mut request);
    }
    request
}

/// The same shape as OTLP/JSON.
fn json_request(resources: usize, spans: usize) -> String {
    let entries: Vec<serde_json::Value> = (0..resources)
        .map(|r| {
            let spans: Vec<serde_json::Value> = (0..spans)
                .map(|s| {
                    let attrs: Vec<serde_json::Value> = (0..8)
                        .map(|a| {
                            serde_json::json!({"key": format!("app.attribute.{a}"),
                                "value": {"stringValue": "x".repeat(100)}})
                        })
                        .collect();
                    serde_json::json!({"traceId": format!("{s:032x}"), "spanId": format!("{r:016x}"),
                        "name": format!("GET /orders/{s}"), "kind": 2,
                        "startTimeUnixNano": "1700000000000000000",
                        "endTimeUnixNano": "1700000000001000000", "attributes": attrs})
                })
                .collect();
            serde_json::json!({"resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": format!("service-{r}")}},
                    {"key": "host.name", "value": {"stringValue": "ci-runner-7"}}]},
                "scopeSpans": [{"scope": {"name": "gatehouse.bench"}, "spans": spans}]})
        })
        .collect();
    serde_json::json!({ "resourceSpans": entries }).to_string()
}

/// MB/s of `f` over `bytes`, running it for about a second after a warm-up.
fn mb_per_s(bytes: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        f();
        runs += 1;
    }
    (bytes as f64 * runs as f64) / start.elapsed().as_secs_f64() / 1e6
}

#[test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
fn throughput() {
    use gatehouse::classify::otlp::Signal::Traces;
    let body = protobuf_request(10, 100, 0);
    let names = services(Traces, Encoding::Protobuf, &body).unwrap();
    assert_eq!(names.len(), 10);
    let pb = mb_per_s(body.len(), || {
        std::hint::black_box(services(
            Traces,
            Encoding::Protobuf,
            std::hint::black_box(&body),
        ))
        .unwrap();
    });
    println!(
        "protobuf, {} bytes, 1000 spans in 10 resources: {pb:.0} MB/s",
        body.len()
    );

    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &body).unwrap();
    let gz = enc.finish().unwrap();
    let gzp = mb_per_s(body.len(), || {
        let raw = gunzip_capped(&gz, MAX_BODY).unwrap();
        std::hint::black_box(services(Traces, Encoding::Protobuf, &raw)).unwrap();
    });
    println!(
        "gzip ({} bytes) + protobuf: {gzp:.0} MB/s of decompressed body",
        gz.len()
    );

    let heavy = protobuf_request(10, 0, 1_100);
    let hv = mb_per_s(heavy.len(), || {
        std::hint::black_box(services(Traces, Encoding::Protobuf, &heavy)).unwrap();
    });
    println!(
        "protobuf, {} bytes, all of it resource attributes (worst case): {hv:.0} MB/s",
        heavy.len()
    );

    let json = json_request(10, 100);
    assert_eq!(
        services(Traces, Encoding::Json, json.as_bytes())
            .unwrap()
            .len(),
        10
    );
    let js = mb_per_s(json.len(), || {
        std::hint::black_box(services(Traces, Encoding::Json, json.as_bytes())).unwrap();
    });
    println!("JSON, {} bytes, same spans: {js:.0} MB/s", json.len());
}
