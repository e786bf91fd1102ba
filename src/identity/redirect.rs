//! Where a person may be sent back to after signing in.
//!
//! Only to a path on the same origin, or to an origin the operator listed. Everything a
//! browser could read as another origin is refused: `//evil`, `/\evil`, `\\evil`, schemes
//! such as `javascript:`, control characters (browsers strip tabs and newlines, turning
//! `/\t/evil` into `//evil`), and anything that does not parse.

/// The validated target, or `None` (the caller then uses `/`).
pub fn safe_return_to(raw: &str, own_origin: &str, allowed_origins: &[String]) -> Option<String> {
    if raw.is_empty() || raw.len() > 2048 {
        return None;
    }
    if raw
        .chars()
        .any(|c| c.is_control() || c == '\\' || c.is_whitespace())
    {
        return None;
    }
    if raw.starts_with('/') {
        if raw.starts_with("//") {
            return None;
        }
        let path = raw.split(['?', '#']).next().unwrap_or(raw);
        if crate::proxy::path::check_path(path).is_err() {
            return None;
        }
        return Some(raw.to_string());
    }
    let uri: http::Uri = raw.parse().ok()?;
    if uri.scheme_str() != Some("https") {
        return None;
    }
    let authority = uri.authority()?.as_str();
    if authority.contains('@') {
        return None;
    }
    let origin = format!("https://{}", authority.to_ascii_lowercase());
    if origin == own_origin || allowed_origins.contains(&origin) {
        Some(raw.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "https://git.example.com";

    #[test]
    fn same_origin_paths_and_listed_origins_are_kept() {
        let allowed = vec!["https://docs.example.com".to_string()];
        for ok in [
            "/",
            "/platform/app",
            "/a?b=c&d=%2F",
            "/a#frag",
            "https://git.example.com/x",
            "https://GIT.example.com/x",
            "https://docs.example.com/page",
        ] {
            assert_eq!(
                safe_return_to(ok, OWN, &allowed).as_deref(),
                Some(ok),
                "{ok}"
            );
        }
    }

    #[test]
    fn open_redirect_variants_are_refused() {
        for bad in [
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,hi",
            "http://git.example.com/",
            "https://evil.example/",
            "https://git.example.com@evil.example/",
            "https://git.example.com.evil.example/",
            "evil.example",
            "/a/../b",
            "/%2e%2e/admin",
            "",
        ] {
            assert_eq!(safe_return_to(bad, OWN, &[]), None, "{bad:?}");
        }
    }
}
