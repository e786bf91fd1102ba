//! Static checks of the container stack: `docker-compose.yml`, the files it mounts from
//! `deploy/`, the `Dockerfile` and `.dockerignore`.
//!
//! Docker cannot run where these tests run, so the stack is kept honest by reading it: every
//! port, upstream, mount and secret reference in the compose file is checked against the
//! configuration files it mounts and against what each image documents, and gatehouse's
//! `[identity]` is checked against the Dex it signs people in with (issuer, HTTPS listener and
//! certificate, client, secrets, scopes, claims, token audience).
//!
//! Each `check_*` function returns the problems it finds. The `repository_*` tests require none
//! for the files in this repository; the `catches_*` tests copy the files, inject one fault and
//! require the check to report it, so a check that passes everything cannot go unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gatehouse::config::{Config, RouteKind, SecretRef};
use ipnet::IpNet;
use serde_yaml_ng::Value;

/// Where the gogs/gogs image reads its custom configuration: `/data/gogs` is the image's Gogs
/// "custom" directory (gogs/gogs `docker/README.md`, "Custom directory").
const GOGS_APP_INI: &str = "/data/gogs/conf/app.ini";
/// Where the official haproxy image reads its configuration.
const HAPROXY_CFG: &str = "/usr/local/etc/haproxy/haproxy.cfg";
/// The host port clients use (Gogs's EXTERNAL_URL, Dex's redirect URIs): only the balancer
/// may publish it.
const PUBLIC_PORT: u16 = 8443;
/// The identity header gatehouse sets for Gogs (shared/reference/gogs.md, Authentication).
const GOGS_AUTH_HEADER: &str = "X-WEBAUTH-USER";
/// Files `gatehouse certs dev` writes (src/certs.rs `write`): the CA certificate clients trust
/// and the server pair signed by it.
const DEV_CA_CERT: &str = "ca.crt";
const DEV_SERVER_CERT: &str = "server.crt";
const DEV_SERVER_KEY: &str = "server.key";
/// gatehouse's OIDC redirect path (src/identity/oidc.rs `CALLBACK_PATH`).
const OIDC_CALLBACK_PATH: &str = "/.gatehouse/oidc/callback";
/// Scopes Dex accepts in an authorization request (dexidp/dex server/oauth2.go
/// `parseAuthorizationRequest`), besides `audience:server:client_id:<peer>`.
const DEX_SCOPES: &[&str] = &[
    "openid",
    "offline_access",
    "email",
    "profile",
    "groups",
    "federated:id",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Built from this repository's Dockerfile.
    Gatehouse,
    Gogs,
    Dex,
    Collector,
    Redis,
    /// HAProxy: the TCP balancer in front of the gateway replicas.
    Balancer,
}

/// What an image's documentation says about it.
struct ImageDoc {
    /// Image name without tag or digest.
    repo: &'static str,
    kind: Kind,
    /// Container ports the image documents.
    ports: &'static [u16],
    /// Config file the image reads when the command does not name one.
    default_config: Option<&'static str>,
    /// Where the facts above were read.
    source: &'static str,
}

const IMAGES: &[ImageDoc] = &[
    ImageDoc {
        repo: "gogs/gogs",
        kind: Kind::Gogs,
        ports: &[3000, 22],
        default_config: Some(GOGS_APP_INI),
        source: "gogs/gogs docker/README.md: `-p 10022:22 -p 10880:3000 -v /var/gogs:/data`, HTTP_PORT 3000",
    },
    ImageDoc {
        repo: "ghcr.io/dexidp/dex",
        kind: Kind::Dex,
        ports: &[5554, 5556, 5557, 5558],
        default_config: Some("/etc/dex/config.docker.yaml"),
        source: "dexidp/dex Dockerfile (CMD dex serve /etc/dex/config.docker.yaml), config.yaml.dist (web http 5556, web https 5554, grpc 5557, telemetry 5558)",
    },
    ImageDoc {
        repo: "otel/opentelemetry-collector",
        kind: Kind::Collector,
        ports: &[4317, 4318, 1888, 8888, 8889, 13133, 55679],
        default_config: Some("/etc/otelcol/config.yaml"),
        source: "https://opentelemetry.io/docs/collector/install/docker/",
    },
    ImageDoc {
        repo: "redis",
        kind: Kind::Redis,
        ports: &[6379],
        default_config: None,
        source: "https://hub.docker.com/_/redis (EXPOSE 6379; redis-server with arguments, or a config file path as first argument)",
    },
    ImageDoc {
        repo: "haproxy",
        kind: Kind::Balancer,
        // The image exposes nothing: it listens where its config binds.
        ports: &[],
        default_config: Some(HAPROXY_CFG),
        source: "https://hub.docker.com/_/haproxy (config at /usr/local/etc/haproxy/haproxy.cfg)",
    },
    ImageDoc {
        repo: "otel/opentelemetry-collector-contrib",
        kind: Kind::Collector,
        ports: &[4317, 4318, 1888, 8888, 8889, 13133, 55679],
        default_config: Some("/etc/otelcol-contrib/config.yaml"),
        source: "https://opentelemetry.io/docs/collector/install/docker/",
    },
];

// ---------------------------------------------------------------------------------------
// Loading

/// The stack's files, read from one directory (the repository, or a mutated copy of it).
struct Stack {
    root: PathBuf,
    compose_text: String,
    compose: Value,
}

impl Stack {
    fn load(root: &Path) -> Result<Stack, String> {
        let path = root.join("docker-compose.yml");
        let compose_text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let compose: Value = serde_yaml_ng::from_str(&compose_text)
            .map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
        Ok(Stack {
            root: root.to_path_buf(),
            compose_text,
            compose,
        })
    }

    fn repository() -> Stack {
        Stack::load(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{e}"))
    }

    fn read(&self, rel: &str) -> Result<String, String> {
        let path = self.root.join(rel);
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }

    /// Services in file order.
    fn services(&self) -> Vec<(String, &Value)> {
        self.compose
            .get("services")
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn service(&self, name: &str) -> Option<&Value> {
        self.compose.get("services")?.get(name)
    }

    fn kind(&self, svc: &Value) -> Option<Kind> {
        if svc.get("build").is_some() {
            return Some(Kind::Gatehouse);
        }
        image_doc(svc).map(|d| d.kind)
    }

    /// The one service of a kind, or a problem saying why there is not exactly one.
    fn only(&self, kind: Kind) -> Result<(String, &Value), String> {
        let mut found: Vec<(String, &Value)> = self
            .services()
            .into_iter()
            .filter(|(_, svc)| self.kind(svc) == Some(kind))
            .collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(format!("no {kind:?} service in docker-compose.yml")),
            n => Err(format!(
                "{n} {kind:?} services in docker-compose.yml, expected one"
            )),
        }
    }

    /// The gateway replicas (services built from the Dockerfile), in file order.
    fn gateways(&self) -> Vec<(String, &Value)> {
        self.services()
            .into_iter()
            .filter(|(_, svc)| self.kind(svc) == Some(Kind::Gatehouse))
            .collect()
    }

    /// The first gateway replica: `check_replicas` requires the others to be built, started,
    /// configured and connected the same way, so checking it checks them all.
    fn gateway(&self) -> Result<(String, &Value), String> {
        self.gateways()
            .into_iter()
            .next()
            .ok_or_else(|| "no Gatehouse service in docker-compose.yml".to_string())
    }

    /// The gatehouse config file as TOML, without gatehouse's validation: for sections this
    /// test reads before the gateway's parser knows them (`[redis]`).
    fn gatehouse_toml(&self) -> Result<toml::Table, String> {
        let (name, svc) = self.gateway()?;
        let target = config_arg(&command(svc))
            .ok_or_else(|| format!("service {name:?}: its command passes no --config"))?;
        let path = self.mounted_file(&name, svc, &target)?;
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        text.parse::<toml::Table>()
            .map_err(|e| format!("{} is not valid TOML: {e}", path.display()))
    }

    /// haproxy.cfg of the balancer.
    fn haproxy(&self) -> Result<(String, HaproxyCfg), String> {
        let (name, svc) = self.only(Kind::Balancer)?;
        let path = self.mounted_file(&name, svc, HAPROXY_CFG)?;
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok((name, HaproxyCfg::parse(&text)))
    }

    /// Repository file bind-mounted at `target` in `svc`.
    fn mounted_file(&self, svc_name: &str, svc: &Value, target: &str) -> Result<PathBuf, String> {
        let mount = mounts(svc)
            .into_iter()
            .find(|m| m.target == target)
            .ok_or_else(|| format!("service {svc_name:?} mounts nothing at {target}"))?;
        match repo_relative(&mount.source) {
            Some(rel) => Ok(self.root.join(rel)),
            None => Err(format!(
                "service {svc_name:?} mounts {target} from {:?}, not from a file in the repository",
                mount.source
            )),
        }
    }

    /// The final stage of the Dockerfile the gatehouse service is built from.
    fn dockerfile(&self) -> Result<Dockerfile, String> {
        let (name, svc) = self.gateway()?;
        let (context, file) = build_paths(svc)
            .ok_or_else(|| format!("service {name:?}: `build` names no context"))?;
        let rel = Path::new(&context).join(file);
        let text = self.read(&rel.to_string_lossy())?;
        Ok(Dockerfile::parse(&text))
    }

    /// The gatehouse configuration mounted into the gatehouse service, validated by gatehouse.
    fn gatehouse_config(&self) -> Result<Config, String> {
        let (name, svc) = self.gateway()?;
        let mut args = command(svc);
        if args.is_empty() {
            args = self.dockerfile()?.cmd;
        }
        let target = config_arg(&args).ok_or_else(|| {
            format!("service {name:?}: neither its command nor the Dockerfile CMD passes --config")
        })?;
        let path = self.mounted_file(&name, svc, &target)?;
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::parse(&path, &text)
            .map_err(|e| format!("gatehouse rejects {}:\n{e}", path.display()))
    }

    fn gogs_ini(&self) -> Result<Ini, String> {
        let (name, svc) = self.only(Kind::Gogs)?;
        let path = self.mounted_file(&name, svc, GOGS_APP_INI)?;
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Ini::parse(&text))
    }

    fn yaml_config(&self, name: &str, svc: &Value, target: &str) -> Result<Value, String> {
        let path = self.mounted_file(name, svc, target)?;
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_yaml_ng::from_str(&text)
            .map_err(|e| format!("{} is not valid YAML: {e}", path.display()))
    }

    fn dex_config(&self) -> Result<(String, Value), String> {
        let (name, svc) = self.only(Kind::Dex)?;
        let args = command(svc);
        // `dex serve <config>`; without a command the image serves its own template.
        let target = args
            .iter()
            .rev()
            .find(|a| a.ends_with(".yaml") || a.ends_with(".yml"))
            .cloned()
            .or_else(|| {
                image_doc(svc)
                    .and_then(|d| d.default_config)
                    .map(String::from)
            })
            .ok_or_else(|| format!("service {name:?}: no Dex config path"))?;
        let config = self.yaml_config(&name, svc, &target)?;
        Ok((name, config))
    }

    fn collector_config(&self) -> Result<Value, String> {
        let (name, svc) = self.only(Kind::Collector)?;
        let target = config_arg(&command(svc))
            .or_else(|| {
                image_doc(svc)
                    .and_then(|d| d.default_config)
                    .map(String::from)
            })
            .ok_or_else(|| format!("service {name:?}: no collector config path"))?;
        self.yaml_config(&name, svc, &target)
    }

    /// What a service listens on, read from the configuration it is given.
    fn listeners(&self, name: &str, svc: &Value) -> Result<Vec<Listener>, String> {
        match self.kind(svc) {
            Some(Kind::Gatehouse) => {
                let config = self.gatehouse_config()?;
                let mut out = Vec::new();
                for (what, addrs) in [
                    ("server.listen", &config.server.listen),
                    ("server.plaintext_listen", &config.server.plaintext_listen),
                ] {
                    for a in addrs {
                        out.push(Listener::new(what, &a.ip().to_string(), a.port()));
                    }
                }
                if let Some(m) = &config.metrics {
                    out.push(Listener::new(
                        "metrics.listen",
                        &m.listen.ip().to_string(),
                        m.listen.port(),
                    ));
                }
                Ok(out)
            }
            Some(Kind::Gogs) => {
                let ini = self.gogs_ini()?;
                let addr = ini.get("server", "HTTP_ADDR").unwrap_or("0.0.0.0");
                let port = match ini.get("server", "HTTP_PORT") {
                    None => 3000,
                    Some(p) => p
                        .parse()
                        .map_err(|_| format!("app.ini [server] HTTP_PORT {p:?} is not a port"))?,
                };
                let mut out = vec![Listener::new("app.ini [server] HTTP_PORT", addr, port)];
                if !ini.is_true("server", "DISABLE_SSH") {
                    out.push(Listener::new("the image's sshd", "0.0.0.0", 22));
                }
                Ok(out)
            }
            Some(Kind::Dex) => {
                let (_, config) = self.dex_config()?;
                let mut out = Vec::new();
                for (section, key) in [
                    ("web", "http"),
                    ("web", "https"),
                    ("grpc", "addr"),
                    ("telemetry", "http"),
                ] {
                    if let Some(addr) = config
                        .get(section)
                        .and_then(|s| s.get(key))
                        .and_then(Value::as_str)
                    {
                        let (host, port) = split_host_port(addr).ok_or_else(|| {
                            format!("Dex {section}.{key} {addr:?} is not host:port")
                        })?;
                        out.push(Listener::new(&format!("Dex {section}.{key}"), &host, port));
                    }
                }
                Ok(out)
            }
            Some(Kind::Collector) => {
                let config = self.collector_config()?;
                collector_listeners(&config)
            }
            Some(Kind::Redis) => {
                // redis-server's --port and --bind; 6379 on every interface by default.
                let args = command(svc);
                let arg = |flag: &str| {
                    args.iter()
                        .position(|a| a == flag)
                        .and_then(|i| args.get(i + 1))
                };
                let port = match arg("--port") {
                    None => 6379,
                    Some(p) => p
                        .parse()
                        .map_err(|_| format!("service {name:?}: --port {p:?} is not a port"))?,
                };
                let host = arg("--bind").map(String::as_str).unwrap_or("0.0.0.0");
                Ok(vec![Listener::new("redis-server --port", host, port)])
            }
            Some(Kind::Balancer) => {
                let (_, cfg) = self.haproxy()?;
                Ok(cfg
                    .binds()
                    .into_iter()
                    .map(|(host, port)| Listener::new("haproxy.cfg bind", &host, port))
                    .collect())
            }
            None => Err(format!(
                "service {name:?}: image {:?} is not one tests/compose.rs knows; add what its documentation says to IMAGES",
                svc.get("image").and_then(Value::as_str).unwrap_or("")
            )),
        }
    }

