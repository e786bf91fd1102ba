//! Request smuggling and malformed framing, sent as raw bytes over TLS: each is refused with
//! 400, the connection is closed, and nothing complete reaches the upstream.

mod support;

use support::raw::exchange;
use support::{DevCa, GatewayBuilder, HOST, RecordingUpstream, Reply, TestGateway};

async fn setup() -> (DevCa, RecordingUpstream, TestGateway) {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    (ca, up, gw)
}

async fn assert_refused(
    ca: &DevCa,
    gw: &TestGateway,
    up: &RecordingUpstream,
    what: &str,
    bytes: String,
) {
    let r = exchange(gw.https, &ca.ca(), HOST, bytes.as_bytes()).await;
    assert_eq!(
        r.statuses().first().copied(),
        Some(400),
        "{what}: {}",
        r.text
    );
    assert_eq!(
        r.statuses().len(),
        1,
        "{what}: a smuggled second request was answered: {}",
        r.text
    );
    assert!(r.closed, "{what}: connection left open");
    let complete: Vec<_> = up.requests().into_iter().filter(|r| r.complete).collect();
    assert!(
        complete.is_empty(),
        "{what}: reached the upstream: {complete:?}"
    );
    up.clear();
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_in_either_order() {
    let (ca, up, gw) = setup().await;
    let smuggled = format!("GET /admin HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    assert_refused(
        &ca,
        &gw,
        &up,
        "CL then TE",
        format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
    )
    .await;
    assert_refused(
        &ca,
        &gw,
        &up,
        "TE then CL",
        format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"),
    )
    .await;
    assert_eq!(
        gw.metric(r#"gatehouse_requests_rejected_total{reason="framing"}"#),
        2.0
    );
}

#[tokio::test]
async fn malformed_lengths_and_codings_are_refused() {
    let (ca, up, gw) = setup().await;
    let cases = [
        (
            "duplicate equal Content-Length",
            format!(
                "POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
            ),
        ),
        (
            "different Content-Lengths",
            format!(
                "POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
            ),
        ),
        (
            "signed Content-Length",
            format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: +3\r\n\r\nabc"),
        ),
        (
            "list Content-Length",
            format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3, 3\r\n\r\nabc"),
        ),
        (
            "non-chunked Transfer-Encoding",
            format!("POST /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
        ),
        (
            "chunked not last",
            format!(
                "POST /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "duplicate Transfer-Encoding",
            format!(
                "POST /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "obs-fold",
            format!("GET /x HTTP/1.1\r\nHost: {HOST}\r\nX-A: a\r\n  folded\r\n\r\n"),
        ),
        (
            "bare LF",
            format!("GET /x HTTP/1.1\nHost: {HOST}\nX-A: a\n\n"),
        ),
        (
            "NUL in a header value",
            format!("GET /x HTTP/1.1\r\nHost: {HOST}\r\nX-A: a\0b\r\n\r\n"),
        ),
        (
            "space before colon",
            format!("GET /x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length : 0\r\n\r\n"),
        ),
    ];
    for (what, bytes) in cases {
        assert_refused(&ca, &gw, &up, what, bytes).await;
    }
}

#[tokio::test]
async fn bad_chunking_never_completes_a_request_upstream() {
    let (ca, up, gw) = setup().await;
    let cases = [
        (
            "non-hex chunk size",
            format!(
                "POST /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunk longer than declared",
            format!(
                "POST /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunk size overflow",
            format!(
                "POST /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\na\r\n0\r\n\r\n"
            ),
        ),
        (
            "bare LF after chunk size",
            format!(
                "POST /x HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"
            ),
        ),
    ];
    for (what, bytes) in cases {
        let r = exchange(gw.https, &ca.ca(), HOST, bytes.as_bytes()).await;
        assert!(r.closed, "{what}: connection left open: {}", r.text);
        assert!(
            matches!(r.statuses().first(), None | Some(400)),
            "{what}: {}",
            r.text
        );
        let complete: Vec<_> = up.requests().into_iter().filter(|r| r.complete).collect();
        assert!(
            complete.is_empty(),
            "{what}: a complete request reached the upstream: {complete:?}"
        );
        up.clear();
    }
}

#[tokio::test]
async fn connect_and_trace_are_refused() {
    let (ca, up, gw) = setup().await;
    for (what, bytes) in [
        (
            "CONNECT",
            format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n"),
        ),
        (
            "TRACE",
            format!("TRACE / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        ),
    ] {
        let r = exchange(gw.https, &ca.ca(), HOST, bytes.as_bytes()).await;
        assert_eq!(r.status(), Some(405), "{what}: {}", r.text);
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn h2c_upgrade_is_not_passed_on_and_the_connection_closes() {
    let (ca, up, gw) = setup().await;
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.statuses(), [200], "{}", r.text);
    assert!(
        r.closed,
        "connection must close after an upgrade the gateway refused"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("upgrade").is_none() && seen[0].header("http2-settings").is_none());
}

#[tokio::test]
async fn pipelined_well_formed_requests_are_all_answered() {
    let (ca, up, gw) = setup().await;
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!(
            "POST /a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello\
POST /b HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\n\r\n\
GET /c HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.statuses(), [200, 200, 200], "{}", r.text);
    let seen = up.requests();
    assert_eq!(
        seen.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(),
        ["/a", "/b", "/c"]
    );
    assert_eq!(seen[0].body, b"hello");
    assert_eq!(seen[1].body, b"world");
}
