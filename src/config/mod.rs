//! `gatehouse.toml`: loading, validation and the validated configuration the gateway runs on.
//!
//! The file model ([`file`]) is deserialised with unknown keys refused, then converted into
//! [`Config`], collecting every problem with its file, line and column. Nothing downstream
//! sees the file types. Relative paths are resolved against the config file's directory so
//! the gateway behaves the same whatever directory it is started from. Secrets never appear in
//! this file: only paths or environment variable names do.

pub mod attribution;
pub mod audit;
mod error;
mod file;
pub mod identity;
pub mod redis;
pub mod secret;
pub mod telemetry;
pub mod units;
pub mod webhooks;

pub use audit::{AuditConfig, AuditRequirement};
pub use error::{ConfigError, Diagnostic};
pub use identity::{
    AssertionConfig, BrokerCredential, GogsBroker, GroupsSource, IdentityConfig, JwtIssuerConfig,
    OidcConfig, OtlpBroker, RouteAuth, SessionConfig,
};
pub use redis::RedisConfig;
pub use secret::{Secret, SecretError, SecretRef};
pub use telemetry::TracesConfig;
pub use webhooks::{WebhookReceiver, WebhookSource, WebhooksConfig};

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use ipnet::IpNet;
use toml::Spanned;

use crate::proxy::host::canonical_config_host;
use file::{FileConfig, FileProtocol, FileRoute, FileRouteKind};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for reloads and messages).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub tls: Option<TlsConfig>,
    pub metrics: Option<MetricsConfig>,
    pub identity: IdentityConfig,
    pub policy: Option<PolicyConfig>,
    /// Always present in a validated configuration.
    pub audit: Option<AuditConfig>,
    /// Gogs webhooks: received, verified, recorded and forwarded.
    pub webhooks: Option<WebhooksConfig>,
    /// State shared by several replicas; embedded when absent.
    pub redis: Option<RedisConfig>,
    /// Commit attribution of OTLP traffic (enrichment on by default when `[webhooks]` is).
    pub attribution: crate::attribution::AttributionConfig,
    /// Where the gateway sends its own spans (`[telemetry.traces]`).
    pub telemetry: Option<TracesConfig>,
    pub routes: Vec<RouteConfig>,
}

/// Where the authorization policy files are.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub dir: PathBuf,
    /// Reload when a file in the directory changes (SIGHUP always reloads).
    pub watch: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TLS listeners.
    pub listen: Vec<SocketAddr>,
    /// Plain-HTTP listeners, for use behind a TLS-terminating load balancer.
    pub plaintext_listen: Vec<SocketAddr>,
    pub max_connections: usize,
    pub trusted_proxies: Vec<IpNet>,
    /// Balancers whose connections start with a PROXY protocol header (v1 or v2) naming the
    /// client; required from them, never read from anyone else.
    pub proxy_protocol_from: Vec<IpNet>,
    pub shutdown_grace: Duration,
    pub access_log: bool,
    pub timeouts: ServerTimeouts,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy)]
pub struct ServerTimeouts {
    /// TLS handshake must complete within this.
    pub handshake: Duration,
    /// A request head must arrive within this (slowloris guard).
    pub header_read: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle: Duration,
    /// Default gap allowed between two pieces of a request body.
    pub body_read: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Default per-route body limit.
    pub max_body_bytes: u64,
    pub h2_max_concurrent_streams: u32,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Reload when the files change (SIGHUP always reloads).
    pub watch: bool,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

/// What sits behind a route; later stages (identity, classification, brokering) key off it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Gogs,
    Otlp,
    Plain,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Gogs => "gogs",
            RouteKind::Otlp => "otlp",
            RouteKind::Plain => "plain",
        }
    }
}

/// HTTP version spoken to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2: ALPN `h2` over TLS, prior knowledge over plain TCP.
    Http2,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Custom CA bundle replacing the system roots for this upstream.
    pub ca_file: Option<PathBuf>,
    pub protocol: UpstreamProtocol,
}

