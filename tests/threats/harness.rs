//! Gateways to attack, and the checks every threat ends with.

use std::time::{Duration, Instant};

use gatehouse::audit::Record;

use crate::support::oidc::{CLI_CLIENT, OidcProvider, PASSWORD};
use crate::support::raw::{Response, exchange};
use crate::support::secrets::Secrets;
use crate::support::{DevCa, GatewayBuilder, HOST, RecordingUpstream, Reply, TestGateway};

/// Anyone may use the Gogs route; what is tested is what the gateway lets through.
pub const POLICY: &str = "rules:\n  - id: anyone-gogs\n    route: gogs\n    roles: [\"*\"]\n";

pub struct Stack {
    pub ca: DevCa,
    pub up: RecordingUpstream,
    pub gw: TestGateway,
    /// With identity: the provider (kept running), and alice's access token.
    _provider: Option<OidcProvider>,
    pub alice: Option<String>,
    _secrets: Option<Secrets>,
}

impl Stack {
    /// A public `plain` route to a recording upstream: the gateway's own checks, no identity.
    pub async fn plain() -> Stack {
        let ca = DevCa::new();
        let up = RecordingUpstream::start(Reply::Ok).await;
        let gw = GatewayBuilder::new()
            .route("web", "plain", &[HOST], &up.url(), "")
            .start(&ca);
        Stack {
            ca,
            up,
            gw,
            _provider: None,
            alice: None,
            _secrets: None,
        }
    }

    /// A Gogs route behind a real OpenID provider, with reverse-proxy authentication
    /// (`X-WEBAUTH-USER`), and an access token for alice.
    pub async fn gogs() -> Stack {
        Stack::gogs_with_policy(POLICY).await
    }

    /// Like [`Stack::gogs`], with `policy` as the gateway's policy file.
    pub async fn gogs_with_policy(policy: &str) -> Stack {
        let ca = DevCa::new();
        let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
        let secrets = Secrets::new(&provider, policy);
        let up = RecordingUpstream::start(Reply::Ok).await;
        let gw = GatewayBuilder::new()
            .toml(&secrets.identity(&provider, "", &[crate::support::oidc::AUDIENCE]))
            .route_with("gogs", "gogs", &[HOST], &up.url(), &secrets.gogs_extra())
            .start(&ca);
        let alice = tokio::task::block_in_place(|| {
            let grant = provider.device_authorize(CLI_CLIENT);
            provider
                .device_complete(&grant, "alice", PASSWORD)
                .expect("login");
            provider.device_token(&grant).access_token
        });
        Stack {
            ca,
            up,
            gw,
            _provider: Some(provider),
            alice: Some(alice),
            _secrets: Some(secrets),
        }
    }

    /// `Host: HOST:port`.
    pub fn host(&self) -> String {
        format!("{HOST}:{}", self.gw.port())
    }

    pub fn bearer(&self) -> String {
        format!(
            "Authorization: Bearer {}\r\n",
            self.alice.as_deref().expect("a stack with identity")
        )
    }

    /// Sends raw bytes over TLS with SNI `HOST`.
    pub async fn send(&self, bytes: &[u8]) -> Response {
        exchange(self.gw.https, &self.ca.ca(), HOST, bytes).await
    }

    /// Every audit record of the request `id` (waits up to 5 s for at least one).
    pub fn records(&self, request_id: &str) -> Vec<Record> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found: Vec<Record> = audit_records(&self.gw)
                .into_iter()
                .filter(|r| r.request_id.as_deref() == Some(request_id))
                .collect();
            if !found.is_empty() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The threat is refused: `status`, no complete request upstream, and one audit record
    /// denying it with `reason` in its reasons or detail. Returns the response.
    pub async fn refused(&self, threat: &str, bytes: &[u8], status: u16, reason: &str) -> Response {
        let r = self.send(bytes).await;
        assert_eq!(r.status(), Some(status), "{threat}: {}", r.text);
        let complete: Vec<_> = self
            .up
            .requests()
            .into_iter()
            .filter(|r| r.complete)
            .collect();
        assert!(
            complete.is_empty(),
            "{threat}: reached the upstream: {complete:?}"
        );
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{threat}: no request id: {}", r.text));
        let records = tokio::task::block_in_place(|| self.records(&id));
        assert_eq!(records.len(), 1, "{threat}: {records:#?}");
        let rec = &records[0];
        assert_eq!(rec.status, Some(status), "{threat}: {rec:#?}");
        let d = rec
            .decision
            .as_ref()
            .unwrap_or_else(|| panic!("{threat}: no decision: {rec:#?}"));
        assert_eq!(d.effect, "deny", "{threat}: {rec:#?}");
        let said = format!(
            "{} {}",
            d.reasons.join(" "),
            rec.detail.as_deref().unwrap_or("")
        );
        assert!(
            said.contains(reason),
            "{threat}: audit says {said:?}, expected {reason:?}"
        );
        self.up.clear();
        r
    }
}

