//! `classify::otlp::services` on arbitrary bytes, as protobuf and as JSON for every signal,
//! and after gunzip: it must never panic, and what it accepts must hold together.
//! Seeds in `fuzz/corpus/otlp_services/` are real SDK requests (see tests/otlp_classify.rs).

#![no_main]

use gatehouse::classify::otlp::{
    Encoding, Signal, for_each_protobuf_resource, gunzip_capped, services,
};
use libfuzzer_sys::fuzz_target;

const SIGNALS: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

fn check_protobuf(data: &[u8]) {
    let result = services(Signal::Traces, Encoding::Protobuf, data);
    // The three requests share field numbers, so the signal cannot change a protobuf reading.
    for signal in SIGNALS {
        assert_eq!(
            format!("{:?}", services(signal, Encoding::Protobuf, data)),
            format!("{result:?}")
        );
    }
    let Ok(names) = result else { return };
    let mut entries = Vec::new();
    for_each_protobuf_resource(data, |e| entries.push(e)).expect("services accepted it");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.index, i);
        assert!(e.header.start < e.header.end && e.header.end == e.contents.start);
        assert!(e.contents.end <= data.len());
    }
    // Each name once, each from some entry, every entry's name present.
    for (i, n) in names.iter().enumerate() {
        assert!(!names[..i].contains(n));
        assert!(entries.iter().any(|e| e.service_name.unwrap_or("") == n));
    }
    for e in &entries {
        assert!(names.iter().any(|n| n == e.service_name.unwrap_or("")));
    }
}

fuzz_target!(|data: &[u8]| {
    check_protobuf(data);
    for signal in SIGNALS {
        if let Ok(names) = services(signal, Encoding::Json, data) {
            for (i, n) in names.iter().enumerate() {
                assert!(!names[..i].contains(n));
            }
        }
    }
    if let Ok(raw) = gunzip_capped(data, 1 << 20) {
        assert!(raw.len() <= 1 << 20);
        check_protobuf(&raw);
        let _ = services(Signal::Traces, Encoding::Json, &raw);
    }
});
