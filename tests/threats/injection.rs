//! Audit injection: values a client controls (the path, the query, headers, the request id,
//! a trusted proxy's forwarding chain, the claims of a token) carrying line breaks, ANSI
//! escapes, JSON fragments meant to close the record and open another, U+2028/U+2029 (line
//! breaks to JavaScript), and 100 KB. Every audit line stays one JSON object, every value
//! reads back exactly as sent or cut to the cap and named in `truncated`, no record of a
//! kind the client chose appears, and `gatehouse audit verify` passes afterwards.

use serde_json::json;

use crate::harness::{Stack, audit_lines_are_clean, audit_records, audit_verify};
use gatehouse::audit::Record;
use gatehouse::audit::record::MAX_VALUE;

/// A JSON fragment that would end the record and start an `admin` one if pasted raw.
const FRAGMENT: &str = r#""},{"kind":"admin","detail":"injected"#;
/// An ANSI escape that would recolour (or clear) a terminal showing the log.
const ANSI: &str = "\u{1b}[2J\u{1b}[31mred";

/// The request id the gateway gave an answer.
fn request_id(r: &crate::support::raw::Response) -> String {
    r.header("x-request-id")
        .unwrap_or_else(|| panic!("no request id: {}", r.text))
}

/// The first record of a request.
fn first_record(s: &Stack, r: &crate::support::raw::Response) -> Record {
    let id = request_id(r);
    tokio::task::block_in_place(|| s.records(&id))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no record for {id}"))
}

/// A value cut to the cap: the first [`MAX_VALUE`] bytes of `sent` (on a character
/// boundary) and the ellipsis.
fn capped(kept: &str, sent: &str) {
    assert!(kept.ends_with('…'), "not marked as cut: {}", &kept[..100]);
    let body = kept.trim_end_matches('…');
    assert!(body.len() <= MAX_VALUE, "{} bytes kept", body.len());
    assert!(body.len() > MAX_VALUE - 4, "{} bytes kept", body.len());
    assert!(
        sent.starts_with(body),
        "the kept part differs from what was sent"
    );
}