impl Stack {
    /// Records of requests the parser refused: they have no request id (the client never got
    /// one), only the peer and why.
    pub fn unparsed_records(&self) -> Vec<Record> {
        audit_records(&self.gw)
            .into_iter()
            .filter(|r| r.kind == "request" && r.request_id.is_none())
            .collect()
    }

    /// Waits for the next parser refusal on record (the `seen + 1`th) and checks it denies
    /// with `status` and says `reason`.
    pub fn unparsed_record(&self, threat: &str, seen: usize, status: Option<u16>, reason: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let records = loop {
            let found = self.unparsed_records();
            if found.len() > seen || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(records.len(), seen + 1, "{threat}: {records:#?}");
        let rec = &records[seen];
        assert_eq!(rec.status, status, "{threat}: {rec:#?}");
        let d = rec.decision.as_ref().expect("a decision");
        assert_eq!(d.effect, "deny", "{threat}: {rec:#?}");
        assert!(
            d.reasons.iter().any(|r| r.contains(reason)),
            "{threat}: audit says {:?}, expected {reason:?}",
            d.reasons
        );
        let source = rec.source.as_ref().expect("a source");
        assert!(source.addr.starts_with("127.0.0.1:"), "{threat}: {rec:#?}");
        assert!(
            rec.path.is_none() && rec.method.is_none(),
            "{threat}: {rec:#?}"
        );
    }
}

/// Every record in the gateway's audit directory, in file order.
pub fn audit_records(gw: &TestGateway) -> Vec<Record> {
    gw.audit_records()
}

impl Stack {
    /// Like [`Stack::plain`], with `route_extra` TOML lines for the route and the gateway's
    /// configuration tuned by `tune` (timeouts, limits, `max_connections`).
    pub async fn plain_with(
        route_extra: &str,
        tune: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
    ) -> Stack {
        let ca = DevCa::new();
        let up = RecordingUpstream::start(Reply::Ok).await;
        let gw = tune(GatewayBuilder::new())
            .route("web", "plain", &[HOST], &up.url(), route_extra)
            .start(&ca);
        Stack {
            ca,
            up,
            gw,
            _provider: None,
            alice: None,
            _secrets: None,
        }
    }

    /// A stack around a gateway the test configured itself.
    pub fn from_parts(ca: DevCa, up: RecordingUpstream, gw: TestGateway) -> Stack {
        Stack {
            ca,
            up,
            gw,
            _provider: None,
            alice: None,
            _secrets: None,
        }
    }

    /// Like [`Stack::gogs`], with a second trusted issuer whose signing key the test holds
    /// (so tokens that are validly signed but wrong in another way can be made), and the
    /// gateway's configuration tuned by `tune`.
    pub async fn gogs_with_forge(
        tune: impl FnOnce(GatewayBuilder) -> GatewayBuilder,
    ) -> (Stack, Forge) {
        let ca = DevCa::new();
        let forge = Forge::start(&ca).await;
        let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
        let secrets = Secrets::new(&provider, POLICY);
        let up = RecordingUpstream::start(Reply::Ok).await;
        let gw = tune(GatewayBuilder::new())
            .toml(&secrets.identity(&provider, "", &[crate::support::oidc::AUDIENCE]))
            .toml(&forge.toml(&ca))
            .route_with("gogs", "gogs", &[HOST], &up.url(), &secrets.gogs_extra())
            .start(&ca);
        let alice = tokio::task::block_in_place(|| {
            let grant = provider.device_authorize(CLI_CLIENT);
            provider
                .device_complete(&grant, "alice", PASSWORD)
                .expect("login");
            provider.device_token(&grant).access_token
        });
        let stack = Stack {
            ca,
            up,
            gw,
            _provider: Some(provider),
            alice: Some(alice),
            _secrets: Some(secrets),
        };
        (stack, forge)
    }

