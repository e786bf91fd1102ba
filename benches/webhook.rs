//! Receiving Gogs push deliveries: signature check, parsing, and recording (replay guard,
//! commits, outbox rows) in the embedded store with `synchronous = FULL`, on one thread.
//! Each delivery is a distinct realistic push of 5 commits (about 6 KB, as Gogs sends with
//! its default FEED_MAX_COMMIT_NUM) forwarded to one receiver. With `redis-server` on PATH,
//! the same deliveries into a local Redis (the store several replicas share).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse::config::secret::SecretRef;
use gatehouse::config::{WebhookReceiver, WebhookSource, WebhooksConfig};
use gatehouse::webhook::Hooks;
use gatehouse::webhook::receive::{Inbound, receive, verify};
use gatehouse::webhook::signature::gogs_signature;
use gatehouse::webhook::store::SqliteStore;
use gatehouse::webhook::{HookStore, RedisStore};

const SECRET: &str = "bench-secret";
/// Deliveries per timed batch.
const N: u64 = 2_000;

fn sha(n: u64, salt: u64) -> String {
    format!("{:040x}", (n as u128) << 64 | salt as u128)
}

fn push(n: u64) -> Vec<u8> {
    let commits: Vec<serde_json::Value> = (0..5)
        .map(|i| {
            let id = sha(n, i + 1);
            serde_json::json!({
                "id": id,
                "message": format!("Fix the retry budget in the checkout client ({n}.{i})\n\nLonger explanation of the change.\n"),
                "url": format!("https://gogs.example.com/platform/checkout/commit/{id}"),
                "author": {"name": "Alice Example", "email": "alice@example.com", "username": "alice"},
                "committer": {"name": "Alice Example", "email": "alice@example.com", "username": "alice"},
                "added": [], "removed": null, "modified": ["src/client.rs", "src/retry.rs"],
                "timestamp": "2026-11-26T10:00:00Z"
            })
        })
        .collect();
    let user = serde_json::json!({"id": 2, "login": "gatehouse-broker", "full_name": "",
        "email": "broker@example.com", "avatar_url": "https://gogs.example.com/avatars/2",
        "username": "gatehouse-broker"});
    serde_json::to_vec_pretty(&serde_json::json!({
        "ref": "refs/heads/main",
        "before": sha(n, 0),
        "after": sha(n, 5),
        "compare_url": format!("https://gogs.example.com/platform/checkout/compare/{}...{}", sha(n, 0), sha(n, 5)),
        "commits": commits,
        "repository": {"id": 7, "owner": {"id": 3, "login": "platform", "username": "platform"},
            "name": "checkout", "full_name": "platform/checkout", "description": "", "private": true,
            "fork": false, "parent": null, "empty": false, "mirror": false, "size": 4096,
            "html_url": "https://gogs.example.com/platform/checkout",
            "ssh_url": "git@gogs.example.com:platform/checkout.git",
            "clone_url": "https://gogs.example.com/platform/checkout.git", "website": "",
            "stars_count": 0, "forks_count": 0, "watchers_count": 1, "open_issues_count": 0,
            "default_branch": "main", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-11-26T10:00:00Z"},
        "pusher": user,
        "sender": user
    }))
    .expect("json")
}

fn hooks(dir: &std::path::Path) -> Hooks {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    Hooks::build(&WebhooksConfig {
        path: "/.gatehouse/hooks/gogs".into(),
        store: Some(dir.join("hooks.sqlite")),
        max_body: 1 << 20,
        replay_window: Duration::from_secs(30 * 86400),
        commit_retention: Duration::from_secs(400 * 86400),
        commit_max: 5_000_000,
        max_attempts: 12,
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(3600),
        sources: vec![WebhookSource {
            name: "gogs".into(),
            repos: Vec::new(),
            secret: Some(SecretRef::File(secret.clone())),
            allow_unsigned: false,
        }],
        receivers: vec![WebhookReceiver {
            name: "ci".into(),
            url: "https://ci.example.com/hooks".parse().expect("url"),
            events: vec!["push".into()],
            repos: Vec::new(),
            secret: SecretRef::File(secret),
            ca_file: None,
            timeout: Duration::from_secs(15),
        }],
    })
    .expect("hooks")
}

struct Delivery {
    id: String,
    body: Vec<u8>,
    sig: String,
}

fn deliveries(from: u64, n: u64) -> Vec<Delivery> {
    (from..from + n)
        .map(|i| {
            let body = push(i);
            Delivery {
                id: format!("00000000-0000-4000-8000-{i:012x}"),
                sig: gogs_signature(SECRET.as_bytes(), &body),
                body,
            }
        })
        .collect()
}

fn inbound(d: &Delivery) -> Inbound<'_> {
    Inbound {
        event: Some(b"push"),
        delivery: Some(d.id.as_bytes()),
        signature: Some(d.sig.as_bytes()),
        content_type: Some(b"application/json"),
        body: &d.body,
        now_ms: 1_764_150_000_000,
    }
}

