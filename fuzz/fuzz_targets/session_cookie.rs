//! Session cookies as a browser (or an attacker) may send them: arbitrary `Cookie` headers
//! never panic the reader and never open as a session unless the gateway sealed it; a sealed
//! session survives being split across cookies and read back.

#![no_main]

use std::sync::Arc;

use gatehouse::identity::cookies;
use gatehouse::identity::keyring::KeyRing;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fuzz_target!(|data: &[u8]| {
    let Ok(ring) = KeyRing::parse(KEY) else {
        return;
    };
    let ring = Arc::new(ring);
    let mut headers = HeaderMap::new();
    for piece in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(piece) {
            headers.append(header::COOKIE, v);
        }
    }
    let _ = cookies::pairs(&headers).count();
    if let Some(joined) = cookies::join_session(&headers) {
        // Nothing the fuzzer writes is a valid seal for this context.
        assert!(
            ring.open(b"gatehouse session\0example.test", &joined)
                .is_none()
        );
    }
    // Round trip: whatever bytes, sealed, split and joined, open again.
    let sealed = ring.seal(b"ctx", data);
    if let Some(parts) = cookies::split_session(&sealed) {
        let mut h = HeaderMap::new();
        let line: Vec<String> = parts.iter().map(|(n, v)| format!("{n}={v}")).collect();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&line.join("; ")).unwrap(),
        );
        let joined = cookies::join_session(&h).expect("the pieces join");
        assert_eq!(ring.open(b"ctx", &joined).as_deref(), Some(data));
    }
});