    /// The OpenID provider of a stack with identity.
    pub fn provider(&self) -> &OidcProvider {
        self._provider.as_ref().expect("a stack with identity")
    }

    /// Like [`Stack::send`], for heads the gateway may refuse before it has read them whole:
    /// a write cut short by the gateway closing is not an error, what it answered is read.
    pub async fn send_lenient(&self, bytes: &[u8]) -> Response {
        use tokio::io::AsyncWriteExt;
        let mut s = crate::support::raw::connect(self.gw.https, &self.ca.ca(), HOST).await;
        let _ = s.write_all(bytes).await;
        let _ = s.flush().await;
        crate::support::raw::read_response(&mut s, Duration::from_secs(3)).await
    }

    /// Completed requests the upstream saw (none, for a refused threat).
    pub fn complete_upstream(&self) -> Vec<crate::support::Recorded> {
        self.up
            .requests()
            .into_iter()
            .filter(|r| r.complete)
            .collect()
    }

    /// The audit records of an answer the gateway made itself: exactly one, with the status
    /// the client got, a `deny` decision and `reason` in its reasons or detail. Returns it.
    pub fn denied_record(&self, threat: &str, r: &Response, status: u16, reason: &str) -> Record {
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{threat}: no request id: {}", r.text));
        let records = tokio::task::block_in_place(|| self.records(&id));
        assert_eq!(records.len(), 1, "{threat}: {records:#?}");
        let rec = records.into_iter().next().expect("one record");
        assert_eq!(rec.status, Some(status), "{threat}: {rec:#?}");
        let d = rec
            .decision
            .as_ref()
            .unwrap_or_else(|| panic!("{threat}: no decision: {rec:#?}"));
        assert_eq!(d.effect, "deny", "{threat}: {rec:#?}");
        let said = format!(
            "{} {}",
            d.reasons.join(" "),
            rec.detail.as_deref().unwrap_or("")
        );
        assert!(
            said.contains(reason),
            "{threat}: audit says {said:?}, expected {reason:?}"
        );
        rec
    }
}

/// A trusted JWT issuer run by the test: its JWKS is served over TLS from 127.0.0.1 (the dev
/// certificate names it), and the test holds its RSA signing key, so it can mint tokens that
/// are validly signed and wrong in exactly one other way.
pub struct Forge {
    /// `https://127.0.0.1:PORT`.
    pub issuer: String,
    /// The `kid` of the key in the JWKS.
    pub kid: String,
    key: aws_lc_rs::rsa::KeyPair,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Forge {
    pub async fn start(ca: &DevCa) -> Forge {
        use aws_lc_rs::signature::KeyPair;
        use http_body_util::Full;
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let key =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let kid = "forge-1".to_string();
        let public = key.public_key();
        let jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        }]})
        .to_string();
        let certified =
            gatehouse::server::tls::load_certified_key(&ca.cert(), &ca.key()).expect("forge cert");
        let config = gatehouse::server::tls::server_config(
            gatehouse::server::tls::CertResolver::new(certified),
        )
        .expect("forge TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind forge");
        let port = listener.local_addr().expect("addr").port();
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = fetches.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, jwks, counter) = (acceptor.clone(), jwks.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (jwks, counter) = (jwks.clone(), counter.clone());
                        async move {
                            let mut resp = if req.uri().path() == "/jwks" {
                                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                http::Response::new(Full::new(bytes::Bytes::from(jwks)))
                            } else {
                                let mut r = http::Response::new(Full::new(bytes::Bytes::new()));
                                *r.status_mut() = http::StatusCode::NOT_FOUND;
                                r
                            };
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Forge {
            issuer: format!("https://127.0.0.1:{port}"),
            kid,
            key,
            fetches,
            task,
        }
    }

    /// The `[[identity.jwt]]` entry trusting this issuer for audience `gatehouse`.
    pub fn toml(&self, ca: &DevCa) -> String {
        format!(
            "[[identity.jwt]]\nissuer = {iss:?}\naudiences = [{aud:?}]\njwks_uri = \"{iss}/jwks\"\nca_file = {ca:?}\n",
            iss = self.issuer,
            aud = crate::support::oidc::AUDIENCE,
            ca = ca.ca().display().to_string(),
        )
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Claims a valid access token from this issuer carries: `iss`, `aud`, `sub`, `exp` in
    /// five minutes, `iat` now, a username and a client id.
    pub fn claims(&self) -> serde_json::Value {
        let now = now_secs();
        serde_json::json!({
            "iss": self.issuer, "aud": crate::support::oidc::AUDIENCE, "sub": "forged-sub",
            "exp": now + 300, "iat": now, "preferred_username": "forged",
            "client_id": "forge-client",
        })
    }

    /// The header of a valid access token: RS256, `at+jwt`, this issuer's `kid`.
    pub fn header(&self) -> serde_json::Value {
        serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": self.kid})
    }

    /// `header.claims` signed with this issuer's key (RS256), whatever they say.
    pub fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .expect("sign");
        format!("{input}.{}", b64(&sig))
    }

    /// A valid access token with `claims`.
    pub fn token(&self, claims: &serde_json::Value) -> String {
        self.sign(&self.header(), claims)
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Unpadded base64url, as JWTs use.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Every line of every audit file is one JSON object on its own line, with no raw control
/// characters, ANSI escapes or U+2028/U+2029 in it; returns the number of lines.
pub fn audit_lines_are_clean(gw: &TestGateway) -> usize {
    let mut files: Vec<_> = std::fs::read_dir(gw.audit_dir())
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "jsonl"));
    files.sort();
    let mut n = 0;
    for f in &files {
        let bytes = std::fs::read(f).expect("read audit file");
        let text = String::from_utf8(bytes).expect("audit file is UTF-8");
        assert!(
            text.ends_with('\n'),
            "{}: last line unterminated",
            f.display()
        );
        for line in text.lines() {
            n += 1;
            assert!(
                !line
                    .chars()
                    .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
                "{}: a raw control or separator character in {line:?}",
                f.display()
            );
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", f.display()));
            assert!(v.is_object(), "{}: not an object: {line}", f.display());
            assert!(
                serde_json::from_str::<Record>(line).is_ok(),
                "{}: not a record: {line}",
                f.display()
            );
        }
    }
    n
}

