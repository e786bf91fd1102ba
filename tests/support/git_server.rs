//! A real git smart-HTTP server: `git http-backend` run as CGI behind a small hyper server.
//!
//! Request and response bodies are streamed through the CGI pipes, so pushes and clones of
//! any size pass with flat memory here as well. Every request's headers are recorded so
//! tests can check what the gateway forwarded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpListener;
use tokio::process::{ChildStdout, Command};

pub struct GitServer {
    pub addr: SocketAddr,
    pub root: PathBuf,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GitServer {
    /// Serves the bare repositories under `root`.
    pub async fn start(root: &Path) -> GitServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind git server");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<(String, HeaderMap)>>> = Arc::default();
        let (root2, seen2) = (root.to_path_buf(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let root = root2.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let root = root.clone();
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(cgi(req, &root, peer, seen).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GitServer {
            addr,
            root: root.to_path_buf(),
            seen,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates an empty bare repository `name` (e.g. `platform/app.git`).
    pub fn create_repo(&self, name: &str) -> PathBuf {
        let path = self.root.join(name);
        std::fs::create_dir_all(&path).expect("repo dir");
        let ok = std::process::Command::new("git")
            .args(["init", "--quiet", "--bare", "--initial-branch=main"])
            .arg(&path)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .expect("git init")
            .success();
        assert!(ok, "git init --bare failed");
        path
    }

    /// (path and query, headers) of every request served so far.
    pub fn requests(&self) -> Vec<(String, HeaderMap)> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type CgiBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn cgi(
    req: Request<Incoming>,
    root: &Path,
    peer: SocketAddr,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
) -> Response<CgiBody> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    seen.lock()
        .expect("lock")
        .push((target, req.headers().clone()));
    let h = req.headers();
    let header = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", req.uri().path())
        .env("QUERY_STRING", req.uri().query().unwrap_or(""))
        .env("REQUEST_METHOD", req.method().as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        // receive-pack is enabled for authenticated users; the gateway stands in front.
        .env("REMOTE_USER", "gatehouse-broker")
        .env("REMOTE_ADDR", peer.ip().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(len) = h.get("content-length").and_then(|v| v.to_str().ok()) {
        cmd.env("CONTENT_LENGTH", len);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("spawn git http-backend: {e}"),
            );
        }
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let mut body = req.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref()
                && stdin.write_all(data).await.is_err()
            {
                return;
            }
        }
        let _ = stdin.shutdown().await;
    });
    tokio::spawn(async move {
        let _ = child.wait().await;
    });

    let mut reader = BufReader::new(stdout);
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    "git http-backend wrote no headers".into(),
                );
            }
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    let mut resp = Response::new(ReaderBody { inner: reader }.boxed());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn plain(status: StatusCode, text: String) -> Response<CgiBody> {
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

/// Streams a reader as a body, 64 KiB at a time.
struct ReaderBody {
    inner: BufReader<ChildStdout>,
}

impl http_body::Body for ReaderBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let mut buf = BytesMut::zeroed(64 * 1024);
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(None);
                }
                buf.truncate(n);
                Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}
