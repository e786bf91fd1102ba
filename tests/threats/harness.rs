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
        let ca = DevCa::new();
        let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
        let secrets = Secrets::new(&provider, POLICY);
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

/// Every record in the gateway's audit directory, in file order.
pub fn audit_records(gw: &TestGateway) -> Vec<Record> {
    let mut files: Vec<_> = std::fs::read_dir(gw.audit_dir())
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "jsonl"));
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Record>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}
