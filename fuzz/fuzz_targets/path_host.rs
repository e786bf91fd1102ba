//! Path and host validation on arbitrary input: never panics, and whatever is accepted has
//! none of the spellings the gateway promises to refuse (so routing, policy and the upstream
//! cannot read it two ways).

#![no_main]

use gatehouse::proxy::host::{HostRef, MAX_HOST_LEN, canonical_config_host};
use gatehouse::proxy::path::check_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if check_path(text).is_ok() {
        assert!(text.starts_with('/'));
        let lower = text.to_ascii_lowercase();
        for bad in [
            "//", "/./", "/../", "\\", ";", "%2f", "%5c", "%2e", "%3b", "%00", "%252f", "%255c",
            "%252e", "%253b", "%2500",
        ] {
            assert!(!lower.contains(bad), "{text:?} accepted with {bad:?}");
        }
        assert!(
            !lower.ends_with("/.") && !lower.ends_with("/.."),
            "{text:?}"
        );
        assert!(text.bytes().all(|b| b > 0x20 && b < 0x7f), "{text:?}");
    }
    if let Ok(h) = HostRef::parse(text, 443) {
        let mut buf = [0u8; MAX_HOST_LEN + 2];
        let lower = h.lowercase_into(&mut buf).to_string();
        assert!(!lower.ends_with('.'), "{text:?} -> {lower:?}");
        assert_eq!(lower, lower.to_ascii_lowercase());
        assert!(h.same_as(&h));
    }
    if let Ok(c) = canonical_config_host(text) {
        // Canonical means a fixed point.
        assert_eq!(canonical_config_host(&c).ok().as_deref(), Some(c.as_str()));
    }
});
