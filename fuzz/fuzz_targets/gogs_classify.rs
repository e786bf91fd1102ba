//! `classify` on arbitrary method, path and query: never panics, and for paths the gateway
//! accepts (`check_path`) neither letter case nor percent-encoding of unreserved characters
//! can change the answer (so neither can be used to disguise a push).
//!
//! Input: `METHOD \n PATH [\n QUERY]`, read as lossy UTF-8.

#![no_main]

use gatehouse::classify::gogs::classify;
use gatehouse::proxy::path::check_path;
use http::Method;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let method = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let query = lines.next();
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);

    let got = classify(&method, path, query);
    if let Some(repo) = &got.repo {
        assert!(!repo.owner.is_empty() && !repo.name.is_empty());
        assert_eq!(repo.owner, repo.owner.to_lowercase());
        assert_eq!(repo.name, repo.name.to_lowercase());
        assert!(!repo.full().is_empty());
    }

    if check_path(path).is_err() {
        return;
    }
    let upper = path.to_ascii_uppercase();
    let lower = path.to_ascii_lowercase();
    assert_eq!(classify(&method, &upper, query), got, "{path}");
    assert_eq!(classify(&method, &lower, query), got, "{path}");

    let encoded = encode_unreserved(path);
    if check_path(&encoded).is_ok() {
        assert_eq!(
            classify(&method, &encoded, query),
            got,
            "{path} vs {encoded}"
        );
    }
});

/// Percent-encodes letters, digits, `-`, `_` and `~` outside existing escapes.
fn encode_unreserved(path: &str) -> String {
    let mut out = String::with_capacity(path.len() * 3);
    let mut escape_left = 0;
    for c in path.chars() {
        if escape_left > 0 {
            escape_left -= 1;
            out.push(c);
        } else if c == '%' {
            escape_left = 2;
            out.push(c);
        } else if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '~') {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}
