//! A Gogs delivery of any event, content type and body, correctly signed: `receive` never
//! panics; an accepted delivery is recognised as a duplicate the second time; and the same
//! bytes with any other signature are refused.
//!
//! Input: `EVENT \n f|j \n BODY` (f = form-encoded `payload=BODY`, j = JSON).

#![no_main]

use std::sync::OnceLock;

use gatehouse::config::secret::SecretRef;
use gatehouse::config::{WebhookSource, WebhooksConfig};
use gatehouse::webhook::Hooks;
use gatehouse::webhook::receive::{Inbound, receive};
use gatehouse::webhook::signature::gogs_signature;
use gatehouse::webhook::store::{Received, SqliteStore};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret";

fn hooks() -> &'static Hooks {
    static HOOKS: OnceLock<Hooks> = OnceLock::new();
    HOOKS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gatehouse-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let config = WebhooksConfig {
            path: "/hook".into(),
            store: Some(dir.join("unused.sqlite")),
            max_body: 1 << 20,
            replay_window: std::time::Duration::from_secs(3600),
            commit_retention: std::time::Duration::from_secs(3600),
            commit_max: 1000,
            max_attempts: 3,
            retry_base: std::time::Duration::from_secs(1),
            retry_max: std::time::Duration::from_secs(2),
            sources: vec![WebhookSource {
                name: "gogs".into(),
                repos: Vec::new(),
                secret: Some(SecretRef::File(secret)),
                allow_unsigned: false,
            }],
            receivers: Vec::new(),
        };
        Hooks::build(&config).unwrap()
    })
}

fn delivery<'a>(
    event: &'a [u8],
    content_type: &'a [u8],
    body: &'a [u8],
    sig: &'a [u8],
) -> Inbound<'a> {
    Inbound {
        event: Some(event),
        delivery: Some(b"3f2a9c4e-6a1b-4e8e-9d3c-1a2b3c4d5e6f"),
        signature: Some(sig),
        content_type: Some(content_type),
        body,
        now_ms: 1_700_000_000_000,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let event = parts.next().unwrap_or_default();
    let kind = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let (content_type, sent): (&[u8], Vec<u8>) = if kind == b"f" {
        let mut form = b"payload=".to_vec();
        for b in body {
            form.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
        (b"application/x-www-form-urlencoded", form)
    } else {
        (b"application/json", body.to_vec())
    };
    let signature = gogs_signature(SECRET.as_bytes(), body);
    let store = SqliteStore::open(std::path::Path::new(":memory:")).unwrap();
    let first = receive(
        hooks(),
        &store,
        &delivery(event, content_type, &sent, signature.as_bytes()),
    );
    if let Ok(receipt) = &first {
        assert!(matches!(receipt.outcome, Received::New { .. }));
        let again = receive(
            hooks(),
            &store,
            &delivery(event, content_type, &sent, signature.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            again.outcome,
            Received::Duplicate { same_id: true, .. }
        ));
    }
    let mut wrong = signature.into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let fresh = SqliteStore::open(std::path::Path::new(":memory:")).unwrap();
    assert!(
        receive(
            hooks(),
            &fresh,
            &delivery(event, content_type, &sent, &wrong)
        )
        .is_err()
    );
});
