//! Request ids: UUIDv7 (time-ordered, so audit and logs sort naturally), generated without a
//! syscall per request.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use crate::random::next_u64 as next_random;

/// A fresh request id as a header value.
pub fn generate() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(fresh(&mut buf)).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A fresh id as text (audit record ids).
pub fn generate_string() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    fresh(&mut buf).to_string()
}

fn fresh(buf: &mut [u8; uuid::fmt::Hyphenated::LENGTH]) -> &str {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&next_random().to_le_bytes());
    random[8..].copy_from_slice(&next_random().to_le_bytes()[..2]);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    id.hyphenated().encode_lower(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_uuid_v7() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        let text = generate_string();
        assert_ne!(text, a.to_str().unwrap());
        assert_eq!(uuid::Uuid::parse_str(&text).unwrap().get_version_num(), 7);
    }
}
