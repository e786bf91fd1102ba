//! The audit log's hot paths: appending through the writer (batch fsync), sealing one record,
//! exporting a log to CSV, verifying a log. Records are realistic (~550 bytes): an identity
//! with groups, a git push with a ref update, a decision with a reason.
//!
//! `cargo bench --bench audit`

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse::audit::export::{self, Filter, Format};
use gatehouse::audit::record::timestamp;
use gatehouse::audit::{
    Action, AuditDecision, AuditIdentity, AuditLog, AuditMetrics, AuditRef, FsyncPolicy, Record,
    Source, WriterConfig, chain, verify,
};

fn request(n: u64) -> Record {
    Record {
        time: timestamp(SystemTime::now()),
        id: uuid::Uuid::now_v7().to_string(),
        replica: "gw1".into(),
        kind: "request".into(),
        request_id: Some(format!("{:016x}", n)),
        trace_id: Some(format!("{:032x}", n * 7919)),
        identity: Some(AuditIdentity {
            subject: "a1b2c3d4-0000-4000-8000-000000000042".into(),
            username: Some("alice".into()),
            email: Some("alice@example.com".into()),
            email_verified: true,
            groups: vec!["engineering".into(), "sre".into(), "platform".into()],
            method: "session".into(),
            client_id: None,
            issuer: Some("https://id.example.com".into()),
        }),
        source: Some(Source {
            addr: "10.20.30.40:51234".into(),
            trusted_proxy: false,
            forwarded_for: None,
        }),
        route: Some("gogs".into()),
        method: Some("POST".into()),
        path: Some(format!("/platform/service-{}.git/git-receive-pack", n % 97)),
        action: Some(Action {
            kind: Some("git_push".into()),
            repository: Some(format!("platform/service-{}", n % 97)),
            refs: vec![AuditRef {
                name: "refs/heads/main".into(),
                kind: "update".into(),
                old: "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into(),
                new: "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391".into(),
            }],
            services: vec![],
        }),
        decision: Some(AuditDecision {
            effect: "allow".into(),
            rule: Some("push-platform".into()),
            reasons: vec!["alice holds role developer".into()],
            policy: Some("0123456789abcdef".into()),
        }),
        bytes_in: Some(18_432),
        ..Default::default()
    }
}

fn outcome(req: &Record) -> Record {
    Record {
        time: timestamp(SystemTime::now()),
        id: uuid::Uuid::now_v7().to_string(),
        replica: "gw1".into(),
        kind: "outcome".into(),
        request_id: req.request_id.clone(),
        ref_id: Some(req.id.clone()),
        status: Some(200),
        bytes_out: Some(2_048),
        duration_us: Some(35_000),
        ..Default::default()
    }
}

fn config(dir: PathBuf, queue: usize) -> WriterConfig {
    WriterConfig {
        dir,
        replica: "gw1".into(),
        fsync: FsyncPolicy::Batch {
            interval: Duration::from_millis(50),
            records: 1_000,
        },
        rotate_bytes: 256 << 20,
        rotate_interval: Duration::from_secs(86_400),
        checkpoint_every: 10_000,
        checkpoint_interval: Duration::from_secs(60),
        signing_key: None,
        mirror: None,
        queue,
        enqueue_timeout: Duration::from_secs(5),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Appends `n` records (prepared beforehand) and waits for the final sync.
fn append(dir: PathBuf, records: Vec<Record>) -> Duration {
    let n = records.len();
    runtime().block_on(async move {
        let metrics = Arc::new(AuditMetrics::unregistered().expect("metrics"));
        let log = AuditLog::start(config(dir, n + 1024), metrics).expect("start");
        let start = Instant::now();
        for r in records {
            log.submit(r);
        }
        log.shutdown().await;
        start.elapsed()
    })
}

fn workload(n: u64) -> Vec<Record> {
    let mut v = Vec::with_capacity(n as usize);
    let mut i = 0;
    while (v.len() as u64) < n {
        let r = request(i);
        let o = outcome(&r);
        v.push(r);
        v.push(o);
        i += 1;
    }
    v.truncate(n as usize);
    v
}

fn writer(c: &mut Criterion) {
    const N: u64 = 100_000;
    let records = workload(N);
    let mut g = c.benchmark_group("audit_writer");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_function("append_batch_fsync_100k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let tmp = tempfile::tempdir().expect("tempdir");
                total += append(tmp.path().to_path_buf(), records.clone());
            }
            total
        })
    });
    g.finish();

    let mut g = c.benchmark_group("audit_chain");
    g.throughput(Throughput::Elements(1));
    let mut r = request(1);
    r.seq = 42;
    r.prev = chain::GENESIS.to_string();
    let (line, _) = chain::seal(&mut r);
    eprintln!("record size: {} bytes", line.len());
    g.bench_function("seal", |b| b.iter(|| chain::seal(black_box(&mut r))));
    let body = &line[..line.len() - 1];
    g.bench_function("check_line", |b| {
        b.iter(|| chain::check_line(black_box(body)))
    });
    g.finish();
}

fn read_side(c: &mut Criterion) {
    const N: u64 = 300_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    append(dir.clone(), workload(N));
    let bytes: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "log: {N} records, {bytes} bytes ({} bytes/record)",
        bytes / N
    );
    let dirs = vec![dir.clone()];
    let mut g = c.benchmark_group("audit_read");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    for (name, format) in [
        ("export_csv_300k", Format::Csv),
        ("export_jsonl_300k", Format::Jsonl),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let summary = export::export(
                    &dirs,
                    &Filter::default(),
                    format,
                    None,
                    &mut std::io::sink(),
                    &mut |_| {},
                )
                .expect("export");
                assert!(summary.chain_ok() && summary.records == N);
            })
        });
    }
    let filter = Filter {
        user: Some("bob".into()),
        ..Default::default()
    };
    g.bench_function("export_csv_300k_filtered_out", |b| {
        b.iter(|| {
            export::export(
                &dirs,
                &filter,
                Format::Csv,
                None,
                &mut std::io::sink(),
                &mut |_| {},
            )
            .expect("export")
        })
    });
    g.bench_function("verify_300k", |b| {
        b.iter(|| {
            let report = verify::verify(&dirs, None, None).expect("verify");
            assert!(report.ok() && report.records == N);
        })
    });
    g.finish();
}

criterion_group!(benches, writer, read_side);
criterion_main!(benches);