/// The end of every injection test: stop the gateway (its last checkpoint is signed), then
/// every line is one clean JSON record, no record has a kind a client chose, and the chain
/// and checkpoints verify.
fn log_is_intact(s: &mut Stack) {
    let status = s.gw.stop(15);
    assert!(status.success(), "gateway exit: {status}");
    let lines = audit_lines_are_clean(&s.gw);
    let records = audit_records(&s.gw);
    assert_eq!(lines, records.len(), "a line is not a record");
    for r in &records {
        assert!(
            gatehouse::audit::Kind::parse(&r.kind).is_some(),
            "a record of kind {:?}: {r:#?}",
            r.kind
        );
        // `admin` records are the gateway's own (start, stop), never about a request.
        if r.kind == "admin" {
            assert!(r.request_id.is_none(), "{r:#?}");
        }
        assert!(
            r.detail.as_deref() != Some("injected"),
            "an injected record: {r:#?}"
        );
    }
    let (ok, out) = audit_verify(&s.gw);
    assert!(ok, "audit verify failed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_injection_through_the_path_query_and_headers_is_escaped() {
    let mut s = Stack::plain_with("", |b| b.limit("max_header_bytes = \"256KiB\"")).await;
    let h = s.host();
    // Paths, each refused (they must be percent-encoded, or encode control characters) and
    // recorded exactly as sent.
    for path in [
        format!("/x{FRAGMENT}"),
        "/x%0d%0a{%22kind%22:%22admin%22}%0a".to_string(),
        "/x%1b[2J%1b[31mred".to_string(),
        "/x\u{2028}y\u{2029}z".to_string(),
        format!("/x\u{2028}{FRAGMENT}"),
    ] {
        let r = s
            .send(
                format!("GET {path} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await;
        assert_eq!(r.status(), Some(400), "{path:?}: {}", r.text);
        let rec = first_record(&s, &r);
        assert_eq!(rec.path.as_deref(), Some(path.as_str()), "{rec:#?}");
        assert!(rec.truncated.is_empty(), "{rec:#?}");
    }
    // A long path is forwarded (it is a valid path) and cut to the cap in the record. hyper
    // refuses a request target beyond 64 KiB itself, so this is the longest one that gets in.
    let long = format!("/{}", "a".repeat(60 * 1024));
    let r = s
        .send(format!("GET {long} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    assert_eq!(
        r.status(),
        Some(200),
        "{}",
        &r.text[..r.text.len().min(300)]
    );
    let rec = first_record(&s, &r);
    capped(rec.path.as_deref().expect("path"), &long);
    assert_eq!(rec.truncated, ["path"], "{:?}", rec.truncated);
    // The query is not recorded at all; the path is.
    let r = s
        .send(
            format!(
                "GET /q?x=%22}},{{%22kind%22:%22admin%22}}%0a&y=%1b[31m&z=%E2%80%A8 HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(first_record(&s, &r).path.as_deref(), Some("/q"));
    // Headers the record does not keep (User-Agent, Referer), with JSON fragments and U+2028
    // as raw UTF-8 (obs-text, which HTTP/1 allows in values), and a request id from an
    // untrusted peer, which is replaced.
    let chosen_id = format!("evil{FRAGMENT}");
    let r = s
        .send(
            format!(
                "GET /h HTTP/1.1\r\nHost: {h}\r\nUser-Agent: ua{FRAGMENT}\u{2028}\r\nReferer: https://x.test/{FRAGMENT}\u{2029}\r\nX-Request-Id: {chosen_id}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let id = request_id(&r);
    assert_ne!(id, chosen_id);
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let rec = first_record(&s, &r);
    assert_eq!(rec.request_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        s.up.requests().last().unwrap().header("x-request-id"),
        Some(id.as_str())
    );
    // A 100 KB header value the record does not keep costs nothing.
    let r = s
        .send(
            format!(
                "GET /big HTTP/1.1\r\nHost: {h}\r\nUser-Agent: {}\r\nX-Request-Id: {}\r\nConnection: close\r\n\r\n",
                "u".repeat(100 * 1024),
                "r".repeat(100 * 1024)
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(
        r.status(),
        Some(200),
        "{}",
        &r.text[..r.text.len().min(300)]
    );
    assert!(request_id(&r).len() < 64);
    log_is_intact(&mut s);
    let all = std::fs::read_dir(s.gw.audit_dir())
        .expect("audit dir")
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        !all.contains("evil"),
        "the client's request id was recorded"
    );
    assert!(!all.contains("uuuuuuuu"), "User-Agent was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_injection_through_a_trusted_proxys_forwarding_chain_is_escaped() {
    // The peer is a trusted proxy, so its X-Forwarded-For is kept in the record (as
    // `source.forwarded_for`) and its X-Request-Id may be used, if it is a usable one.
    let mut s = Stack::plain_with("", |b| {
        b.server("trusted_proxies = [\"127.0.0.1/32\"]")
            .limit("max_header_bytes = \"256KiB\"")
    })
    .await;
    let h = s.host();
    for xff in [
        format!("203.0.113.7{FRAGMENT}"),
        "203.0.113.7\u{2028}198.51.100.1\u{2029}".to_string(),
        format!("203.0.113.7, {FRAGMENT}\u{2028}{FRAGMENT}"),
    ] {
        let r = s
            .send(
                format!(
                    "GET /p HTTP/1.1\r\nHost: {h}\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        assert_eq!(r.status(), Some(200), "{}", r.text);
        let rec = first_record(&s, &r);
        let source = rec.source.expect("source");
        assert!(source.trusted_proxy);
        assert_eq!(source.forwarded_for.as_deref(), Some(xff.as_str()));
    }
    // 100 KB of chain: cut to the cap, and named.
    let long = format!("{}{FRAGMENT}", "203.0.113.7, ".repeat(100 * 1024 / 13));
    let r = s
        .send(
            format!("GET /p HTTP/1.1\r\nHost: {h}\r\nX-Forwarded-For: {long}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert_eq!(
        r.status(),
        Some(200),
        "{}",
        &r.text[..r.text.len().min(300)]
    );
    let rec = first_record(&s, &r);
    capped(
        rec.source
            .as_ref()
            .and_then(|s| s.forwarded_for.as_deref())
            .expect("forwarded_for"),
        &long,
    );
    assert_eq!(
        rec.truncated,
        ["source.forwarded_for"],
        "{:?}",
        rec.truncated
    );
    // Request ids from the trusted proxy: a plain one is used, an injecting or huge one is
    // replaced by the gateway's.
    for (sent, used) in [
        ("lb-1234".to_string(), true),
        (format!("lb{FRAGMENT}"), false),
        ("lb\u{2028}x".to_string(), false),
        ("i".repeat(100 * 1024), false),
    ] {
        let r = s
            .send(
                format!("GET /id HTTP/1.1\r\nHost: {h}\r\nX-Request-Id: {sent}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        assert_eq!(
            r.status(),
            Some(200),
            "{}",
            &r.text[..r.text.len().min(300)]
        );
        let id = request_id(&r);
        assert_eq!(id == sent, used, "{id}");
        let rec = first_record(&s, &r);
        assert_eq!(rec.request_id.as_deref(), Some(id.as_str()));
    }
    log_is_intact(&mut s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_injection_through_token_claims_is_escaped() {
    // A trusted issuer's claims are data from outside too: usernames, emails and group names
    // are whatever the directory holds.
    let (mut s, forge) = Stack::gogs_with_forge(|b| b.limit("max_header_bytes = \"512KiB\"")).await;
    let h = s.host();
    let mut claims = forge.claims();
    claims["sub"] = json!(format!("sub\n{FRAGMENT}"));
    claims["preferred_username"] = json!(format!("mallory{ANSI}\r\n{FRAGMENT}"));
    claims["email"] = json!("m\u{2028}@example.test\u{2029}");
    claims["groups"] = json!([FRAGMENT, "g\u{2028}", ANSI, "\u{0}nul"]);
    let big = format!("{}{FRAGMENT}", "c".repeat(100 * 1024));
    claims["client_id"] = json!(big);
    let token = forge.token(&claims);
    assert!(token.len() > 100 * 1024);
    let r = s
        .send(
            format!(
                "GET /api/v1/user HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert!(r.status().is_some(), "{}", r.text);
    let rec = first_record(&s, &r);
    let identity = rec
        .identity
        .as_ref()
        .unwrap_or_else(|| panic!("no identity: {rec:#?}"));
    assert_eq!(identity.subject, format!("sub\n{FRAGMENT}"));
    assert_eq!(
        identity.username.as_deref(),
        Some(format!("mallory{ANSI}\r\n{FRAGMENT}").as_str())
    );
    assert_eq!(
        identity.email.as_deref(),
        Some("m\u{2028}@example.test\u{2029}")
    );
    assert_eq!(identity.groups, [FRAGMENT, "g\u{2028}", ANSI, "\u{0}nul"]);
    capped(identity.client_id.as_deref().expect("client id"), &big);
    assert!(
        rec.truncated.iter().any(|t| t == "identity.client_id"),
        "{:?}",
        rec.truncated
    );
    // A refused token of the same size: its record is a token_rejected one, and just as clean.
    let mut expired = claims.clone();
    expired["exp"] = json!(1);
    let r = s
        .send(
            format!(
                "GET /api/v1/user HTTP/1.1\r\nHost: {h}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                forge.token(&expired)
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(401), "{}", r.text);
    assert_eq!(first_record(&s, &r).kind, "token_rejected");
    log_is_intact(&mut s);
}