    /// Container ports the image (or, for gatehouse, the Dockerfile's EXPOSE) documents, and
    /// where that was read.
    fn documented_ports(&self, svc: &Value) -> Result<(BTreeSet<u16>, &'static str), String> {
        if self.kind(svc) == Some(Kind::Gatehouse) {
            let ports = self.dockerfile()?.expose.into_iter().collect();
            return Ok((ports, "the Dockerfile's EXPOSE"));
        }
        if self.kind(svc) == Some(Kind::Balancer) {
            let (_, cfg) = self.haproxy()?;
            let ports = cfg.binds().into_iter().map(|(_, p)| p).collect();
            return Ok((ports, "haproxy.cfg bind lines (the image exposes none)"));
        }
        image_doc(svc)
            .map(|d| (d.ports.iter().copied().collect(), d.source))
            .ok_or_else(|| "image unknown to tests/compose.rs".to_string())
    }
}

#[derive(Debug)]
struct Listener {
    what: String,
    host: String,
    port: u16,
}

impl Listener {
    fn new(what: &str, host: &str, port: u16) -> Listener {
        Listener {
            what: what.to_string(),
            host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
            port,
        }
    }

    /// Whether other containers (and published ports) can reach it: not loopback-only.
    fn reachable(&self) -> bool {
        if self.host.is_empty() {
            return true;
        }
        if self.host.eq_ignore_ascii_case("localhost") {
            return false;
        }
        match self.host.parse::<IpAddr>() {
            Ok(ip) => !ip.is_loopback(),
            Err(_) => true,
        }
    }
}

fn collector_listeners(config: &Value) -> Result<Vec<Listener>, String> {
    let receivers = config
        .get("receivers")
        .and_then(Value::as_mapping)
        .ok_or("collector config has no receivers")?;
    let mut out = Vec::new();
    for (rname, rdef) in receivers {
        let rname = rname.as_str().unwrap_or("?");
        let mut endpoints = Vec::new();
        if let Some(protocols) = rdef.get("protocols").and_then(Value::as_mapping) {
            for (pname, pdef) in protocols {
                let pname = pname.as_str().unwrap_or("?");
                match pdef.get("endpoint").and_then(Value::as_str) {
                    Some(e) => {
                        endpoints.push((format!("receivers.{rname}.protocols.{pname}.endpoint"), e))
                    }
                    None => {
                        return Err(format!(
                            "collector receivers.{rname}.protocols.{pname} sets no endpoint: since v0.104.0 it then listens on localhost, out of reach of other containers"
                        ));
                    }
                }
            }
        } else if let Some(e) = rdef.get("endpoint").and_then(Value::as_str) {
            endpoints.push((format!("receivers.{rname}.endpoint"), e));
        }
        for (what, e) in endpoints {
            let (host, port) = split_host_port(e)
                .ok_or_else(|| format!("collector {what} {e:?} is not host:port"))?;
            out.push(Listener::new(&what, &host, port));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Compose helpers

fn image_doc(svc: &Value) -> Option<&'static ImageDoc> {
    let repo = image_repo(svc.get("image")?.as_str()?);
    IMAGES.iter().find(|d| d.repo == repo)
}

/// `registry/name:tag@digest` without tag and digest.
fn image_repo(image: &str) -> String {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => image[..i].to_string(),
        _ => image.to_string(),
    }
}

/// `build` as (context, dockerfile).
fn build_paths(svc: &Value) -> Option<(String, String)> {
    match svc.get("build")? {
        Value::String(context) => Some((context.clone(), "Dockerfile".to_string())),
        b @ Value::Mapping(_) => Some((
            b.get("context")?.as_str()?.to_string(),
            b.get("dockerfile")
                .and_then(Value::as_str)
                .unwrap_or("Dockerfile")
                .to_string(),
        )),
        _ => None,
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn command(svc: &Value) -> Vec<String> {
    match svc.get("command") {
        Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        _ => Vec::new(),
    }
}

/// The value of `--config X` or `--config=X`.
fn config_arg(args: &[String]) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == "--config" || a == "-c" {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(String::from)
        }
    })
}

struct Mount {
    source: String,
    target: String,
    bind: bool,
    read_only: bool,
}

fn mounts(svc: &Value) -> Vec<Mount> {
    let Some(items) = svc.get("volumes").and_then(Value::as_sequence) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::String(s) => {
                let mut parts = s.split(':');
                let source = parts.next()?.to_string();
                let target = parts.next()?.to_string();
                let read_only = parts
                    .next()
                    .is_some_and(|m| m.split(',').any(|o| o == "ro"));
                let bind =
                    source.starts_with('.') || source.starts_with('/') || source.starts_with('~');
                Some(Mount {
                    source,
                    target,
                    bind,
                    read_only,
                })
            }
            Value::Mapping(_) => Some(Mount {
                source: item
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                target: item.get("target")?.as_str()?.to_string(),
                bind: item.get("type").and_then(Value::as_str) == Some("bind"),
                read_only: item.get("read_only").and_then(Value::as_bool) == Some(true),
            }),
            _ => None,
        })
        .collect()
}

/// The repository file behind `path` inside a container: the bind mount whose target holds
/// it (the deepest one), and the repository-relative path. `None` when no mount from the
/// repository holds it.
fn repo_path_in(svc: &Value, path: &Path) -> Option<(Mount, PathBuf)> {
    let mut best: Option<(Mount, PathBuf)> = None;
    for m in mounts(svc) {
        let Ok(rest) = path.strip_prefix(m.target.trim_end_matches('/')) else {
            continue;
        };
        let Some(base) = repo_relative(&m.source) else {
            continue;
        };
        let deeper = best
            .as_ref()
            .is_none_or(|(b, _)| b.target.len() < m.target.len());
        if deeper {
            let rel = if rest.as_os_str().is_empty() {
                base
            } else {
                base.join(rest)
            };
            best = Some((m, rel));
        }
    }
    best
}

/// `./x/y` (or `.`) as a repository-relative path; `None` for anything else.
fn repo_relative(source: &str) -> Option<PathBuf> {
    if source == "." {
        return Some(PathBuf::from("."));
    }
    source
        .strip_prefix("./")
        .map(|rest| PathBuf::from(rest.trim_end_matches('/')))
}

/// One `ports` entry: its text and its container port.
fn published(svc: &Value) -> Result<Vec<(String, u16, Option<u16>)>, String> {
    let Some(items) = svc.get("ports") else {
        return Ok(Vec::new());
    };
    let items = items.as_sequence().ok_or("`ports` is not a list")?;
    let mut out = Vec::new();
    for item in items {
        match item {
            Value::Mapping(_) => {
                let target = item
                    .get("target")
                    .and_then(scalar)
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| format!("port entry {item:?} has no numeric target"))?;
                let host = item
                    .get("published")
                    .and_then(scalar)
                    .and_then(|p| p.parse().ok());
                out.push((format!("{item:?}"), target, host));
            }
            other => {
                let text =
                    scalar(other).ok_or_else(|| format!("port entry {other:?} is not text"))?;
                let spec = text.split('/').next().unwrap_or(&text);
                // [HOST_IP:][HOST_PORT:]CONTAINER_PORT; an IPv6 HOST_IP is bracketed.
                let (front, container) = match spec.rfind(':') {
                    Some(i) => (Some(&spec[..i]), &spec[i + 1..]),
                    None => (None, spec),
                };
                let container = container.parse().map_err(|_| {
                    format!(
                        "port entry {text:?}: container port {container:?} is not a single port"
                    )
                })?;
                let host = front
                    .and_then(|f| f.rsplit(':').next())
                    .and_then(|p| p.parse().ok());
                out.push((text.clone(), container, host));
            }
        }
    }
    Ok(out)
}

fn exposed(svc: &Value) -> Result<Vec<u16>, String> {
    let Some(items) = svc.get("expose") else {
        return Ok(Vec::new());
    };
    items
        .as_sequence()
        .ok_or("`expose` is not a list")?
        .iter()
        .map(|v| {
            scalar(v)
                .and_then(|s| s.split('/').next().and_then(|p| p.parse().ok()))
                .ok_or_else(|| format!("expose entry {v:?} is not a port"))
        })
        .collect()
}

/// `KEY -> Some(value)` (or `None` for a bare `KEY` passed through from the shell).
fn environment(svc: &Value) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    match svc.get("environment") {
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                if let Some(k) = k.as_str() {
                    out.insert(k.to_string(), scalar(v));
                }
            }
        }
        Some(Value::Sequence(items)) => {
            for item in items.iter().filter_map(Value::as_str) {
                match item.split_once('=') {
                    Some((k, v)) => out.insert(k.to_string(), Some(v.to_string())),
                    None => out.insert(item.to_string(), None),
                };
            }
        }
        _ => {}
    }
    out
}

fn depends_on(svc: &Value) -> Vec<String> {
    match svc.get("depends_on") {
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        Some(Value::Mapping(m)) => m.keys().filter_map(scalar).collect(),
        _ => Vec::new(),
    }
}

/// Fixed IPv4/IPv6 addresses a service is given on its networks.
fn fixed_addresses(svc: &Value) -> Vec<IpAddr> {
    let Some(networks) = svc.get("networks").and_then(Value::as_mapping) else {
        return Vec::new();
    };
    networks
        .values()
        .flat_map(|n| ["ipv4_address", "ipv6_address"].map(|k| n.get(k).and_then(Value::as_str)))
        .flatten()
        .filter_map(|a| a.parse().ok())
        .collect()
}

fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// `${NAME}`, `${NAME:?message}`, `${NAME?message}`, `${NAME:-}` or `${NAME-}`: a value taken
/// from the environment with no literal fallback. Returns NAME.
fn env_reference(value: &str) -> Option<&str> {
    let inner = value.strip_prefix("${")?.strip_suffix('}')?;
    let end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(end);
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = rest.is_empty()
        || rest.starts_with(":?")
        || rest.starts_with('?')
        || rest == ":-"
        || rest == "-";
    (name_ok && rest_ok).then_some(name)
}

/// Whether an [`env_reference`] makes compose refuse to start when the variable is unset or
/// empty (`${NAME:?message}`); `${NAME?message}` still lets an empty value through.
fn env_reference_required(value: &str) -> bool {
    env_reference(value).is_some_and(|name| value[2 + name.len()..].starts_with(":?"))
}

fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    ["SECRET", "TOKEN", "PASSWORD", "KEY"]
        .iter()
        .any(|w| key.contains(w))
}

/// Host and port of an absolute http(s) URL.
fn url_host_port(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let default = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, default),
    };
    Some((scheme.to_string(), host.to_ascii_lowercase(), port))
}

// ---------------------------------------------------------------------------------------
// app.ini and Dockerfile

/// Gogs' app.ini as go-ini reads it with inline comments off: `[section]`, `KEY = VALUE`,
/// whole-line `;` or `#` comments.
struct Ini {
    values: BTreeMap<(String, String), String>,
    sections: BTreeSet<String>,
}

impl Ini {
    fn parse(text: &str) -> Ini {
        let mut values = BTreeMap::new();
        let mut sections = BTreeSet::new();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_string();
                sections.insert(section.clone());
            } else if let Some((k, v)) = line.split_once('=') {
                values.insert(
                    (section.clone(), k.trim().to_string()),
                    v.trim().to_string(),
                );
            }
        }
        Ini { values, sections }
    }

    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.values
            .get(&(section.to_string(), key.to_string()))
            .map(String::as_str)
    }

    fn is_true(&self, section: &str, key: &str) -> bool {
        self.get(section, key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// The parts of a Dockerfile the checks need, for its final stage.
#[derive(Default)]
struct Dockerfile {
    /// Every stage's base image, in order.
    froms: Vec<String>,
    /// USER instructions of the final stage.
    users: Vec<String>,
    expose: Vec<u16>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    /// Sources of COPY/ADD instructions (all stages) that read the build context.
    context_sources: Vec<String>,
}

impl Dockerfile {
    fn parse(text: &str) -> Dockerfile {
        // Join continuation lines; comment lines vanish, also inside continuations.
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    instructions.push(std::mem::take(&mut current));
                }
            }
        }
        if !current.trim().is_empty() {
            instructions.push(current);
        }

        let mut d = Dockerfile::default();
        for ins in instructions {
            let (word, args) = ins.split_once(char::is_whitespace).unwrap_or((&ins, ""));
            let args = args.trim();
            match word.to_ascii_uppercase().as_str() {
                "FROM" => {
                    d.froms
                        .push(args.split_whitespace().next().unwrap_or("").to_string());
                    d.users.clear();
                    d.expose.clear();
                    d.entrypoint.clear();
                    d.cmd.clear();
                }
                "USER" => d.users.push(args.to_string()),
                "EXPOSE" => d.expose.extend(
                    args.split_whitespace()
                        .filter_map(|p| p.split('/').next()?.parse::<u16>().ok()),
                ),
                "ENTRYPOINT" => d.entrypoint = exec_form(args),
                "CMD" => d.cmd = exec_form(args),
                "COPY" | "ADD" => {
                    let words: Vec<&str> = args
                        .split_whitespace()
                        .filter(|w| !w.starts_with("--"))
                        .collect();
                    let from_stage = args.split_whitespace().any(|w| w.starts_with("--from="));
                    if !from_stage && words.len() >= 2 {
                        d.context_sources
                            .extend(words[..words.len() - 1].iter().map(|s| s.to_string()));
                    }
                }
                _ => {}
            }
        }
        d
    }
}

/// haproxy.cfg: each section header (`global`, `defaults`, `frontend NAME`, `backend NAME`,
/// `listen NAME`) and its keyword lines, comments removed.
struct HaproxyCfg {
    sections: Vec<(String, Vec<Vec<String>>)>,
}

