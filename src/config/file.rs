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
    pub identity: Option<FileIdentity>,
    pub policy: Option<FilePolicy>,
    pub audit: Option<FileAudit>,
    pub webhooks: Option<FileWebhooks>,
    pub redis: Option<FileRedis>,
    pub attribution: Option<Spanned<FileAttribution>>,
    pub telemetry: Option<super::telemetry::FileTelemetry>,
    #[serde(default)]
    pub routes: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAttribution {
    pub enrich: Option<bool>,
    pub overwrite: Option<bool>,
    #[serde(default)]
    pub services: Vec<FileAttributedService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAttributedService {
    pub service: Spanned<String>,
    pub repository: Spanned<String>,
    pub branch: Option<Spanned<String>>,
    pub environment: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWebhooks {
    pub path: Option<Spanned<String>>,
    pub store: Option<Spanned<String>>,
    pub max_body: Option<Spanned<String>>,
    pub replay_window: Option<Spanned<String>>,
    pub commit_retention: Option<Spanned<String>>,
    pub commit_max: Option<Spanned<i64>>,
    pub max_attempts: Option<Spanned<i64>>,
    pub retry_base: Option<Spanned<String>>,
    pub retry_max: Option<Spanned<String>>,
    #[serde(default)]
    pub sources: Vec<FileWebhookSource>,
    #[serde(default)]
    pub receivers: Vec<FileWebhookReceiver>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWebhookSource {
    pub name: Spanned<String>,
    pub repos: Option<Spanned<Vec<String>>>,
    pub secret_env: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub allow_unsigned: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWebhookReceiver {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    pub events: Option<Spanned<Vec<String>>>,
    pub repos: Option<Spanned<Vec<String>>>,
    pub secret_env: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAudit {
    pub dir: Spanned<String>,
    pub replica: Option<Spanned<String>>,
    pub fsync: Option<Spanned<FileFsync>>,
    pub batch_interval: Option<Spanned<String>>,
    pub batch_records: Option<Spanned<i64>>,
    pub rotate_size: Option<Spanned<String>>,
    pub rotate_interval: Option<Spanned<String>>,
    pub checkpoint_every: Option<Spanned<i64>>,
    pub checkpoint_interval: Option<Spanned<String>>,
    pub signing_key_file: Option<Spanned<String>>,
    pub checkpoint_mirror_dir: Option<Spanned<String>>,
    pub queue: Option<Spanned<i64>>,
    pub enqueue_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFsync {
    Always,
    Batch,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAuditRequirement {
    Required,
    BestEffort,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    pub dir: Spanned<String>,
    pub watch: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdentity {
    pub jwks_refresh: Option<Spanned<String>>,
    pub oidc: Option<FileOidc>,
    pub session: Option<FileSession>,
    #[serde(default)]
    pub jwt: Vec<FileJwtIssuer>,
    pub assertion: Option<FileAssertion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOidc {
    pub issuer: Spanned<String>,
    pub client_id: Spanned<String>,
    pub client_secret_env: Option<Spanned<String>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub scopes: Option<Spanned<Vec<Spanned<String>>>>,
    pub username_claim: Option<Spanned<String>>,
    pub groups_claim: Option<Spanned<String>>,
    pub groups_source: Option<Spanned<FileGroupsSource>>,
    pub ca_file: Option<Spanned<String>>,
    pub cli_client_id: Option<Spanned<String>>,
    #[serde(default)]
    pub allowed_return_origins: Vec<Spanned<String>>,
    pub prompt: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileGroupsSource {
    IdToken,
    Userinfo,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSession {
    pub keys_env: Option<Spanned<String>>,
    pub keys_file: Option<Spanned<String>>,
    pub absolute_lifetime: Option<Spanned<String>>,
    pub idle_lifetime: Option<Spanned<String>>,
    pub refresh_before: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwtIssuer {
    pub issuer: Spanned<String>,
    pub audiences: Spanned<Vec<Spanned<String>>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub jwks_uri: Option<Spanned<String>>,
    pub leeway: Option<Spanned<String>>,
    pub username_claim: Option<Spanned<String>>,
    pub groups_claim: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAssertion {
    pub key_file: Spanned<String>,
    pub lifetime: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAuthMethod {
    Session,
    Bearer,
    Basic,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGogs {
    pub user_header: Option<Spanned<String>>,
    #[serde(default)]
    pub credentials: Vec<FileCredential>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredential {
    pub username: Spanned<String>,
    pub token_env: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    #[serde(default)]
    pub clients: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOtlp {
    pub access_token_env: Option<Spanned<String>>,
    pub access_token_file: Option<Spanned<String>>,
    pub traces_path: Option<Spanned<String>>,
    pub metrics_path: Option<Spanned<String>>,
    pub logs_path: Option<Spanned<String>>,
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
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<String>>,
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
    pub auth: Option<Spanned<Vec<FileAuthMethod>>>,
    pub public: Option<Spanned<bool>>,
    pub identity_assertion: Option<bool>,
    pub gogs: Option<Spanned<FileGogs>>,
    pub otlp: Option<Spanned<FileOtlp>>,
    pub audit: Option<FileAuditRequirement>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedis {
    pub url: Spanned<String>,
    pub username: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}
