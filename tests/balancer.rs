//! Behind a TCP balancer: connections from `[server] proxy_protocol_from` must start with a
//! PROXY protocol header, whose client address is the one the audit log, `X-Forwarded-For`
//! and policy see; a refused header is on record. A real HAProxy (`send-proxy-v2`) in front,
//! and v1 lines written by hand.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use support::{
    DevCa, GatewayBuilder, HOST, RecordingUpstream, Reply, TestGateway, curl, free_port,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// HAProxy in TCP mode, passing TLS through to `gateway_port` with a v2 header.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(gateway_port: u16) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
frontend tls\n  bind 127.0.0.1:{port}\n  default_backend gateways\n\
backend gateways\n  server gw1 127.0.0.1:{gateway_port} send-proxy-v2\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy (apt-get install haproxy)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Haproxy {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `source.addr` of the audit record of request `id`.
fn source_of(gw: &TestGateway, id: &str) -> String {
    let records = gw.audit_of(id);
    let r = records
        .first()
        .unwrap_or_else(|| panic!("no record for {id}"));
    serde_json::to_value(r).unwrap()["source"]["addr"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A v1 line, then TLS and one request over the same connection: (status line, response).
async fn via_v1_line(gw: &TestGateway, ca: &DevCa, line: &[u8]) -> String {
    let mut tcp = TcpStream::connect(gw.https).await.unwrap();
    tcp.write_all(line).await.unwrap();
    let config = support::raw::client_config(&ca.ca(), &[b"http/1.1"]);
    let name = ServerName::try_from(HOST.to_string()).unwrap();
    let Ok(Ok(mut tls)) = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(Arc::clone(&config)).connect(name, tcp),
    )
    .await
    else {
        return String::new();
    };
    tls.write_all(
        format!(
            "GET /v1 HTTP/1.1\r\nHost: {HOST}:{}\r\nX-Forwarded-For: 198.51.100.66\r\nConnection: close\r\n\r\n",
            gw.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancers_proxy_header_names_the_client_and_is_required_from_it() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .server("proxy_protocol_from = [\"127.0.0.1\"]")
        .route("code", "plain", &[HOST], &up.url(), "")
        .start(&ca);

    // Through HAProxy: the client's own address and port, not HAProxy's.
    let haproxy = tokio::task::block_in_place(|| Haproxy::start(gw.port()));
    let client_port = free_port();
    let out = tokio::task::block_in_place(|| {
        curl(
            &ca,
            haproxy.port,
            &[
                "--local-port",
                &client_port.to_string(),
                "-D",
                "-",
                "-o",
                "/dev/null",
                &format!("https://{HOST}:{}/through-haproxy", haproxy.port),
            ],
        )
        .output()
        .expect("curl")
    });
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        head.starts_with("HTTP/"),
        "{head}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(head.contains(" 200"), "{head}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("x-request-id")
        .trim()
        .to_string();
    assert_eq!(source_of(&gw, &id), format!("127.0.0.1:{client_port}"));
    let seen = up.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-forwarded-for"), Some("127.0.0.1"));

    // A v1 line naming another client: that client, and its X-Forwarded-For is not believed.
    up.clear();
    let text = via_v1_line(&gw, &ca, b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 443\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(source_of(&gw, &id), "203.0.113.7:51234");
    assert_eq!(
        up.requests()[0].header("x-forwarded-for"),
        Some("203.0.113.7")
    );

    // From the balancer's address, no header or a bad one: the connection ends, counted.
    let before = gw.metric(r#"gatehouse_requests_rejected_total{reason="proxy_protocol"}"#);
    let text = via_v1_line(&gw, &ca, b"").await;
    assert!(text.is_empty(), "answered without a PROXY header: {text}");
    let text = via_v1_line(&gw, &ca, b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 443\r\n").await;
    assert!(text.is_empty(), "answered with a bad PROXY header: {text}");
    let after = gw.metric(r#"gatehouse_requests_rejected_total{reason="proxy_protocol"}"#);
    assert_eq!(after - before, 2.0);
    // Each is on record: a deny naming the balancer's address and why.
    let deadline = Instant::now() + Duration::from_secs(5);
    let refusals = loop {
        let found: Vec<serde_json::Value> = gw
            .audit_records()
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .filter(|v| {
                v["decision"]["reasons"].as_array().is_some_and(|rs| {
                    rs.iter()
                        .any(|r| r.as_str().is_some_and(|r| r.contains("PROXY")))
                })
            })
            .collect();
        if found.len() >= 2 || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(refusals.len(), 2, "{refusals:#?}");
    for r in &refusals {
        assert_eq!(r["decision"]["effect"], "deny", "{r}");
        assert!(
            r["source"]["addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{r}"
        );
    }
    assert!(
        refusals
            .iter()
            .any(|r| r.to_string().contains("bad source port")),
        "{refusals:#?}"
    );
    drop(haproxy);
}
