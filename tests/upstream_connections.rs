//! Upstream HTTP/1 connections: reused across requests and client connections, never reused
//! when they cannot carry another request, and a connection the upstream closed while idle
//! costs no request.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::raw::{self, read_one};
use support::{DevCa, GatewayBuilder, HOST, curl, run_with_timeout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted upstream saw: for each request, the connection it came on and its
/// request line; for each connection, whether the gateway closed it.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(usize, String)>>,
    closed_by_gateway: Mutex<Vec<usize>>,
    connections: AtomicUsize,
}

impl Seen {
    fn requests(&self) -> Vec<(usize, String)> {
        self.requests.lock().expect("lock").clone()
    }
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A raw HTTP/1.1 upstream with keep-alive, answering by path:
/// - `/ok`: 200 "ok"; `/empty`: 204; HEAD anything: 200 with a length and no body;
/// - `/close`: 200 with `Connection: close`, then closes;
/// - `/early`: 413 at once without reading the request body, then stops reading;
/// - `/big`: 200 with 8 MiB of body.
///
/// It closes a connection that stays idle for `idle_close`, as servers do at the end of
/// their keep-alive timeout.
async fn scripted_upstream(idle_close: Duration) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = s.connections.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(serve(stream, n, s.clone(), idle_close));
        }
    });
    (addr, seen)
}

async fn serve(mut stream: TcpStream, conn: usize, seen: Arc<Seen>, idle_close: Duration) {
    let mut buf = Vec::new();
    loop {
        // Read one request head, or notice the gateway closing the connection.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(idle_close, stream.read(&mut chunk)).await {
                Err(_) => return, // idle too long: close, as a keep-alive timeout would
                Ok(Ok(0)) | Ok(Err(_)) => {
                    if buf.is_empty() {
                        seen.closed_by_gateway.lock().expect("lock").push(conn);
                    }
                    return;
                }
                Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let line = head.lines().next().unwrap_or_default().to_string();
        seen.requests
            .lock()
            .expect("lock")
            .push((conn, line.clone()));
        let mut parts = line.split(' ');
        let (method, path) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let length = raw::content_length(&head);
        if path == "/early" {
            let _ = stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            return;
        }
        // Consume the request body.
        while buf.len() < length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        buf.drain(..length);
        let written = match (method, path) {
            ("HEAD", _) => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
                    .await
            }
            (_, "/empty") => stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await,
            (_, "/close") => {
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                    )
                    .await;
                return;
            }
            (_, "/big") => {
                let size = 8 << 20;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                let mut r = stream.write_all(head.as_bytes()).await;
                let block = vec![b'x'; 65536];
                for _ in 0..size / block.len() {
                    if r.is_err() {
                        break;
                    }
                    r = stream.write_all(&block).await;
                }
                r
            }
            _ => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
            }
        };
        if written.is_err() {
            seen.closed_by_gateway.lock().expect("lock").push(conn);
            return;
        }
    }
}

fn gateway(ca: &DevCa, upstream: SocketAddr) -> support::TestGateway {
    GatewayBuilder::new()
        .route("r", "plain", &[HOST], &format!("http://{upstream}"), "")
        .start(ca)
}

async fn get(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
    method: &str,
    path: &str,
) -> u16 {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let r = if method == "HEAD" {
        // No body follows a HEAD answer, whatever its length says.
        raw::read_response(stream, Duration::from_millis(500)).await
    } else {
        read_one(stream).await
    };
    r.status().unwrap_or(0)
}

