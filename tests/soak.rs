//! Soak: the full request path (TLS, a JWT from a real provider, policy, the audit log with
//! its chain and checkpoints, identity header injection toward Gogs) at half of the measured
//! peak load, for `SOAK_SECONDS` (default 60, what CI runs; `bench/soak.sh` runs 30 minutes),
//! sampling the gateway's resident memory and open file descriptors every `SOAK_SAMPLE`
//! seconds (default 5). After a warm-up (the first fifth of the run, at least 15 s), neither
//! may grow by more than 5 %: the median of the last three samples against the median of the
//! first three after warm-up. Samples go to `SOAK_CSV` when set (for the plot).
//!
//! The load is generated in this process (keep-alive HTTP/1.1 connections over TLS, paced by a
//! shared rate), against a minimal upstream that keeps nothing, so the only thing that could
//! grow is the gateway.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::gateway::proc_status_kib;
use support::oidc::{CLI_CLIENT, OidcProvider, PASSWORD};
use support::secrets::Secrets;
use support::{DevCa, GatewayBuilder, HOST, TestGateway};

const POLICY: &str = r#"
roles:
  developer: { groups: [engineering] }
rules:
  - id: read-pages
    route: gogs
    roles: [developer]
    methods: [GET]
"#;
const CONNECTIONS: usize = 16;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An upstream that answers 200 and keeps nothing.
async fn upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"ok\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

struct Load {
    done: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// One keep-alive connection sending requests, each at its turn of a shared pace (`None`:
/// as fast as it can).
async fn connection(
    gw: &TestGateway,
    ca: &DevCa,
    token: &str,
    pace: Option<Duration>,
    load: Arc<Load>,
) {
    let tls = support::raw::connect(gw.https, &ca.ca(), HOST).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let host = format!("{HOST}:{}", gw.port());
    let mut ticker = pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut n = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        n += 1;
        let req = hyper::Request::get(format!("/platform/app/src/main/file-{}", n % 64))
            .header("host", &host)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "text/html")
            .header("user-agent", "gatehouse-soak")
            .body(Empty::<Bytes>::new())
            .unwrap();
        match sender.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status() == 200;
                let _ = resp.into_body().collect().await;
                if ok {
                    load.done.fetch_add(1, Ordering::Relaxed);
                } else {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                load.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_path_at_half_load_does_not_grow() {
    let seconds = env_secs("SOAK_SECONDS", 60);
    let every = env_secs("SOAK_SAMPLE", 5);
    let warmup = (seconds / 5).max(15);
    assert!(
        seconds >= warmup + 6 * every,
        "SOAK_SECONDS too short for the samples"
    );

    let ca = DevCa::new();
    // Access tokens must outlive the run (the provider's default is ten minutes).
    let ttl = (seconds + 600).to_string();
    let provider = tokio::task::block_in_place(|| {
        OidcProvider::start_with_env(&ca, &[("OIDC_ACCESS_TOKEN_TTL", ttl.as_str())])
    });
    let secrets = Secrets::new(&provider, POLICY);
    let up = upstream().await;
    let gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, "", &[support::oidc::AUDIENCE]))
        .route_with("gogs", "gogs", &[HOST], &up, &secrets.gogs_extra())
        // Access-log lines are info: off, as on a busy production gateway.
        .env("RUST_LOG", "warn")
        .start(&ca);
    let token = tokio::task::block_in_place(|| {
        let grant = provider.device_authorize(CLI_CLIENT);
        provider
            .device_complete(&grant, "alice", PASSWORD)
            .expect("login");
        provider.device_token(&grant).access_token
    });
    let gw = Arc::new(gw);
    let ca = Arc::new(ca);
    let token: Arc<str> = token.into();

    // Peak: as fast as the connections go, for a few seconds.
    let run = |pace: Option<Duration>| {
        let load = Arc::new(Load {
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (gw, ca, token, load) = (gw.clone(), ca.clone(), token.clone(), load.clone());
                tokio::spawn(async move { connection(&gw, &ca, &token, pace, load).await })
            })
            .collect();
        (load, tasks)
    };
    let (peak_load, tasks) = run(None);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    peak_load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let peak = peak_load.done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(peak_load.failed.load(Ordering::Relaxed), 0, "{}", gw.log());
    assert!(peak > 50.0, "peak {peak:.0} req/s");

    // Half of it, paced, for the soak.
    let rate = peak / 2.0;
    let pace = Duration::from_secs_f64(CONNECTIONS as f64 / rate);
    let (load, tasks) = run(Some(pace));
    let pid = gw.pid();
    let start = Instant::now();
    let mut samples: Vec<(u64, u64, u64, u64)> = Vec::new(); // (second, rss KiB, fds, done)
    let mut csv = String::from("seconds,rss_kib,fds,requests\n");
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(every)).await;
        let s = (
            start.elapsed().as_secs(),
            proc_status_kib(pid, "VmRSS:"),
            fds(pid),
            load.done.load(Ordering::Relaxed),
        );
        csv.push_str(&format!("{},{},{},{}\n", s.0, s.1, s.2, s.3));
        samples.push(s);
    }
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let done = load.done.load(Ordering::Relaxed);
    let failed = load.failed.load(Ordering::Relaxed);
    if let Ok(path) = std::env::var("SOAK_CSV") {
        std::fs::write(&path, &csv).unwrap();
    }

    let after: Vec<_> = samples.iter().filter(|s| s.0 > warmup).collect();
    assert!(after.len() >= 6, "{csv}");
    let first =
        |f: fn(&(u64, u64, u64, u64)) -> u64| median(after[..3].iter().map(|s| f(s)).collect());
    let last = |f: fn(&(u64, u64, u64, u64)) -> u64| {
        median(after[after.len() - 3..].iter().map(|s| f(s)).collect())
    };
    let (rss0, rss1) = (first(|s| s.1), last(|s| s.1));
    let (fd0, fd1) = (first(|s| s.2), last(|s| s.2));
    let achieved = done as f64 / start.elapsed().as_secs_f64();
    eprintln!(
        "soak: {seconds} s, peak {peak:.0} req/s, target {rate:.0} req/s, achieved {achieved:.0} req/s, {done} requests, {failed} failed; RSS {rss0} -> {rss1} KiB ({:+.2} %), FDs {fd0} -> {fd1}",
        (rss1 as f64 - rss0 as f64) * 100.0 / rss0 as f64
    );
    assert_eq!(failed, 0, "{}", gw.log());
    assert!(
        achieved > rate * 0.8,
        "the load fell behind: {achieved:.0} of {rate:.0} req/s"
    );
    assert!(
        (rss1 as f64) <= rss0 as f64 * 1.05,
        "RSS grew from {rss0} to {rss1} KiB after warm-up:\n{csv}"
    );
    assert!(
        (fd1 as f64) <= fd0 as f64 * 1.05,
        "file descriptors grew from {fd0} to {fd1}:\n{csv}"
    );
}