/// CPU seconds (user + system, all threads) this process has used so far. Linux only; 0 when
/// unavailable.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU and deliveries measured inside the timed sections of one benchmark.
#[derive(Default)]
struct CpuUse {
    seconds: f64,
    deliveries: u64,
}

impl CpuUse {
    fn report(&self, name: &str) {
        if self.deliveries > 0 && self.seconds > 0.0 {
            let per = self.seconds / self.deliveries as f64;
            eprintln!(
                "{name}: {:.0} us CPU (user+sys) per delivery over {} deliveries: {:.0}/s if one core were all ours",
                per * 1e6,
                self.deliveries,
                1.0 / per
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let hooks = hooks(dir.path());
    let sample = deliveries(0, 1);
    eprintln!("delivery size: {} bytes", sample[0].body.len());

    let mut g = c.benchmark_group("webhook");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_and_parse", |b| {
        b.iter(|| verify(&hooks, &inbound(&sample[0])).expect("verify"))
    });
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    let mut next = 1_000_000u64;
    let mut cpu = CpuUse::default();
    g.bench_function("receive_push_2000_sync_full", |b| {
        b.iter_custom(|iters| {
            let store = SqliteStore::open(&dir.path().join("hooks.sqlite")).expect("store");
            timed(iters, &mut next, &mut cpu, |batch| {
                for d in batch {
                    receive(&hooks, &store, &inbound(d)).expect("receive");
                }
            })
        })
    });
    cpu.report("receive_push_2000_sync_full");
    let mut cpu = CpuUse::default();
    // Deliveries arriving together (16 at a time, as Gogs sends when many pushes land at
    // once) share each fsync through the store's group commit. Run under `taskset -c 0` for
    // the one-core figure.
    g.bench_function("receive_push_2000_16_concurrent", |b| {
        b.iter_custom(|iters| {
            let store = SqliteStore::open(&dir.path().join("hooks.sqlite")).expect("store");
            timed(iters, &mut next, &mut cpu, |batch| {
                receive_16_at_a_time(&hooks, &store, batch);
            })
        })
    });
    cpu.report("receive_push_2000_16_concurrent");
    if let Some(redis) = RedisServer::start(dir.path()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let store = {
            let _in = runtime.enter();
            let config = gatehouse::config::RedisConfig {
                url: format!("redis://127.0.0.1:{}/0", redis.port),
                username: None,
                password: None,
                ca_file: None,
                prefix: "bench:".into(),
                timeout: Duration::from_secs(5),
            };
            let metrics = gatehouse::shared::redis::RedisMetrics::unregistered().expect("metrics");
            RedisStore::new(std::sync::Arc::new(
                gatehouse::shared::redis::Redis::connect(&config, std::sync::Arc::new(metrics))
                    .expect("redis"),
            ))
        };
        let mut cpu = CpuUse::default();
        // The same deliveries into Redis (AOF, fsync on every write), 16 at a time. The CPU
        // figure is the gateway's alone; Redis's own is on another process.
        g.bench_function("receive_push_2000_16_concurrent_redis", |b| {
            b.iter_custom(|iters| {
                timed(iters, &mut next, &mut cpu, |batch| {
                    receive_16_at_a_time(&hooks, &store, batch);
                })
            })
        });
        cpu.report("receive_push_2000_16_concurrent_redis");
        drop(store);
        drop(redis);
    } else {
        eprintln!("redis-server not found: the Redis case is skipped");
    }
    g.finish();
}

/// Times `iters` batches of `N` fresh deliveries through `run`, adding the CPU used to `cpu`.
fn timed(
    iters: u64,
    next: &mut u64,
    cpu: &mut CpuUse,
    mut run: impl FnMut(&[Delivery]),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let batch = deliveries(*next, N);
        *next += N;
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        run(&batch);
        total += start.elapsed();
        cpu.seconds += cpu_seconds() - cpu0;
        cpu.deliveries += N;
    }
    total
}

/// Receives `batch` on 16 threads, as Gogs delivers when many pushes land at once.
fn receive_16_at_a_time(hooks: &Hooks, store: &(dyn HookStore + Sync), batch: &[Delivery]) {
    std::thread::scope(|scope| {
        for part in batch.chunks(batch.len().div_ceil(16)) {
            scope.spawn(move || {
                for d in part {
                    receive(hooks, store, &inbound(d)).expect("receive");
                }
            });
        }
    });
}

/// A local `redis-server` as `[redis]` expects it: append-only file fsynced on every write.
struct RedisServer {
    child: std::process::Child,
    port: u16,
}

impl RedisServer {
    fn start(dir: &std::path::Path) -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let data = dir.join("redis");
        std::fs::create_dir_all(&data).ok()?;
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(&data)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(RedisServer { child, port })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
