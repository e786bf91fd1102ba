//! Exhaustion: clients that hold the gateway's time, memory or connections, or make it load
//! someone else (the provider's JWKS endpoint). Each is cut off within its configured bound,
//! nothing complete reaches the upstream, and the gateway keeps serving everyone else.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::harness::{Stack, b64, now_secs};
use crate::support::HOST;
use crate::support::raw::{self, Response, read_response};

/// An oversized head: hyper's parser answers 431 before the gateway sees a request, so there
/// is no request id; the refusal is on record with the peer, and nothing reaches the upstream.
async fn head_too_large(s: &Stack, threat: &str, bytes: &str) {
    let seen = s.unparsed_records().len();
    let r = s.send_lenient(bytes.as_bytes()).await;
    assert_eq!(
        r.status(),
        Some(431),
        "{threat}: {}",
        &r.text[..r.text.len().min(300)]
    );
    assert!(r.closed, "{threat}: connection left open");
    assert!(r.header("x-request-id").is_none(), "{threat}: {}", r.text);
    assert!(
        s.up.requests().is_empty(),
        "{threat}: reached the upstream: {:?}",
        s.up.requests()
    );
    tokio::task::block_in_place(|| {
        s.unparsed_record(threat, seen, Some(431), "request head too large")
    });
}

