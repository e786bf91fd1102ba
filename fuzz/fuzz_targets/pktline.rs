//! `parse_commands` on arbitrary bytes: never panics, and an accepted request is exactly its
//! consumed prefix (re-parsing that prefix gives the same answer; one byte less is
//! `Incomplete`). The refusal built from it is well-framed side-band data.

#![no_main]

use gatehouse::classify::pktline::{MAX_PKT_LEN, PktError, parse_commands, report_refusal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(commands) = parse_commands(data) else {
        return;
    };
    assert!(commands.consumed <= data.len());
    assert_eq!(
        parse_commands(&data[..commands.consumed]).as_ref(),
        Ok(&commands)
    );
    assert!(commands.consumed >= 4, "at least a flush");
    assert_eq!(
        parse_commands(&data[..commands.consumed - 1]),
        Err(PktError::Incomplete)
    );
    assert_eq!(
        parse_commands(&data[..commands.consumed / 2]),
        Err(PktError::Incomplete)
    );

    let reasons: Vec<(String, String)> = commands
        .updates
        .iter()
        .take(1)
        .map(|u| (u.name.clone(), "denied by policy".to_string()))
        .collect();
    let plain = report_refusal(&commands.updates, &reasons, false);
    let framed = report_refusal(&commands.updates, &reasons, true);
    assert_eq!(demux_band_one(&framed), plain);
    assert!(plain.starts_with(b"000eunpack ok\n") && plain.ends_with(b"0000"));
});

/// Concatenates band-1 payloads up to the final flush, checking the framing on the way.
fn demux_band_one(framed: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let header = std::str::from_utf8(&framed[pos..pos + 4]).expect("hex header");
        let len = usize::from_str_radix(header, 16).expect("hex header");
        if len == 0 {
            assert_eq!(pos + 4, framed.len(), "nothing after the final flush");
            return out;
        }
        assert!((6..=MAX_PKT_LEN).contains(&len));
        assert_eq!(framed[pos + 4], 1, "band 1");
        out.extend_from_slice(&framed[pos + 5..pos + len]);
        pos += len;
    }
}
