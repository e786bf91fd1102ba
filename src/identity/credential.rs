//! What a client presents in `Authorization`: a bearer token, or a JWT as the password of
//! Basic credentials (git's credential helpers only speak Basic). Parsed here; verified by
//! [`super::bearer`]. Schemes are matched without regard to case (RFC 9110 §11.1).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    Bearer(String),
    /// The password of Basic credentials (the username is not used: git sends whatever its
    /// credential helper said).
    Basic(String),
    /// Basic credentials that do not decode to `user:password` with a password.
    MalformedBasic,
    /// Another scheme, or a value that is not text.
    Other,
}

/// Reads an `Authorization` header value.
pub fn parse(value: &[u8]) -> Presented {
    let Ok(text) = std::str::from_utf8(value) else {
        return Presented::Other;
    };
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        Presented::Bearer(rest.trim().to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        match basic_password(rest.trim()) {
            Some(p) => Presented::Basic(p),
            None => Presented::MalformedBasic,
        }
    } else {
        Presented::Other
    }
}

fn basic_password(encoded: &str) -> Option<String> {
    let decoded = STANDARD.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(user_pass)).into_bytes()
    }

    #[test]
    fn basic_credentials_yield_the_password() {
        assert_eq!(
            parse(&basic("gatehouse:eyJ.x.y")),
            Presented::Basic("eyJ.x.y".into())
        );
        assert_eq!(parse(&basic("a:b:c")), Presented::Basic("b:c".into()));
        assert_eq!(parse(&basic("nocolon")), Presented::MalformedBasic);
        assert_eq!(parse(&basic("user:")), Presented::MalformedBasic);
        assert_eq!(parse(b"Basic !!!"), Presented::MalformedBasic);
    }

    #[test]
    fn schemes_are_matched_without_case() {
        assert_eq!(parse(b"bEaReR  tok "), Presented::Bearer("tok".into()));
        assert_eq!(parse(b"Bearer"), Presented::Bearer(String::new()));
        assert_eq!(parse(b"Digest x"), Presented::Other);
        assert_eq!(parse(b"Bearer \xff"), Presented::Other);
    }
}
