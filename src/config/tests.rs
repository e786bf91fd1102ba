use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/gatehouse/gatehouse.toml"), text)
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(ConfigError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

const MINIMAL: &str = r#"
[server]
listen = ["127.0.0.1:8443"]

[tls]
cert_file = "certs/server.crt"
key_file = "certs/server.key"

[audit]
dir = "audit"

[[routes]]
name = "gogs"
kind = "gogs"
hosts = ["Git.Example.com."]
upstream = "http://127.0.0.1:3000"
public = true
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.max_connections, defaults::MAX_CONNECTIONS);
    assert_eq!(c.server.timeouts.header_read, defaults::HEADER_READ);
    assert!(c.server.trusted_proxies.is_empty());
    let r = &c.routes[0];
    assert_eq!(r.hosts, ["git.example.com"]);
    assert_eq!(r.path_prefix, "/");
    assert_eq!(r.max_body_bytes, defaults::MAX_BODY_BYTES);
    assert!(r.websocket);
    // Relative paths are anchored at the config file's directory.
    assert_eq!(
        c.tls.unwrap().cert_file,
        Path::new("/etc/gatehouse/certs/server.crt")
    );
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../gatehouse.example.toml");
    let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.routes.iter().any(|r| r.kind == RouteKind::Gogs));
    assert!(c.routes.iter().any(|r| r.kind == RouteKind::Otlp));
}

#[test]
fn unknown_keys_are_errors_with_line_and_column() {
    let text = MINIMAL.replace("kind = \"gogs\"", "kind = \"gogs\"\nupstream_url = \"x\"");
    let p = problems(&text);
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("/etc/gatehouse/gatehouse.toml:15:1"),
        "{}",
        p[0]
    );
    assert!(p[0].contains("unknown field `upstream_url`"), "{}", p[0]);
}

#[test]
fn unknown_route_kind_lists_the_allowed_ones() {
    let p = problems(&MINIMAL.replace("kind = \"gogs\"", "kind = \"gitea\""));
    assert!(p[0].contains(":14:8:"), "{}", p[0]);
    assert!(
        p[0].contains("gogs") && p[0].contains("otlp") && p[0].contains("plain"),
        "{}",
        p[0]
    );
}

#[test]
fn bad_values_name_their_key_and_place() {
    let text = MINIMAL
        .replace("http://127.0.0.1:3000", "ftp://127.0.0.1:3000")
        .replace("listen = [\"127.0.0.1:8443\"]", "listen = [\"localhost:8443\"]\ntrusted_proxies = [\"10.0.0.0/33\"]\nshutdown_grace = \"30\"");
    let p = problems(&text);
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(
        p.iter()
            .any(|l| l.contains(":3:11: server.listen[0]") && l.contains("not a socket address")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.contains(":4:20: server.trusted_proxies[0]")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.contains(":5:18: server.shutdown_grace") && l.contains("ms, s, m or h")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.contains("routes[0].upstream") && l.contains("allowed: http, https")),
        "{p:#?}"
    );
}

#[test]
fn upstream_with_path_or_credentials_is_refused() {
    let p = problems(&MINIMAL.replace("http://127.0.0.1:3000", "http://u:p@127.0.0.1:3000/gogs"));
    assert!(p.iter().any(|l| l.contains("credentials")), "{p:#?}");
    assert!(p.iter().any(|l| l.contains("path or query")), "{p:#?}");
}

#[test]
fn duplicate_names_and_host_claims_are_refused() {
    let text = format!(
        "{MINIMAL}\n[[routes]]\nname = \"gogs\"\nkind = \"plain\"\nhosts = [\"git.example.com\"]\nupstream = \"http://127.0.0.1:4000\"\n"
    );
    let p = problems(&text);
    assert!(p.iter().any(|l| l.contains("used twice")), "{p:#?}");
    assert!(p.iter().any(|l| l.contains("already claimed")), "{p:#?}");
}

#[test]
fn tls_listener_without_tls_section_is_refused() {
    let text = MINIMAL.replace(
        "[tls]\ncert_file = \"certs/server.crt\"\nkey_file = \"certs/server.key\"\n",
        "",
    );
    let p = problems(&text);
    assert!(
        p.iter().any(|l| l.contains("need a [tls] section")),
        "{p:#?}"
    );
}

#[test]
fn syntax_errors_point_at_the_line() {
    let p = problems("[server]\nlisten = [\"127.0.0.1:1\"\n");
    assert!(
        p[0].starts_with("/etc/gatehouse/gatehouse.toml:2:"),
        "{}",
        p[0]
    );
}

