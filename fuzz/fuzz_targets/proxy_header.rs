//! The PROXY protocol reader on arbitrary bytes: never panics, never reads past the header
//! (what follows belongs to TLS), and accepts only headers whose length and shape say so.

#![no_main]

use std::sync::OnceLock;

use gatehouse::server::proxy_protocol::read;
use libfuzzer_sys::fuzz_target;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut io = data;
    let result = runtime().block_on(read(&mut io));
    let consumed = data.len() - io.len();
    assert!(consumed <= 16 + 1024, "read {consumed} bytes");
    let Ok(client) = result else {
        return;
    };
    let header = &data[..consumed];
    if header.starts_with(V2_SIGNATURE) {
        // Exactly the announced length, and a v2 PROXY or LOCAL command.
        assert!(consumed >= 16);
        let len = u16::from_be_bytes([header[14], header[15]]) as usize;
        assert_eq!(consumed, 16 + len);
        assert_eq!(header[12] >> 4, 2);
        if client.is_some() {
            assert_eq!(header[12] & 0x0f, 1);
            assert!(matches!(header[13], 0x11 | 0x21));
        }
    } else {
        // One v1 line, up to and including its first CRLF, at most 107 bytes.
        assert!(header.starts_with(b"PROXY "));
        assert!(header.ends_with(b"\r\n"));
        assert!(consumed <= 107);
        assert_eq!(
            header.windows(2).position(|w| w == b"\r\n"),
            Some(consumed - 2)
        );
        if let Some(addr) = client {
            let line = std::str::from_utf8(header).expect("an accepted v1 line is ASCII");
            let fields: Vec<&str> = line.trim_end_matches("\r\n").split(' ').collect();
            assert_eq!(fields.len(), 6);
            assert_eq!(fields[2].parse::<std::net::IpAddr>().ok(), Some(addr.ip()));
            assert_eq!(fields[4].parse::<u16>().ok(), Some(addr.port()));
        }
    }
});