#[tokio::test]
async fn requests_reuse_one_upstream_connection_across_client_connections() {
    let ca = DevCa::new();
    let (addr, seen) = scripted_upstream(Duration::from_secs(30)).await;
    let gw = gateway(&ca, addr);

    let mut client = raw::connect(gw.https, &ca.ca(), HOST).await;
    for i in 0..20 {
        // Bodiless answers (HEAD, 204) end without being read: the connection comes back too.
        let (method, path, want) = match i % 4 {
            1 => ("HEAD", "/ok", 200),
            2 => ("GET", "/empty", 204),
            _ => ("GET", "/ok", 200),
        };
        assert_eq!(get(&mut client, method, path).await, want, "request {i}");
    }
    drop(client);
    gw.eventually(5, "the first client connection closed", || {
        gw.metric("gatehouse_active_connections") == 0.0
    });
    // A new client connection finds the idle connection the first one left behind.
    let mut client = raw::connect(gw.https, &ca.ca(), HOST).await;
    for i in 0..5 {
        assert_eq!(
            get(&mut client, "GET", "/ok").await,
            200,
            "second client, request {i}"
        );
    }
    let requests = seen.requests();
    assert_eq!(requests.len(), 25, "{requests:?}");
    assert_eq!(seen.connections(), 1, "{requests:?}");
    assert_eq!(
        gw.metric(r#"gatehouse_upstream_connections_opened_total{route="r"}"#),
        1.0
    );
}

#[tokio::test]
async fn an_upstream_that_closes_idle_connections_costs_no_request() {
    let ca = DevCa::new();
    let (addr, seen) = scripted_upstream(Duration::from_millis(150)).await;
    let gw = gateway(&ca, addr);
    let mut client = raw::connect(gw.https, &ca.ca(), HOST).await;
    for i in 0..5 {
        assert_eq!(get(&mut client, "GET", "/ok").await, 200, "request {i}");
        // Longer than the upstream keeps an idle connection.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(seen.connections(), 5, "{:?}", seen.requests());
    assert_eq!(
        gw.metric(r#"gatehouse_upstream_errors_total{kind="reset",route="r"}"#),
        0.0
    );
    assert_eq!(
        gw.metric(r#"gatehouse_upstream_connections_opened_total{route="r"}"#),
        5.0
    );
}

#[tokio::test]
async fn connections_that_cannot_take_another_request_are_not_reused() {
    let ca = DevCa::new();
    let (addr, seen) = scripted_upstream(Duration::from_secs(30)).await;
    let gw = gateway(&ca, addr);
    let mut client = raw::connect(gw.https, &ca.ca(), HOST).await;

    // The upstream says it closes: the next request goes on a new connection.
    assert_eq!(get(&mut client, "GET", "/close").await, 200);
    assert_eq!(get(&mut client, "GET", "/ok").await, 200);
    let requests = seen.requests();
    assert_ne!(requests[0].0, requests[1].0, "{requests:?}");

    // An answer that arrives while the upload is still going: that connection is closed.
    let mut body_sender = raw::connect(gw.https, &ca.ca(), HOST).await;
    let upload = vec![b'u'; 4 << 20];
    let head = format!(
        "POST /early HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
        upload.len()
    );
    body_sender.write_all(head.as_bytes()).await.expect("head");
    let _ = tokio::time::timeout(Duration::from_millis(300), body_sender.write_all(&upload)).await;
    let answer = raw::read_response(&mut body_sender, Duration::from_millis(500)).await;
    assert_eq!(answer.status(), Some(413), "{}", answer.text);
    drop(body_sender);

    let before = seen.requests().len();
    let early_conn = seen
        .requests()
        .iter()
        .rev()
        .find(|(_, line)| line.starts_with("POST /early"))
        .map(|(c, _)| *c)
        .expect("the upstream saw the upload");
    let mut client = raw::connect(gw.https, &ca.ca(), HOST).await;
    assert_eq!(get(&mut client, "GET", "/ok").await, 200);
    let after = seen.requests();
    assert_eq!(after.len(), before + 1, "{after:?}");
    assert_ne!(after[before].0, early_conn, "{after:?}");
}

#[tokio::test]
async fn a_download_the_client_abandons_closes_its_upstream_connection() {
    let ca = DevCa::new();
    let (addr, seen) = scripted_upstream(Duration::from_secs(30)).await;
    let gw = gateway(&ca, addr);
    let mut client = raw::connect(gw.https, &ca.ca(), HOST).await;
    client
        .write_all(format!("GET /big HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut first = [0u8; 4096];
    let n = client.read(&mut first).await.expect("read");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(client);

    // The half-read response's connection is closed, not handed to the next request.
    let wait = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.closed_by_gateway.lock().expect("lock").contains(&1) {
        assert!(
            tokio::time::Instant::now() < wait,
            "the upstream connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = raw::connect(gw.https, &ca.ca(), HOST).await;
    assert_eq!(get(&mut client, "GET", "/ok").await, 200);
    let requests = seen.requests();
    assert_eq!(requests.last().map(|r| r.0), Some(2), "{requests:?}");
}

// curl blocks its thread: the upstream runs on another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_http2_streams_each_get_a_connection_and_then_share_them() {
    let ca = DevCa::new();
    let (addr, seen) = scripted_upstream(Duration::from_secs(30)).await;
    let gw = gateway(&ca, addr);
    let url = format!("https://{HOST}:{}/ok", gw.https.port());
    let mut args = vec![
        "--http2",
        "--parallel",
        "--parallel-max",
        "8",
        "--write-out",
        "%{http_version} %{http_code}\n",
        "--output",
        "/dev/null",
    ];
    let urls = vec![url.as_str(); 40];
    for u in &urls {
        args.push(u);
        args.push("--output");
        args.push("/dev/null");
    }
    let (ok, out, err) = run_with_timeout(&mut curl(&ca, gw.https.port(), &args), 30);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 40, "{out}");
    assert!(lines.iter().all(|l| *l == "2 200"), "{out}");
    assert_eq!(seen.requests().len(), 40);
    // At most one connection per stream in flight at once; finished ones are reused.
    let opened = seen.connections();
    assert!(
        (1..=8).contains(&opened),
        "{opened} upstream connections for 8 parallel streams"
    );
}
