//! Test harness: the real gateway binary, a real git smart-HTTP server, a recording upstream,
//! and clients that can send bytes no well-behaved library would. Everything listens on
//! 127.0.0.1 with port 0, is bounded in time, and is stopped by pid when dropped.

#![allow(dead_code)]

pub mod csv;
pub mod gateway;
pub mod git_server;
pub mod hooks;
pub mod oidc;
pub mod python;
pub mod raw;
pub mod redis;
pub mod secrets;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(unused_imports)]
pub use gateway::{GatewayBuilder, TestGateway};
#[allow(unused_imports)]
pub use git_server::GitServer;
#[allow(unused_imports)]
pub use upstream::{Recorded, RecordingUpstream, Reply};

/// The host name the dev certificate is issued for; clients resolve it to 127.0.0.1.
pub const HOST: &str = "git.example.test";

/// A development CA and server certificate in a temporary directory.
pub struct DevCa {
    pub dir: tempfile::TempDir,
}

impl DevCa {
    pub fn new() -> DevCa {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = gatehouse::certs::generate(&[
            HOST.into(),
            "other.example.test".into(),
            "otlp.example.test".into(),
            "localhost".into(),
            "127.0.0.1".into(),
        ])
        .expect("generate dev certs");
        gatehouse::certs::write(dir.path(), &certs, true).expect("write dev certs");
        DevCa { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// Sets every CA-bundle variable clients consult to this CA alone, so tests behave the
    /// same whatever the machine's environment says.
    pub fn apply_env(&self, cmd: &mut Command) {
        let ca = self.ca();
        let empty = self.dir.path().join("empty-cert-dir");
        let _ = std::fs::create_dir_all(&empty);
        for var in [
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "GIT_SSL_CAINFO",
        ] {
            cmd.env(var, &ca);
        }
        cmd.env("SSL_CERT_DIR", &empty);
    }
}

/// Runs a command to completion with a deadline; returns (status ok, stdout, stderr).
pub fn run_with_timeout(cmd: &mut Command, secs: u64) -> (bool, String, String) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {secs}s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (
        status.success(),
        out_t.join().unwrap_or_default(),
        err_t.join().unwrap_or_default(),
    )
}

/// `git` with a clean, explicit environment: no user config, this CA only, and the test host
/// resolved to the gateway's port.
pub fn git(ca: &DevCa, cwd: &Path, gateway_port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Alice Example")
        .env("GIT_AUTHOR_EMAIL", "alice@example.test")
        .env("GIT_COMMITTER_NAME", "Alice Example")
        .env("GIT_COMMITTER_EMAIL", "alice@example.test")
        .arg("-c")
        .arg(format!(
            "http.curloptResolve={HOST}:{gateway_port}:127.0.0.1"
        ))
        .arg("-c")
        .arg(format!("http.sslCAInfo={}", ca.ca().display()))
        .args(args);
    ca.apply_env(&mut cmd);
    cmd
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `curl` against the gateway with this CA and the test host resolved locally.
pub fn curl(ca: &DevCa, gateway_port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new("curl");
    cmd.arg("--silent")
        .arg("--show-error")
        .arg("--max-time")
        .arg("20")
        .arg("--cacert")
        .arg(ca.ca())
        .arg("--resolve")
        .arg(format!("{HOST}:{gateway_port}:127.0.0.1"))
        .arg("--resolve")
        .arg(format!("other.example.test:{gateway_port}:127.0.0.1"))
        .args(args);
    ca.apply_env(&mut cmd);
    cmd
}

/// An OTLP/protobuf `ExportTraceServiceRequest` with one resource per `service.name`.
#[allow(dead_code)]
pub fn otlp_body(services: &[&str]) -> Vec<u8> {
    fn field(n: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2];
        let mut len = bytes.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(bytes);
        out
    }
    let mut body = Vec::new();
    for s in services {
        let any_value = field(1, s.as_bytes());
        let mut kv = field(1, b"service.name");
        kv.extend(field(2, &any_value));
        let resource = field(1, &kv);
        let resource_spans = field(1, &resource);
        body.extend(field(1, &resource_spans));
    }
    body
}
