//! The shape of `gatehouse.toml` exactly as written by operators.
//!
//! These types exist only to be deserialised and validated into [`super::Config`]; nothing at
//! request time sees them. Values that need checking beyond their TOML type keep their source
//! span so an error can name the file, line and column.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: FileServer,
    pub tls: Option<FileTls>,
    pub metrics: Option<FileMetrics>,
    #[serde(default)]
    pub routes: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    #[serde(default)]
    pub listen: Vec<Spanned<String>>,
    #[serde(default)]
    pub plaintext_listen: Vec<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub access_log: Option<bool>,
    #[serde(default)]
    pub timeouts: FileServerTimeouts,
    #[serde(default)]
    pub limits: FileLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServerTimeouts {
    pub handshake: Option<Spanned<String>>,
    pub header_read: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub body_read: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_header_bytes: Option<Spanned<String>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<String>>,
    pub h2_max_concurrent_streams: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
    pub watch: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    pub listen: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileRouteKind {
    Gogs,
    Otlp,
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileProtocol {
    Http1,
    Http2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: Spanned<String>,
    pub kind: FileRouteKind,
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub path_prefix: Option<Spanned<String>>,
    pub upstream: Spanned<String>,
    pub upstream_ca_file: Option<Spanned<String>>,
    pub upstream_protocol: Option<Spanned<FileProtocol>>,
    pub preserve_host: Option<bool>,
    pub max_body_bytes: Option<Spanned<String>>,
    pub websocket: Option<Spanned<bool>>,
    #[serde(default)]
    pub timeouts: FileRouteTimeouts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteTimeouts {
    pub connect: Option<Spanned<String>>,
    pub response: Option<Spanned<String>>,
    pub body_read: Option<Spanned<String>>,
}