/// `gatehouse audit verify <dir> --pubkey <the signing key>`: (success, output).
pub fn audit_verify(gw: &TestGateway) -> (bool, String) {
    let (ok, out, err) = crate::support::run_with_timeout(
        std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["audit", "verify"])
            .arg(gw.audit_dir())
            .arg("--pubkey")
            .arg(gw.audit_key()),
        60,
    );
    (ok, format!("{out}{err}"))
}

impl Stack {
    /// The audit records of a request that was allowed and forwarded while its body
    /// streamed, then cut off: a `request` record allowing it and an `outcome` record with
    /// the status the client got and `reason` in its detail. Returns the outcome.
    pub fn cut_off_record(&self, threat: &str, r: &Response, status: u16, reason: &str) -> Record {
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{threat}: no request id: {}", r.text));
        let deadline = Instant::now() + Duration::from_secs(5);
        let records = loop {
            let found = tokio::task::block_in_place(|| self.records(&id));
            if found.iter().any(|r| r.kind == "outcome") || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["request", "outcome"], "{threat}: {records:#?}");
        let outcome = records[1].clone();
        assert_eq!(outcome.status, Some(status), "{threat}: {outcome:#?}");
        let detail = outcome.detail.as_deref().unwrap_or("");
        assert!(
            detail.contains(reason),
            "{threat}: outcome says {detail:?}, expected {reason:?}"
        );
        outcome
    }
}