impl HaproxyCfg {
    fn parse(text: &str) -> HaproxyCfg {
        let mut sections: Vec<(String, Vec<Vec<String>>)> = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let words: Vec<String> = line.split_whitespace().map(String::from).collect();
            let Some(first) = words.first() else {
                continue;
            };
            let header = !line.starts_with(char::is_whitespace)
                && ["global", "defaults", "frontend", "backend", "listen"]
                    .contains(&first.as_str());
            if header {
                sections.push((words.join(" "), Vec::new()));
            } else if let Some((_, lines)) = sections.last_mut() {
                lines.push(words);
            }
        }
        HaproxyCfg { sections }
    }

    /// Lines starting with `keyword`, with the section they are in.
    fn lines(&self, keyword: &str) -> Vec<(&str, &[String])> {
        self.sections
            .iter()
            .flat_map(|(name, lines)| {
                lines
                    .iter()
                    .filter(move |w| w[0] == keyword)
                    .map(move |w| (name.as_str(), &w[1..]))
            })
            .collect()
    }

    /// `bind [ADDR]:PORT ...` as (address, port).
    fn binds(&self) -> Vec<(String, u16)> {
        self.lines("bind")
            .into_iter()
            .filter_map(|(_, w)| split_host_port(w.first()?))
            .collect()
    }

    /// `server NAME HOST:PORT ...` as (host, port).
    fn servers(&self) -> Vec<(String, u16)> {
        self.lines("server")
            .into_iter()
            .filter_map(|(_, w)| split_host_port(w.get(1)?))
            .collect()
    }
}

/// `["a", "b"]` (exec form) or shell form split on whitespace.
fn exec_form(args: &str) -> Vec<String> {
    if args.starts_with('[') {
        serde_yaml_ng::from_str(args).unwrap_or_default()
    } else {
        args.split_whitespace().map(String::from).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Checks

/// Services exist, each is explained by a comment and has an image or a build, the roles the
/// stack needs are each filled once.
fn check_services(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let services = stack.services();
    if services.is_empty() {
        problems.push("docker-compose.yml has no `services` mapping with entries".to_string());
    }
    let lines: Vec<&str> = stack.compose_text.lines().collect();
    for (name, svc) in &services {
        let image = svc
            .get("image")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty());
        let build = build_paths(svc);
        if image.is_none() && build.is_none() {
            problems.push(format!("service {name:?} has neither `image` nor `build`"));
        }
        if let Some((context, file)) = build {
            let dir = stack.root.join(&context);
            if !dir.is_dir() {
                problems.push(format!(
                    "service {name:?}: build context {context:?} is not a directory"
                ));
            } else if !dir.join(&file).is_file() {
                problems.push(format!(
                    "service {name:?}: build file {file:?} not found in {context:?}"
                ));
            }
        }
        // The line before `  name:` (skipping blank lines) must be a comment.
        let header = format!("  {name}:");
        match lines.iter().position(|l| l.trim_end() == header) {
            None => problems.push(format!("service {name:?}: no `{header}` line found")),
            Some(i) => {
                let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
                if !before.is_some_and(|l| l.trim_start().starts_with('#')) {
                    problems.push(format!(
                        "service {name:?} has no comment above it explaining its role"
                    ));
                }
            }
        }
    }
    for kind in [
        Kind::Gogs,
        Kind::Dex,
        Kind::Collector,
        Kind::Redis,
        Kind::Balancer,
    ] {
        if let Err(e) = stack.only(kind) {
            problems.push(e);
        }
    }
    let replicas = stack.gateways().len();
    if replicas < 2 {
        problems.push(format!(
            "{replicas} gatehouse service(s) in docker-compose.yml, expected at least two replicas"
        ));
    }
    problems
}

fn check_depends_on(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, svc) in stack.services() {
        for dep in depends_on(svc) {
            if dep == name {
                problems.push(format!("service {name:?} depends on itself"));
            } else if stack.service(&dep).is_none() {
                problems.push(format!(
                    "service {name:?} depends_on {dep:?}, which is not a service in docker-compose.yml"
                ));
            }
        }
    }
    problems
}

/// Published and exposed container ports are ports the service listens on (reachably) and
/// that its image documents; gatehouse publishes exactly its listen and metrics ports.
fn check_ports(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, svc) in stack.services() {
        let listeners = match stack.listeners(&name, svc) {
            Ok(l) => l,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let (documented, source) = match stack.documented_ports(svc) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("service {name:?}: {e}"));
                continue;
            }
        };
        let mut ports: Vec<(String, u16)> = Vec::new();
        match published(svc) {
            Ok(p) => ports.extend(
                p.into_iter()
                    .map(|(text, c, _)| (format!("ports {text:?}"), c)),
            ),
            Err(e) => problems.push(format!("service {name:?}: {e}")),
        }
        match exposed(svc) {
            Ok(p) => ports.extend(p.into_iter().map(|c| (format!("expose {c}"), c))),
            Err(e) => problems.push(format!("service {name:?}: {e}")),
        }
        for (entry, port) in &ports {
            match listeners.iter().find(|l| l.port == *port) {
                None => problems.push(format!(
                    "service {name:?}: {entry} targets container port {port}, but the service listens on {:?}",
                    listeners.iter().map(|l| format!("{} ({}:{})", l.what, l.host, l.port)).collect::<Vec<_>>()
                )),
                Some(l) if !l.reachable() => problems.push(format!(
                    "service {name:?}: {entry} targets port {port}, but {} binds {} only",
                    l.what, l.host
                )),
                Some(_) => {}
            }
            if !documented.contains(port) {
                problems.push(format!(
                    "service {name:?}: {entry} targets port {port}, which its image does not document ({documented:?} per {source})"
                ));
            }
        }
        // A replica publishes its metrics and nothing else: clients reach its TLS listener
        // through the balancer only.
        if stack.kind(svc) == Some(Kind::Gatehouse) {
            let want: BTreeSet<u16> = listeners
                .iter()
                .filter(|l| l.what == "metrics.listen")
                .map(|l| l.port)
                .collect();
            let got: BTreeSet<u16> = published(svc)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, c, _)| c)
                .collect();
            if want != got {
                problems.push(format!(
                    "service {name:?} publishes container ports {got:?}, but its config listens for metrics on {want:?} (metrics.listen; its TLS listener is reached through the balancer)"
                ));
            }
        }
        // Only the balancer publishes the public port.
        if stack.kind(svc) != Some(Kind::Balancer) {
            for (text, _, host) in published(svc).unwrap_or_default() {
                if host == Some(PUBLIC_PORT) {
                    problems.push(format!(
                        "service {name:?} publishes {text:?}: only the balancer may publish {PUBLIC_PORT}"
                    ));
                }
            }
        }
    }
    problems
}

/// Every gatehouse route reaches a compose service, on a port that service listens on and its
/// image documents, of the kind the route expects.
fn check_routes(stack: &Stack) -> Vec<String> {
    let config = match stack.gatehouse_config() {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let gatehouse_deps = stack
        .gateway()
        .map(|(_, svc)| depends_on(svc))
        .unwrap_or_default();
    for kind in [RouteKind::Gogs, RouteKind::Otlp] {
        if !config.routes.iter().any(|r| r.kind == kind) {
            problems.push(format!("gatehouse config has no {} route", kind.as_str()));
        }
    }
    for route in &config.routes {
        let up = &route.upstream;
        let host = up.authority.host();
        let port = up
            .authority
            .port_u16()
            .unwrap_or(if up.scheme == http::uri::Scheme::HTTPS {
                443
            } else {
                80
            });
        let Some(svc) = stack.service(host) else {
            problems.push(format!(
                "route {:?}: upstream host {host:?} is not a compose service ({:?})",
                route.name,
                stack
                    .services()
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect::<Vec<_>>()
            ));
            continue;
        };
        let expected = match route.kind {
            RouteKind::Gogs => Some(Kind::Gogs),
            RouteKind::Otlp => Some(Kind::Collector),
            RouteKind::Plain => None,
        };
        if let Some(want) = expected
            && stack.kind(svc) != Some(want)
        {
            problems.push(format!(
                "route {:?} ({}) points at service {host:?}, which is not a {want:?} service",
                route.name,
                route.kind.as_str(),
            ));
        }
        match stack.listeners(host, svc) {
            Ok(listeners) => match listeners.iter().find(|l| l.port == port) {
                None => problems.push(format!(
                    "route {:?}: upstream port {port} is not one service {host:?} listens on ({:?})",
                    route.name,
                    listeners.iter().map(|l| l.port).collect::<Vec<_>>()
                )),
                Some(l) if !l.reachable() => problems.push(format!(
                    "route {:?}: service {host:?} listens on {port} at {} only, out of gatehouse's reach",
                    route.name, l.host
                )),
                Some(_) => {}
            },
            Err(e) => problems.push(e),
        }
        match stack.documented_ports(svc) {
            Ok((doc, source)) if !doc.contains(&port) => problems.push(format!(
                "route {:?}: upstream port {port} is not a port the {host:?} image documents ({doc:?} per {source})",
                route.name
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("route {:?}: {e}", route.name)),
        }
        if !gatehouse_deps.iter().any(|d| d == host) {
            problems.push(format!(
                "route {:?}: gatehouse does not depend_on its upstream service {host:?}",
                route.name
            ));
        }
    }
    problems
}

/// Gogs believes X-WEBAUTH-USER from gatehouse alone, is not published, keeps /data in a
/// volume and advertises the gateway's URL.
fn check_gogs(stack: &Stack) -> Vec<String> {
    let (name, svc) = match stack.only(Kind::Gogs) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    match published(svc) {
        Ok(p) if !p.is_empty() => problems.push(format!(
            "service {name:?} publishes {:?} to the host: only gatehouse may reach Gogs",
            p.iter().map(|(t, _, _)| t.clone()).collect::<Vec<_>>()
        )),
        Ok(_) => {}
        Err(e) => problems.push(e),
    }
    if !mounts(svc)
        .iter()
        .any(|m| m.target == "/data" || m.target == "/data/")
    {
        problems.push(format!(
            "service {name:?} keeps /data in no volume: repositories would be lost"
        ));
    }
    let ini = match stack.gogs_ini() {
        Ok(i) => i,
        Err(e) => {
            problems.push(e);
            return problems;
        }
    };
    for key in [
        "ENABLE_REVERSE_PROXY_AUTHENTICATION",
        "ENABLE_REVERSE_PROXY_AUTO_REGISTRATION",
    ] {
        if !ini.is_true("auth", key) {
            problems.push(format!(
                "app.ini [auth] {key} is not true (got {:?})",
                ini.get("auth", key)
            ));
        }
    }
    match ini.get("auth", "REVERSE_PROXY_AUTHENTICATION_HEADER") {
        Some(h) if h.eq_ignore_ascii_case(GOGS_AUTH_HEADER) => {}
        other => problems.push(format!(
            "app.ini [auth] REVERSE_PROXY_AUTHENTICATION_HEADER is {other:?}, expected {GOGS_AUTH_HEADER:?}"
        )),
    }
    if ini.sections.contains("service") {
        problems
            .push("app.ini has a [service] section: Gogs 0.14 ignores it, use [auth]".to_string());
    }

    // TRUSTED_PROXY_IPS names gatehouse's fixed address and nothing as wide as "anyone".
    let trusted: Vec<Result<IpNet, String>> = ini
        .get("auth", "TRUSTED_PROXY_IPS")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!(
                        "app.ini [auth] TRUSTED_PROXY_IPS entry {s:?} is not an address or CIDR"
                    )
                })
        })
        .collect();
    let trusted: Vec<IpNet> = trusted
        .into_iter()
        .filter_map(|t| t.map_err(|e| problems.push(e)).ok())
        .collect();
    if trusted.is_empty() {
        problems.push(
            "app.ini [auth] TRUSTED_PROXY_IPS is empty: Gogs would not trust gatehouse".to_string(),
        );
    }
    if let Some(wide) = trusted.iter().find(|n| n.prefix_len() == 0) {
        problems.push(format!(
            "app.ini [auth] TRUSTED_PROXY_IPS trusts {wide}: everyone could name a user"
        ));
    }
    // Every replica's address, since any of them may serve a request.
    let gateways = stack.gateways();
    if gateways.is_empty() {
        problems.push("no Gatehouse service in docker-compose.yml".to_string());
    }
    for (gname, gsvc) in gateways {
        let addrs = fixed_addresses(gsvc);
        if addrs.is_empty() {
            problems.push(format!(
                "service {gname:?} has no fixed ipv4_address, so TRUSTED_PROXY_IPS cannot name it"
            ));
        }
        for a in addrs {
            if !trusted.iter().any(|n| n.contains(&a)) {
                problems.push(format!(
                    "app.ini [auth] TRUSTED_PROXY_IPS {trusted:?} does not include {gname}'s address {a}"
                ));
            }
        }
    }
    // Nobody else with a fixed address (the balancer passes TLS through and sends no header).
    for (name, svc) in stack.services() {
        if stack.kind(svc) == Some(Kind::Gatehouse) {
            continue;
        }
        for a in fixed_addresses(svc) {
            if trusted.iter().any(|n| n.contains(&a)) {
                problems.push(format!(
                    "app.ini [auth] TRUSTED_PROXY_IPS trusts {a}, the address of {name:?}, which is not a gateway"
                ));
            }
        }
    }

    // The URL Gogs puts in links and clone URLs is the gateway's.
    let url = ini
        .get("server", "EXTERNAL_URL")
        .or_else(|| ini.get("server", "ROOT_URL"));
    let Some(url) = url else {
        problems.push("app.ini [server] sets neither EXTERNAL_URL nor ROOT_URL".to_string());
        return problems;
    };
    let Some((scheme, host, port)) = url_host_port(url) else {
        problems.push(format!(
            "app.ini [server] EXTERNAL_URL {url:?} is not an http(s) URL"
        ));
        return problems;
    };
    if scheme != "https" {
        problems.push(format!(
            "app.ini [server] EXTERNAL_URL {url:?} is not https: the gateway serves TLS"
        ));
    }
    let config = match stack.gatehouse_config() {
        Ok(c) => c,
        Err(e) => {
            problems.push(e);
            return problems;
        }
    };
    // The header gatehouse names people in is the one Gogs reads.
    let ini_header = ini
        .get("auth", "REVERSE_PROXY_AUTHENTICATION_HEADER")
        .unwrap_or("");
    for route in config.routes.iter().filter(|r| r.kind == RouteKind::Gogs) {
        match &route.gogs {
            Some(g) if g.user_header.as_str().eq_ignore_ascii_case(ini_header) => {}
            Some(g) => problems.push(format!(
                "gogs route {:?} sends the username in {:?}, but app.ini [auth] REVERSE_PROXY_AUTHENTICATION_HEADER is {ini_header:?}",
                route.name,
                g.user_header.as_str()
            )),
            None => problems.push(format!(
                "gogs route {:?} has no [routes.gogs] settings",
                route.name
            )),
        }
    }
    if !config
        .routes
        .iter()
        .any(|r| r.kind == RouteKind::Gogs && r.hosts.contains(&host))
    {
        problems.push(format!(
            "app.ini EXTERNAL_URL host {host:?} is not a host of gatehouse's gogs route"
        ));
    }
    let host_ports = gatehouse_tls_host_ports(stack, &config);
    if !host_ports.contains(&port) {
        problems.push(format!(
            "app.ini EXTERNAL_URL port {port} is not a host port the balancer publishes in front of gatehouse's TLS listener ({host_ports:?})"
        ));
    }
    problems
}

