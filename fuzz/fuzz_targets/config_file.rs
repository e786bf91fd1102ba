//! The configuration parser on arbitrary text: never panics, and every problem it reports
//! points inside the file (a line and column the text has, or 0 for something missing).

#![no_main]

use std::path::Path;

use gatehouse::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("/etc/gatehouse/gatehouse.toml"), text) {
        Ok(_) => {}
        Err(ConfigError::Invalid(problems)) => {
            assert!(!problems.is_empty());
            let lines = text.lines().count().max(1) + 1;
            for p in problems {
                assert!(p.line <= lines, "line {} of {lines}: {p}", p.line);
                assert!(!p.message.is_empty());
            }
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
});
