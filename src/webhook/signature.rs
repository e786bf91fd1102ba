//! Signatures on webhooks: Gogs's `X-Gogs-Signature` checked on the way in, and both it and
//! Standard Webhooks' `webhook-signature` made on the way out.
//!
//! Gogs sends the lower-case hex HMAC-SHA256 of the JSON bytes, with no prefix. Only that exact
//! form is accepted: upper-case hex, `sha256=` prefixes, whitespace or any other length are
//! refused as malformed rather than "fixed up", since no Gogs sends them and a verifier that
//! accepts variants gives an attacker more strings to try.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Gogs-Signature header")]
    Missing,
    #[error("X-Gogs-Signature is empty (the hook in Gogs has no secret)")]
    Empty,
    #[error("X-Gogs-Signature is malformed: {0}")]
    Malformed(&'static str),
    #[error("X-Gogs-Signature does not match the body")]
    Mismatch,
}

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Checks `header` (the raw `X-Gogs-Signature` value) against `body` in constant time.
pub fn verify_gogs(
    secret: &[u8],
    body: &[u8],
    header: Option<&[u8]>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.is_empty() {
        return Err(SignatureError::Empty);
    }
    if header.len() != 64 {
        return Err(SignatureError::Malformed(
            "expected 64 lower-case hex digits",
        ));
    }
    let mut tag = [0u8; 32];
    for (i, pair) in header.chunks_exact(2).enumerate() {
        let (Some(hi), Some(lo)) = (unhex(pair[0]), unhex(pair[1])) else {
            return Err(SignatureError::Malformed(
                if pair.iter().any(u8::is_ascii_uppercase) {
                    "upper-case hex (Gogs sends lower-case)"
                } else {
                    "expected 64 lower-case hex digits"
                },
            ));
        };
        tag[i] = hi << 4 | lo;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, body, &tag).map_err(|_| SignatureError::Mismatch)
}

/// `X-Gogs-Signature` for `body` under `secret`, as Gogs would send it.
pub fn gogs_signature(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    crate::audit::chain::hex(hmac::sign(&key, body).as_ref())
}

/// The HMAC key of a Standard Webhooks secret: `whsec_<base64>` is decoded (what the
/// receiver libraries expect); any other secret is used as its bytes.
pub fn standard_key(secret: &str) -> Vec<u8> {
    if let Some(b64) = secret.strip_prefix("whsec_")
        && let Ok(key) = STANDARD.decode(b64)
    {
        return key;
    }
    secret.as_bytes().to_vec()
}

/// `webhook-signature` (Standard Webhooks v1): HMAC-SHA256 over `id.timestamp.body`.
pub fn standard_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_made_here_verifies_and_any_variant_is_refused() {
        let body = b"{\n  \"ref\": \"refs/heads/main\"\n}";
        let sig = gogs_signature(b"s3cr3t", body);
        assert_eq!(verify_gogs(b"s3cr3t", body, Some(sig.as_bytes())), Ok(()));
        assert_eq!(
            verify_gogs(b"other", body, Some(sig.as_bytes())),
            Err(SignatureError::Mismatch)
        );
        let upper = sig.to_ascii_uppercase();
        assert!(matches!(
            verify_gogs(b"s3cr3t", body, Some(upper.as_bytes())),
            Err(SignatureError::Malformed(m)) if m.contains("upper-case")
        ));
        let prefixed = format!("sha256={sig}");
        assert!(matches!(
            verify_gogs(b"s3cr3t", body, Some(prefixed.as_bytes())),
            Err(SignatureError::Malformed(_))
        ));
        assert_eq!(
            verify_gogs(b"s3cr3t", body, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_gogs(b"s3cr3t", body, Some(b"")),
            Err(SignatureError::Empty)
        );
        let mut edited = body.to_vec();
        edited[5] ^= 1;
        assert_eq!(
            verify_gogs(b"s3cr3t", &edited, Some(sig.as_bytes())),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's test suite.
        let key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sig = standard_signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