/// Files mounted from the repository exist (certs/ is generated); named volumes are declared.
fn check_mounts(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let declared: BTreeSet<String> = stack
        .compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(scalar).collect())
        .unwrap_or_default();
    for (name, svc) in stack.services() {
        for m in mounts(svc) {
            if let Some(rel) = repo_relative(&m.source) {
                if rel.starts_with("certs") {
                    continue; // written by `gatehouse certs dev`, never committed
                }
                if !stack.root.join(&rel).exists() {
                    problems.push(format!(
                        "service {name:?} mounts {:?} at {}, but {} does not exist in the repository",
                        m.source,
                        m.target,
                        rel.display()
                    ));
                }
            } else if m.bind {
                problems.push(format!(
                    "service {name:?} mounts {:?} from outside the repository",
                    m.source
                ));
            } else if !declared.contains(&m.source) {
                problems.push(format!(
                    "service {name:?} uses volume {:?}, which the top-level `volumes` does not declare",
                    m.source
                ));
            }
        }
    }
    problems
}

/// The variables deploy/.env.example lists (`NAME=...` lines outside comments).
fn documented_variables(stack: &Stack) -> Result<BTreeSet<String>, String> {
    Ok(stack
        .read("deploy/.env.example")?
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect())
}

/// Secret-looking environment values are references to the environment (documented in
/// deploy/.env.example), never literals; Dex takes its client secret from the environment.
fn check_secrets(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let documented = match documented_variables(stack) {
        Ok(d) => d,
        Err(e) => {
            problems.push(e);
            BTreeSet::new()
        }
    };
    for (name, svc) in stack.services() {
        for (key, value) in environment(svc) {
            if !looks_secret(&key) {
                continue;
            }
            let Some(value) = value else {
                continue; // passed through from the shell, no value in the file
            };
            match env_reference(&value) {
                None => problems.push(format!(
                    "service {name:?}: environment {key} = {value:?} looks like a literal secret; use ${{VAR}} from .env"
                )),
                Some(var) if !documented.contains(var) => problems.push(format!(
                    "service {name:?}: environment {key} reads ${{{var}}}, which deploy/.env.example does not document"
                )),
                Some(_) => {}
            }
        }
    }
    problems
}

/// Dex: a static client whose secret comes from the environment, users in groups, an issuer
/// on the port Dex serves.
fn check_oidc(stack: &Stack) -> Vec<String> {
    let (name, config) = match stack.dex_config() {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let env = stack.service(&name).map(environment).unwrap_or_default();
    let clients = config.get("staticClients").and_then(Value::as_sequence);
    if clients.is_none_or(|c| c.is_empty()) {
        problems.push("Dex config has no staticClients".to_string());
    }
    for client in clients.into_iter().flatten() {
        let id = client.get("id").and_then(Value::as_str).unwrap_or("?");
        if client.get("secret").is_some() {
            problems.push(format!(
                "Dex client {id:?} has a literal `secret`; use secretEnv"
            ));
        }
        match client.get("secretEnv").and_then(Value::as_str) {
            None => problems.push(format!("Dex client {id:?} has no secretEnv")),
            Some(var) if !env.contains_key(var) => problems.push(format!(
                "Dex client {id:?} reads its secret from ${var}, which service {name:?} does not set"
            )),
            Some(_) => {}
        }
    }
    let users = config.get("staticPasswords").and_then(Value::as_sequence);
    let grouped = users
        .into_iter()
        .flatten()
        .filter(|u| {
            u.get("groups")
                .and_then(Value::as_sequence)
                .is_some_and(|g| !g.is_empty())
        })
        .count();
    if grouped == 0 {
        problems.push("Dex config has no staticPasswords user with groups".to_string());
    }
    let issuer = config.get("issuer").and_then(Value::as_str).unwrap_or("");
    match url_host_port(issuer) {
        None => problems.push(format!("Dex issuer {issuer:?} is not an http(s) URL")),
        Some((scheme, host, port)) => {
            if scheme != "https" {
                problems.push(format!(
                    "Dex issuer {issuer:?} is not https: gatehouse accepts only https issuers"
                ));
            }
            if stack.service(&host).is_none() {
                problems.push(format!(
                    "Dex issuer host {host:?} is not a compose service: gatehouse could not reach it"
                ));
            }
            // The issuer's scheme picks the listener: web.https or web.http.
            let web_port = dex_web_port(&config, &scheme);
            if Some(port) != web_port {
                problems.push(format!(
                    "Dex issuer port {port} is not web.{scheme}'s port {web_port:?}"
                ));
            }
            // Browsers follow the issuer URL from the host: the same port must be published
            // onto that listener.
            let published_here = stack
                .service(&name)
                .and_then(|svc| published(svc).ok())
                .unwrap_or_default()
                .into_iter()
                .any(|(_, c, h)| Some(c) == web_port && h == Some(port));
            if !published_here {
                problems.push(format!(
                    "Dex issuer port {port} is not published by service {name:?} onto web.{scheme} (browsers sign in at the issuer URL)"
                ));
            }
        }
    }
    problems
}

/// The port of Dex's `web.http` or `web.https` listener.
fn dex_web_port(config: &Value, scheme: &str) -> Option<u16> {
    config
        .get("web")
        .and_then(|w| w.get(scheme))
        .and_then(Value::as_str)
        .and_then(split_host_port)
        .map(|(_, p)| p)
}

/// The repository path of a file named in Dex's `web` section, through the dex service's
/// mounts.
fn dex_web_file(stack: &Stack, key: &str) -> Option<(Mount, PathBuf)> {
    let (name, config) = stack.dex_config().ok()?;
    let path = config.get("web")?.get(key)?.as_str()?;
    repo_path_in(stack.service(&name)?, Path::new(path))
}

/// Dex serves HTTPS with the development pair `gatehouse certs dev` writes, from a read-only
/// mount of the directory gatehouse's own certificate comes from, and every documented
/// `certs dev` command adds the issuer's host name to that certificate.
fn check_dex_tls(stack: &Stack) -> Vec<String> {
    let (name, config) = match stack.dex_config() {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let web = config.get("web");
    if web.and_then(|w| w.get("https")).is_none() {
        problems.push(
            "Dex web.https is not set: Dex serves no HTTPS, and gatehouse accepts only https issuers"
                .to_string(),
        );
        return problems;
    }
    let gatehouse_certs = stack.gatehouse_config().ok().and_then(|c| {
        let tls = c.tls?;
        let (_, svc) = stack.gateway().ok()?;
        let (_, rel) = repo_path_in(svc, &tls.cert_file)?;
        rel.parent().map(Path::to_path_buf)
    });
    for (key, file) in [("tlsCert", DEV_SERVER_CERT), ("tlsKey", DEV_SERVER_KEY)] {
        let Some(path) = web.and_then(|w| w.get(key)).and_then(Value::as_str) else {
            problems.push(format!("Dex web.https is set without web.{key}"));
            continue;
        };
        let Some((mount, rel)) = dex_web_file(stack, key) else {
            problems.push(format!(
                "Dex web.{key} {path:?} is in no mount of service {name:?} from the repository"
            ));
            continue;
        };
        if !mount.read_only {
            problems.push(format!(
                "service {name:?} mounts {:?} at {} writable: mount certificates and keys read-only (:ro)",
                mount.source, mount.target
            ));
        }
        if rel.file_name() != Some(file.as_ref()) {
            problems.push(format!(
                "Dex web.{key} is {}, but `gatehouse certs dev` writes {file}",
                rel.display()
            ));
        }
        let dir = rel.parent().unwrap_or(Path::new(""));
        if gatehouse_certs.as_deref().is_some_and(|g| g != dir) {
            problems.push(format!(
                "Dex web.{key} comes from {}, not from {} where gatehouse's certificate is generated",
                dir.display(),
                gatehouse_certs.as_deref().unwrap_or(Path::new("")).display()
            ));
        }
        let host_dir = stack.root.join(dir);
        if host_dir.is_dir() && !host_dir.join(file).is_file() {
            problems.push(format!("Dex web.{key}: {} has no {file}", dir.display()));
        }
    }
    // The certificate must name the issuer's host: each documented `certs dev` command adds it.
    let issuer = config.get("issuer").and_then(Value::as_str).unwrap_or("");
    if let Some((_, host, _)) = url_host_port(issuer) {
        let flag = format!("--host {host}");
        let mut commands = 0;
        for file in [
            "docker-compose.yml",
            "deploy/gatehouse.compose.toml",
            "deploy/dex/config.yaml",
        ] {
            let text = stack.read(file).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("certs dev --")) {
                commands += 1;
                if !line.contains(&flag) {
                    problems.push(format!(
                        "{file}: `{}` does not add {flag}: Dex's certificate would not name its issuer host",
                        line.trim_start_matches(['#', ';', ' '])
                    ));
                }
            }
        }
        if commands == 0 {
            problems.push(format!(
                "no file of the stack documents the `gatehouse certs dev ... {flag}` command"
            ));
        }
    }
    problems
}

/// gatehouse's `[identity]` against Dex: the OIDC issuer is Dex's issuer, on the dex service's
/// HTTPS listener; the client, its secret, redirect URIs, scopes and claims are ones Dex has;
/// JWTs from Dex are accepted with the audience and algorithm Dex gives them; the CA that
/// signed Dex's certificate is trusted for it.
fn check_identity(stack: &Stack) -> Vec<String> {
    let config = match stack.gatehouse_config() {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let (dex_name, dex) = match stack.dex_config() {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let (gname, gsvc) = match stack.gateway() {
        Ok(g) => g,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let dex_issuer = dex
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim_end_matches('/');
    let clients: Vec<&Value> = dex
        .get("staticClients")
        .and_then(Value::as_sequence)
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    let client_ids: Vec<&str> = clients
        .iter()
        .filter_map(|c| c.get("id").and_then(Value::as_str))
        .collect();
    // Where the CA of Dex's certificate is: next to the certificate `certs dev` wrote.
    let dex_ca = dex_web_file(stack, "tlsCert")
        .map(|(_, rel)| rel.parent().unwrap_or(Path::new("")).join(DEV_CA_CERT));
    let check_ca = |what: &str, ca_file: Option<&Path>, problems: &mut Vec<String>| {
        let Some(ca_file) = ca_file else {
            problems.push(format!(
                "{what}.ca_file is not set: Dex's certificate comes from the development CA, which the system roots do not hold"
            ));
            return;
        };
        match repo_path_in(gsvc, ca_file) {
            None => problems.push(format!(
                "{what}.ca_file {} is in no mount of service {gname:?} from the repository",
                ca_file.display()
            )),
            Some((_, rel)) => {
                if let Some(want) = &dex_ca
                    && &rel != want
                {
                    problems.push(format!(
                        "{what}.ca_file is {}, not the CA of Dex's certificate ({})",
                        rel.display(),
                        want.display()
                    ));
                }
            }
        }
    };

    match &config.identity.oidc {
        None => problems.push(
            "gatehouse config has no [identity.oidc]: nobody could sign in through Dex".to_string(),
        ),
        Some(oidc) => {
            if oidc.issuer != dex_issuer {
                problems.push(format!(
                    "identity.oidc.issuer {:?} is not Dex's issuer {dex_issuer:?}",
                    oidc.issuer
                ));
            }
            match url_host_port(&oidc.issuer) {
                None => problems.push(format!(
                    "identity.oidc.issuer {:?} is not an http(s) URL",
                    oidc.issuer
                )),
                Some((_, host, port)) => {
                    if host != dex_name {
                        problems.push(format!(
                            "identity.oidc.issuer host {host:?} is not the Dex service {dex_name:?}"
                        ));
                    }
                    let https = dex_web_port(&dex, "https");
                    if Some(port) != https {
                        problems.push(format!(
                            "identity.oidc.issuer port {port} is not Dex's web.https port {https:?}"
                        ));
                    }
                }
            }
            if !depends_on(gsvc).contains(&dex_name) {
                problems.push(format!(
                    "service {gname:?} does not depend_on the Dex service {dex_name:?}"
                ));
            }
            check_ca("identity.oidc", oidc.ca_file.as_deref(), &mut problems);

            match clients
                .iter()
                .find(|c| c.get("id").and_then(Value::as_str) == Some(oidc.client_id.as_str()))
            {
                None => problems.push(format!(
                    "identity.oidc.client_id {:?} is not a Dex staticClients id ({client_ids:?})",
                    oidc.client_id
                )),
                Some(client) => {
                    check_client_secret(
                        stack,
                        &gname,
                        gsvc,
                        &dex_name,
                        oidc,
                        client,
                        &mut problems,
                    );
                    check_redirect_uris(stack, &config, client, &oidc.client_id, &mut problems);
                }
            }

            for scope in &oidc.scopes {
                if !DEX_SCOPES.contains(&scope.as_str())
                    && !scope.starts_with("audience:server:client_id:")
                {
                    problems.push(format!(
                        "identity.oidc.scopes has {scope:?}, which Dex refuses (it accepts {DEX_SCOPES:?} and audience:server:client_id:<peer>)"
                    ));
                }
            }
            for (key, claim) in [
                ("username_claim", &oidc.username_claim),
                ("groups_claim", &oidc.groups_claim),
            ] {
                problems.extend(dex_claim_problems(
                    &dex,
                    Some(&oidc.scopes),
                    claim,
                    &format!("identity.oidc.{key}"),
                ));
            }
        }
    }

    let dex_jwts: Vec<(usize, &gatehouse::config::JwtIssuerConfig)> = config
        .identity
        .jwt
        .iter()
        .enumerate()
        .filter(|(_, j)| j.issuer == dex_issuer)
        .collect();
    let token_routes = config.routes.iter().any(|r| r.auth.bearer || r.auth.basic);
    if dex_jwts.is_empty() && token_routes {
        problems.push(format!(
            "no [[identity.jwt]] names Dex's issuer {dex_issuer:?}: routes taking bearer or basic would accept no Dex token"
        ));
    }
    // Dex signs with RS256 unless signer.config.algorithm says otherwise (config.yaml.dist).
    let dex_alg = dex
        .get("signer")
        .and_then(|s| s.get("config"))
        .and_then(|c| c.get("algorithm"))
        .and_then(Value::as_str)
        .unwrap_or("RS256");
    for (i, j) in dex_jwts {
        if !j.audiences.iter().any(|a| client_ids.contains(&a.as_str())) {
            problems.push(format!(
                "identity.jwt[{i}].audiences {:?} name no Dex client: Dex sets aud to the client id a token is issued to ({client_ids:?})",
                j.audiences
            ));
        }
        if !j.algorithms.iter().any(|a| format!("{a:?}") == dex_alg) {
            problems.push(format!(
                "identity.jwt[{i}].algorithms {:?} leave out {dex_alg}, the algorithm Dex signs with",
                j.algorithms
            ));
        }
        check_ca(
            &format!("identity.jwt[{i}]"),
            j.ca_file.as_deref(),
            &mut problems,
        );
        for (key, claim) in [
            ("username_claim", &j.username_claim),
            ("groups_claim", &j.groups_claim),
        ] {
            problems.extend(dex_claim_problems(
                &dex,
                None,
                claim,
                &format!("identity.jwt[{i}].{key}"),
            ));
        }
    }
    problems
}

/// gatehouse's client secret and Dex's `secretEnv` come from the same `.env` variable.
fn check_client_secret(
    stack: &Stack,
    gname: &str,
    gsvc: &Value,
    dex_name: &str,
    oidc: &gatehouse::config::OidcConfig,
    client: &Value,
    problems: &mut Vec<String>,
) {
    let SecretRef::Env(gvar) = &oidc.client_secret else {
        return; // a file: nothing in compose to compare
    };
    let gsource = environment(gsvc)
        .get(gvar)
        .cloned()
        .flatten()
        .and_then(|v| env_reference(&v).map(String::from));
    let dsource = client
        .get("secretEnv")
        .and_then(Value::as_str)
        .and_then(|var| {
            stack
                .service(dex_name)
                .map(environment)
                .and_then(|env| env.get(var).cloned().flatten())
        })
        .and_then(|v| env_reference(&v).map(String::from));
    if let (Some(g), Some(d)) = (&gsource, &dsource)
        && g != d
    {
        problems.push(format!(
            "service {gname:?} reads the OIDC client secret from ${{{g}}} and Dex from ${{{d}}}: they must be the same value"
        ));
    }
}

/// Dex registers gatehouse's callback on every host whose route signs people in, at the port
/// compose publishes gatehouse's TLS listener on.
fn check_redirect_uris(
    stack: &Stack,
    config: &Config,
    client: &Value,
    id: &str,
    problems: &mut Vec<String>,
) {
    let registered: Vec<&str> = client
        .get("redirectURIs")
        .and_then(Value::as_sequence)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let host_ports = gatehouse_tls_host_ports(stack, config);
    for route in config.routes.iter().filter(|r| r.auth.session) {
        for host in route.hosts.iter().filter(|h| *h != "*") {
            let wanted: Vec<String> = host_ports
                .iter()
                .map(|p| match p {
                    443 => format!("https://{host}{OIDC_CALLBACK_PATH}"),
                    p => format!("https://{host}:{p}{OIDC_CALLBACK_PATH}"),
                })
                .collect();
            if !wanted.iter().any(|w| registered.contains(&w.as_str())) {
                problems.push(format!(
                    "Dex client {id:?} does not register {wanted:?} (gatehouse's callback for route {:?}) among its redirectURIs {registered:?}",
                    route.name
                ));
            }
        }
    }
}

/// Host ports on which clients reach gatehouse's TLS listeners: those the balancer publishes
/// onto a bind whose backend servers are the gateways on a TLS listener port.
fn gatehouse_tls_host_ports(stack: &Stack, config: &Config) -> BTreeSet<u16> {
    let tls_ports: BTreeSet<u16> = config.server.listen.iter().map(|a| a.port()).collect();
    let Ok((_, cfg)) = stack.haproxy() else {
        return BTreeSet::new();
    };
    let Ok((_, svc)) = stack.only(Kind::Balancer) else {
        return BTreeSet::new();
    };
    let gateways: Vec<String> = stack.gateways().into_iter().map(|(n, _)| n).collect();
    let servers = cfg.servers();
    let reaches_gateways = !servers.is_empty()
        && servers
            .iter()
            .all(|(host, port)| gateways.contains(host) && tls_ports.contains(port));
    if !reaches_gateways {
        return BTreeSet::new();
    }
    let binds: BTreeSet<u16> = cfg.binds().into_iter().map(|(_, p)| p).collect();
    published(svc)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, c, _)| binds.contains(c))
        .filter_map(|(_, _, h)| h)
        .collect()
}

/// Whether Dex puts `claim` in the tokens of its static users: the scope that releases it
/// (checked when `scopes` is known) and, for `preferred_username`, a `preferredUsername` on
/// every user (Dex emits the claim only then; `username` goes to `name`).
fn dex_claim_problems(
    dex: &Value,
    scopes: Option<&[String]>,
    claim: &str,
    what: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let scope = match claim {
        "sub" | "iss" => None,
        "preferred_username" | "name" => Some("profile"),
        "email" => Some("email"),
        "groups" => Some("groups"),
        other => {
            problems.push(format!(
                "{what} is {other:?}, a claim Dex never puts in its tokens (sub, name, preferred_username, email, groups)"
            ));
            return problems;
        }
    };
    if let (Some(scope), Some(scopes)) = (scope, scopes)
        && !scopes.iter().any(|s| s == scope)
    {
        problems.push(format!(
            "{what} is {claim:?}, which Dex emits only with the {scope:?} scope, and identity.oidc.scopes lacks it"
        ));
    }
    if claim == "preferred_username" {
        let missing: Vec<&str> = dex
            .get("staticPasswords")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter(|u| {
                u.get("preferredUsername")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            })
            .map(|u| u.get("email").and_then(Value::as_str).unwrap_or("?"))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{what} is \"preferred_username\", but Dex static users {missing:?} set no preferredUsername, so their tokens carry none"
            ));
        }
    }
    problems
}

