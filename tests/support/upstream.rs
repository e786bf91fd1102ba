//! Upstreams for tests: one that records every request it sees and answers as told, and raw
//! TCP ones that refuse, reset or hang.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The whole body arrived (false when the gateway aborted it).
    pub complete: bool,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }
}

/// How the recording upstream answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with body "ok".
    Ok,
    /// The given status with a short body.
    Status(u16),
    /// The given status with a short body and this extra header.
    StatusWith(u16, &'static str, &'static str),
    /// Wait, then 200.
    Delay(Duration),
    /// 200 with this many bytes of body, streamed.
    Bytes(usize),
    /// 101 and then echo every byte back (a WebSocket stand-in).
    Upgrade,
    /// 200 with a body that stops after a first chunk and never finishes.
    StallBody,
    /// 200 "ok" with this extra response header.
    Header(&'static str, &'static str),
    /// Calls the hook with the request head the moment it arrives, then 200 "ok".
    Hook(Hook),
}

/// A function the upstream calls as each request arrives.
#[derive(Clone)]
pub struct Hook(pub Arc<dyn Fn(&HeaderMap) + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

pub struct RecordingUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingUpstream {
    pub async fn start(reply: Reply) -> RecordingUpstream {
        Self::start_with(reply, None).await
    }

    /// Serves over TLS with `cert`/`key`, offering ALPN `h2` and `http/1.1`.
    pub async fn start_tls(
        reply: Reply,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> RecordingUpstream {
        let key = gatehouse::server::tls::load_certified_key(cert, key).expect("upstream cert");
        let resolver = gatehouse::server::tls::CertResolver::new(key);
        let config = gatehouse::server::tls::server_config(resolver).expect("upstream TLS config");
        Self::start_with(reply, Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn start_with(reply: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen2.clone();
                let reply = reply.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let reply = reply.clone();
                        async move { Ok::<_, Infallible>(answer(req, seen, reply).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        RecordingUpstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn clear(&self) {
        self.seen.lock().expect("lock").clear();
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Recorded>>>,
    reply: Reply,
) -> Response<http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    if let Reply::Hook(hook) = &reply {
        (hook.0)(req.headers());
    }
    let index = {
        let mut s = seen.lock().expect("lock");
        s.push(Recorded {
            method: req.method().to_string(),
            target: req.uri().to_string(),
            version: req.version(),
            headers: req.headers().clone(),
            body: Vec::new(),
            complete: false,
        });
        s.len() - 1
    };
    let mut body = req.into_body();
    let mut collected = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    collected.extend_from_slice(d);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    {
        let mut s = seen.lock().expect("lock");
        s[index].body = collected;
        s[index].complete = complete;
    }
    let full = |status: u16, body: Bytes| {
        let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
        *r.status_mut() = StatusCode::from_u16(status).expect("status");
        r
    };
    match reply {
        Reply::Ok | Reply::Hook(_) => full(200, Bytes::from_static(b"ok")),
        Reply::Header(name, value) => {
            let mut r = full(200, Bytes::from_static(b"ok"));
            r.headers_mut()
                .append(name, value.parse().expect("header value"));
            r
        }
        Reply::Status(code) => full(code, Bytes::from(format!("status {code}"))),
        Reply::StatusWith(code, name, value) => {
            let mut r = full(code, Bytes::from(format!("status {code}")));
            r.headers_mut()
                .append(name, value.parse().expect("header value"));
            r
        }
        Reply::Delay(d) => {
            tokio::time::sleep(d).await;
            full(200, Bytes::from_static(b"slow ok"))
        }
        Reply::Bytes(n) => {
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len());
                    if tx
                        .send(Ok(hyper::body::Frame::data(chunk.slice(..take))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    left -= take;
                }
            });
            Response::new(http_body_util::StreamBody::new(ReceiverStream(rx)).boxed())
        }
        Reply::StallBody => {
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(hyper::body::Frame::data(Bytes::from_static(
                        b"first part",
                    ))))
                    .await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(tx);
            });
            Response::new(http_body_util::StreamBody::new(ReceiverStream(rx)).boxed())
        }
        Reply::Upgrade => {
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 4096];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
            let mut r = full(101, Bytes::new());
            r.headers_mut()
                .insert("connection", "Upgrade".parse().expect("hv"));
            r.headers_mut()
                .insert("upgrade", "websocket".parse().expect("hv"));
            r.headers_mut()
                .insert("sec-websocket-accept", "test".parse().expect("hv"));
            r
        }
    }
}

/// A minimal `Stream` over an mpsc receiver (avoids pulling in a stream crate for tests).
pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Raw TCP upstream behaviours for failure tests.
pub enum Broken {
    /// Accepts, reads the request, then resets the connection.
    Reset,
    /// Accepts, reads, never answers.
    Hang,
}

/// A port on which nothing listens.
pub async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

pub async fn broken_upstream(kind: Broken) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            match kind {
                Broken::Reset => {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::from_secs(0)));
                    drop(s);
                }
                Broken::Hang => held.push(s),
            }
        }
    });
    (addr, task)
}