#[test]
fn host_with_port_or_scheme_is_refused() {
    let p = problems(&MINIMAL.replace("Git.Example.com.", "https://git.example.com"));
    assert!(p[0].contains("routes[0].hosts[0]"), "{}", p[0]);
}

#[test]
fn websocket_needs_http1_upstream() {
    let text = MINIMAL.replace(
        "upstream = \"http://127.0.0.1:3000\"",
        "upstream = \"http://127.0.0.1:3000\"\nupstream_protocol = \"http2\"\nwebsocket = true",
    );
    let p = problems(&text);
    assert!(
        p.iter().any(|l| l.contains("routes[0].websocket")),
        "{p:#?}"
    );
}

const IDENTITY: &str = r#"
[identity.oidc]
issuer = "https://idp.example.com/"
client_id = "gatehouse"
client_secret_env = "OIDC_SECRET"

[identity.session]
keys_file = "keys/session.keys"

[[identity.jwt]]
issuer = "https://idp.example.com"
audiences = ["gatehouse"]
"#;

fn with_identity(route_extra: &str, identity: &str) -> String {
    MINIMAL
        .replace("public = true\n", route_extra)
        .replace("[[routes]]", &format!("{identity}\n[[routes]]"))
}

#[test]
fn routes_are_closed_unless_identity_or_public_says_otherwise() {
    let p = problems(&with_identity("", ""));
    assert!(
        p.iter().any(|l| l.contains(
            "routes[0].auth: session (the default for this route kind) needs [identity.oidc]"
        ) && l.contains("public = true")),
        "{p:#?}"
    );
    let c = parse(&with_identity("", IDENTITY)).unwrap_or_else(|e| panic!("{e}"));
    let r = &c.routes[0];
    assert!(r.auth.session && r.auth.bearer && r.auth.basic && !r.auth.public);
    assert_eq!(
        c.identity.oidc.as_ref().unwrap().issuer,
        "https://idp.example.com"
    );
    assert_eq!(
        c.identity.session.as_ref().unwrap().keys,
        SecretRef::File("/etc/gatehouse/keys/session.keys".into())
    );
    assert_eq!(r.gogs.as_ref().unwrap().user_header, "x-webauth-user");
}

#[test]
fn the_jwks_refresh_period_defaults_to_ten_minutes_and_is_at_least_a_second() {
    let c = parse(&with_identity("", IDENTITY)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.identity.jwks_refresh, Duration::from_secs(600));
    let identity = format!("[identity]\njwks_refresh = \"2s\"\n{IDENTITY}");
    let c = parse(&with_identity("", &identity)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.identity.jwks_refresh, Duration::from_secs(2));
    let identity = format!("[identity]\njwks_refresh = \"500ms\"\n{IDENTITY}");
    let p = problems(&with_identity("", &identity));
    assert!(
        p.iter()
            .any(|l| l.contains("identity.jwks_refresh: must be at least 1s")),
        "{p:#?}"
    );
}

#[test]
fn shared_secret_algorithms_and_long_leeway_are_refused() {
    let identity = IDENTITY.replace("audiences = [\"gatehouse\"]", "audiences = [\"gatehouse\"]\nalgorithms = [\"RS256\", \"HS256\", \"none\"]\nleeway = \"5m\"");
    let p = problems(&with_identity("", &identity));
    assert!(
        p.iter().any(|l| l.contains("identity.jwt[0].algorithms")
            && l.contains("HS256 is a shared-secret algorithm")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.contains("\"none\" is not a supported algorithm")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.contains("identity.jwt[0].leeway: must be at most 60s")),
        "{p:#?}"
    );
}

#[test]
fn secrets_must_be_referenced_exactly_once_and_never_inline() {
    let identity = IDENTITY.replace(
        "client_secret_env = \"OIDC_SECRET\"",
        "client_secret = \"hunter2\"",
    );
    let p = problems(&with_identity("", &identity));
    assert!(p[0].contains("unknown field `client_secret`"), "{p:#?}");
    let identity = IDENTITY.replace(
        "client_secret_env = \"OIDC_SECRET\"",
        "client_secret_env = \"A\"\nclient_secret_file = \"b\"",
    );
    let p = problems(&with_identity("", &identity));
    assert!(p.iter().any(|l| l.contains("set either identity.oidc.client_secret_env or identity.oidc.client_secret_file, not both")), "{p:#?}");
    let identity = IDENTITY.replace("client_secret_env = \"OIDC_SECRET\"\n", "");
    let p = problems(&with_identity("", &identity));
    assert!(
        p.iter().any(
            |l| l.contains("client_secret_env or identity.oidc.client_secret_file is required")
        ),
        "{p:#?}"
    );
}