/// Where each secret the gatehouse config names comes from, with the key naming it.
fn secret_refs(config: &Config) -> Vec<(String, SecretRef)> {
    let mut out = Vec::new();
    if let Some(o) = &config.identity.oidc {
        out.push((
            "identity.oidc.client_secret".to_string(),
            o.client_secret.clone(),
        ));
    }
    if let Some(s) = &config.identity.session {
        out.push(("identity.session.keys".to_string(), s.keys.clone()));
    }
    for (i, r) in config.routes.iter().enumerate() {
        for (j, c) in r.gogs.iter().flat_map(|g| g.credentials.iter()).enumerate() {
            out.push((
                format!("routes[{i}].gogs.credentials[{j}].token"),
                c.token.clone(),
            ));
        }
        if let Some(t) = r.otlp.as_ref().and_then(|o| o.access_token.as_ref()) {
            out.push((format!("routes[{i}].otlp.access_token"), t.clone()));
        }
    }
    out
}

/// Every secret the gatehouse config names by environment variable reaches the gatehouse
/// service as a required `${VAR:?...}` reference (gatehouse refuses an unset or empty secret)
/// to a variable deploy/.env.example documents; a secret named by file lies in a mount.
fn check_gatehouse_secrets(stack: &Stack) -> Vec<String> {
    let config = match stack.gatehouse_config() {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let (gname, gsvc) = match stack.gateway() {
        Ok(g) => g,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let documented = documented_variables(stack).unwrap_or_else(|e| {
        problems.push(e);
        BTreeSet::new()
    });
    let env = environment(gsvc);
    let refs = secret_refs(&config);
    if refs.is_empty() {
        problems.push("the gatehouse config names no secret: [identity] is missing".to_string());
    }
    for (what, r) in refs {
        match r {
            SecretRef::Env(var) => match env.get(&var) {
                None => problems.push(format!(
                    "{what} reads ${var}, which service {gname:?} does not set in its environment"
                )),
                Some(None) => problems.push(format!(
                    "service {gname:?} passes {var} ({what}) through from the shell; take it from .env as ${{VAR:?...}}"
                )),
                Some(Some(value)) => match env_reference(value) {
                    None => problems.push(format!(
                        "service {gname:?}: environment {var} = {value:?} ({what}) is not a ${{VAR}} reference to .env"
                    )),
                    Some(source) => {
                        if !env_reference_required(value) {
                            problems.push(format!(
                                "service {gname:?}: environment {var} = {value:?} may be unset or empty, and gatehouse refuses an empty {what}: use ${{{source}:?...}}"
                            ));
                        }
                        if !documented.contains(source) {
                            problems.push(format!(
                                "service {gname:?}: environment {var} ({what}) reads ${{{source}}}, which deploy/.env.example does not document"
                            ));
                        }
                    }
                },
            },
            SecretRef::File(path) => {
                if !mounts(gsvc)
                    .iter()
                    .any(|m| path.starts_with(m.target.trim_end_matches('/')))
                {
                    problems.push(format!(
                        "{what} reads {}, which no mount of service {gname:?} provides",
                        path.display()
                    ));
                }
            }
        }
    }
    problems
}

/// The collector receives OTLP on 4317 (gRPC) and 4318 (HTTP) and exports to `debug`.
fn check_collector(stack: &Stack) -> Vec<String> {
    let config = match stack.collector_config() {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let otlp = config.get("receivers").and_then(|r| r.get("otlp"));
    for (protocol, port) in [("grpc", 4317), ("http", 4318)] {
        let endpoint = otlp
            .and_then(|o| o.get("protocols"))
            .and_then(|p| p.get(protocol))
            .and_then(|p| p.get("endpoint"))
            .and_then(Value::as_str);
        match endpoint.and_then(split_host_port) {
            Some((_, p)) if p == port => {}
            _ => problems.push(format!(
                "collector receivers.otlp.protocols.{protocol}.endpoint is {endpoint:?}, expected port {port}"
            )),
        }
    }
    if config
        .get("exporters")
        .and_then(|e| e.get("debug"))
        .is_none()
    {
        problems.push("collector config defines no debug exporter".to_string());
    }
    let pipelines = config
        .get("service")
        .and_then(|s| s.get("pipelines"))
        .and_then(Value::as_mapping);
    if pipelines.is_none_or(|p| p.is_empty()) {
        problems.push("collector config has no service.pipelines".to_string());
    }
    for (pname, p) in pipelines.into_iter().flatten() {
        let list = |key: &str| -> Vec<String> {
            p.get(key)
                .and_then(Value::as_sequence)
                .map(|s| s.iter().filter_map(scalar).collect())
                .unwrap_or_default()
        };
        let pname = pname.as_str().unwrap_or("?");
        if !list("receivers").iter().any(|r| r == "otlp") {
            problems.push(format!(
                "collector pipeline {pname:?} does not receive from otlp"
            ));
        }
        if !list("exporters").iter().any(|e| e == "debug") {
            problems.push(format!(
                "collector pipeline {pname:?} does not export to debug"
            ));
        }
    }
    problems
}

/// The Dockerfile builds with the official rust image, runs as a non-root user, runs
/// `gatehouse serve --config ...`, exposes 8443 and 9090 and copies nothing secret.
fn check_dockerfile(stack: &Stack) -> Vec<String> {
    let d = match stack.dockerfile() {
        Ok(d) => d,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    if d.froms.len() < 2 {
        problems.push(format!(
            "Dockerfile has {} stage(s), expected a multi-stage build",
            d.froms.len()
        ));
    }
    if !d.froms.first().is_some_and(|f| f.starts_with("rust:")) {
        problems.push(format!(
            "Dockerfile builder stage is FROM {:?}, expected the official rust image",
            d.froms.first()
        ));
    }
    match d.users.last() {
        None => problems.push(
            "Dockerfile final stage sets no USER: the container would run as root".to_string(),
        ),
        Some(user) => {
            let name = user.split(':').next().unwrap_or("").trim();
            if name.is_empty() || name == "root" || name == "0" || name.starts_with('$') {
                problems.push(format!(
                    "Dockerfile final stage USER {user:?} is root or not a fixed user"
                ));
            }
        }
    }
    if d.entrypoint != ["gatehouse"] {
        problems.push(format!(
            "Dockerfile ENTRYPOINT is {:?}, expected [\"gatehouse\"]",
            d.entrypoint
        ));
    }
    if d.cmd.first().map(String::as_str) != Some("serve") || config_arg(&d.cmd).is_none() {
        problems.push(format!(
            "Dockerfile CMD is {:?}, expected serve --config <path>",
            d.cmd
        ));
    }
    for port in [8443, 9090] {
        if !d.expose.contains(&port) {
            problems.push(format!("Dockerfile final stage does not EXPOSE {port}"));
        }
    }
    for src in &d.context_sources {
        let s = src.to_ascii_lowercase();
        if s.contains("certs")
            || s.ends_with(".key")
            || s.ends_with(".pem")
            || s.contains(".env")
            || s == "."
        {
            problems.push(format!(
                "Dockerfile copies {src:?} from the build context: it may hold secrets"
            ));
        }
    }
    let ignore = stack.read(".dockerignore").unwrap_or_default();
    let entries: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/'))
        .collect();
    for want in ["target", ".git", "certs/*.key"] {
        if !entries.contains(want) {
            problems.push(format!(".dockerignore does not exclude {want}"));
        }
    }
    problems
}

/// Two or more gateway replicas that differ only where they must: the same build, command,
/// config, certificates, environment and dependencies (so that checking the first checks
/// them all), but each its own host name (the audit replica name defaults to it), its own
/// audit volume and its own fixed address.
fn check_replicas(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let gateways = stack.gateways();
    let Some((first_name, first)) = gateways.first() else {
        return vec!["no Gatehouse service in docker-compose.yml".to_string()];
    };
    let raw = stack.gatehouse_toml();
    let audit = raw
        .as_ref()
        .ok()
        .and_then(|t| t.get("audit"))
        .and_then(|a| a.as_table());
    if let Some(r) = audit.and_then(|a| a.get("replica")) {
        problems.push(format!(
            "[audit] replica = {r} in the config every replica shares: their chains would have one name; leave it out (it defaults to the host name)"
        ));
    }
    let audit_dir = audit
        .and_then(|a| a.get("dir"))
        .and_then(|d| d.as_str())
        .map(String::from);
    if let Err(e) = &raw {
        problems.push(e.clone());
    }
    let same = |svc: &Value| {
        (
            build_paths(svc),
            command(svc),
            environment(svc),
            depends_on(svc),
            mounts(svc)
                .into_iter()
                .filter(|m| m.bind)
                .map(|m| (m.source, m.target, m.read_only))
                .collect::<Vec<_>>(),
            svc.get("image").cloned(),
            svc.get("user").cloned(),
        )
    };
    let mut hostnames = BTreeSet::new();
    let mut volumes = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for (name, svc) in &gateways {
        if same(svc) != same(first) {
            problems.push(format!(
                "service {name:?} is not built, started, configured or connected like {first_name:?} (build, command, environment, depends_on, bind mounts, image, user must match)"
            ));
        }
        match svc.get("hostname").and_then(Value::as_str) {
            None => problems.push(format!(
                "service {name:?} sets no hostname: its audit replica name would be a container id, new at every re-creation"
            )),
            Some(h) => {
                if !hostnames.insert(h.to_string()) {
                    problems.push(format!(
                        "service {name:?} has hostname {h:?} like another replica: their audit chains would share a name"
                    ));
                }
            }
        }
        for a in fixed_addresses(svc) {
            if !addresses.insert(a) {
                problems.push(format!(
                    "service {name:?} has the fixed address {a} of another replica"
                ));
            }
        }
        if let Some(dir) = &audit_dir {
            match mounts(svc).into_iter().find(|m| &m.target == dir) {
                None => problems.push(format!(
                    "service {name:?} keeps [audit] dir {dir} in no volume: the log would die with the container"
                )),
                Some(m) if m.bind => problems.push(format!(
                    "service {name:?} mounts {dir} from {:?}; use a named volume per replica",
                    m.source
                )),
                Some(m) => {
                    if !volumes.insert(m.source.clone()) {
                        problems.push(format!(
                            "service {name:?} shares the audit volume {:?} with another replica; give each its own",
                            m.source
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// The balancer: HAProxy in TCP mode passing TLS through (it terminates nothing), its
/// backend servers exactly the gateway replicas on their TLS port, health-checked, and it
/// alone publishes the public port.
fn check_balancer(stack: &Stack) -> Vec<String> {
    let (name, cfg) = match stack.haproxy() {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let modes = cfg.lines("mode");
    if modes.is_empty() {
        problems.push("haproxy.cfg sets no `mode`: HAProxy would default to tcp only by accident; say `mode tcp`".to_string());
    }
    for (section, w) in &modes {
        if w.first().map(String::as_str) != Some("tcp") {
            problems.push(format!(
                "haproxy.cfg [{section}] mode {}: the balancer must pass TLS through (mode tcp), the gateways terminate it and check SNI",
                w.join(" ")
            ));
        }
    }
    for (section, w) in cfg.lines("bind") {
        if w.iter().any(|x| x == "ssl" || x == "crt") {
            problems.push(format!(
                "haproxy.cfg [{section}] bind {} terminates TLS: the balancer must not hold the certificate",
                w.join(" ")
            ));
        }
    }
    for (section, w) in cfg.lines("server") {
        if w.iter().any(|x| x == "ssl") {
            problems.push(format!(
                "haproxy.cfg [{section}] server {} re-encrypts traffic (ssl): with TLS passed through it would be wrapped twice",
                w.join(" ")
            ));
        }
    }
    let config = stack.gatehouse_config();
    let tls_ports: BTreeSet<u16> = match &config {
        Ok(c) => c.server.listen.iter().map(|a| a.port()).collect(),
        Err(e) => {
            problems.push(e.clone());
            BTreeSet::new()
        }
    };
    let gateways: BTreeSet<String> = stack.gateways().into_iter().map(|(n, _)| n).collect();
    let servers = cfg.servers();
    let hosts: BTreeSet<String> = servers.iter().map(|(h, _)| h.clone()).collect();
    if hosts != gateways {
        problems.push(format!(
            "haproxy.cfg servers {hosts:?} are not the gateway replicas {gateways:?}"
        ));
    }
    if config.is_ok() {
        for (host, port) in &servers {
            if !tls_ports.contains(port) {
                problems.push(format!(
                    "haproxy.cfg server {host}:{port} is not a TLS listener port of gatehouse ({tls_ports:?})"
                ));
            }
        }
    }
    let checked = cfg
        .lines("server")
        .into_iter()
        .chain(cfg.lines("default-server"))
        .any(|(_, w)| w.iter().any(|x| x == "check"));
    if !checked
        || cfg
            .lines("option")
            .iter()
            .all(|(_, w)| w.first().map(String::as_str) != Some("httpchk"))
    {
        problems.push("haproxy.cfg does not health-check the replicas (option httpchk and check): a draining or dead replica would still get connections".to_string());
    }
    let uri_ok = cfg.lines("http-check").iter().any(|(_, w)| {
        w.windows(2)
            .any(|p| p[0] == "uri" && p[1] == "/.gatehouse/ready")
    });
    if !uri_ok {
        problems.push("haproxy.cfg health check does not ask /.gatehouse/ready, which turns 503 while a replica drains".to_string());
    }
    // The replicas must learn each client's address from the balancer's PROXY header, and
    // take it from the balancer alone.
    let proxied = cfg
        .lines("server")
        .into_iter()
        .chain(cfg.lines("default-server"))
        .any(|(_, w)| w.iter().any(|x| x == "send-proxy-v2" || x == "send-proxy"));
    let checks_proxied = cfg
        .lines("server")
        .into_iter()
        .chain(cfg.lines("default-server"))
        .any(|(_, w)| w.iter().any(|x| x == "check-send-proxy"));
    if !proxied {
        problems.push("haproxy.cfg servers send no PROXY header (send-proxy-v2): every client would be recorded as the balancer".to_string());
    } else if !checks_proxied {
        problems.push("haproxy.cfg health checks send no PROXY header (check-send-proxy): the replicas would refuse them".to_string());
    }
    if let Ok(c) = &config {
        let addrs = stack
            .service(&name)
            .map(fixed_addresses)
            .unwrap_or_default();
        if addrs.is_empty() {
            problems.push(format!(
                "service {name:?} has no fixed address, so [server] proxy_protocol_from cannot name it"
            ));
        }
        for a in &addrs {
            if !c.server.proxy_protocol_from.iter().any(|n| n.contains(a)) {
                problems.push(format!(
                    "[server] proxy_protocol_from does not cover the balancer's address {a}: the replicas would ignore its PROXY header and refuse the connection"
                ));
            }
        }
        for n in &c.server.proxy_protocol_from {
            if n.prefix_len() != n.max_prefix_len() || !addrs.contains(&n.addr()) {
                problems.push(format!(
                    "[server] proxy_protocol_from {n} is not the balancer's address: whoever holds it could name any client"
                ));
            }
        }
    }
    if let Ok(c) = &config
        && !gatehouse_tls_host_ports(stack, c).contains(&PUBLIC_PORT)
    {
        problems.push(format!(
            "service {name:?} does not publish {PUBLIC_PORT} onto a bind that reaches the gateways' TLS listener"
        ));
    }
    problems
}

/// Redis: the official image, durable (AOF with fsync on every write), never evicting, a
/// password from .env that the gateways read too, not published, data in a volume; the
/// gateways' `[redis]` names it, with no credentials in the URL and no SQLite store beside.
fn check_redis(stack: &Stack) -> Vec<String> {
    let (name, svc) = match stack.only(Kind::Redis) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let image = svc.get("image").and_then(Value::as_str).unwrap_or("");
    if !(image == "redis:7" || image.starts_with("redis:7.") || image.starts_with("redis:7-")) {
        problems.push(format!(
            "service {name:?} runs {image:?}, expected the official redis:7"
        ));
    }
    let args = command(svc);
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    for (flag, want, why) in [
        (
            "--appendonly",
            "yes",
            "without the append-only file a restart loses what was acknowledged",
        ),
        (
            "--appendfsync",
            "always",
            "anything less can lose acknowledged writes on a crash",
        ),
        (
            "--maxmemory-policy",
            "noeviction",
            "an evicted key is a lost delivery or commit",
        ),
    ] {
        if arg(flag) != Some(want) {
            problems.push(format!(
                "service {name:?}: {flag} is {:?}, want {want}: {why}",
                arg(flag)
            ));
        }
    }
    let documented = documented_variables(stack).unwrap_or_default();
    let password_var = match arg("--requirepass") {
        None => {
            problems.push(format!("service {name:?} sets no --requirepass: anyone on the network could read and write the shared state"));
            None
        }
        Some(v) => match env_reference(v) {
            Some(var) if env_reference_required(v) => {
                if !documented.contains(var) {
                    problems.push(format!(
                        "service {name:?}: --requirepass reads ${{{var}}}, which deploy/.env.example does not document"
                    ));
                }
                Some(var.to_string())
            }
            _ => {
                problems.push(format!(
                    "service {name:?}: --requirepass {v:?} is not a required ${{VAR:?...}} reference to .env"
                ));
                None
            }
        },
    };
    match published(svc) {
        Ok(p) if !p.is_empty() => problems.push(format!(
            "service {name:?} publishes {:?} to the host: only the gateways may reach Redis",
            p.iter().map(|(t, _, _)| t.clone()).collect::<Vec<_>>()
        )),
        Ok(_) => {}
        Err(e) => problems.push(e),
    }
    if !mounts(svc).iter().any(|m| m.target == "/data" && !m.bind) {
        problems.push(format!(
            "service {name:?} keeps /data (the append-only file) in no named volume"
        ));
    }

    // The gateways' side.
    let toml = match stack.gatehouse_toml() {
        Ok(t) => t,
        Err(e) => {
            problems.push(e);
            return problems;
        }
    };
    let Some(redis) = toml.get("redis").and_then(|r| r.as_table()) else {
        problems.push(
            "the gatehouse config has no [redis]: the replicas would each keep their own state"
                .to_string(),
        );
        return problems;
    };
    let url = redis.get("url").and_then(|u| u.as_str()).unwrap_or("");
    match url.split_once("://") {
        Some(("redis" | "rediss", rest)) => {
            let authority = rest.split('/').next().unwrap_or("");
            if authority.contains('@') {
                problems.push(format!(
                    "[redis] url {url:?} carries credentials: use password_env or password_file"
                ));
            }
            let hostport = authority.rsplit('@').next().unwrap_or("");
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse::<u16>().ok()),
                None => (hostport.to_string(), Some(6379)),
            };
            if host != name {
                problems.push(format!(
                    "[redis] url host {host:?} is not the redis service {name:?}"
                ));
            }
            let listens = stack
                .listeners(&name, svc)
                .map(|l| l.iter().any(|l| Some(l.port) == port && l.reachable()))
                .unwrap_or(false);
            if !listens {
                problems.push(format!(
                    "[redis] url port {port:?} is not a port service {name:?} listens on"
                ));
            }
        }
        _ => problems.push(format!("[redis] url {url:?} is not redis:// or rediss://")),
    }
    let (gname, gsvc) = match stack.gateway() {
        Ok(g) => g,
        Err(e) => {
            problems.push(e);
            return problems;
        }
    };
    match redis.get("password_env").and_then(|v| v.as_str()) {
        None if redis.get("password_file").is_none() => problems.push(
            "[redis] names no password_env or password_file, but the redis service requires a password".to_string(),
        ),
        None => {}
        Some(var) => {
            let source = environment(gsvc)
                .get(var)
                .cloned()
                .flatten();
            match source.as_deref().and_then(|v| env_reference(v).map(|n| (n, env_reference_required(v)))) {
                None => problems.push(format!(
                    "[redis] password_env = {var:?}, which service {gname:?} does not set from .env"
                )),
                Some((_, false)) => problems.push(format!(
                    "service {gname:?}: {var} may be unset or empty: use ${{VAR:?...}}"
                )),
                Some((src, true)) => {
                    if password_var.as_deref().is_some_and(|p| p != src) {
                        problems.push(format!(
                            "service {gname:?} reads the Redis password from ${{{src}}}, the redis service from ${{{}}}: they must be the same value",
                            password_var.as_deref().unwrap_or("")
                        ));
                    }
                }
            }
        }
    }
    if toml.get("webhooks").and_then(|w| w.get("store")).is_some() {
        problems.push("[webhooks] store is set beside [redis]: with Redis the webhook store lives there; leave `store` out".to_string());
    }
    for (gname, gsvc) in stack.gateways() {
        if !depends_on(gsvc).contains(&name) {
            problems.push(format!("service {gname:?} does not depend_on {name:?}"));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------
// The repository's files pass every check

fn assert_clean(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

#[test]
fn repository_compose_file_loads_with_the_services_it_needs() {
    let stack = Stack::repository();
    assert_clean("services", check_services(&stack));
}

#[test]
fn repository_depends_on_names_existing_services() {
    assert_clean("depends_on", check_depends_on(&Stack::repository()));
}

#[test]
fn repository_published_ports_match_what_services_listen_on() {
    assert_clean("ports", check_ports(&Stack::repository()));
}

#[test]
fn repository_gatehouse_routes_reach_compose_services() {
    assert_clean("gatehouse routes", check_routes(&Stack::repository()));
}

#[test]
fn repository_gogs_trusts_only_gatehouse_and_is_not_published() {
    assert_clean("gogs", check_gogs(&Stack::repository()));
}

#[test]
fn repository_mounted_files_exist() {
    assert_clean("mounts", check_mounts(&Stack::repository()));
}

#[test]
fn repository_environment_holds_no_literal_secrets() {
    assert_clean("secrets", check_secrets(&Stack::repository()));
}

#[test]
fn repository_dex_client_and_users() {
    assert_clean("dex", check_oidc(&Stack::repository()));
}

#[test]
fn repository_dex_serves_https_with_the_dev_certificate() {
    assert_clean("dex tls", check_dex_tls(&Stack::repository()));
}

#[test]
fn repository_gatehouse_identity_matches_dex() {
    assert_clean("identity", check_identity(&Stack::repository()));
}

#[test]
fn repository_gatehouse_secrets_reach_it_from_env() {
    assert_clean(
        "gatehouse secrets",
        check_gatehouse_secrets(&Stack::repository()),
    );
}

#[test]
fn repository_collector_receives_otlp_and_prints_it() {
    assert_clean("otel-collector", check_collector(&Stack::repository()));
}

#[test]
fn repository_gateway_replicas_differ_only_where_they_must() {
    assert_clean("replicas", check_replicas(&Stack::repository()));
}

#[test]
fn repository_balancer_passes_tls_through_to_every_replica() {
    assert_clean("balancer", check_balancer(&Stack::repository()));
}

#[test]
fn repository_redis_is_durable_private_and_shared() {
    assert_clean("redis", check_redis(&Stack::repository()));
}

#[test]
fn repository_dockerfile_final_stage_runs_as_non_root() {
    assert_clean("Dockerfile", check_dockerfile(&Stack::repository()));
}

// ---------------------------------------------------------------------------------------
// Each check reports a fault injected into a copy of the files

/// Copies the stack's files into a temporary directory, applies `edits` (file, from, to; each
/// `from` must occur) and loads the copy.
fn mutated(edits: &[(&str, &str, &str)]) -> (tempfile::TempDir, Stack) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temporary directory");
    for file in ["docker-compose.yml", "Dockerfile", ".dockerignore"] {
        fs::copy(src.join(file), dir.path().join(file))
            .unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    copy_dir(&src.join("deploy"), &dir.path().join("deploy"));
    for (file, from, to) in edits {
        let path = dir.path().join(file);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {file}: {e}"));
        assert!(
            text.contains(from),
            "mutation: {from:?} not found in {file}"
        );
        fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
    let stack = Stack::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (dir, stack)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn assert_reports(problems: Vec<String>, needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {problems:?}"
    );
}

#[test]
fn catches_invalid_yaml() {
    let (dir, _) = mutated(&[]);
    fs::write(dir.path().join("docker-compose.yml"), "services: [unclosed").unwrap();
    let err = Stack::load(dir.path())
        .err()
        .expect("broken YAML must not load");
    assert!(err.contains("not valid YAML"), "{err}");
}

#[test]
fn catches_a_service_without_image_or_build() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "    image: otel/opentelemetry-collector:0.150.0\n",
        "",
    )]);
    assert_reports(check_services(&stack), "neither `image` nor `build`");
}

#[test]
fn catches_a_service_without_a_comment() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "  # dex: the OIDC provider gatehouse signs people in with (static client and users with\n  # groups, development only). Serves HTTPS only, on its documented HTTPS port 5554, with the\n  # development certificate from ./certs; published so browsers can reach the issuer\n  # https://dex:5554/dex (add \"127.0.0.1 dex\" to the host's /etc/hosts).\n",
        "",
    )]);
    assert_reports(check_services(&stack), "service \"dex\" has no comment");
}

#[test]
fn catches_depends_on_an_unknown_service() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      - otel-collector\n",
        "      - otel-collector\n      - memcached\n",
    )]);
    assert_reports(check_depends_on(&stack), "\"memcached\"");
}

#[test]
fn catches_gatehouse_publishing_a_port_it_does_not_listen_on() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "\"127.0.0.1:9091:9090\"",
        "\"127.0.0.1:9091:9091\"",
    )]);
    let problems = check_ports(&stack);
    assert_reports(problems.clone(), "targets container port 9091");
    assert_reports(problems, "but its config listens for metrics on");
}

