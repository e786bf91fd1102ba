//! Secrets, keys and policy files for a gateway that trusts a test OpenID provider.

use base64::Engine;

use super::oidc::{OidcProvider, WEB_CLIENT};

/// Every authenticated caller may use the `gogs` and `lightstep` routes.
pub const ALLOW_ALL: &str = "rules:\n  - id: anyone-gogs\n    route: gogs\n    roles: [\"*\"]\n  - id: anyone-lightstep\n    route: lightstep\n    roles: [\"*\"]\n";

pub const SESSION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const BROKER_TOKEN: &str = "broker-token-5f1c";
pub const LIGHTSTEP_TOKEN: &str = "lightstep-project-token-9a7e";

/// Secret files and the `[identity]` section for a gateway trusting `provider`.
pub struct Secrets {
    pub dir: tempfile::TempDir,
}

impl Secrets {
    /// Writes every secret, and `policy` as the only policy file.
    pub fn new(provider: &OidcProvider, policy: &str) -> Secrets {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write("oidc-secret", &provider.web_secret);
        write("session.keys", &format!("{SESSION_KEY}\n"));
        write("broker-token", BROKER_TOKEN);
        write("lightstep-token", LIGHTSTEP_TOKEN);
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/policy.yaml"), policy).unwrap();
        let ed = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        write(
            "assertion.key",
            &format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                base64::engine::general_purpose::STANDARD.encode(ed.as_ref())
            ),
        );
        Secrets { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn identity(
        &self,
        provider: &OidcProvider,
        session_extra: &str,
        audiences: &[&str],
    ) -> String {
        let audiences: Vec<String> = audiences.iter().map(|a| format!("{a:?}")).collect();
        let audiences = audiences.join(", ");
        let ca = provider.ca_file.display().to_string();
        format!(
            "[identity.oidc]\nissuer = {iss:?}\nclient_id = {WEB_CLIENT:?}\nclient_secret_file = {secret:?}\nscopes = [\"openid\", \"profile\", \"email\", \"groups\", \"offline_access\"]\nca_file = {ca:?}\ncli_client_id = \"gatehouse-cli\"\nprompt = \"consent\"\n\
[identity.session]\nkeys_file = {keys:?}\n{session_extra}\n\
[[identity.jwt]]\nissuer = {iss:?}\naudiences = [{audiences}]\nca_file = {ca:?}\n\
[identity.assertion]\nkey_file = {assertion:?}\n[policy]\ndir = {policies:?}\n",
            iss = provider.issuer,
            secret = self.path("oidc-secret"),
            keys = self.path("session.keys"),
            assertion = self.path("assertion.key"),
            policies = self.path("policies"),
        )
    }

    pub fn gogs_extra(&self) -> String {
        format!(
            "[routes.gogs]\nuser_header = \"X-WEBAUTH-USER\"\n[[routes.gogs.credentials]]\nusername = \"gatehouse-broker\"\ntoken_file = {:?}\n",
            self.path("broker-token")
        )
    }

    pub fn otlp_extra(&self) -> String {
        format!(
            "[routes.otlp]\naccess_token_file = {:?}\n",
            self.path("lightstep-token")
        )
    }
}