/// The gateway still answers an ordinary request.
async fn still_serving(s: &Stack) {
    let r = s
        .send(
            format!(
                "GET /ok HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                s.host()
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    s.up.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_at_header_read() {
    let s = Stack::plain_with("", |b| b.timeout("header_read = \"1s\"")).await;
    let mut c = raw::connect(s.gw.https, &s.ca.ca(), HOST).await;
    let started = Instant::now();
    c.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\nX-Slow: ", s.host()).as_bytes())
        .await
        .expect("write");
    // Slowloris: a byte a second, never finishing the head.
    let mut cut = false;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if c.write_all(b"a").await.is_err() || c.flush().await.is_err() {
            cut = true;
            break;
        }
    }
    let r = read_response(&mut c, Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(cut || r.closed, "still open after {took:?}: {}", r.text);
    tokio::task::block_in_place(|| {
        s.unparsed_record(
            "slowloris",
            0,
            None,
            "request head not received within the header read timeout",
        )
    });
    assert!(
        r.status().is_none_or(|s| s == 408),
        "unexpected answer: {}",
        r.text
    );
    assert!(
        took < Duration::from_secs(10),
        "cut off only after {took:?}"
    );
    assert!(s.up.requests().is_empty(), "{:?}", s.up.requests());
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_gets_408_at_body_read() {
    let s = Stack::plain_with("", |b| b.timeout("body_read = \"1s\"")).await;
    let h = s.host();
    // A body that stops, and one that drips a byte every 1.5 s (each gap over the bound).
    let mut c = raw::connect(s.gw.https, &s.ca.ca(), HOST).await;
    c.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {h}\r\nContent-Length: 100\r\n\r\n0123456789")
            .as_bytes(),
    )
    .await
    .expect("write");
    let started = Instant::now();
    let r = read_response(&mut c, Duration::from_secs(6)).await;
    check_408(&s, "stalled body", &r, started);

    let mut c = raw::connect(s.gw.https, &s.ca.ca(), HOST).await;
    c.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let started = Instant::now();
    let drip = tokio::spawn(async move {
        for _ in 0..4 {
            if c.write_all(b"1\r\na\r\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        read_response(&mut c, Duration::from_secs(3)).await
    });
    let r = tokio::time::timeout(Duration::from_secs(15), drip)
        .await
        .expect("drip never ended")
        .expect("drip task");
    check_408(&s, "dripping body", &r, started);
}

fn check_408(s: &Stack, threat: &str, r: &Response, started: Instant) {
    assert_eq!(
        r.status(),
        Some(408),
        "{threat} after {:?}: {}",
        started.elapsed(),
        r.text
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{threat}: {:?}",
        started.elapsed()
    );
    assert!(r.closed, "{threat}: connection left open");
    assert!(
        s.complete_upstream().is_empty(),
        "{threat}: the upstream got the body whole"
    );
    s.cut_off_record(threat, r, 408, "request body was not received in time");
    s.up.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_header_gets_431() {
    let s = Stack::plain_with("", |b| {
        b.limit("max_header_bytes = \"16KiB\"")
            .limit("max_headers = 50")
    })
    .await;
    let h = s.host();
    head_too_large(
        &s,
        "one huge header",
        &format!(
            "GET / HTTP/1.1\r\nHost: {h}\r\nX-Big: {}\r\n\r\n",
            "h".repeat(24 * 1024)
        ),
    )
    .await;
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    head_too_large(
        &s,
        "too many headers",
        &format!("GET / HTTP/1.1\r\nHost: {h}\r\n{many}\r\n"),
    )
    .await;
    head_too_large(
        &s,
        "huge request target",
        &format!(
            "GET /{} HTTP/1.1\r\nHost: {h}\r\n\r\n",
            "p".repeat(24 * 1024)
        ),
    )
    .await;
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_cookie_gets_431() {
    let s = Stack::plain_with("", |b| b.limit("max_header_bytes = \"16KiB\"")).await;
    let h = s.host();
    head_too_large(
        &s,
        "one huge cookie",
        &format!(
            "GET / HTTP/1.1\r\nHost: {h}\r\nCookie: a={}\r\n\r\n",
            "c".repeat(24 * 1024)
        ),
    )
    .await;
    let jar: String = (0..24)
        .map(|i| format!("Cookie: c{i}={}\r\n", "x".repeat(1000)))
        .collect();
    head_too_large(
        &s,
        "many cookie headers",
        &format!("GET / HTTP/1.1\r\nHost: {h}\r\n{jar}\r\n"),
    )
    .await;
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bearer_token_gets_431() {
    // Bigger than any head allowed, so it is never hashed, decoded or verified.
    let s = Stack::plain_with("", |b| b.limit("max_header_bytes = \"16KiB\"")).await;
    let h = s.host();
    let token = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"RS256","kid":"k"}"#),
        b64(&vec![b'x'; 20 * 1024]),
        b64(b"sig")
    );
    head_too_large(
        &s,
        "huge bearer token",
        &format!("GET /api HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\n\r\n"),
    )
    .await;
    head_too_large(
        &s,
        "huge Basic credential",
        &format!(
            "GET /api HTTP/1.1\r\nHost: {h}\r\nAuthorization: Basic {}\r\n\r\n",
            b64(&vec![b'y'; 20 * 1024])
        ),
    )
    .await;
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_route_limit_by_content_length_gets_413_before_the_upstream() {
    let s = Stack::plain_with("max_body_bytes = \"1KiB\"", |b| b).await;
    for (threat, length) in [
        ("just over", "1025"),
        ("huge", "99999999999"),
        ("nineteen digits", "9999999999999999999"),
    ] {
        s.refused(
            threat,
            format!(
                "POST /x HTTP/1.1\r\nHost: {}\r\nContent-Length: {length}\r\n\r\n{}",
                s.host(),
                "z".repeat(1024)
            )
            .as_bytes(),
            413,
            "exceeds the route's limit of 1024 bytes",
        )
        .await;
        // Not even the head was sent: the upstream was never contacted.
        assert!(s.up.requests().is_empty(), "{threat}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_route_limit_by_chunked_stream_is_cut_off_with_413() {
    let s = Stack::plain_with("max_body_bytes = \"1KiB\"", |b| b).await;
    let chunk = "a".repeat(600);
    let threat = "chunked past the limit";
    let r = s
        .send(
            format!(
                "POST /x HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n",
                s.host()
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(413), "{}", r.text);
    assert!(r.closed, "connection left open");
    assert!(
        s.complete_upstream().is_empty(),
        "the upstream got the body whole"
    );
    assert!(
        s.up.requests().iter().all(|q| q.body.len() <= 1024),
        "more than the limit reached the upstream"
    );
    s.cut_off_record(threat, &r, 413, "exceeds the route's limit of 1024 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_from_one_address_wait_at_max_connections() {
    const MAX: usize = 4;
    let s = Stack::plain_with("", |b| b.server(&format!("max_connections = {MAX}"))).await;
    // One address opens every slot and holds it.
    let mut held = Vec::new();
    for _ in 0..MAX {
        held.push(raw::connect(s.gw.https, &s.ca.ca(), HOST).await);
    }
    // More from the same address: the kernel queues them, the gateway does not accept them
    // (so no TLS handshake completes), and nothing fails or is dropped.
    let mut waiting = Vec::new();
    for i in 0..16 {
        let (addr, ca, host) = (s.gw.https, s.ca.ca(), s.host());
        waiting.push(tokio::spawn(async move {
            let mut c = raw::connect(addr, &ca, HOST).await;
            c.write_all(
                format!("GET /w{i} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
            read_response(&mut c, Duration::from_secs(5)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "a connection beyond max_connections was served"
    );
    assert!(s.up.requests().is_empty());
    assert!(s.gw.metric("gatehouse_connection_limit_reached_total") >= 1.0);
    // The slots that are held still work.
    let r = {
        let c = &mut held[0];
        c.write_all(format!("GET /held HTTP/1.1\r\nHost: {}\r\n\r\n", s.host()).as_bytes())
            .await
            .expect("write");
        raw::read_one(c).await
    };
    assert_eq!(r.status(), Some(200), "{}", r.text);
    // Freeing the slots lets every waiting client through, none refused.
    held.clear();
    for w in waiting {
        let r = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("a waiting connection was never served")
            .expect("task");
        assert_eq!(r.status(), Some(200), "{}", r.text);
    }
    assert_eq!(s.up.requests().len(), 17);
}

/// Every JWKS fetch the provider logged.
fn jwks_fetches(s: &Stack) -> usize {
    s.provider()
        .log()
        .lines()
        .filter(|l| l.contains(" GET /jwks "))
        .count()
}

/// The sum of `gatehouse_jwks_refresh_total` over every issuer and result.
fn jwks_refresh_metric(s: &Stack) -> f64 {
    s.gw.metrics_text()
        .lines()
        .filter(|l| l.starts_with("gatehouse_jwks_refresh_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_jwt_storm_fetches_the_jwks_at_most_once_a_minute() {
    use aws_lc_rs::signature::RSA_PKCS1_SHA256;
    // Two trusted issuers: the real provider (its fetches counted in its log) and one run by
    // the test (its fetches counted exactly).
    let (s, forge) = Stack::gogs_with_forge(|b| b).await;
    // A real token first, so the start-up fetches are behind us.
    let r = s
        .send(
            format!(
                "GET /api/v1/user HTTP/1.1\r\nHost: {}\r\n{}Connection: close\r\n\r\n",
                s.host(),
                s.bearer()
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let r = s
        .send(
            format!(
                "GET /api/v1/user HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                s.host(),
                forge.token(&forge.claims())
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    s.up.clear();
    let provider_before = jwks_fetches(&s);
    let forge_before = forge.jwks_fetches();
    let metric_before = jwks_refresh_metric(&s);

    // Tokens with random kids, signed by a key nobody trusts, naming each trusted issuer.
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("key");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let issuers = [s.provider().issuer.clone(), forge.issuer.clone()];
    let mut tokens = Vec::new();
    for i in 0..40 {
        let mut kid = [0u8; 12];
        aws_lc_rs::rand::fill(&mut kid).expect("random");
        let header = format!(r#"{{"alg":"RS256","typ":"at+jwt","kid":"{}"}}"#, b64(&kid));
        let claims = format!(
            r#"{{"iss":"{}","aud":"gatehouse","sub":"storm","exp":{}}}"#,
            issuers[i % 2],
            now_secs() + 300
        );
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let mut sig = vec![0u8; key.public_modulus_len()];
        key.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
            .expect("sign");
        tokens.push(format!("{input}.{}", b64(&sig)));
    }
    // Half of the storm at once, the other half one after another.
    let request = |t: &str| {
        format!(
            "GET /api/v1/user HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n",
            s.host()
        )
    };
    let mut burst = Vec::new();
    for t in &tokens[..20] {
        let (addr, ca, bytes) = (s.gw.https, s.ca.ca(), request(t));
        burst.push(tokio::spawn(async move {
            raw::exchange(addr, &ca, HOST, bytes.as_bytes()).await
        }));
    }
    for b in burst {
        let r = b.await.expect("task");
        assert_eq!(r.status(), Some(401), "{}", r.text);
        assert!(r.text.contains("signing key is unknown"), "{}", r.text);
        let rec = s.denied_record("unknown kid (burst)", &r, 401, "signing key is unknown");
        assert_eq!(rec.kind, "token_rejected");
    }
    for t in &tokens[20..] {
        let r = s
            .refused(
                "unknown kid",
                request(t).as_bytes(),
                401,
                "signing key is unknown",
            )
            .await;
        assert!(r.header("www-authenticate").is_some(), "{}", r.text);
    }
    assert!(
        s.up.requests().is_empty(),
        "a token with an unknown key reached the upstream"
    );
    let fetched = jwks_fetches(&s) - provider_before;
    assert!(
        fetched <= 1,
        "the provider's JWKS was fetched {fetched} times for 20 unknown kids"
    );
    let fetched = forge.jwks_fetches() - forge_before;
    assert!(
        fetched <= 1,
        "the other issuer's JWKS was fetched {fetched} times for 20 unknown kids"
    );
    let refreshes = jwks_refresh_metric(&s) - metric_before;
    assert!(
        refreshes <= 2.0,
        "{refreshes} JWKS refreshes for 40 unknown kids of two issuers"
    );
    assert!(s.gw.metric(r#"gatehouse_auth_rejected_total{reason="unknown_kid"}"#) >= 40.0);
    // Genuine tokens still work.
    let r = s
        .send(
            format!(
                "GET /api/v1/user HTTP/1.1\r\nHost: {}\r\n{}Connection: close\r\n\r\n",
                s.host(),
                s.bearer()
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_export_is_refused_before_it_is_inflated_past_the_limit() {
    use std::io::Write;
    // An OTLP route that reads exports (commit attribution needs the webhook store), with a
    // 1 MiB limit; the bomb is 20 KB of gzip that inflates to 32 MiB.
    let ca = crate::support::DevCa::new();
    let up = crate::support::RecordingUpstream::start(crate::support::Reply::Ok).await;
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("secret"), "s").unwrap();
    let gw = crate::support::GatewayBuilder::new()
        .toml(&format!(
            "[webhooks]\nstore = {:?}\n[[webhooks.sources]]\nname = \"gogs\"\nsecret_file = {:?}\n",
            data.path().join("hooks.db").display().to_string(),
            data.path().join("secret").display().to_string()
        ))
        .route(
            "ingest",
            "otlp",
            &[crate::support::HOST],
            &up.url(),
            "max_body_bytes = \"1MiB\"\n",
        )
        .start(&ca);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![0u8; 32 << 20]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let mut req = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::support::HOST,
        gw.port(),
        bomb.len()
    )
    .into_bytes();
    req.extend_from_slice(&bomb);
    let s = crate::harness::Stack::from_parts(ca, up, gw);
    let r = s
        .refused(
            "gzip bomb",
            &req,
            400,
            "larger than 1048576 bytes once decompressed",
        )
        .await;
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-protobuf")
    );
    // Peak memory stayed far below what the bomb inflates to.
    assert!(
        s.gw.peak_rss_kib() < 200 * 1024,
        "peak RSS {} KiB",
        s.gw.peak_rss_kib()
    );
}