#[test]
fn catches_metrics_moved_without_the_published_port() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "listen = \"0.0.0.0:9090\"",
        "listen = \"0.0.0.0:9100\"",
    )]);
    assert_reports(check_ports(&stack), "but its config listens for metrics on");
}

#[test]
fn catches_a_loopback_only_collector() {
    let (_d, stack) = mutated(&[(
        "deploy/otel-collector/config.yaml",
        "endpoint: 0.0.0.0:4318",
        "endpoint: localhost:4318",
    )]);
    assert_reports(check_ports(&stack), "binds localhost only");
    assert_reports(check_routes(&stack), "out of gatehouse's reach");
}

#[test]
fn catches_an_upstream_on_the_wrong_port() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "\"http://gogs:3000\"",
        "\"http://gogs:3001\"",
    )]);
    assert_reports(check_routes(&stack), "upstream port 3001");
}

#[test]
fn catches_an_upstream_that_is_not_a_service() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "\"http://otel-collector:4318\"",
        "\"http://collector:4318\"",
    )]);
    assert_reports(
        check_routes(&stack),
        "\"collector\" is not a compose service",
    );
}

#[test]
fn catches_an_otlp_route_pointing_at_gogs() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "\"http://otel-collector:4318\"",
        "\"http://gogs:3000\"",
    )]);
    assert_reports(check_routes(&stack), "not a Collector service");
}

