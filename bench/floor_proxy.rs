//! The floor under gatehouse's request path: the least a hyper proxy can do, for
//! `bench/proxy.sh --floor`. No routing, policy, audit or header work: an HTTP/1 server
//! (hyper) that sends each request to one upstream and returns its answer, in one of two
//! ways:
//!
//! - `pool`: hyper-util's pooled client, as gatehouse uses it (each upstream connection is a
//!   task of its own; a request reaches it through a channel and its answer comes back
//!   through another);
//! - `inline`: each client connection owns one upstream connection and drives it in its own
//!   task (no pool, no channels, no second task), reading the whole answer before replying.
//!
//! What these reach on a machine bounds what any change to gatehouse's own stages can reach
//! there with the same HTTP stack. One tokio worker (run it with `taskset` on one core).
//!
//! Usage: floor_proxy pool|inline LISTEN_ADDR UPSTREAM_ADDR; prints the bound port.
//! Build: cargo build --release --example bench_floor_proxy

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

type Answer = Response<Full<Bytes>>;

fn bad_gateway() -> Answer {
    let mut r = Response::new(Full::new(Bytes::from_static(b"bad gateway\n")));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(listen), Some(upstream)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: floor_proxy pool|inline LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        println!("{}", listener.local_addr()?.port());
        use std::io::Write;
        std::io::stdout().flush()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(connector);
        let base: Uri = format!("http://{upstream}/")
            .parse()
            .map_err(std::io::Error::other)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let io = TokioIo::new(stream);
            match mode.as_str() {
                "pool" => {
                    let client = client.clone();
                    let base = base.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let client = client.clone();
                            let base = base.clone();
                            async move {
                                let (mut parts, body) = req.into_parts();
                                let mut uri = base.into_parts();
                                uri.path_and_query = parts.uri.path_and_query().cloned();
                                parts.uri = Uri::from_parts(uri).unwrap_or_default();
                                let resp =
                                    match client.request(Request::from_parts(parts, body)).await {
                                        Ok(resp) => resp.map(|b| b.boxed()),
                                        Err(_) => bad_gateway()
                                            .map(|b| b.map_err(|never| match never {}).boxed()),
                                    };
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let _ = http1::Builder::new().serve_connection(io, service).await;
                    });
                }
                _ => {
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(up) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let _ = up.set_nodelay(true);
                        let Ok((sender, conn)) =
                            hyper::client::conn::http1::handshake(TokioIo::new(up)).await
                        else {
                            return;
                        };
                        let link = std::sync::Arc::new(tokio::sync::Mutex::new((sender, conn)));
                        let service = service_fn(move |req: Request<Incoming>| {
                            let link = link.clone();
                            async move {
                                // One request at a time per client connection (HTTP/1), so
                                // the lock is never contended; it only lends the pair.
                                let mut guard = link.lock().await;
                                let (sender, conn) = &mut *guard;
                                let exchange = async {
                                    let resp = sender.send_request(req).await?;
                                    let (parts, body) = resp.into_parts();
                                    let bytes = body.collect().await?.to_bytes();
                                    Ok::<_, hyper::Error>(Response::from_parts(
                                        parts,
                                        Full::new(bytes),
                                    ))
                                };
                                let resp = tokio::select! {
                                    r = exchange => r.unwrap_or_else(|_| bad_gateway()),
                                    _ = conn => bad_gateway(),
                                };
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let _ = http1::Builder::new().serve_connection(io, service).await;
                    });
                }
            }
        }
    })
}
