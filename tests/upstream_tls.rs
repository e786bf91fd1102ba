//! HTTPS upstreams (custom CA, HTTP/2) and the TLS versions the gateway offers clients.

mod support;

use support::raw::exchange;
use support::{DevCa, GatewayBuilder, HOST, RecordingUpstream, Reply, curl, run_with_timeout};

fn get() -> String {
    format!("GET /tls HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_route_ca() {
    let ca = DevCa::new();
    let upstream_ca = DevCa::new();
    let up = RecordingUpstream::start_tls(Reply::Ok, &upstream_ca.cert(), &upstream_ca.key()).await;
    let url = format!("https://127.0.0.1:{}", up.addr.port());
    let wrong = DevCa::new();
    let gw = GatewayBuilder::new()
        .route(
            "good",
            "plain",
            &[HOST],
            &url,
            &format!(
                "path_prefix = \"/tls\"\nupstream_ca_file = {:?}",
                upstream_ca.ca().display().to_string()
            ),
        )
        .route(
            "bad",
            "plain",
            &["other.example.test"],
            &url,
            &format!("upstream_ca_file = {:?}", wrong.ca().display().to_string()),
        )
        .start(&ca);
    let r = exchange(gw.https, &ca.ca(), HOST, get().as_bytes()).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(up.requests().len(), 1);

    // The same upstream under a CA it was not issued by: refused as a TLS failure.
    let r = exchange(
        gw.https,
        &ca.ca(),
        "other.example.test",
        b"GET / HTTP/1.1\r\nHost: other.example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), Some(502), "{}", r.text);
    assert!(r.text.contains("TLS handshake failed"), "{}", r.text);
    assert_eq!(
        gw.metric(r#"gatehouse_upstream_errors_total{kind="tls",route="bad"}"#),
        1.0
    );
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn http2_upstreams_are_reached_over_alpn() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start_tls(Reply::Ok, &ca.cert(), &ca.key()).await;
    let url = format!("https://127.0.0.1:{}", up.addr.port());
    let gw = GatewayBuilder::new()
        .route(
            "h2",
            "plain",
            &[HOST],
            &url,
            &format!(
                "upstream_protocol = \"http2\"\nwebsocket = false\nupstream_ca_file = {:?}",
                ca.ca().display().to_string()
            ),
        )
        .start(&ca);
    let r = exchange(gw.https, &ca.ca(), HOST, get().as_bytes()).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(up.requests()[0].version, http::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_tls_1_2_or_1_3_and_nothing_older() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let url = gw.url("/");
    for (args, want) in [
        (&["--tlsv1.3"][..], true),
        (&["--tlsv1.2", "--tls-max", "1.2"][..], true),
        (&["--tlsv1.0", "--tls-max", "1.1"][..], false),
    ] {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["-o", "/dev/null", "-w", "%{http_code}", url.as_str()]);
        let (ok, out, err) =
            tokio::task::block_in_place(|| run_with_timeout(&mut curl(&ca, gw.port(), &a), 30));
        assert_eq!(ok, want, "{args:?}: {out} {err}");
        if want {
            assert_eq!(out, "200");
        }
    }
}