#[test]
fn catches_gogs_published_to_the_host() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "    expose:\n      - \"3000\"\n",
        "    ports:\n      - \"3000:3000\"\n",
    )]);
    assert_reports(check_gogs(&stack), "publishes [\"3000:3000\"] to the host");
}

#[test]
fn catches_the_wrong_identity_header() {
    let (_d, stack) = mutated(&[("deploy/gogs/app.ini", "= X-WEBAUTH-USER", "= X-REMOTE-USER")]);
    assert_reports(check_gogs(&stack), "REVERSE_PROXY_AUTHENTICATION_HEADER");
}

#[test]
fn catches_reverse_proxy_authentication_disabled() {
    let (_d, stack) = mutated(&[(
        "deploy/gogs/app.ini",
        "ENABLE_REVERSE_PROXY_AUTHENTICATION    = true",
        "ENABLE_REVERSE_PROXY_AUTHENTICATION    = false",
    )]);
    assert_reports(
        check_gogs(&stack),
        "ENABLE_REVERSE_PROXY_AUTHENTICATION is not true",
    );
}

#[test]
fn catches_gogs_trusting_someone_else() {
    let (_d, stack) = mutated(&[(
        "deploy/gogs/app.ini",
        "TRUSTED_PROXY_IPS = 172.30.0.11/32, 172.30.0.12/32",
        "TRUSTED_PROXY_IPS = 172.30.0.11/32",
    )]);
    assert_reports(
        check_gogs(&stack),
        "does not include gatehouse-2's address 172.30.0.12",
    );
    let (_d, stack) = mutated(&[(
        "deploy/gogs/app.ini",
        "TRUSTED_PROXY_IPS = 172.30.0.11/32, 172.30.0.12/32",
        "TRUSTED_PROXY_IPS = 0.0.0.0/0",
    )]);
    assert_reports(check_gogs(&stack), "everyone could name a user");
}

#[test]
fn catches_gogs_advertising_its_own_url() {
    let (_d, stack) = mutated(&[(
        "deploy/gogs/app.ini",
        "https://git.localhost:8443/",
        "http://gogs:3000/",
    )]);
    let problems = check_gogs(&stack);
    assert_reports(problems.clone(), "is not https");
    assert_reports(problems, "is not a host of gatehouse's gogs route");
}

#[test]
fn catches_a_missing_mounted_file() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "./deploy/dex/config.yaml:",
        "./deploy/dex/missing.yaml:",
    )]);
    assert_reports(
        check_mounts(&stack),
        "deploy/dex/missing.yaml does not exist",
    );
}

#[test]
fn catches_an_undeclared_volume() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "  gogs-data: {}\n",
        "  other-data: {}\n",
    )]);
    assert_reports(
        check_mounts(&stack),
        "\"gogs-data\", which the top-level `volumes` does not declare",
    );
}

#[test]
fn catches_a_literal_secret_in_the_environment() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "DEX_GATEHOUSE_CLIENT_SECRET: ${OIDC_CLIENT_SECRET:?set OIDC_CLIENT_SECRET in .env}",
        "DEX_GATEHOUSE_CLIENT_SECRET: hunter2",
    )]);
    assert_reports(
        check_secrets(&stack),
        "DEX_GATEHOUSE_CLIENT_SECRET = \"hunter2\" looks like a literal secret",
    );
}

#[test]
fn catches_a_literal_secret_as_a_default() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "${LIGHTSTEP_ACCESS_TOKEN:?set LIGHTSTEP_ACCESS_TOKEN in .env}",
        "${LIGHTSTEP_ACCESS_TOKEN:-abc123}",
    )]);
    assert_reports(check_secrets(&stack), "GATEHOUSE_LIGHTSTEP_ACCESS_TOKEN");
}

#[test]
fn catches_an_undocumented_secret_variable() {
    let (_d, stack) = mutated(&[(
        "deploy/.env.example",
        "GOGS_WEBHOOK_SECRET=",
        "WEBHOOK_SECRET=",
    )]);
    assert_reports(
        check_secrets(&stack),
        "${GOGS_WEBHOOK_SECRET}, which deploy/.env.example does not document",
    );
}

#[test]
fn catches_a_dex_client_secret_in_the_config() {
    let (_d, stack) = mutated(&[(
        "deploy/dex/config.yaml",
        "    secretEnv: DEX_GATEHOUSE_CLIENT_SECRET",
        "    secret: hunter2",
    )]);
    let problems = check_oidc(&stack);
    assert_reports(problems.clone(), "literal `secret`");
    assert_reports(problems, "has no secretEnv");
}

#[test]
fn catches_a_dex_issuer_that_is_not_https() {
    let (_d, stack) = mutated(&[
        (
            "deploy/dex/config.yaml",
            "issuer: https://dex:5554/dex",
            "issuer: http://dex:5554/dex",
        ),
        (
            "deploy/dex/config.yaml",
            "  https: 0.0.0.0:5554\n",
            "  http: 0.0.0.0:5554\n",
        ),
    ]);
    assert_reports(check_oidc(&stack), "is not https");
    assert_reports(check_dex_tls(&stack), "Dex web.https is not set");
}

#[test]
fn catches_a_dex_issuer_off_its_https_listener() {
    let (_d, stack) = mutated(&[(
        "deploy/dex/config.yaml",
        "  https: 0.0.0.0:5554",
        "  https: 0.0.0.0:5553",
    )]);
    assert_reports(check_oidc(&stack), "is not web.https's port Some(5553)");
}

#[test]
fn catches_the_dex_issuer_port_not_published() {
    let (_d, stack) = mutated(&[("docker-compose.yml", "\"5554:5554\"", "\"5555:5554\"")]);
    assert_reports(check_oidc(&stack), "is not published by service \"dex\"");
}

#[test]
fn catches_dex_tls_files_gatehouse_does_not_write() {
    let (_d, stack) = mutated(&[(
        "deploy/dex/config.yaml",
        "tlsKey: /etc/dex/tls/server.key",
        "tlsKey: /etc/dex/tls/tls.key",
    )]);
    assert_reports(
        check_dex_tls(&stack),
        "web.tlsKey is certs/tls.key, but `gatehouse certs dev` writes server.key",
    );
}

#[test]
fn catches_dex_tls_files_outside_its_mounts() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "./certs:/etc/dex/tls:ro",
        "./certs:/etc/dex/certs:ro",
    )]);
    assert_reports(check_dex_tls(&stack), "is in no mount of service \"dex\"");
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "./certs:/etc/dex/tls:ro",
        "./certs:/etc/dex/tls",
    )]);
    assert_reports(check_dex_tls(&stack), "writable");
}

#[test]
fn catches_a_missing_dex_tls_file_in_a_generated_directory() {
    let (dir, stack) = mutated(&[]);
    fs::create_dir(dir.path().join("certs")).unwrap();
    fs::write(dir.path().join("certs/server.crt"), "").unwrap();
    assert_reports(check_dex_tls(&stack), "certs has no server.key");
}

#[test]
fn catches_a_certs_command_without_the_dex_host() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "--host dex --out certs",
        "--out certs",
    )]);
    assert_reports(check_dex_tls(&stack), "does not add --host dex");
}

#[test]
fn catches_an_oidc_issuer_that_is_not_dex() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "issuer = \"https://dex:5554/dex\"",
        "issuer = \"https://idp:5554/dex\"",
    )]);
    let problems = check_identity(&stack);
    assert_reports(problems.clone(), "is not Dex's issuer");
    assert_reports(problems, "host \"idp\" is not the Dex service");
    let (_d, stack) = mutated(&[
        (
            "deploy/gatehouse.compose.toml",
            "issuer = \"https://dex:5554/dex\"",
            "issuer = \"https://dex:5556/dex\"",
        ),
        (
            "deploy/dex/config.yaml",
            "issuer: https://dex:5554/dex",
            "issuer: https://dex:5556/dex",
        ),
    ]);
    assert_reports(
        check_identity(&stack),
        "port 5556 is not Dex's web.https port Some(5554)",
    );
}

#[test]
fn catches_gatehouse_not_waiting_for_dex() {
    let (_d, stack) = mutated(&[("docker-compose.yml", "      - dex\n", "")]);
    assert_reports(check_identity(&stack), "does not depend_on the Dex service");
}

#[test]
fn catches_a_client_dex_does_not_know() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "client_id = \"gatehouse\"",
        "client_id = \"gateway\"",
    )]);
    assert_reports(
        check_identity(&stack),
        "\"gateway\" is not a Dex staticClients id",
    );
}

#[test]
fn catches_client_secrets_from_different_variables() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "DEX_GATEHOUSE_CLIENT_SECRET: ${OIDC_CLIENT_SECRET:?set OIDC_CLIENT_SECRET in .env}",
        "DEX_GATEHOUSE_CLIENT_SECRET: ${DEX_CLIENT_SECRET:?set DEX_CLIENT_SECRET in .env}",
    )]);
    assert_reports(check_identity(&stack), "they must be the same value");
}

#[test]
fn catches_an_unregistered_callback() {
    let (_d, stack) = mutated(&[(
        "deploy/dex/config.yaml",
        "- https://git.localhost:8443/.gatehouse/oidc/callback",
        "- https://git.localhost/.gatehouse/oidc/callback",
    )]);
    assert_reports(
        check_identity(&stack),
        "does not register [\"https://git.localhost:8443/.gatehouse/oidc/callback\"]",
    );
}

#[test]
fn catches_a_scope_dex_refuses() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "\"groups\", \"offline_access\"]",
        "\"groups\", \"offline_access\", \"roles\"]",
    )]);
    assert_reports(check_identity(&stack), "has \"roles\", which Dex refuses");
}

