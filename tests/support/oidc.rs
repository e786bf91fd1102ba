//! A real OpenID Provider and a real browser for the gateway's identity tests.
//!
//! [`OidcProvider`] runs `tests/oidc/provider.mjs` (the `oidc-provider` npm package, an
//! OpenID-certified implementation) on Node over HTTPS with the dev CA's server certificate, at
//! `https://127.0.0.1:PORT`. The browser helpers run `tests/oidc/browser.mjs` (playwright-core
//! driving Debian's `/usr/bin/chromium`, headless) with `git.example.test` and
//! `other.example.test` resolved to 127.0.0.1 and the dev server certificate's key trusted.
//!
//! What the provider offers (see the header of tests/oidc/provider.mjs):
//! - users alice, bob, carol, mallory, all with password [`PASSWORD`];
//! - clients [`WEB_CLIENT`] (confidential, code + refresh, PKCE S256 required, redirect URIs
//!   `https://{git,other}.example.test:<any port>/.gatehouse/oidc/callback`, post-logout
//!   `https://git.example.test:<any port>/`), [`CI_CLIENT`] (client credentials) and
//!   [`CLI_CLIENT`] (public, device code + refresh);
//! - JWT access tokens (RFC 9068, `typ: at+jwt`, `aud: gatehouse`) for the CLI and CI clients.
//!
//! Needs `node`, `npm` (once, for `npm ci`), `curl` and `/usr/bin/chromium`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{DevCa, run_with_timeout};

pub const WEB_CLIENT: &str = "gatehouse-web";
pub const CI_CLIENT: &str = "ci-pipeline";
pub const CLI_CLIENT: &str = "gatehouse-cli";
/// Every test user's password.
pub const PASSWORD: &str = "correct horse";
/// The `aud` of JWT access tokens minted for the gateway.
pub const AUDIENCE: &str = "gatehouse";
/// The resource indicator (RFC 8707) whose tokens carry `aud` = [`AUDIENCE`]; the default one
/// of the CLI and CI clients.
pub const RESOURCE: &str = "urn:gatehouse";
/// The scopes the CLI asks for by default.
pub const CLI_SCOPE: &str = "openid profile email groups offline_access";

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// `tests/oidc` in this checkout.
pub fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("oidc")
}

/// Installs `tests/oidc/node_modules` with `npm ci` when it is missing or does not match
/// `package.json`. Runs at most once per test process, and under an exclusive `flock` so
/// parallel test processes don't race.
pub fn ensure_node_deps() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if node_deps_present() {
            return;
        }
        let dir = oidc_dir();
        let lock = std::env::temp_dir().join("gatehouse-oidc-npm-ci.lock");
        let script =
            "node -e \"$CHECK\" 2>/dev/null || npm ci --no-audit --no-fund --prefix \"$DIR\"";
        let mut cmd = Command::new("flock");
        cmd.arg(&lock)
            .arg("sh")
            .arg("-c")
            .arg(script)
            .env("DIR", &dir)
            .env("CHECK", NODE_DEPS_CHECK_JS)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(&dir);
        let (ok, out, err) = run_with_timeout(&mut cmd, 600);
        assert!(
            ok && node_deps_present(),
            "npm ci --prefix {} failed:\n{out}\n{err}",
            dir.display()
        );
    });
}

/// Exits 0 when every dependency in package.json is installed at exactly its version.
const NODE_DEPS_CHECK_JS: &str = "const fs=require('fs');\
const p=JSON.parse(fs.readFileSync('package.json','utf8'));\
for (const [n,v] of Object.entries(p.dependencies)) {\
const i=JSON.parse(fs.readFileSync('node_modules/'+n+'/package.json','utf8'));\
if (i.version!==v) process.exit(1);}";

