//! Raw bytes over TLS, for requests no client library would send.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A TLS client config trusting only `ca`, with the given ALPN protocols.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in gatehouse::server::tls::read_certificates(ca).expect("read CA") {
        roots.add(cert).expect("add CA");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(gatehouse::server::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Opens a TLS connection (HTTP/1.1 by ALPN) presenting `sni`.
pub async fn connect(addr: SocketAddr, ca: &Path, sni: &str) -> TlsStream<TcpStream> {
    connect_alpn(addr, ca, sni, &[b"http/1.1"]).await
}

pub async fn connect_alpn(
    addr: SocketAddr,
    ca: &Path,
    sni: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(client_config(ca, alpn)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("TLS handshake")
}

/// Sends `bytes` and reads until the server closes the connection or goes quiet for 3 s.
pub async fn exchange(addr: SocketAddr, ca: &Path, sni: &str, bytes: &[u8]) -> Response {
    let mut s = connect(addr, ca, sni).await;
    s.write_all(bytes).await.expect("write");
    s.flush().await.expect("flush");
    read_response(&mut s, Duration::from_secs(3)).await
}

/// What came back: the text and whether the server closed the connection.
#[derive(Debug)]
pub struct Response {
    pub text: String,
    pub closed: bool,
}

impl Response {
    /// Status code of the first response.
    pub fn status(&self) -> Option<u16> {
        self.text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// Status codes of every response in the text (pipelining).
    pub fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| self.text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    quiet: Duration,
) -> Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let closed = loop {
        match tokio::time::timeout(quiet, s.read(&mut chunk)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    Response {
        text: String::from_utf8_lossy(&buf).into_owned(),
        closed,
    }
}

/// The `Content-Length` of a raw HTTP/1 head (0 when absent or unreadable).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Reads one complete HTTP/1.1 response head (and a Content-Length body) without waiting for
/// the connection to close, so the connection can be reused.
pub async fn read_one<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Response {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await {
            Ok(Ok(1)) => buf.push(byte[0]),
            _ => {
                return Response {
                    text: String::from_utf8_lossy(&buf).into_owned(),
                    closed: true,
                };
            }
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = content_length(&head);
    let mut body = vec![0u8; len];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body)).await;
    buf.extend_from_slice(&body);
    Response {
        text: String::from_utf8_lossy(&buf).into_owned(),
        closed: false,
    }
}

/// Like [`connect`], but reports a failed handshake instead of panicking.
pub async fn try_connect(
    addr: SocketAddr,
    ca: &Path,
    sni: &str,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(client_config(ca, &[b"http/1.1"])).connect(name, tcp),
    )
    .await
    {
        Err(_) => Err("handshake timed out".into()),
        Ok(Err(e)) => Err(format!("handshake: {e}")),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Like [`exchange`], but `None` when the gateway cannot be reached or the write fails (a
/// gateway that is being killed).
#[allow(dead_code)]
pub async fn try_exchange(
    addr: SocketAddr,
    ca: &Path,
    sni: &str,
    bytes: &[u8],
) -> Option<Response> {
    let mut s = try_connect(addr, ca, sni).await.ok()?;
    s.write_all(bytes).await.ok()?;
    s.flush().await.ok()?;
    Some(read_response(&mut s, Duration::from_secs(3)).await)
}
