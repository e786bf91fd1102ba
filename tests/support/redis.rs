//! A real `redis-server` on 127.0.0.1: TLS only, the gateway's ACL user as docs/operations.md
//! gives it (its key prefix and the commands it sends), the default user behind a password,
//! and an append-only file fsynced on every write. Started with a random port, restartable on
//! the same port and data, stopped by pid on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DevCa;

pub const USER: &str = "gatehouse";
pub const PASSWORD: &str = "redis-pw-8c1f2e";

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl RedisServer {
    pub fn start(ca: &DevCa) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let mut r = RedisServer {
            child: None,
            port,
            dir,
            ca: ca.ca(),
            cert: ca.cert(),
            key: ca.key(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("redis log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--tls-port", &self.port.to_string()])
            .arg("--tls-cert-file")
            .arg(&self.cert)
            .arg("--tls-key-file")
            .arg(&self.key)
            .arg("--tls-ca-cert-file")
            .arg(&self.ca)
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--maxmemory-policy", "noeviction"])
            // Redis 7.0 replays the append-only file as the default user: turned off, it
            // refuses the replay (NOPERM) and the data is lost. It keeps a password instead.
            .args([
                "--user",
                "default",
                "on",
                ">redis-admin-5d0a",
                "~*",
                "&*",
                "+@all",
            ])
            .args(acl_line())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `[redis]` section for a gateway, the password in a file under `dir`.
    pub fn toml(&self, dir: &Path) -> String {
        let pw = dir.join("redis-password");
        std::fs::write(&pw, PASSWORD).expect("password file");
        format!(
            "[redis]\nurl = \"rediss://localhost:{}/0\"\nusername = {USER:?}\npassword_file = {:?}\nca_file = {:?}\ntimeout = \"1s\"\n",
            self.port,
            pw.display().to_string(),
            self.ca.display().to_string()
        )
    }

    /// Kills the server at once (SIGKILL: no shutdown save), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

/// The gateway's ACL user exactly as docs/operations.md gives it (`--user gatehouse on ...`),
/// with the test password, so the documented permissions are the ones tested.
fn acl_line() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md");
    let line = doc
        .lines()
        .find(|l| l.starts_with(&format!("user {USER} on ")))
        .expect("docs/operations.md has the ACL line for the gateway's user");
    let mut args = vec!["--user".to_string()];
    args.extend(line.split_whitespace().skip(1).map(|t| {
        if t == ">CHANGE-ME" {
            format!(">{PASSWORD}")
        } else {
            t.to_string()
        }
    }));
    assert!(args.contains(&format!(">{PASSWORD}")), "{line}");
    args
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
