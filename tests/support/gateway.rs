//! The real `gatehouse` binary as a child process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::DevCa;

/// Builds a config file and starts the gateway on random loopback ports.
#[derive(Default, Clone)]
pub struct GatewayBuilder {
    server: Vec<String>,
    timeouts: Vec<String>,
    limits: Vec<String>,
    routes: Vec<String>,
    extra: Vec<String>,
    audit: Vec<String>,
    env: Vec<(String, String)>,
}

impl GatewayBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A line under `[server]`.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.to_string());
        self
    }

    /// A line under `[server.timeouts]`.
    pub fn timeout(mut self, line: &str) -> Self {
        self.timeouts.push(line.to_string());
        self
    }

    /// A line under `[server.limits]`.
    pub fn limit(mut self, line: &str) -> Self {
        self.limits.push(line.to_string());
        self
    }

    /// A public `[[routes]]` entry (no authentication: these tests are about proxying);
    /// `extra` holds further TOML lines (and sub-tables) for it.
    pub fn route(
        self,
        name: &str,
        kind: &str,
        hosts: &[&str],
        upstream: &str,
        extra: &str,
    ) -> Self {
        self.route_with(
            name,
            kind,
            hosts,
            upstream,
            &format!("public = true\n{extra}"),
        )
    }

    /// A `[[routes]]` entry exactly as given (authentication per `extra` and the kind's
    /// defaults).
    pub fn route_with(
        mut self,
        name: &str,
        kind: &str,
        hosts: &[&str],
        upstream: &str,
        extra: &str,
    ) -> Self {
        let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        self.routes.push(format!(
            "[[routes]]\nname = {name:?}\nkind = {kind:?}\nhosts = [{}]\nupstream = {upstream:?}\n{extra}\n",
            hosts.join(", ")
        ));
        self
    }

    /// A line under `[audit]` (the harness always writes one, into the gateway's directory,
    /// signed with a fresh key, unless raw TOML brings its own `[audit]`).
    pub fn audit(mut self, line: &str) -> Self {
        self.audit.push(line.to_string());
        self
    }

    /// Raw TOML placed before the routes (for `[identity]` sections).
    pub fn toml(mut self, text: &str) -> Self {
        self.extra.push(text.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The config text this builder writes, with certificate paths inside `dir`.
    pub fn config_text(&self, dir: &std::path::Path) -> String {
        let mut t = String::from("[server]\nlisten = [\"127.0.0.1:0\"]\naccess_log = true\n");
        for l in &self.server {
            t.push_str(l);
            t.push('\n');
        }
        t.push_str("[server.timeouts]\n");
        for l in &self.timeouts {
            t.push_str(l);
            t.push('\n');
        }
        t.push_str("[server.limits]\n");
        for l in &self.limits {
            t.push_str(l);
            t.push('\n');
        }
        t.push_str(&format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("server.crt").display().to_string(),
            dir.join("server.key").display().to_string()
        ));
        for e in &self.extra {
            t.push_str(e);
            t.push('\n');
        }
        if !self.extra.iter().any(|e| e.contains("[audit]")) {
            t.push_str(&format!(
                "[audit]\ndir = {:?}\nreplica = \"gw\"\nsigning_key_file = {:?}\n",
                dir.join("audit").display().to_string(),
                dir.join("audit-signing.pem").display().to_string()
            ));
            for l in &self.audit {
                t.push_str(l);
                t.push('\n');
            }
        }
        for r in &self.routes {
            t.push_str(r);
        }
        t
    }

    pub fn start(&self, ca: &DevCa) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(ca.cert(), dir.path().join("server.crt")).expect("copy cert");
        std::fs::copy(ca.key(), dir.path().join("server.key")).expect("copy key");
        write_audit_key(&dir.path().join("audit-signing.pem"));
        let config = dir.path().join("gatehouse.toml");
        std::fs::write(&config, self.config_text(dir.path())).expect("write config");
        let addr_file = dir.path().join("addrs");
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--addr-file")
            .arg(&addr_file)
            .env("RUST_LOG", "info,gatehouse=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // The gateway's own outbound TLS trusts exactly this CA.
        ca.apply_env(&mut cmd);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn gatehouse");
        let mut gw = TestGateway {
            child,
            https: "0.0.0.0:0".parse().expect("addr"),
            metrics: "0.0.0.0:0".parse().expect("addr"),
            config,
            log_path,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                for line in text.lines() {
                    if let Some(a) = line.strip_prefix("https=") {
                        gw.https = a.parse().expect("https addr");
                    }
                    if let Some(a) = line.strip_prefix("metrics=") {
                        gw.metrics = a.parse().expect("metrics addr");
                    }
                }
                break;
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!(
                    "gateway exited with {status} before listening:\n{}",
                    gw.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }
}

/// A fresh Ed25519 key in PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes it.
pub fn write_audit_key(path: &std::path::Path) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    std::fs::write(path, key.serialize_pem()).expect("write audit key");
}

pub struct TestGateway {
    pub child: Child,
    pub https: SocketAddr,
    pub metrics: SocketAddr,
    pub config: PathBuf,
    pub log_path: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    pub fn port(&self) -> u16 {
        self.https.port()
    }

    /// Where the harness's `[audit]` section puts the log.
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// Every record in the audit directory, in file order.
    pub fn audit_records(&self) -> Vec<gatehouse::audit::Record> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.audit_dir())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The records of request `id`, once its last one has a status (waits up to 5 s).
    pub fn audit_of(&self, request_id: &str) -> Vec<gatehouse::audit::Record> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found: Vec<_> = self
                .audit_records()
                .into_iter()
                .filter(|r| r.request_id.as_deref() == Some(request_id))
                .collect();
            if found.last().is_some_and(|r| r.status.is_some()) || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn audit_key(&self) -> PathBuf {
        self.dir.path().join("audit-signing.pem")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", super::HOST, self.port())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// The Prometheus text from the metrics listener.
    pub fn metrics_text(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).expect("metrics connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// The value of one metric sample (0 when absent), e.g. `gatehouse_upstream_errors_total{kind="timeout",route="web"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Peak resident memory in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// SIGTERM, then wait for exit (SIGKILL after `secs`).
    pub fn stop(&mut self, secs: u64) -> ExitStatus {
        self.signal("TERM");
        self.wait(secs)
    }

    pub fn wait(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gateway did not exit within {secs}s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until `f` holds (up to `secs`), panicking with the gateway log otherwise.
    pub fn eventually(&self, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{what} did not happen within {secs}s; gateway log:\n{}",
            self.log()
        );
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