#[test]
fn issuers_must_be_https() {
    let identity = IDENTITY.replace(
        "issuer = \"https://idp.example.com/\"",
        "issuer = \"http://idp.example.com\"",
    );
    let p = problems(&with_identity("", &identity));
    assert!(
        p.iter()
            .any(|l| l.contains("identity.oidc.issuer") && l.contains("https://")),
        "{p:#?}"
    );
}

#[test]
fn public_conflicts_with_auth_and_broker_sections_fit_their_kind() {
    let p = problems(&MINIMAL.replace("public = true\n", "public = true\nauth = [\"bearer\"]\n"));
    assert!(
        p.iter()
            .any(|l| l.contains("a public route takes no auth methods")),
        "{p:#?}"
    );
    let p = problems(&MINIMAL.replace(
        "public = true\n",
        "public = true\n[routes.otlp]\naccess_token_env = \"LS\"\n",
    ));
    assert!(
        p.iter()
            .any(|l| l.contains("routes[0].otlp: only applies to routes of kind \"otlp\"")),
        "{p:#?}"
    );
    let p = problems(&MINIMAL.replace(
        "public = true\n",
        "public = true\n[[routes.gogs.credentials]]\nusername = \"broker\"\n",
    ));
    assert!(
        p.iter()
            .any(|l| l.contains("routes[0].gogs.credentials[0].token_env or")),
        "{p:#?}"
    );
}

#[test]
fn audit_section_is_required_and_gets_documented_defaults() {
    let without = MINIMAL.replace("[audit]\ndir = \"audit\"\n", "");
    let p = problems(&without);
    assert!(p.iter().any(|p| p.contains("no [audit] section")), "{p:?}");

    let c = parse(MINIMAL).unwrap();
    let a = c.audit.expect("audit");
    assert_eq!(a.dir, Path::new("/etc/gatehouse/audit"));
    assert_eq!(
        a.fsync,
        crate::audit::FsyncPolicy::Batch {
            interval: audit::defaults::BATCH_INTERVAL,
            records: audit::defaults::BATCH_RECORDS
        }
    );
    assert_eq!(c.routes[0].audit, AuditRequirement::Required);
    assert!(a.signing_key_file.is_none());
}

#[test]
fn audit_settings_are_checked_with_their_location() {
    let text = MINIMAL
        .replace(
            "[audit]\ndir = \"audit\"\n",
            "[audit]\ndir = \"audit\"\nreplica = \"GW 1\"\nfsync = \"always\"\nbatch_interval = \"10ms\"\nrotate_size = \"1KiB\"\n",
        )
        .replace("public = true", "public = true\naudit = \"best_effort\"");
    let p = problems(&text);
    assert!(
        p.iter()
            .any(|p| p.contains("audit.replica") && p.contains(":11:")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.contains("audit.batch_interval") && p.contains("fsync = \"batch\"")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.contains("audit.rotate_size") && p.contains("64KiB")),
        "{p:?}"
    );
    let p = problems(&MINIMAL.replace("fsync", "x").replace(
        "[audit]\ndir = \"audit\"",
        "[audit]\ndir = \"audit\"\nfsync = \"sometimes\"",
    ));
    assert!(p[0].contains("always") && p[0].contains("never"), "{p:?}");
}

#[test]
fn the_gateway_route_name_is_reserved() {
    let p = problems(&MINIMAL.replace("name = \"gogs\"", "name = \"gatehouse\""));
    assert!(p.iter().any(|p| p.contains("reserved")), "{p:?}");
}

#[test]
fn attribution_needs_the_webhook_store_and_names_its_bad_values() {
    let without_store = format!("{MINIMAL}\n[attribution]\noverwrite = true\n");
    let p = problems(&without_store);
    assert!(
        p.iter()
            .any(|e| e.contains("attribution") && e.contains("needs [webhooks]")),
        "{p:?}"
    );
    let bad = format!(
        "{MINIMAL}\n[webhooks]\nstore = \"hooks.db\"\n[attribution]\n\
         [[attribution.services]]\nservice = \"checkout\"\nrepository = \"checkout\"\nbranch = \"refs/heads/main\"\n\
         [[attribution.services]]\nservice = \"checkout\"\nrepository = \"platform/checkout\"\nenvironment = \"\"\n"
    );
    let p = problems(&bad);
    let expect = [
        "attribution.services[0].repository: \"checkout\" is not owner/name",
        "attribution.services[0].branch: \"refs/heads/main\" is not a branch name",
        "attribution.services[1].service: service \"checkout\" is mapped twice",
        "attribution.services[1].environment: must not be empty",
    ];
    for e in expect {
        assert!(p.iter().any(|x| x.contains(e)), "{e} not in {p:?}");
    }
    // Every problem points at its line.
    assert!(
        p.iter()
            .all(|x| x.starts_with("/etc/gatehouse/gatehouse.toml:")),
        "{p:?}"
    );
    let good = format!(
        "{MINIMAL}\n[webhooks]\nstore = \"hooks.db\"\n[[webhooks.sources]]\nname = \"gogs\"\nsecret_env = \"GOGS_HOOK_SECRET\"\n[attribution]\n\
         [[attribution.services]]\nservice = \"checkout\"\nrepository = \"platform/checkout\"\n"
    );
    let c = parse(&good).unwrap();
    assert!(c.attribution.enrich && !c.attribution.overwrite);
    assert_eq!(c.attribution.services[0].git_ref, "refs/heads/master");
}