#[derive(Debug, Clone, Copy)]
pub struct RouteTimeouts {
    pub connect: Duration,
    /// Time allowed for the upstream to start answering.
    pub response: Duration,
    /// Gap allowed between two pieces of a body, both directions.
    pub body_read: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub kind: RouteKind,
    /// Canonical host names; `*` matches any host no other route claims.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub upstream: Upstream,
    /// Send the client's Host to the upstream instead of the upstream's own authority.
    pub preserve_host: bool,
    pub max_body_bytes: u64,
    /// Let WebSocket upgrades through.
    pub websocket: bool,
    pub timeouts: RouteTimeouts,
    /// How callers authenticate.
    pub auth: RouteAuth,
    /// Send the gateway-signed identity assertion upstream.
    pub identity_assertion: bool,
    /// Identity and credentials toward Gogs (kind `gogs`).
    pub gogs: Option<GogsBroker>,
    /// Credentials toward Lightstep (kind `otlp`).
    pub otlp: Option<OtlpBroker>,
    pub audit: AuditRequirement,
}

/// Defaults, documented in `gatehouse.example.toml`.
pub mod defaults {
    use std::time::Duration;
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    pub const HANDSHAKE: Duration = Duration::from_secs(10);
    pub const HEADER_READ: Duration = Duration::from_secs(10);
    pub const IDLE: Duration = Duration::from_secs(60);
    pub const BODY_READ: Duration = Duration::from_secs(30);
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    pub const MAX_HEADERS: usize = 100;
    pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
    pub const CONNECT: Duration = Duration::from_secs(5);
    pub const RESPONSE: Duration = Duration::from_secs(60);
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates config text; `path` names it in messages and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Invalid(vec![Diagnostic {
                file: path.to_path_buf(),
                line,
                column,
                key: String::new(),
                message: e.message().trim_end().to_string(),
            }])
        })?;
        let mut v = Validator {
            file: path,
            text,
            base: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            problems: Vec::new(),
        };
        let config = v.config(file);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(v.problems))
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    base: PathBuf,
    problems: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn report<T>(&mut self, at: &Spanned<T>, key: &str, message: impl Into<String>) {
        let (line, column) = line_column(self.text, at.span().start);
        self.problems.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn report_unplaced(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: 0,
            column: 0,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match units::parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.report(value, key, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(msg) => {
                self.report(value, key, msg);
                default
            }
        }
    }

    fn size(&mut self, value: &Option<Spanned<String>>, key: &str, default: u64) -> u64 {
        let Some(value) = value else { return default };
        match units::parse_size(value.get_ref()) {
            Ok(0) => {
                self.report(value, key, "must be greater than zero");
                default
            }
            Ok(n) => n,
            Err(msg) => {
                self.report(value, key, msg);
                default
            }
        }
    }

    fn count(&mut self, value: &Option<Spanned<i64>>, key: &str, max: i64, default: u64) -> u64 {
        let Some(value) = value else { return default };
        let n = *value.get_ref();
        if n < 1 || n > max {
            self.report(value, key, format!("must be between 1 and {max}, got {n}"));
            return default;
        }
        n as u64
    }

    fn addr(&mut self, value: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match value.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.report(
                    value,
                    key,
                    format!(
                        "{:?} is not a socket address: expected IP:PORT, e.g. \"0.0.0.0:8443\" or \"[::1]:8443\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn networks(&mut self, list: &[Spanned<String>], key: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, cidr) in list.iter().enumerate() {
            let text = cidr.get_ref();
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => out.push(net.trunc()),
                Err(_) => self.report(
                    cidr,
                    &format!("{key}[{i}]"),
                    format!("{text:?} is not an IP network: expected CIDR such as \"10.0.0.0/8\" or an address"),
                ),
            }
        }
        out
    }

    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn config(&mut self, file: FileConfig) -> Config {
        let s = &file.server;
        let listen: Vec<SocketAddr> = s
            .listen
            .iter()
            .enumerate()
            .filter_map(|(i, a)| self.addr(a, &format!("server.listen[{i}]")))
            .collect();
        let plaintext_listen: Vec<SocketAddr> = s
            .plaintext_listen
            .iter()
            .enumerate()
            .filter_map(|(i, a)| self.addr(a, &format!("server.plaintext_listen[{i}]")))
            .collect();
        if s.listen.is_empty() && s.plaintext_listen.is_empty() {
            self.report_unplaced(
                "server.listen",
                "no listener configured: set server.listen (TLS) or server.plaintext_listen",
            );
        }
        let mut seen_addrs = HashSet::new();
        for (i, a) in s.listen.iter().chain(s.plaintext_listen.iter()).enumerate() {
            if !seen_addrs.insert(a.get_ref().clone()) {
                self.report(
                    a,
                    &format!("listener #{i}"),
                    format!("{} is listed twice", a.get_ref()),
                );
            }
        }

        let trusted_proxies = self.networks(&s.trusted_proxies, "server.trusted_proxies");
        let proxy_protocol_from =
            self.networks(&s.proxy_protocol_from, "server.proxy_protocol_from");

        let timeouts = ServerTimeouts {
            handshake: self.duration(
                &s.timeouts.handshake,
                "server.timeouts.handshake",
                defaults::HANDSHAKE,
            ),
            header_read: self.duration(
                &s.timeouts.header_read,
                "server.timeouts.header_read",
                defaults::HEADER_READ,
            ),
            idle: self.duration(&s.timeouts.idle, "server.timeouts.idle", defaults::IDLE),
            body_read: self.duration(
                &s.timeouts.body_read,
                "server.timeouts.body_read",
                defaults::BODY_READ,
            ),
        };
        let max_header_bytes = self.size(
            &s.limits.max_header_bytes,
            "server.limits.max_header_bytes",
            defaults::MAX_HEADER_BYTES as u64,
        );
        if let Some(v) = &s.limits.max_header_bytes
            && !(8192..=1 << 24).contains(&max_header_bytes)
        {
            self.report(
                v,
                "server.limits.max_header_bytes",
                "must be between 8KiB and 16MiB",
            );
        }
        let limits = Limits {
            max_header_bytes: max_header_bytes as usize,
            max_headers: self.count(
                &s.limits.max_headers,
                "server.limits.max_headers",
                10_000,
                defaults::MAX_HEADERS as u64,
            ) as usize,
            max_body_bytes: self.size(
                &s.limits.max_body_bytes,
                "server.limits.max_body_bytes",
                defaults::MAX_BODY_BYTES,
            ),
            h2_max_concurrent_streams: self.count(
                &s.limits.h2_max_concurrent_streams,
                "server.limits.h2_max_concurrent_streams",
                10_000,
                defaults::H2_MAX_CONCURRENT_STREAMS as u64,
            ) as u32,
        };
        let server = ServerConfig {
            listen,
            plaintext_listen,
            max_connections: self.count(
                &s.max_connections,
                "server.max_connections",
                1_000_000,
                defaults::MAX_CONNECTIONS as u64,
            ) as usize,
            trusted_proxies,
            proxy_protocol_from,
            shutdown_grace: self.duration(
                &s.shutdown_grace,
                "server.shutdown_grace",
                defaults::SHUTDOWN_GRACE,
            ),
            access_log: s.access_log.unwrap_or(true),
            timeouts,
            limits,
        };

        let tls = file.tls.as_ref().map(|t| TlsConfig {
            cert_file: self.path(t.cert_file.get_ref()),
            key_file: self.path(t.key_file.get_ref()),
            watch: t.watch.unwrap_or(true),
        });
        if tls.is_none() && !s.listen.is_empty() {
            self.report(
                &s.listen[0],
                "server.listen",
                "TLS listeners need a [tls] section with cert_file and key_file",
            );
        }

        let metrics = file.metrics.as_ref().and_then(|m| {
            self.addr(&m.listen, "metrics.listen")
                .map(|listen| MetricsConfig { listen })
        });

        let identity = self.identity(file.identity.as_ref());
        let policy = file.policy.as_ref().map(|p| PolicyConfig {
            dir: self.path(p.dir.get_ref()),
            watch: p.watch.unwrap_or(true),
        });
        let audit = self.audit(file.audit.as_ref());
        let redis = file.redis.as_ref().and_then(|r| self.redis(r));
        let webhooks = file
            .webhooks
            .as_ref()
            .and_then(|w| self.webhooks(w, file.redis.is_some()));
        let attribution = self.attribution(file.attribution.as_ref(), file.webhooks.is_some());
        let telemetry = file
            .telemetry
            .as_ref()
            .and_then(|t| t.traces.as_ref())
            .and_then(|t| {
                let replica = audit.as_ref().map_or("gatehouse", |a| a.replica.as_str());
                self.traces(t, replica)
            });
        let mut routes = Vec::new();
        let mut names = HashSet::new();
        let mut claims: HashSet<(String, String)> = HashSet::new();
        if file.routes.is_empty() {
            self.report_unplaced(
                "routes",
                "no [[routes]] configured: the gateway would deny every request",
            );
        }
        for (i, r) in file.routes.iter().enumerate() {
            let Some(route) = self.route(i, r, &server, &identity) else {
                continue;
            };
            if !names.insert(route.name.clone()) {
                self.report(
                    &r.name,
                    &format!("routes[{i}].name"),
                    format!("route name {:?} is used twice", route.name),
                );
            }
            for host in &route.hosts {
                if !claims.insert((host.clone(), route.path_prefix.clone())) {
                    self.report(
                        &r.hosts,
                        &format!("routes[{i}].hosts"),
                        format!("host {host:?} with path_prefix {:?} is already claimed by an earlier route", route.path_prefix),
                    );
                }
            }
            routes.push(route);
        }

        Config {
            source: self.file.to_path_buf(),
            server,
            tls,
            metrics,
            identity,
            policy,
            audit,
            webhooks,
            redis,
            attribution,
            telemetry,
            routes,
        }
    }

    fn route(
        &mut self,
        i: usize,
        r: &FileRoute,
        server: &ServerConfig,
        identity: &IdentityConfig,
    ) -> Option<RouteConfig> {
        let key = |field: &str| format!("routes[{i}].{field}");
        let name = r.name.get_ref().clone();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            self.report(
                &r.name,
                &key("name"),
                format!(
                    "{name:?} is not a route name: use lower-case letters, digits, '-' and '_'"
                ),
            );
        }
        if name == crate::policy::GATEWAY_ROUTE {
            self.report(
                &r.name,
                &key("name"),
                "\"gatehouse\" is reserved: policies use it for the gateway's own endpoints",
            );
        }

        let mut hosts = Vec::new();
        if r.hosts.get_ref().is_empty() {
            self.report(
                &r.hosts,
                &key("hosts"),
                "must list at least one host name (or \"*\" for any host)",
            );
        }
        for (j, h) in r.hosts.get_ref().iter().enumerate() {
            if h.get_ref() == "*" {
                hosts.push("*".to_string());
                continue;
            }
            match canonical_config_host(h.get_ref()) {
                Ok(c) => hosts.push(c),
                Err(e) => self.report(
                    h,
                    &key(&format!("hosts[{j}]")),
                    format!(
                        "{:?}: {e} (write the bare host name, without scheme or port)",
                        h.get_ref()
                    ),
                ),
            }
        }

        let path_prefix = match &r.path_prefix {
            None => "/".to_string(),
            Some(p) => {
                let text = p.get_ref();
                if let Err(e) = crate::proxy::path::check_path(text) {
                    self.report(p, &key("path_prefix"), format!("{text:?}: {e}"));
                }
                text.clone()
            }
        };

        let upstream_text = r.upstream.get_ref();
        let upstream_uri: Option<http::Uri> = match upstream_text.parse::<http::Uri>() {
            Ok(u) => Some(u),
            Err(_) => {
                self.report(&r.upstream, &key("upstream"), format!("{upstream_text:?} is not a URL: expected http://host:port or https://host:port"));
                None
            }
        };
        let upstream_uri = upstream_uri?;
        let scheme = match upstream_uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            other => {
                self.report(
                    &r.upstream,
                    &key("upstream"),
                    format!(
                        "scheme {:?} is not supported (allowed: http, https)",
                        other.unwrap_or("")
                    ),
                );
                return None;
            }
        };
        let Some(authority) = upstream_uri.authority().cloned() else {
            self.report(&r.upstream, &key("upstream"), "has no host");
            return None;
        };
        if authority.as_str().contains('@') {
            self.report(
                &r.upstream,
                &key("upstream"),
                "must not carry credentials; the gateway brokers upstream credentials separately",
            );
        }
        if !matches!(upstream_uri.path(), "" | "/") || upstream_uri.query().is_some() {
            self.report(
                &r.upstream,
                &key("upstream"),
                "must not have a path or query: the gateway forwards the request path unchanged",
            );
        }

        let ca_file = r.upstream_ca_file.as_ref().map(|ca| {
            if scheme != Scheme::HTTPS {
                self.report(
                    ca,
                    &key("upstream_ca_file"),
                    "only applies to https:// upstreams",
                );
            }
            self.path(ca.get_ref())
        });
        let protocol = match r.upstream_protocol.as_ref().map(|p| *p.get_ref()) {
            None | Some(FileProtocol::Http1) => UpstreamProtocol::Http1,
            Some(FileProtocol::Http2) => UpstreamProtocol::Http2,
        };

        let websocket_default = r.kind != FileRouteKind::Otlp;
        let websocket = r
            .websocket
            .as_ref()
            .map_or(websocket_default, |w| *w.get_ref());
        if let (Some(w), UpstreamProtocol::Http2) = (&r.websocket, protocol)
            && *w.get_ref()
        {
            self.report(
                w,
                &key("websocket"),
                "WebSocket upgrades need upstream_protocol = \"http1\"",
            );
        }

        let kind = match r.kind {
            FileRouteKind::Gogs => RouteKind::Gogs,
            FileRouteKind::Otlp => RouteKind::Otlp,
            FileRouteKind::Plain => RouteKind::Plain,
        };
        let default_body = if kind == RouteKind::Otlp {
            // The OTLP specification's recommended request limit.
            64 * 1024 * 1024
        } else {
            server.limits.max_body_bytes
        };
        let auth = self.route_auth(i, r, identity);
        let identity_assertion = match r.identity_assertion {
            Some(true) if identity.assertion.is_none() => {
                self.report(
                    &r.name,
                    &key("identity_assertion"),
                    "needs [identity.assertion] with a signing key",
                );
                false
            }
            Some(v) => v,
            None => identity.assertion.is_some() && kind != RouteKind::Otlp && !auth.public,
        };
        let gogs = self.gogs_broker(i, r);
        let otlp = self.otlp_broker(i, r);
        Some(RouteConfig {
            audit: match r.audit {
                None | Some(file::FileAuditRequirement::Required) => AuditRequirement::Required,
                Some(file::FileAuditRequirement::BestEffort) => AuditRequirement::BestEffort,
            },
            auth,
            identity_assertion,
            gogs,
            otlp,
            name,
            kind,
            hosts,
            path_prefix,
            upstream: Upstream {
                scheme,
                authority,
                ca_file,
                protocol,
            },
            preserve_host: r.preserve_host.unwrap_or(false),
            max_body_bytes: self.size(&r.max_body_bytes, &key("max_body_bytes"), default_body),
            websocket,
            timeouts: RouteTimeouts {
                connect: self.duration(
                    &r.timeouts.connect,
                    &key("timeouts.connect"),
                    defaults::CONNECT,
                ),
                response: self.duration(
                    &r.timeouts.response,
                    &key("timeouts.response"),
                    defaults::RESPONSE,
                ),
                body_read: self.duration(
                    &r.timeouts.body_read,
                    &key("timeouts.body_read"),
                    server.timeouts.body_read,
                ),
            },
        })
    }
}

#[cfg(test)]
mod tests;