fn node_deps_present() -> bool {
    let dir = oidc_dir();
    let Ok(text) = std::fs::read_to_string(dir.join("package.json")) else {
        return false;
    };
    let Ok(pkg) = Json::parse(&text) else {
        return false;
    };
    let Some(deps) = pkg["dependencies"].as_object() else {
        return false;
    };
    deps.iter().all(|(name, version)| {
        std::fs::read_to_string(dir.join("node_modules").join(name).join("package.json"))
            .ok()
            .and_then(|t| Json::parse(&t).ok())
            .is_some_and(|installed| installed["version"].as_str() == version.as_str())
    })
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A running `tests/oidc/provider.mjs`.
pub struct OidcProvider {
    pub child: Child,
    /// `https://127.0.0.1:PORT`, no trailing slash.
    pub issuer: String,
    /// Secret of [`WEB_CLIENT`].
    pub web_secret: String,
    /// Secret of [`CI_CLIENT`].
    pub ci_secret: String,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
    /// Copies of the dev CA certificate and the server certificate the provider serves.
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    discovery: std::sync::OnceLock<Json>,
    /// The environment it was started with (for [`Self::restart`]).
    env: Vec<(String, String)>,
    ca_env: Vec<(String, PathBuf)>,
}

impl OidcProvider {
    /// Starts the provider with default token lifetimes (ID 3600 s, access 600 s).
    pub fn start(ca: &DevCa) -> OidcProvider {
        Self::start_with_env(ca, &[])
    }

    /// Starts the provider with extra environment, e.g. `("OIDC_ACCESS_TOKEN_TTL", "2")`,
    /// `("OIDC_ID_TOKEN_TTL", "5")`, `("OIDC_ID_TOKEN_ALG", "ES256")`,
    /// `("OIDC_ACCESS_TOKEN_ALG", "EdDSA")`, `("OIDC_ID_TOKEN_GROUPS", "omit")` (groups only
    /// at userinfo and in access tokens).
    pub fn start_with_env(ca: &DevCa, env: &[(&str, &str)]) -> OidcProvider {
        ensure_node_deps();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.crt");
        let server_cert = dir.path().join("server.crt");
        let server_key = dir.path().join("server.key");
        std::fs::copy(ca.ca(), &ca_file).expect("copy ca");
        std::fs::copy(ca.cert(), &server_cert).expect("copy cert");
        std::fs::copy(ca.key(), &server_key).expect("copy key");
        let log_path = dir.path().join("provider.log");
        let web_secret = format!("web-{}", random_hex(16));
        let ci_secret = format!("ci-{}", random_hex(16));
        let mut all: Vec<(String, String)> = vec![
            (
                "OIDC_ADDR_FILE".into(),
                path_text(&dir.path().join("issuer")),
            ),
            ("OIDC_TLS_CERT".into(), path_text(&server_cert)),
            ("OIDC_TLS_KEY".into(), path_text(&server_key)),
            (
                "OIDC_KEYS_FILE".into(),
                path_text(&dir.path().join("keys.json")),
            ),
            ("OIDC_WEB_CLIENT_SECRET".into(), web_secret.clone()),
            ("OIDC_CI_CLIENT_SECRET".into(), ci_secret.clone()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut probe = Command::new("true");
        ca.apply_env(&mut probe);
        let ca_env: Vec<(String, PathBuf)> = probe
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), PathBuf::from(v?))))
            .collect();
        let (child, issuer) = Self::spawn(dir.path(), &log_path, &ca_env, &all);
        OidcProvider {
            child,
            issuer,
            web_secret,
            ci_secret,
            dir,
            log_path,
            ca_file,
            server_cert,
            discovery: std::sync::OnceLock::new(),
            env: all,
            ca_env,
        }
    }

    /// Starts the process and waits until it listens (the log is appended to): the child
    /// and the issuer.
    fn spawn(
        dir: &Path,
        log_path: &Path,
        ca_env: &[(String, PathBuf)],
        env: &[(String, String)],
    ) -> (Child, String) {
        let addr_file = dir.join("issuer");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("log file");
        let mut cmd = Command::new("node");
        cmd.arg(oidc_dir().join("provider.mjs"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in ca_env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn node tests/oidc/provider.mjs");
        let log = || std::fs::read_to_string(log_path).unwrap_or_default();
        // Usually about a second; generous for a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Written atomically (rename) by the provider once it listens.
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && let Some(issuer) = text.lines().find_map(|l| l.strip_prefix("issuer="))
            {
                return (child, issuer.trim().to_string());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "OIDC provider exited with {status} before listening:\n{}",
                    log()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("OIDC provider did not start:\n{}", log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a stopped provider again: the same issuer (port), keys, clients and secrets.
    pub fn restart(&mut self) {
        self.stop();
        let port = self
            .issuer
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .expect("issuer port");
        let issuer = self.issuer.clone();
        self.env.retain(|(k, _)| k != "OIDC_PORT");
        self.env.push(("OIDC_PORT".into(), port));
        let (child, issuer_now) =
            Self::spawn(self.dir.path(), &self.log_path, &self.ca_env, &self.env);
        self.child = child;
        self.issuer = issuer_now;
        assert_eq!(
            self.issuer, issuer,
            "the restarted provider is another issuer"
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `curl` with this provider's CA only.
    pub fn curl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("curl");
        cmd.arg("--silent")
            .arg("--show-error")
            .arg("--max-time")
            .arg("20")
            .arg("--cacert")
            .arg(&self.ca_file)
            .args(args);
        for var in [
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "GIT_SSL_CAINFO",
        ] {
            cmd.env(var, &self.ca_file);
        }
        cmd
    }

    /// Runs curl and returns (HTTP status, body). Panics when curl itself fails.
    pub fn http(&self, args: &[&str]) -> (u16, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--write-out", "\n%{http_code}"]);
        let (ok, out, err) = run_with_timeout(&mut self.curl(&all), 30);
        assert!(
            ok,
            "curl {args:?} failed: {err}\nprovider log:\n{}",
            self.log()
        );
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// GET returning (status, parsed JSON body).
    pub fn get_json(&self, url: &str) -> (u16, Json) {
        let (status, body) = self.http(&[url]);
        let json = Json::parse(&body)
            .unwrap_or_else(|e| panic!("GET {url}: {status} non-JSON body ({e}): {body}"));
        (status, json)
    }

    /// The discovery document (`/.well-known/openid-configuration`), fetched once.
    pub fn discovery(&self) -> &Json {
        self.discovery.get_or_init(|| {
            let url = format!("{}/.well-known/openid-configuration", self.issuer);
            let (status, doc) = self.get_json(&url);
            assert_eq!(status, 200, "discovery: {doc:?}\n{}", self.log());
            doc
        })
    }

    /// An endpoint URL from discovery, e.g. `endpoint("token_endpoint")`.
    pub fn endpoint(&self, name: &str) -> String {
        self.discovery()[name]
            .as_str()
            .unwrap_or_else(|| panic!("discovery has no {name}: {:?}", self.discovery()))
            .to_string()
    }

    /// POSTs a form to the token endpoint; `basic` is (client_id, secret) for
    /// client_secret_basic, None for public clients (put `client_id` in `params`).
    pub fn token_request(
        &self,
        basic: Option<(&str, &str)>,
        params: &[(&str, &str)],
    ) -> (u16, Json) {
        let token_endpoint = self.endpoint("token_endpoint");
        let mut args: Vec<String> = Vec::new();
        if let Some((id, secret)) = basic {
            // RFC 6749 2.3.1: both parts form-encoded before Basic.
            args.push("--user".into());
            args.push(format!("{}:{}", form_encode(id), form_encode(secret)));
        }
        for (k, v) in params {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        args.push(token_endpoint);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, body) = self.http(&args);
        let json = Json::parse(&body)
            .unwrap_or_else(|e| panic!("token endpoint: {status} non-JSON body ({e}): {body}"));
        (status, json)
    }

    /// A client-credentials access token (a JWT for `aud` gatehouse unless `extra_params` asks
    /// for another `resource`). Panics unless the provider issues one.
    pub fn client_credentials_token(
        &self,
        client_id: &str,
        secret: &str,
        extra_params: &[(&str, &str)],
    ) -> String {
        let mut params = vec![("grant_type", "client_credentials")];
        params.extend_from_slice(extra_params);
        let (status, json) = self.token_request(Some((client_id, secret)), &params);
        match (status, json["access_token"].as_str()) {
            (200, Some(token)) => token.to_string(),
            _ => panic!(
                "client_credentials for {client_id}: {status} {json:?}\n{}",
                self.log()
            ),
        }
    }

    /// Starts a device authorization for `client_id` with [`CLI_SCOPE`].
    pub fn device_authorize(&self, client_id: &str) -> DeviceGrant {
        self.device_authorize_with(client_id, CLI_SCOPE, &[])
    }

    pub fn device_authorize_with(
        &self,
        client_id: &str,
        scope: &str,
        extra_params: &[(&str, &str)],
    ) -> DeviceGrant {
        let mut args: Vec<String> = vec![
            "--data-urlencode".into(),
            format!("client_id={client_id}"),
            "--data-urlencode".into(),
            format!("scope={scope}"),
        ];
        for (k, v) in extra_params {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        args.push(self.endpoint("device_authorization_endpoint"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, body) = self.http(&args);
        let json = Json::parse(&body).unwrap_or_else(|e| panic!("device auth: {e}: {body}"));
        let field = |name: &str| {
            json[name]
                .as_str()
                .unwrap_or_else(|| panic!("device auth {status}: no {name} in {body}"))
                .to_string()
        };
        DeviceGrant {
            client_id: client_id.to_string(),
            device_code: field("device_code"),
            user_code: field("user_code"),
            verification_uri: field("verification_uri"),
            verification_uri_complete: field("verification_uri_complete"),
            expires_in: json["expires_in"].as_u64().unwrap_or(0),
        }
    }

    /// Completes a device login in the browser: confirms the code, signs in as `user`.
    /// Err carries browser.mjs's message (e.g. "login refused: invalid credentials").
    pub fn device_complete(
        &self,
        grant: &DeviceGrant,
        user: &str,
        password: &str,
    ) -> Result<(), String> {
        let (ok, out, err) = run_browser(
            &[&self.server_cert],
            &["device", &grant.verification_uri_complete, user, password],
        );
        let line = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
        match Json::parse(line) {
            Ok(json) if ok && json["ok"].as_bool() == Some(true) => Ok(()),
            Ok(json) => Err(json["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{out}{err}"))),
            Err(_) => Err(format!("browser.mjs device failed: {out}{err}")),
        }
    }

    /// One device-code token request: Ok(tokens) or Err((status, error JSON)).
    pub fn try_device_token(&self, grant: &DeviceGrant) -> Result<TokenSet, (u16, Json)> {
        let (status, json) = self.token_request(
            None,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", &grant.client_id),
                ("device_code", &grant.device_code),
            ],
        );
        if status == 200 {
            Ok(TokenSet::from_json(json))
        } else {
            Err((status, json))
        }
    }

    /// Polls the token endpoint until the device grant yields tokens (10 s at most).
    pub fn device_token(&self, grant: &DeviceGrant) -> TokenSet {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_device_token(grant) {
                Ok(tokens) => return tokens,
                Err((_, e))
                    if matches!(
                        e["error"].as_str(),
                        Some("authorization_pending" | "slow_down")
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err((status, e)) => {
                    panic!(
                        "device token: {status} {e:?}\nprovider log:\n{}",
                        self.log()
                    )
                }
            }
        }
    }

    /// A refresh-token grant; `secret` None for public clients.
    pub fn refresh(
        &self,
        client_id: &str,
        secret: Option<&str>,
        refresh_token: &str,
    ) -> Result<TokenSet, (u16, Json)> {
        let basic = secret.map(|s| (client_id, s));
        let mut params = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        if basic.is_none() {
            params.push(("client_id", client_id));
        }
        let (status, json) = self.token_request(basic, &params);
        if status == 200 {
            Ok(TokenSet::from_json(json))
        } else {
            Err((status, json))
        }
    }

    /// The authorization URL for [`WEB_CLIENT`] (code flow, PKCE S256).
    pub fn authorize_url(
        &self,
        redirect_uri: &str,
        scope: &str,
        state: &str,
        nonce: &str,
        code_challenge: &str,
        extra_params: &[(&str, &str)],
    ) -> String {
        let mut url = format!("{}?", self.endpoint("authorization_endpoint"));
        let mut params = vec![
            ("client_id", WEB_CLIENT),
            ("response_type", "code"),
            ("scope", scope),
            ("redirect_uri", redirect_uri),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", code_challenge),
            ("code_challenge_method", "S256"),
        ];
        params.extend_from_slice(extra_params);
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect();
        url.push_str(&query.join("&"));
        url
    }

    /// Exchanges an authorization code of [`WEB_CLIENT`].
    pub fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenSet, (u16, Json)> {
        let (status, json) = self.token_request(
            Some((WEB_CLIENT, &self.web_secret)),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", code_verifier),
            ],
        );
        if status == 200 {
            Ok(TokenSet::from_json(json))
        } else {
            Err((status, json))
        }
    }

    /// GET the userinfo endpoint with a bearer token: (status, body).
    pub fn userinfo(&self, access_token: &str) -> (u16, String) {
        let auth = format!("Authorization: Bearer {access_token}");
        self.http(&["--header", &auth, &self.endpoint("userinfo_endpoint")])
    }

    /// Runs browser.mjs `login` trusting this provider's (= the dev CA's) server certificate,
    /// which the test gateway serves too. Panics only when the browser run produced no outcome.
    pub fn browser_login(&self, start_url: &str, user: &str, password: &str) -> BrowserOutcome {
        browser_login_trusting(&[&self.server_cert], start_url, user, password, &[])
    }

    /// Like [`Self::browser_login`], then visits `then_urls` in the same browser (a provider
    /// sign-out confirmation met there is confirmed); their pages are in `outcome.then`.
    pub fn browser_login_then(
        &self,
        start_url: &str,
        user: &str,
        password: &str,
        then_urls: &[&str],
    ) -> BrowserOutcome {
        browser_login_trusting(&[&self.server_cert], start_url, user, password, then_urls)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A device authorization response (RFC 8628 3.2).
#[derive(Debug, Clone)]
pub struct DeviceGrant {
    pub client_id: String,
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub expires_in: u64,
}

/// A token endpoint response.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
    pub raw: Json,
}

impl TokenSet {
    fn from_json(json: Json) -> TokenSet {
        let s = |k: &str| json[k].as_str().map(str::to_string);
        TokenSet {
            access_token: s("access_token").unwrap_or_else(|| panic!("no access_token: {json:?}")),
            refresh_token: s("refresh_token"),
            id_token: s("id_token"),
            token_type: s("token_type").unwrap_or_default(),
            expires_in: json["expires_in"].as_u64(),
            scope: s("scope"),
            raw: json,
        }
    }
}

/// A cookie in the browser at the end of a run.
#[derive(Debug, Clone)]
pub struct BrowserCookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    pub secure: bool,
    pub http_only: bool,
    /// "Strict", "Lax" or "None".
    pub same_site: String,
    /// Unix seconds; -1 for session cookies.
    pub expires: f64,
}

/// One settled page.
#[derive(Debug, Clone)]
pub struct BrowserPage {
    pub final_url: String,
    /// Status of the last non-redirect main-frame response (None if the page failed to load).
    pub status: Option<u16>,
    /// First 4000 characters of the page's text.
    pub body: String,
    pub cookies: Vec<BrowserCookie>,
}

impl BrowserPage {
    fn from_json(j: &Json) -> BrowserPage {
        BrowserPage {
            final_url: j["final_url"].as_str().unwrap_or_default().to_string(),
            status: j["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
            body: j["body"].as_str().unwrap_or_default().to_string(),
            cookies: j["cookies"]
                .as_array()
                .unwrap_or(&[])
                .iter()
                .map(|c| BrowserCookie {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    value: c["value"].as_str().unwrap_or_default().to_string(),
                    domain: c["domain"].as_str().unwrap_or_default().to_string(),
                    path: c["path"].as_str().unwrap_or_default().to_string(),
                    secure: c["secure"].as_bool().unwrap_or(false),
                    http_only: c["httpOnly"].as_bool().unwrap_or(false),
                    same_site: c["sameSite"].as_str().unwrap_or_default().to_string(),
                    expires: c["expires"].as_f64().unwrap_or(-1.0),
                })
                .collect(),
        }
    }

    pub fn cookie(&self, name: &str) -> Option<&BrowserCookie> {
        self.cookies.iter().find(|c| c.name == name)
    }
}

/// What browser.mjs `login` saw.
#[derive(Debug, Clone)]
pub struct BrowserOutcome {
    /// The page after signing in (or the first page, when no login form was shown).
    pub page: BrowserPage,
    pub final_url: String,
    pub status: Option<u16>,
    pub body: String,
    pub cookies: Vec<BrowserCookie>,
    /// Whether the provider's login form was shown.
    pub login_form_seen: bool,
    /// The login form's error text after a refused password ("invalid credentials").
    pub login_error: Option<String>,
    /// Pages of the `then_urls`, in order.
    pub then: Vec<BrowserPage>,
    /// Whether browser.mjs exited 0, and its stderr.
    pub ok: bool,
    pub stderr: String,
}

impl BrowserOutcome {
    pub fn cookie(&self, name: &str) -> Option<&BrowserCookie> {
        self.page.cookie(name)
    }

    /// The gateway's session cookies as a `Cookie` header value.
    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .filter(|c| c.name.starts_with("__Host-gatehouse"))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Runs browser.mjs with the given certificates' keys trusted; returns (ok, stdout, stderr).
pub fn run_browser(trusted_certs: &[&Path], args: &[&str]) -> (bool, String, String) {
    ensure_node_deps();
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install -y chromium"
    );
    let certs: Vec<String> = trusted_certs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut cmd = Command::new("node");
    cmd.arg(oidc_dir().join("browser.mjs"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BROWSER_TLS_CERTS", certs.join(","))
        .env("BROWSER_TIMEOUT_MS", "30000");
    run_with_timeout(&mut cmd, 60)
}

/// browser.mjs `login` trusting the given server certificates (e.g. `ca.cert()`).
pub fn browser_login_trusting(
    trusted_certs: &[&Path],
    start_url: &str,
    user: &str,
    password: &str,
    then_urls: &[&str],
) -> BrowserOutcome {
    let mut args = vec!["login", start_url, user, password];
    args.extend_from_slice(then_urls);
    let (ok, out, err) = run_browser(trusted_certs, &args);
    let line = out.lines().rev().find(|l| l.starts_with('{'));
    let json = line
        .and_then(|l| Json::parse(l).ok())
        .unwrap_or_else(|| panic!("browser.mjs login {start_url}: no outcome\n{out}\n{err}"));
    let page = BrowserPage::from_json(&json);
    BrowserOutcome {
        final_url: page.final_url.clone(),
        status: page.status,
        body: page.body.clone(),
        cookies: page.cookies.clone(),
        page,
        login_form_seen: json["login_form_seen"].as_bool().unwrap_or(false),
        login_error: json["login_error"].as_str().map(str::to_string),
        then: json["then"]
            .as_array()
            .unwrap_or(&[])
            .iter()
            .map(BrowserPage::from_json)
            .collect(),
        ok,
        stderr: err,
    }
}

/// A PKCE pair (verifier, S256 challenge), hashed by Node's crypto.
pub fn pkce_pair() -> (String, String) {
    let verifier = format!("v-{}", random_hex(32));
    let mut cmd = Command::new("node");
    cmd.arg("-e")
        .arg("process.stdout.write(require('crypto').createHash('sha256').update(process.argv[1]).digest('base64url'))")
        .arg(&verifier);
    let (ok, out, err) = run_with_timeout(&mut cmd, 20);
    assert!(ok, "node sha256: {err}");
    (verifier, out.trim().to_string())
}

/// Current Unix time in seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// The decoded query parameters of a URL (first value of each name).
pub fn query_params(url: &str) -> BTreeMap<String, String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let query = query.split('#').next().unwrap_or("");
    let mut out = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k))
            .or_insert_with(|| percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// base64url (RFC 4648 section 5) without padding; padding and whitespace are tolerated.
pub fn base64url_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return Err(format!("invalid base64url byte {c:#04x}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err("truncated base64url".into());
    }
    Ok(out)
}

/// A JWS in compact serialization, decoded without verifying anything.
#[derive(Debug, Clone)]
pub struct Jwt {
    pub header: Json,
    pub payload: Json,
    pub signature: Vec<u8>,
}

/// Decodes a compact JWS (header.payload.signature) by hand.
pub fn decode_jwt(token: &str) -> Result<Jwt, String> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(format!("a JWS has 3 parts, this has {}", parts.len()));
    }
    let json = |p: &str| -> Result<Json, String> {
        let bytes = base64url_decode(p)?;
        let text = String::from_utf8(bytes).map_err(|e| e.to_string())?;
        Json::parse(&text)
    };
    Ok(Jwt {
        header: json(parts[0])?,
        payload: json(parts[1])?,
        signature: base64url_decode(parts[2])?,
    })
}

/// A small JSON value with a parser, so the harness needs no JSON crate.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

static JSON_NULL: Json = Json::Null;

impl std::ops::Index<&str> for Json {
    type Output = Json;
    /// The member's value, or Null when absent or not an object.
    fn index(&self, key: &str) -> &Json {
        match self {
            Json::Object(members) => members
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or(&JSON_NULL),
            _ => &JSON_NULL,
        }
    }
}

impl std::ops::Index<usize> for Json {
    type Output = Json;
    fn index(&self, i: usize) -> &Json {
        match self {
            Json::Array(items) => items.get(i).unwrap_or(&JSON_NULL),
            _ => &JSON_NULL,
        }
    }
}

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
            depth: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at {}", p.i));
        }
        Ok(v)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => Some(*n),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 1.8e19 => Some(*n as u64),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_object(&self) -> Option<&[(String, Json)]> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }
    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }
    /// The strings of an array (None if this is not an array of strings).
    pub fn as_str_vec(&self) -> Option<Vec<&str>> {
        self.as_array()?.iter().map(Json::as_str).collect()
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> Result<(), String> {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(format!("expected {lit} at {}", self.i))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        let Some(&c) = self.s.get(self.i) else {
            return Err("unexpected end of JSON".into());
        };
        match c {
            b'{' => self.nested(|p| p.object()),
            b'[' => self.nested(|p| p.array()),
            b'"' => Ok(Json::String(self.string()?)),
            b't' => self.eat("true").map(|_| Json::Bool(true)),
            b'f' => self.eat("false").map(|_| Json::Bool(false)),
            b'n' => self.eat("null").map(|_| Json::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(format!("unexpected {:?} at {}", c as char, self.i)),
        }
    }

    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Json, String>,
    ) -> Result<Json, String> {
        self.depth += 1;
        if self.depth > 128 {
            return Err("JSON nested too deeply".into());
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn object(&mut self) -> Result<Json, String> {
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return Err(format!("expected a member name at {}", self.i));
            }
            let k = self.string()?;
            self.ws();
            self.eat(":")?;
            let v = self.value()?;
            members.push((k, v));
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Object(members));
                }
                _ => return Err(format!("expected , or }} at {}", self.i)),
            }
        }
    }

    fn array(&mut self) -> Result<Json, String> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(format!("expected , or ] at {}", self.i)),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad \\u escape at {}", self.i))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err("unterminated string".into());
            };
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return Err("unterminated escape".into());
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                hi
                            };
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return Err(format!("bad escape at {}", self.i)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => return Err(format!("control character in string at {}", self.i)),
                c => out.push(c),
            }
        }
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        while self.i < self.s.len()
            && matches!(
                self.s[self.i],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
        text.parse::<f64>()
            .map(Json::Number)
            .map_err(|e| format!("bad number {text:?}: {e}"))
    }
}