#[test]
fn otlp_signal_paths_must_be_plain_paths() {
    let text = format!(
        "{MINIMAL}\n[[routes]]\nname = \"ls\"\nkind = \"otlp\"\nhosts = [\"otlp.example.com\"]\nupstream = \"https://ingest.lightstep.com\"\npublic = true\n\
         [routes.otlp]\ntraces_path = \"traces/otlp/v0.9\"\nmetrics_path = \"/metrics/../v0.9\"\n"
    );
    let p = problems(&text);
    assert!(
        p.iter().any(|e| e.contains("routes[1].otlp.traces_path")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|e| e.contains("routes[1].otlp.metrics_path")),
        "{p:?}"
    );
}

#[test]
fn redis_settings_keep_credentials_out_and_replace_the_webhook_store() {
    let hooks = "[webhooks]\n[[webhooks.sources]]\nname = \"gogs\"\nsecret_env = \"HOOK\"\n";
    let ok = format!(
        "{MINIMAL}[redis]\nurl = \"rediss://redis.internal:6380/2\"\nusername = \"gatehouse\"\npassword_env = \"REDIS_PW\"\nca_file = \"certs/redis-ca.crt\"\n{hooks}"
    );
    let c = parse(&ok).unwrap();
    let r = c.redis.as_ref().unwrap();
    assert!(r.tls());
    assert_eq!(r.prefix, "gatehouse:");
    assert_eq!(r.timeout, redis::defaults::TIMEOUT);
    assert_eq!(r.password, Some(SecretRef::Env("REDIS_PW".into())));
    assert_eq!(
        r.ca_file.as_deref(),
        Some(Path::new("/etc/gatehouse/certs/redis-ca.crt"))
    );
    assert_eq!(c.webhooks.as_ref().unwrap().store, None);

    for (redis, key, says) in [
        (
            "url = \"redis://:pw@redis:6379\"",
            "redis.url",
            "credentials do not go in the url",
        ),
        (
            "url = \"http://redis:6379\"",
            "redis.url",
            "expected redis://",
        ),
        (
            "url = \"redis://redis:6379/x\"",
            "redis.url",
            "not a database number",
        ),
        (
            "url = \"redis://redis:6379\"\nca_file = \"ca.crt\"",
            "redis.ca_file",
            "rediss://",
        ),
        (
            "url = \"redis://redis:6379\"\nusername = \"gw\"",
            "redis.username",
            "needs password_env",
        ),
        (
            "url = \"redis://r:1\"\npassword_env = \"A\"\npassword_file = \"b\"",
            "redis.password",
            "not both",
        ),
        (
            "url = \"redis://r:1\"\nprefix = \"a b\"",
            "redis.prefix",
            "without spaces",
        ),
    ] {
        let p = problems(&format!("{MINIMAL}[redis]\n{redis}\n{hooks}"));
        assert!(
            p.iter().any(|p| p.contains(key) && p.contains(says)),
            "{redis}: {p:?}"
        );
    }
    // With Redis the store is refused; without it, required.
    let p = problems(&format!(
        "{MINIMAL}[redis]\nurl = \"redis://r:1\"\n{}",
        hooks.replace("[webhooks]\n", "[webhooks]\nstore = \"hooks.sqlite\"\n")
    ));
    assert!(
        p.iter()
            .any(|p| p.contains("webhooks.store") && p.contains("remove store")),
        "{p:?}"
    );
    let p = problems(&format!("{MINIMAL}{hooks}"));
    assert!(
        p.iter()
            .any(|p| p.contains("webhooks.store") && p.contains("unless [redis]")),
        "{p:?}"
    );
}