#[test]
fn catches_a_username_claim_dex_does_not_emit() {
    let (_d, stack) = mutated(&[("deploy/dex/config.yaml", "    preferredUsername: bob\n", "")]);
    assert_reports(
        check_identity(&stack),
        "static users [\"bob@example.com\"] set no preferredUsername",
    );
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "scopes = [\"openid\", \"profile\", ",
        "scopes = [\"openid\", ",
    )]);
    assert_reports(check_identity(&stack), "only with the \"profile\" scope");
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "username_claim = \"preferred_username\"\ngroups_claim = \"groups\"\ngroups_source",
        "username_claim = \"login\"\ngroups_claim = \"groups\"\ngroups_source",
    )]);
    assert_reports(
        check_identity(&stack),
        "identity.oidc.username_claim is \"login\", a claim Dex never puts in its tokens",
    );
}

#[test]
fn catches_a_jwt_audience_dex_never_issues() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "audiences = [\"gatehouse\"]",
        "audiences = [\"gatehouse-api\"]",
    )]);
    assert_reports(check_identity(&stack), "name no Dex client");
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "algorithms = [\"RS256\"]",
        "algorithms = [\"ES256\"]",
    )]);
    assert_reports(check_identity(&stack), "leave out RS256");
}

#[test]
fn catches_no_jwt_issuer_for_dex() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "[[identity.jwt]]\nissuer = \"https://dex:5554/dex\"",
        "[[identity.jwt]]\nissuer = \"https://idp.example.com\"",
    )]);
    assert_reports(
        check_identity(&stack),
        "no [[identity.jwt]] names Dex's issuer",
    );
}

#[test]
fn catches_dex_ca_not_trusted() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "ca_file = \"/etc/gatehouse/certs/ca.crt\"",
        "ca_file = \"/etc/gatehouse/certs/server.crt\"",
    )]);
    assert_reports(
        check_identity(&stack),
        "identity.oidc.ca_file is certs/server.crt, not the CA of Dex's certificate (certs/ca.crt)",
    );
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "ca_file = \"/etc/gatehouse/certs/ca.crt\"\n\n[identity.session]",
        "\n[identity.session]",
    )]);
    assert_reports(check_identity(&stack), "identity.oidc.ca_file is not set");
}

#[test]
fn catches_a_config_secret_missing_from_the_environment() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      GATEHOUSE_GOGS_BROKER_TOKEN: ${GOGS_BROKER_TOKEN:?set GOGS_BROKER_TOKEN in .env}\n",
        "",
    )]);
    assert_reports(
        check_gatehouse_secrets(&stack),
        "routes[0].gogs.credentials[0].token reads $GATEHOUSE_GOGS_BROKER_TOKEN, which service \"gatehouse-1\" does not set",
    );
}

#[test]
fn catches_a_config_secret_that_may_be_empty() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "${SESSION_KEYS:?set SESSION_KEYS in .env}",
        "${SESSION_KEYS:-}",
    )]);
    assert_reports(
        check_gatehouse_secrets(&stack),
        "gatehouse refuses an empty identity.session.keys",
    );
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "${SESSION_KEYS:?set SESSION_KEYS in .env}",
        "hunter2",
    )]);
    assert_reports(
        check_gatehouse_secrets(&stack),
        "GATEHOUSE_SESSION_KEYS = \"hunter2\" (identity.session.keys) is not a ${VAR} reference",
    );
}

#[test]
fn catches_an_undocumented_config_secret() {
    let (_d, stack) = mutated(&[("deploy/.env.example", "SESSION_KEYS=", "SESSION_KEY=")]);
    assert_reports(
        check_gatehouse_secrets(&stack),
        "reads ${SESSION_KEYS}, which deploy/.env.example does not document",
    );
}

#[test]
fn catches_a_user_header_gogs_does_not_read() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "user_header = \"X-WEBAUTH-USER\"",
        "user_header = \"X-REMOTE-USER\"",
    )]);
    assert_reports(
        check_gogs(&stack),
        "sends the username in \"x-remote-user\"",
    );
}

#[test]
fn catches_a_collector_that_does_not_print() {
    let (_d, stack) = mutated(&[(
        "deploy/otel-collector/config.yaml",
        "      exporters: [debug]\n    logs:",
        "      exporters: []\n    logs:",
    )]);
    assert_reports(check_collector(&stack), "does not export to debug");
}

#[test]
fn catches_a_root_final_stage() {
    let (_d, stack) = mutated(&[("Dockerfile", "USER 10001:10001", "USER root")]);
    assert_reports(check_dockerfile(&stack), "USER \"root\" is root");
    let (_d, stack) = mutated(&[("Dockerfile", "USER 10001:10001", "")]);
    assert_reports(check_dockerfile(&stack), "sets no USER");
}

#[test]
fn a_user_in_the_builder_stage_does_not_count() {
    let (_d, stack) = mutated(&[
        (
            "Dockerfile",
            "WORKDIR /build\n",
            "WORKDIR /build\nUSER 1000\n",
        ),
        ("Dockerfile", "USER 10001:10001", ""),
    ]);
    assert_reports(check_dockerfile(&stack), "sets no USER");
}

#[test]
fn catches_the_dockerfile_copying_keys() {
    let (_d, stack) = mutated(&[(
        "Dockerfile",
        "COPY src ./src\n",
        "COPY src ./src\nCOPY certs/server.key /build/\n",
    )]);
    assert_reports(check_dockerfile(&stack), "copies \"certs/server.key\"");
}

#[test]
fn env_references_are_recognised_strictly() {
    assert_eq!(env_reference("${A}"), Some("A"));
    assert_eq!(env_reference("${A_B:?set it}"), Some("A_B"));
    assert_eq!(env_reference("${A:-}"), Some("A"));
    assert_eq!(env_reference("${A:-secret}"), None);
    assert_eq!(env_reference("prefix${A}"), None);
    assert_eq!(env_reference("$A"), None);
    assert_eq!(env_reference("${}"), None);
    assert!(env_reference_required("${A:?set it}"));
    assert!(!env_reference_required("${A?set it}"));
    assert!(!env_reference_required("${A:-}"));
    assert!(!env_reference_required("${A}"));
    assert!(!env_reference_required("hunter2"));
}

#[test]
fn port_entries_are_parsed_in_every_short_form() {
    let svc: Value = serde_yaml_ng::from_str(
        "ports: [\"8443\", \"8443:443\", \"127.0.0.1:9090:9090/tcp\", \"[::1]:1:2\", {target: 7, published: \"8\"}, 5]",
    )
    .unwrap();
    let got: Vec<(u16, Option<u16>)> = published(&svc)
        .unwrap()
        .into_iter()
        .map(|(_, c, h)| (c, h))
        .collect();
    assert_eq!(
        got,
        [
            (8443, None),
            (443, Some(8443)),
            (9090, Some(9090)),
            (2, Some(1)),
            (7, Some(8)),
            (5, None)
        ]
    );
}

#[test]
fn catches_the_tls_port_published_by_a_replica() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      - \"127.0.0.1:9092:9090\"\n",
        "      - \"127.0.0.1:9092:9090\"\n      - \"8443:8443\"\n",
    )]);
    let problems = check_ports(&stack);
    assert_reports(
        problems.clone(),
        "service \"gatehouse-2\" publishes \"8443:8443\": only the balancer may publish 8443",
    );
    assert_reports(problems, "its TLS listener is reached through the balancer");
}

#[test]
fn catches_replicas_that_would_share_an_audit_chain() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "hostname: gatehouse-2",
        "hostname: gatehouse-1",
    )]);
    assert_reports(
        check_replicas(&stack),
        "has hostname \"gatehouse-1\" like another replica",
    );
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      - gatehouse-2-audit:/var/lib/gatehouse/audit",
        "      - gatehouse-1-audit:/var/lib/gatehouse/audit",
    )]);
    assert_reports(
        check_replicas(&stack),
        "shares the audit volume \"gatehouse-1-audit\"",
    );
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "dir = \"/var/lib/gatehouse/audit\"\n",
        "dir = \"/var/lib/gatehouse/audit\"\nreplica = \"gw1\"\n",
    )]);
    assert_reports(
        check_replicas(&stack),
        "[audit] replica = \"gw1\" in the config every replica shares",
    );
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      - redis\n    networks:\n      backend:\n        # Fixed so that Gogs can trust the identity header from the replicas' addresses alone\n        # ([auth] TRUSTED_PROXY_IPS in deploy/gogs/app.ini lists both).\n        ipv4_address: 172.30.0.12",
        "    networks:\n      backend:\n        ipv4_address: 172.30.0.12",
    )]);
    let problems = check_replicas(&stack);
    assert_reports(
        problems,
        "service \"gatehouse-2\" is not built, started, configured or connected like \"gatehouse-1\"",
    );
}

#[test]
fn catches_a_single_gateway() {
    let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
        .unwrap();
    let start = text.find("  # gatehouse-2:").unwrap();
    let end = text.find("  # gogs:").unwrap();
    let (_d, stack) = mutated(&[("docker-compose.yml", &text[start..end], "")]);
    assert_reports(check_services(&stack), "expected at least two replicas");
    assert_reports(check_balancer(&stack), "are not the gateway replicas");
}

#[test]
fn catches_gogs_trusting_the_balancer() {
    let (_d, stack) = mutated(&[(
        "deploy/gogs/app.ini",
        "172.30.0.11/32, 172.30.0.12/32",
        "172.30.0.11/32, 172.30.0.12/32, 172.30.0.9/32",
    )]);
    assert_reports(
        check_gogs(&stack),
        "trusts 172.30.0.9, the address of \"balancer\"",
    );
}

#[test]
fn catches_a_balancer_that_hides_the_client() {
    let (_d, stack) = mutated(&[(
        "deploy/haproxy/haproxy.cfg",
        "default-server send-proxy-v2 check-send-proxy ",
        "default-server ",
    )]);
    assert_reports(check_balancer(&stack), "send no PROXY header");
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "proxy_protocol_from = [\"172.30.0.9\"]",
        "proxy_protocol_from = [\"172.30.0.0/24\"]",
    )]);
    assert_reports(check_balancer(&stack), "could name any client");
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "        ipv4_address: 172.30.0.9\n",
        "        ipv4_address: 172.30.0.8\n",
    )]);
    assert_reports(
        check_balancer(&stack),
        "does not cover the balancer's address 172.30.0.8",
    );
}

#[test]
fn catches_a_balancer_that_terminates_tls() {
    let (_d, stack) = mutated(&[(
        "deploy/haproxy/haproxy.cfg",
        "    bind :8443\n",
        "    bind :8443 ssl crt /usr/local/etc/haproxy/server.pem\n",
    )]);
    assert_reports(check_balancer(&stack), "terminates TLS");
    let (_d, stack) = mutated(&[(
        "deploy/haproxy/haproxy.cfg",
        "    mode tcp\n",
        "    mode http\n",
    )]);
    assert_reports(
        check_balancer(&stack),
        "mode http: the balancer must pass TLS through",
    );
}

#[test]
fn catches_a_balancer_missing_a_replica_or_its_port() {
    let (_d, stack) = mutated(&[(
        "deploy/haproxy/haproxy.cfg",
        "    server gatehouse-2 gatehouse-2:8443\n",
        "",
    )]);
    assert_reports(check_balancer(&stack), "are not the gateway replicas");
    let (_d, stack) = mutated(&[(
        "deploy/haproxy/haproxy.cfg",
        "gatehouse-1:8443",
        "gatehouse-1:9090",
    )]);
    assert_reports(
        check_balancer(&stack),
        "gatehouse-1:9090 is not a TLS listener port",
    );
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      - \"8443:8443\"\n",
        "      - \"8444:8443\"\n",
    )]);
    assert_reports(check_balancer(&stack), "does not publish 8443");
    assert_reports(
        check_gogs(&stack),
        "EXTERNAL_URL port 8443 is not a host port the balancer publishes",
    );
    let (_d, stack) = mutated(&[(
        "deploy/haproxy/haproxy.cfg",
        "uri /.gatehouse/ready",
        "uri /",
    )]);
    assert_reports(check_balancer(&stack), "does not ask /.gatehouse/ready");
}

#[test]
fn catches_redis_that_can_lose_or_evict() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      - always\n",
        "      - everysec\n",
    )]);
    assert_reports(
        check_redis(&stack),
        "--appendfsync is Some(\"everysec\"), want always",
    );
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      - noeviction\n",
        "      - allkeys-lru\n",
    )]);
    assert_reports(check_redis(&stack), "want noeviction");
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      - --appendonly\n      - \"yes\"\n",
        "",
    )]);
    assert_reports(check_redis(&stack), "--appendonly is None");
}

#[test]
fn catches_redis_exposed_or_without_a_shared_password() {
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "    expose:\n      - \"6379\"\n",
        "    ports:\n      - \"6379:6379\"\n",
    )]);
    assert_reports(check_redis(&stack), "publishes [\"6379:6379\"] to the host");
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      - ${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}\n",
        "      - hunter2\n",
    )]);
    assert_reports(
        check_redis(&stack),
        "--requirepass \"hunter2\" is not a required",
    );
    let (_d, stack) = mutated(&[("deploy/.env.example", "REDIS_PASSWORD=", "REDIS_PASS=")]);
    assert_reports(
        check_redis(&stack),
        "${REDIS_PASSWORD}, which deploy/.env.example does not document",
    );
    let (_d, stack) = mutated(&[(
        "docker-compose.yml",
        "      GATEHOUSE_REDIS_PASSWORD: ${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}",
        "      GATEHOUSE_REDIS_PASSWORD: ${OTHER_PASSWORD:?set OTHER_PASSWORD in .env}",
    )]);
    assert_reports(check_redis(&stack), "they must be the same value");
}

#[test]
fn catches_a_redis_url_gatehouse_cannot_use() {
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "url = \"redis://redis:6379/0\"",
        "url = \"redis://gatehouse:pw@cache:6380/0\"",
    )]);
    let problems = check_redis(&stack);
    assert_reports(problems.clone(), "carries credentials");
    assert_reports(problems.clone(), "host \"cache\" is not the redis service");
    assert_reports(problems, "port Some(6380)");
    let (_d, stack) = mutated(&[(
        "deploy/gatehouse.compose.toml",
        "[webhooks]\n",
        "[webhooks]\nstore = \"/var/lib/gatehouse/webhooks.sqlite\"\n",
    )]);
    assert_reports(
        check_redis(&stack),
        "[webhooks] store is set beside [redis]",
    );
}
