//! Timeouts, size limits, connection limits, and upstream failures mapped to clear statuses.

mod support;

use std::time::{Duration, Instant};

use support::raw::{self, exchange, read_one, read_response};
use support::upstream::{Broken, broken_upstream, refused_addr};
use support::{DevCa, GatewayBuilder, HOST, RecordingUpstream, Reply};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn slow_headers_are_cut_off_at_the_header_read_timeout() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .timeout("header_read = \"1s\"")
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let mut s = raw::connect(gw.https, &ca.ca(), HOST).await;
    let started = Instant::now();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ").as_bytes())
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if s.write_all(b"a").await.is_err() {
            break;
        }
    }
    let r = read_response(&mut s, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(r.closed, "connection still open after {took:?}");
    assert!(took < Duration::from_secs(4), "closed only after {took:?}");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_upstream_never_sees_it_complete() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .timeout("body_read = \"1s\"")
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let mut s = raw::connect(gw.https, &ca.ca(), HOST).await;
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n0123456789")
            .as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let r = read_response(&mut s, Duration::from_secs(6)).await;
    assert_eq!(
        r.status(),
        Some(408),
        "after {:?}: {}",
        started.elapsed(),
        r.text
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(
        up.requests().iter().all(|r| !r.complete),
        "{:?}",
        up.requests()
    );
}

#[tokio::test]
async fn bodies_over_the_route_limit_get_413() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .route(
            "web",
            "plain",
            &[HOST],
            &up.url(),
            "max_body_bytes = \"1KiB\"",
        )
        .start(&ca);
    // Declared length: refused before the upstream is contacted.
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2000\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(413), "{}", r.text);
    assert!(up.requests().is_empty());
    // Streamed length: cut off when the limit is crossed.
    let chunk = "a".repeat(600);
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(413), "{}", r.text);
    assert!(up.requests().iter().all(|r| !r.complete));
    // At the limit: fine.
    let body = "b".repeat(1024);
    let r = exchange(gw.https, &ca.ca(), HOST, format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{body}").as_bytes()).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert!(gw.metric(r#"gatehouse_requests_rejected_total{reason="body_too_large"}"#) >= 2.0);
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .limit("max_header_bytes = \"16KiB\"")
        .limit("max_headers = 20")
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let big = "c".repeat(40 * 1024);
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nCookie: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        r.status(),
        Some(431),
        "{}",
        &r.text[..r.text.len().min(200)]
    );
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(431), "{}", r.text);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .timeout("idle = \"1s\"")
        .timeout("header_read = \"30s\"")
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let mut s = raw::connect(gw.https, &ca.ca(), HOST).await;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let first = read_one(&mut s).await;
    assert_eq!(first.status(), Some(200), "{}", first.text);
    let idle_from = Instant::now();
    let r = read_response(&mut s, Duration::from_secs(5)).await;
    assert!(r.closed, "still open after {:?}", idle_from.elapsed());
    assert!(
        idle_from.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        idle_from.elapsed()
    );
}

#[tokio::test]
async fn a_slow_upstream_answer_does_not_count_as_idle() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Delay(Duration::from_millis(2500))).await;
    let gw = GatewayBuilder::new()
        .timeout("idle = \"1s\"")
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
}

#[tokio::test]
async fn beyond_max_connections_new_clients_wait_for_a_free_slot() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .server("max_connections = 2")
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let a = raw::connect(gw.https, &ca.ca(), HOST).await;
    let _b = raw::connect(gw.https, &ca.ca(), HOST).await;
    let ca_path = ca.ca();
    let addr = gw.https;
    let third = tokio::spawn(async move {
        let mut c = raw::connect(addr, &ca_path, HOST).await;
        c.write_all(
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        read_response(&mut c, Duration::from_secs(5)).await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served while two were open"
    );
    assert!(gw.metric("gatehouse_connection_limit_reached_total") >= 1.0);
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(8), third)
        .await
        .expect("third connection never served")
        .unwrap();
    assert_eq!(r.status(), Some(200), "{}", r.text);
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504_on_record_and_leave_no_connection_open() {
    let ca = DevCa::new();
    let refused = refused_addr().await;
    let (reset, _t1) = broken_upstream(Broken::Reset).await;
    let (hang, _t2) = broken_upstream(Broken::Hang).await;
    let gw = GatewayBuilder::new()
        .route(
            "refused",
            "plain",
            &[HOST],
            &format!("http://{refused}"),
            "path_prefix = \"/refused\"",
        )
        .route(
            "reset",
            "plain",
            &[HOST],
            &format!("http://{reset}"),
            "path_prefix = \"/reset\"",
        )
        .route(
            "hang",
            "plain",
            &[HOST],
            &format!("http://{hang}"),
            "path_prefix = \"/hang\"\n[routes.timeouts]\nresponse = \"1s\"",
        )
        .start(&ca);
    for (path, want, kind, why) in [
        (
            "/refused",
            502,
            "connect",
            "upstream refused the connection or could not be reached",
        ),
        (
            "/reset",
            502,
            "reset",
            "upstream closed the connection before answering",
        ),
        ("/hang", 504, "timeout", "upstream did not answer in time"),
    ] {
        let started = Instant::now();
        let r = exchange(
            gw.https,
            &ca.ca(),
            HOST,
            format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(want), "{path}: {}", r.text);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{path} took {:?}",
            started.elapsed()
        );
        let id = r.header("x-request-id").expect("request id header");
        assert!(r.text.contains(&format!("request id: {id}")), "{}", r.text);
        let route = &path[1..];
        assert_eq!(
            gw.metric(&format!(
                r#"gatehouse_upstream_errors_total{{kind="{kind}",route="{route}"}}"#
            )),
            1.0,
            "{}",
            gw.metrics_text()
        );
        // On record: the request as allowed and forwarded, then its outcome and why.
        let records = gw.audit_of(&id);
        let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["request", "outcome"], "{records:#?}");
        assert_eq!(records[1].status, Some(want), "{records:#?}");
        assert_eq!(records[1].detail.as_deref(), Some(why), "{records:#?}");
    }
    // Nothing is left hanging: every client connection is closed and counted as such.
    gw.eventually(5, "no active connections", || {
        gw.metric("gatehouse_active_connections") == 0.0
    });
}

#[tokio::test]
async fn a_long_upload_is_not_cut_by_the_response_timeout() {
    // The response timeout counts from the end of the request body, so an upload that takes
    // longer than it (but keeps moving) still completes.
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .route(
            "web",
            "plain",
            &[HOST],
            &up.url(),
            "[routes.timeouts]\nresponse = \"1s\"\nbody_read = \"2s\"",
        )
        .start(&ca);
    let mut s = raw::connect(gw.https, &ca.ca(), HOST).await;
    s.write_all(format!("POST /up HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    for _ in 0..5 {
        s.write_all(b"4\r\ndata\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let r = read_response(&mut s, Duration::from_secs(5)).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(up.requests()[0].body, b"datadatadatadatadata");
}

#[tokio::test]
async fn a_stalled_upstream_body_is_abandoned_and_counted() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::StallBody).await;
    let gw = GatewayBuilder::new()
        .route(
            "web",
            "plain",
            &[HOST],
            &up.url(),
            "[routes.timeouts]\nbody_read = \"1s\"",
        )
        .start(&ca);
    let started = Instant::now();
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200));
    assert!(
        r.closed,
        "client connection must be closed when the body breaks off"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    gw.eventually(3, "response_body metric", || {
        gw.metric(r#"gatehouse_upstream_errors_total{kind="response_body",route="web"}"#) == 1.0
    });
}
