//! The audit log end to end: logs written by the real writer, checked and exported by the real
//! `gatehouse` binary. Tampering of every kind is caught with its file, line and reason;
//! hostile values stay on one line and come back intact through CSV; a writer killed mid-stream
//! leaves a log that verifies and that a new writer continues; export selects exactly what its
//! filters say, whether the log spans one file or many.

#[path = "support/csv.rs"]
mod csv;
use csv::parse_csv;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatehouse::audit::record::{MAX_VALUE, cap, cap_list, timestamp};
use gatehouse::audit::{
    Action, AuditDecision, AuditIdentity, AuditLog, AuditMetrics, AuditRef, FsyncPolicy, Record,
    Source, WriterConfig,
};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn gatehouse(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run gatehouse")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes an Ed25519 key pair; returns (private, public).
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    (private, public)
}

fn config(dir: &Path, replica: &str) -> WriterConfig {
    WriterConfig {
        dir: dir.to_path_buf(),
        replica: replica.into(),
        fsync: FsyncPolicy::Batch {
            interval: Duration::from_millis(50),
            records: 1000,
        },
        rotate_bytes: 1 << 30,
        rotate_interval: Duration::from_secs(86_400),
        checkpoint_every: 10_000,
        checkpoint_interval: Duration::from_secs(3600),
        signing_key: None,
        mirror: None,
        queue: 65_536,
        enqueue_timeout: Duration::from_secs(5),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes records one by one (each waits for its write, so rotation is per record).
fn write_records(cfg: WriterConfig, records: &[Record]) {
    runtime().block_on(async {
        let log = AuditLog::start(cfg, Arc::new(AuditMetrics::unregistered().unwrap())).unwrap();
        for r in records {
            log.write(r.clone()).await.unwrap();
        }
        log.shutdown().await;
    });
}

/// Writes records made as they are written (`make(i)` for each i), so record times and file
/// names agree as in a running gateway; returns them.
fn write_live(cfg: WriterConfig, n: u64, mut make: impl FnMut(u64) -> Vec<Record>) -> Vec<Record> {
    runtime().block_on(async {
        let log = AuditLog::start(cfg, Arc::new(AuditMetrics::unregistered().unwrap())).unwrap();
        let mut all = Vec::new();
        for i in 0..n {
            for r in make(i) {
                log.write(r.clone()).await.unwrap();
                all.push(r);
            }
        }
        log.shutdown().await;
        all
    })
}

fn hex40(i: u64, salt: u64) -> String {
    format!("{:040x}", u128::from(i) * 0x9e37_79b9 + u128::from(salt))
}

/// A request as the gateway records it: identity with groups, a git push, a decision.
fn request(time: &str, n: u64, user: &str, route: &str, effect: &str) -> Record {
    Record {
        time: time.into(),
        id: uuid::Uuid::now_v7().to_string(),
        kind: "request".into(),
        request_id: Some(format!("req-{n}")),
        trace_id: Some(format!("{:032x}", n)),
        identity: Some(AuditIdentity {
            subject: format!("sub-{user}"),
            username: Some(user.into()),
            email: Some(format!("{user}@example.com")),
            email_verified: true,
            groups: vec!["engineering".into(), "sre".into()],
            method: "session".into(),
            client_id: None,
            issuer: Some("https://id.example.com".into()),
        }),
        source: Some(Source {
            addr: "10.1.2.3:50000".into(),
            trusted_proxy: false,
            forwarded_for: None,
        }),
        route: Some(route.into()),
        method: Some("POST".into()),
        path: Some(format!("/platform/repo-{n}.git/git-receive-pack")),
        action: Some(Action {
            kind: Some("git_push".into()),
            repository: Some(format!("platform/repo-{n}")),
            refs: vec![AuditRef {
                name: "refs/heads/main".into(),
                kind: "update".into(),
                old: hex40(n, 1),
                new: hex40(n, 2),
            }],
            services: vec![],
        }),
        decision: Some(AuditDecision {
            effect: effect.into(),
            rule: Some(if effect == "allow" {
                "push-platform".into()
            } else {
                "protect-main".into()
            }),
            reasons: vec![format!("rule matched for {user}")],
            policy: Some("0123456789abcdef".into()),
        }),
        bytes_in: Some(1000 + n),
        ..Default::default()
    }
}

fn outcome(time: &str, req: &Record, status: u16) -> Record {
    Record {
        time: time.into(),
        id: uuid::Uuid::now_v7().to_string(),
        kind: "outcome".into(),
        request_id: req.request_id.clone(),
        ref_id: Some(req.id.clone()),
        status: Some(status),
        bytes_out: Some(4096),
        duration_us: Some(1500),
        ..Default::default()
    }
}

fn login(time: &str, user: &str) -> Record {
    Record {
        time: time.into(),
        id: uuid::Uuid::now_v7().to_string(),
        kind: "login".into(),
        identity: Some(AuditIdentity {
            subject: format!("sub-{user}"),
            username: Some(user.into()),
            email: Some(format!("{user}@example.com")),
            method: "session".into(),
            ..Default::default()
        }),
        route: Some("gogs".into()),
        ..Default::default()
    }
}

fn now() -> String {
    timestamp(SystemTime::now())
}

/// A signed log in several files with a checkpoint mirror.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    mirror: PathBuf,
    public: PathBuf,
    other_key: PathBuf,
}

impl Fixture {
    fn new(n: u64) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let mirror = tmp.path().join("mirror");
        std::fs::create_dir_all(&mirror).unwrap();
        let (private, public) = keypair(tmp.path(), "signing");
        let (other_key, _) = keypair(tmp.path(), "other");
        let mut cfg = config(&dir, "gw1");
        cfg.rotate_bytes = 24 * 1024;
        cfg.checkpoint_every = 10;
        cfg.signing_key = Some(private);
        cfg.mirror = Some(mirror.clone());
        let mut records = Vec::new();
        for i in 0..n {
            let r = request(&now(), i, ["alice", "bob"][i as usize % 2], "gogs", "allow");
            let o = outcome(&now(), &r, 200);
            records.push(r);
            records.push(o);
        }
        write_records(cfg, &records);
        Fixture {
            _tmp: tmp,
            dir,
            mirror,
            public,
            other_key,
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut f: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        f.sort();
        f
    }

    fn verify(&self, mirror: bool) -> (bool, String) {
        let mut args = vec![
            "audit",
            "verify",
            self.dir.to_str().unwrap(),
            "--pubkey",
            self.public.to_str().unwrap(),
        ];
        if mirror {
            args.extend(["--mirror", self.mirror.to_str().unwrap()]);
        }
        let out = gatehouse(&args);
        let code = out.status.code();
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(
            code == Some(0) || code == Some(1),
            "unexpected exit {code:?}: {all}"
        );
        (code == Some(0), all)
    }

    fn assert_fails(&self, mirror: bool, file: &Path, line: Option<usize>, reason: &str) {
        let (ok, out) = self.verify(mirror);
        assert!(!ok, "verify passed after tampering:\n{out}");
        let name = file.file_name().unwrap().to_str().unwrap();
        let at = match line {
            Some(l) => format!("{name}:{l}: "),
            None => format!("{name}: "),
        };
        let failed = out
            .lines()
            .find(|l| l.starts_with("FAILED: "))
            .unwrap_or_else(|| panic!("no FAILED line:\n{out}"));
        assert!(
            failed.contains(&at) && failed.contains(reason),
            "expected {at}...{reason}, got:\n{out}"
        );
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut t = lines.join("\n");
    t.push('\n');
    std::fs::write(path, t).unwrap();
}

fn checkpoints_of(p: &Path) -> PathBuf {
    PathBuf::from(format!("{}.checkpoints", p.display()))
}

#[test]
fn a_clean_log_verifies_with_signatures_and_mirror() {
    let f = Fixture::new(150);
    assert!(f.files().len() >= 4, "expected rotation: {:?}", f.files());
    let (ok, out) = f.verify(true);
    assert!(ok, "{out}");
    assert!(out.contains("OK: 300 records"), "{out}");
    assert!(out.contains("signatures checked"), "{out}");
}

#[test]
fn an_edited_byte_is_caught_at_its_line() {
    let f = Fixture::new(150);
    let file = &f.files()[1];
    let mut lines = lines_of(file);
    let at = lines
        .iter()
        .position(|l| l.contains("\"kind\":\"request\""))
        .unwrap();
    lines[at] = lines[at].replacen("repo-", "repo_", 1);
    write_lines(file, &lines);
    f.assert_fails(false, file, Some(at + 1), "does not match its hash");
}

#[test]
fn a_deleted_line_is_caught_at_the_next_record() {
    let f = Fixture::new(150);
    let file = &f.files()[1];
    let mut lines = lines_of(file);
    lines.remove(3);
    write_lines(file, &lines);
    f.assert_fails(false, file, Some(4), "does not follow record");
}

#[test]
fn swapped_lines_are_caught() {
    let f = Fixture::new(150);
    let file = &f.files()[2];
    let mut lines = lines_of(file);
    lines.swap(5, 6);
    write_lines(file, &lines);
    f.assert_fails(false, file, Some(6), "does not follow record");
}

#[test]
fn a_truncated_tail_is_caught_by_the_last_checkpoint() {
    let f = Fixture::new(150);
    let file = f.files().last().unwrap().clone();
    let mut lines = lines_of(&file);
    let keep = lines.len() - 3;
    lines.truncate(keep);
    write_lines(&file, &lines);
    f.assert_fails(false, &file, None, "is not in the file");
}

#[test]
fn a_dropped_middle_file_is_caught() {
    let f = Fixture::new(150);
    let files = f.files();
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::remove_file(checkpoints_of(&files[1])).unwrap();
    f.assert_fails(false, &files[2], Some(1), "does not follow record");
}

#[test]
fn a_dropped_newest_file_is_caught_through_the_mirror() {
    let f = Fixture::new(150);
    let files = f.files();
    let newest = files.last().unwrap();
    std::fs::remove_file(newest).unwrap();
    std::fs::remove_file(checkpoints_of(newest)).unwrap();
    // Without the mirror nothing shows it: the log simply ends earlier.
    let (ok, out) = f.verify(false);
    assert!(ok, "{out}");
    let (ok, out) = f.verify(true);
    assert!(!ok, "{out}");
    let name = newest.file_name().unwrap().to_str().unwrap();
    assert!(
        out.contains(&format!(
            "{name} is missing although the mirror holds its checkpoints"
        )),
        "{out}"
    );
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    let f = Fixture::new(150);
    let file = &f.files()[1];
    let cps = checkpoints_of(file);
    let mut lines = lines_of(&cps);
    // Re-sign the first checkpoint with another key (what a forger without our key can do).
    let mut cp: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    cp.as_object_mut().unwrap().remove("sig");
    let signer = gatehouse::audit::checkpoint::Signer::load(&f.other_key).unwrap();
    let cp: gatehouse::audit::checkpoint::Checkpoint = serde_json::from_value(cp).unwrap();
    let line = signer.sign(cp);
    lines[0] = String::from_utf8(line).unwrap().trim_end().to_string();
    write_lines(&cps, &lines);
    f.assert_fails(false, &cps, Some(1), "signature does not verify");
}

#[test]
fn an_unsigned_forged_checkpoint_is_refused() {
    let f = Fixture::new(150);
    let file = &f.files()[1];
    let cps = checkpoints_of(file);
    let mut lines = lines_of(&cps);
    let mut cp: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    cp.as_object_mut().unwrap().remove("sig");
    lines[0] = cp.to_string();
    write_lines(&cps, &lines);
    f.assert_fails(false, &cps, Some(1), "not signed");
}

#[test]
fn reordered_files_are_caught() {
    let f = Fixture::new(150);
    let files = f.files();
    let (a, b) = (&files[1], &files[2]);
    let tmp = a.with_extension("tmp");
    for (x, y, t) in [
        (a.clone(), b.clone(), tmp.clone()),
        (checkpoints_of(a), checkpoints_of(b), checkpoints_of(&tmp)),
    ] {
        std::fs::rename(&x, &t).unwrap();
        std::fs::rename(&y, &x).unwrap();
        std::fs::rename(&t, &y).unwrap();
    }
    // `a` now holds b's records: its first record does not follow a's predecessor.
    f.assert_fails(false, a, Some(1), "does not follow record");
}

/// What a cell should hold for `v`: formula starters get a leading `'`.
fn shown(v: &str) -> String {
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    }
}

/// Splits a `;`-joined list cell, undoing the `\` escapes.
fn split_list(cell: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = cell.chars();
    if cell.is_empty() {
        return items;
    }
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next().unwrap()),
            ';' => items.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    items.push(cur);
    items
}

const HEADER: &str = "time,kind,replica,seq,id,ref,request_id,trace_id,subject,username,email,email_verified,groups,auth_method,client_id,issuer,source_addr,forwarded_for,trusted_proxy,route,method,path,action,repository,refs,services,decision,rule,reasons,detail,truncated,status,bytes_in,bytes_out,duration_us,outcome_time,outcome_id,outcome_detail";

fn column(name: &str) -> usize {
    HEADER.split(',').position(|c| c == name).unwrap()
}

fn export(dirs: &[&Path], extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["audit", "export"];
    for d in dirs {
        args.push(d.to_str().unwrap());
    }
    args.extend(extra);
    let out = gatehouse(&args);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

const WIDE: [&str; 4] = ["--since", "2000-01-01", "--until", "2100-01-01"];

#[test]
fn hostile_values_stay_on_one_line_verify_and_come_back_through_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let nasty = [
        "a\nb",
        "a\rb\r\n",
        "x\u{2028}y\u{2029}z",
        "nul\0byte",
        "\u{1b}[31mred\u{1b}[0m",
        "\"}\n{\"kind\":\"admin\",\"hash\":\"00\"}",
        "=HYPERLINK(\"http://evil\")",
        "+1",
        "-2",
        "@SUM(A1)",
        "\tTAB",
        "semi;colon\\back",
        "comma, \"quoted\"",
    ];
    let huge = "é".repeat(600_000); // 1.2 MB
    let mut records = Vec::new();
    for (i, v) in nasty.iter().copied().chain([huge.as_str()]).enumerate() {
        let mut t = Vec::new();
        let mut r = request(&now(), i as u64, "alice", "gogs", "deny");
        let id = r.identity.as_mut().unwrap();
        id.username = Some(cap(v, "identity.username", &mut t));
        id.email = Some(cap(v, "identity.email", &mut t));
        id.groups = cap_list(&[v.to_string(), "plain".into()], "identity.groups", &mut t);
        r.path = Some(cap(v, "path", &mut t));
        let a = r.action.as_mut().unwrap();
        a.refs[0].name = cap(v, "action.refs", &mut t);
        a.services = cap_list(&[v.to_string()], "action.services", &mut t);
        r.detail = Some(cap(v, "detail", &mut t));
        r.truncated = t;
        records.push(r);
    }
    write_records(config(&dir, "gw1"), &records);

    // One line per record, however hostile.
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    let body = std::fs::read(&files[0]).unwrap();
    assert_eq!(
        body.iter().filter(|b| **b == b'\n').count(),
        records.len(),
        "a value broke a line"
    );
    assert!(!body.contains(&b'\r') && !body.contains(&0u8) && !body.contains(&0x1b));
    let out = gatehouse(&["audit", "verify", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stdout));

    let (code, csv, err) = export(&[&dir], &[&WIDE[..], &["--format", "csv"]].concat());
    assert_eq!(code, Some(0), "{err}");
    let rows = parse_csv(&csv);
    assert_eq!(rows[0].join(","), HEADER);
    assert_eq!(rows.len(), records.len() + 1);
    for (row, r) in rows[1..].iter().zip(&records) {
        assert_eq!(row.len(), HEADER.split(',').count());
        let id = r.identity.as_ref().unwrap();
        let a = r.action.as_ref().unwrap();
        assert_eq!(
            row[column("username")],
            shown(id.username.as_deref().unwrap())
        );
        assert_eq!(row[column("email")], shown(id.email.as_deref().unwrap()));
        assert_eq!(row[column("path")], shown(r.path.as_deref().unwrap()));
        assert_eq!(row[column("detail")], shown(r.detail.as_deref().unwrap()));
        let groups = split_list(row[column("groups")].trim_start_matches('\''));
        assert_eq!(
            groups.join("\u{0}"),
            id.groups.join("\u{0}"),
            "{:?}",
            row[column("groups")]
        );
        let services = split_list(row[column("services")].trim_start_matches('\''));
        assert_eq!(services, a.services);
        let refs = split_list(row[column("refs")].trim_start_matches('\''));
        assert_eq!(
            refs,
            vec![format!(
                "{} {}->{}",
                a.refs[0].name, a.refs[0].old, a.refs[0].new
            )]
        );
    }
    // The 1.2 MB value was capped, and says so.
    let last = rows.last().unwrap();
    assert!(last[column("path")].len() <= MAX_VALUE + "…".len());
    assert!(last[column("truncated")].contains("path"));
}

#[test]
fn csv_cells_that_look_like_formulas_are_neutralised() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut r = request(&now(), 1, "=cmd|' /C calc'!A0", "gogs", "allow");
    r.path = Some("-2+3".into());
    write_records(config(&dir, "gw1"), &[r]);
    let (code, csv, err) = export(&[&dir], &[&WIDE[..], &["--format", "csv"]].concat());
    assert_eq!(code, Some(0), "{err}");
    let rows = parse_csv(&csv);
    assert_eq!(rows[1][column("username")], "'=cmd|' /C calc'!A0");
    assert_eq!(rows[1][column("path")], "'-2+3");
    assert!(
        rows[1]
            .iter()
            .all(|c| !c.starts_with(['=', '+', '-', '@', '\t', '\r']))
    );
}

// ---------------------------------------------------------------------------------------------
// Crash consistency.

const CHILD_ENV: &str = "GATEHOUSE_TEST_AUDIT_CRASH_DIR";

/// Not a test on its own: when the parent test starts this binary with CHILD_ENV set, it
/// appends records (fsync = "never") until it is killed.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut cfg = config(Path::new(&dir), "gw1");
    cfg.fsync = FsyncPolicy::Never;
    cfg.rotate_bytes = 256 * 1024;
    cfg.checkpoint_every = 100;
    runtime().block_on(async {
        let log = AuditLog::start(cfg, Arc::new(AuditMetrics::unregistered().unwrap())).unwrap();
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let r = request(&now(), i * 4 + t, "alice", "gogs", "allow");
                    log.write(r.clone()).await.unwrap();
                    log.submit(outcome(&now(), &r, 200));
                    if t == 0 && i == 200 {
                        println!("writing");
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut f: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    f.sort();
    f
}

fn kill_writer_mid_stream(dir: &Path) {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    loop {
        let l = lines.next().expect("child ended before writing").unwrap();
        if l.contains("writing") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn verify_dir(dir: &Path) -> (bool, String) {
    let out = gatehouse(&["audit", "verify", dir.to_str().unwrap()]);
    (out.status.success(), text(&out.stdout))
}

/// The last complete record of a file.
fn last_record(path: &Path) -> serde_json::Value {
    let body = std::fs::read_to_string(path).unwrap();
    let complete = &body[..body.rfind('\n').unwrap()];
    let line = complete.rsplit('\n').next().unwrap();
    serde_json::from_str(line).unwrap()
}

fn restart_and_append(dir: &Path, n: u64) {
    let mut cfg = config(dir, "gw1");
    cfg.fsync = FsyncPolicy::Never;
    let records: Vec<Record> = (0..n)
        .map(|i| request(&now(), 1_000_000 + i, "bob", "gogs", "allow"))
        .collect();
    write_records(cfg, &records);
}

#[test]
fn a_writer_killed_mid_stream_leaves_a_log_that_verifies_and_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    std::fs::create_dir_all(&dir).unwrap();
    kill_writer_mid_stream(&dir);
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "after the kill:\n{out}");

    let before = log_files(&dir);
    // The newest file may be empty (killed just after a rotation): the chain's last record is
    // then at the end of the file before it.
    let last = before
        .iter()
        .rev()
        .find(|f| std::fs::read(f).unwrap().contains(&b'\n'))
        .map(|f| last_record(f))
        .expect("a complete record");
    restart_and_append(&dir, 50);
    let after = log_files(&dir);
    assert_eq!(after.len(), before.len() + 1, "recovery opens a new file");
    let first_new: serde_json::Value =
        serde_json::from_str(&lines_of(after.last().unwrap())[0]).unwrap();
    assert_eq!(first_new["seq"], last["seq"].as_u64().unwrap() + 1);
    assert_eq!(first_new["prev"], last["hash"]);
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "across the crash:\n{out}");
}

#[test]
fn a_write_cut_short_before_a_restart_is_a_note_not_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    // The kill can land just after a rotation, leaving the newest file empty; a torn write
    // needs a record to tear, so try again in a fresh directory until there is one.
    let mut dir = tmp.path().join("audit-0");
    for attempt in 0..5 {
        dir = tmp.path().join(format!("audit-{attempt}"));
        std::fs::create_dir_all(&dir).unwrap();
        kill_writer_mid_stream(&dir);
        let newest = log_files(&dir).last().unwrap().clone();
        if std::fs::read(&newest).unwrap().contains(&b'\n') {
            break;
        }
    }
    // What a torn write leaves: the first half of a record, no newline.
    let newest = log_files(&dir).last().unwrap().clone();
    let last = last_record(&newest);
    let half = lines_of(&newest).last().unwrap()[..200].to_string();
    let mut body = std::fs::read(&newest).unwrap();
    body.extend_from_slice(half.as_bytes());
    std::fs::write(&newest, body).unwrap();
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
    assert!(out.contains("partial record at the end"), "{out}");

    restart_and_append(&dir, 20);
    let first_new: serde_json::Value =
        serde_json::from_str(&lines_of(log_files(&dir).last().unwrap())[0]).unwrap();
    assert_eq!(first_new["prev"], last["hash"]);
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
    assert!(
        out.contains("the chain continues from the record before it"),
        "{out}"
    );
    // Export reads across it too.
    let (code, _, err) = export(&[&dir], &[&WIDE[..], &["--format", "jsonl"]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("chain verified"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Export.

/// Times on 2026-11-01, `s` seconds after midnight.
fn at(s: u64) -> String {
    format!(
        "2026-11-01T{:02}:{:02}:{:02}.{:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        s * 7 % 1_000_000
    )
}

/// A day of mixed traffic: requests (allow and deny, two routes, three users) with outcomes,
/// sign-ins, and an outcome whose request is not in the log.
fn mixed_records() -> Vec<Record> {
    let users = ["alice", "bob", "Carol"];
    let mut records = Vec::new();
    for i in 0..120u64 {
        let t = i * 600; // every ten minutes
        let user = users[i as usize % 3];
        let route = if i % 4 == 0 { "lightstep" } else { "gogs" };
        let effect = if i % 5 == 0 { "deny" } else { "allow" };
        let r = request(&at(t), i, user, route, effect);
        let status = if effect == "deny" { 403 } else { 200 };
        let o = outcome(&at(t + 2), &r, status);
        records.push(r);
        if i % 7 == 0 {
            records.push(login(&at(t + 1), user));
        }
        records.push(o);
    }
    let ghost = request(&at(3), 999, "nobody", "gogs", "allow");
    records.push(outcome(&at(72_000), &ghost, 200));
    records
}

fn jsonl_ids(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn matches_user(r: &Record, user: &str) -> bool {
    r.identity.as_ref().is_some_and(|i| {
        i.subject.eq_ignore_ascii_case(user)
            || i.username
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(user))
            || i.email
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(user))
    })
}

/// What export should select: records by their own fields, and outcomes of selected requests.
fn expected(records: &[Record], own: impl Fn(&Record) -> bool) -> Vec<String> {
    let mut chosen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for r in records {
        let pick = if r.kind == "outcome" {
            chosen.contains(r.ref_id.as_ref().unwrap()) || own(r)
        } else {
            own(r)
        };
        if pick {
            chosen.insert(r.id.clone());
            ids.push(r.id.clone());
        }
    }
    ids
}

fn in_range(r: &Record, since: &str, until: &str) -> bool {
    r.time.as_str() >= since && r.time.as_str() < until
}

#[test]
fn export_filters_select_exactly_the_expected_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let records = mixed_records();
    write_records(config(&dir, "gw1"), &records);
    let day = ["--since", "2026-11-01", "--until", "2026-11-02"];

    type Case<'a> = (Vec<&'a str>, Box<dyn Fn(&Record) -> bool>);
    let cases: Vec<Case> = vec![
        (
            vec![],
            Box::new(|r: &Record| in_range(r, &at(0), "2026-11-02")),
        ),
        (
            vec![
                "--since",
                "2026-11-01T05:00:00Z",
                "--until",
                "2026-11-01T09:30:00.000007Z",
            ],
            Box::new(|r: &Record| {
                in_range(
                    r,
                    "2026-11-01T05:00:00.000000Z",
                    "2026-11-01T09:30:00.000007Z",
                )
            }),
        ),
        (
            vec!["--user", "CAROL"],
            Box::new(|r: &Record| matches_user(r, "carol")),
        ),
        (
            vec!["--user", "bob@EXAMPLE.com"],
            Box::new(|r: &Record| matches_user(r, "bob@example.com")),
        ),
        (
            vec!["--user", "sub-alice"],
            Box::new(|r: &Record| matches_user(r, "sub-alice")),
        ),
        (
            vec!["--route", "lightstep"],
            Box::new(|r: &Record| r.route.as_deref() == Some("lightstep")),
        ),
        (
            vec!["--decision", "deny"],
            Box::new(|r: &Record| r.decision.as_ref().is_some_and(|d| d.effect == "deny")),
        ),
        (
            vec!["--kind", "login"],
            Box::new(|r: &Record| r.kind == "login"),
        ),
        (
            vec!["--kind", "request", "--route", "gogs", "--user", "alice"],
            Box::new(|r: &Record| {
                r.kind == "request"
                    && r.route.as_deref() == Some("gogs")
                    && matches_user(r, "alice")
            }),
        ),
    ];
    for (args, own) in cases {
        let mut full: Vec<&str> = vec!["--format", "jsonl"];
        if !args.contains(&"--since") {
            full.extend(day);
        }
        full.extend(args.iter().copied());
        let (code, out, err) = export(&[&dir], &full);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        let want = expected(&records, &own);
        assert!(!want.is_empty(), "{args:?} selects nothing");
        assert_eq!(jsonl_ids(&out), want, "{args:?}");
        assert!(
            err.contains(&format!(
                "exported {} of {} records",
                want.len(),
                records.len()
            )),
            "{args:?}: {err}"
        );
        assert!(err.contains("chain verified: records 1.."), "{err}");
    }
}

#[test]
fn jsonl_lines_are_verbatim_and_csv_merges_outcomes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let records = mixed_records();
    write_records(config(&dir, "gw1"), &records);
    let day = ["--since", "2026-11-01", "--until", "2026-11-02"];

    let (code, jsonl, err) = export(&[&dir], &[&day[..], &["--format", "jsonl"]].concat());
    assert_eq!(code, Some(0), "{err}");
    let on_disk = std::fs::read_to_string(log_files(&dir).first().unwrap()).unwrap();
    assert_eq!(jsonl, on_disk, "every line, verbatim");

    let (code, csv, err) = export(&[&dir], &[&day[..], &["--format", "csv"]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(csv.starts_with(&format!("{HEADER}\r\n")));
    let rows = parse_csv(&csv);
    let requests: Vec<&Record> = records.iter().filter(|r| r.kind == "request").collect();
    let logins = records.iter().filter(|r| r.kind == "login").count();
    // One row per request (its outcome merged), per sign-in, and the orphan outcome.
    assert_eq!(rows.len() - 1, requests.len() + logins + 1);
    let by_id: std::collections::HashMap<&str, &Vec<String>> = rows[1..]
        .iter()
        .map(|r| (r[column("id")].as_str(), r))
        .collect();
    for req in &requests {
        let row = by_id[req.id.as_str()];
        let out = records
            .iter()
            .find(|o| o.ref_id.as_deref() == Some(&req.id))
            .unwrap();
        assert_eq!(row[column("kind")], "request");
        assert_eq!(row[column("status")], out.status.unwrap().to_string());
        assert_eq!(row[column("bytes_in")], req.bytes_in.unwrap().to_string());
        assert_eq!(row[column("bytes_out")], "4096");
        assert_eq!(row[column("duration_us")], "1500");
        assert_eq!(row[column("outcome_time")], out.time);
        assert_eq!(row[column("outcome_id")], out.id);
        assert_eq!(
            row[column("decision")],
            req.decision.as_ref().unwrap().effect
        );
        assert_eq!(row[column("groups")], "engineering;sre");
        let r0 = &req.action.as_ref().unwrap().refs[0];
        assert_eq!(
            row[column("refs")],
            format!("refs/heads/main {}->{}", r0.old, r0.new)
        );
        assert_eq!(row[column("trusted_proxy")], "false");
    }
    // Rows are in time order.
    let times: Vec<&str> = rows[1..]
        .iter()
        .map(|r| r[column("time")].as_str())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    // The outcome whose request is not in the log stands alone.
    let orphan = rows[1..]
        .iter()
        .find(|r| r[column("kind")] == "outcome")
        .unwrap();
    assert_eq!(orphan[column("status")], "200");
    assert!(!orphan[column("ref")].is_empty());

    // With a filter, an outcome goes only with its request.
    let (code, csv, err) = export(
        &[&dir],
        &[&day[..], &["--format", "csv", "--decision", "deny"]].concat(),
    );
    assert_eq!(code, Some(0), "{err}");
    let rows = parse_csv(&csv);
    let denied = requests
        .iter()
        .filter(|r| r.decision.as_ref().unwrap().effect == "deny")
        .count();
    assert_eq!(rows.len() - 1, denied);
    assert!(rows[1..].iter().all(|r| r[column("status")] == "403"));
}

#[test]
fn an_export_is_the_same_whether_the_log_spans_one_file_or_many() {
    let tmp = tempfile::tempdir().unwrap();
    let many = tmp.path().join("many");
    let one = tmp.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    let (private, public) = keypair(tmp.path(), "k");
    let mut cfg = config(&many, "gw1");
    cfg.rotate_bytes = 16 * 1024;
    cfg.checkpoint_every = 25;
    cfg.signing_key = Some(private);
    // Real times, so that file names and record times agree and files before --since are
    // skipped.
    let records = write_live(cfg, 400, |i| {
        let r = request(&now(), i, ["alice", "bob"][i as usize % 2], "gogs", "allow");
        let o = outcome(&now(), &r, 200);
        vec![r, o]
    });
    let since = records[300].time.clone();
    let until = records[660].time.clone();
    let files = log_files(&many);
    assert!(files.len() > 5, "{files:?}");
    // The same records as one file (with all checkpoints beside it).
    let name = files[0].file_name().unwrap();
    let mut body = Vec::new();
    let mut cps = Vec::new();
    for f in &files {
        body.extend(std::fs::read(f).unwrap());
        cps.extend(std::fs::read(checkpoints_of(f)).unwrap_or_default());
    }
    std::fs::write(one.join(name), body).unwrap();
    std::fs::write(checkpoints_of(&one.join(name)), cps).unwrap();

    for format in ["csv", "jsonl"] {
        for user in [None, Some("bob")] {
            let mut args = vec![
                "--since",
                since.as_str(),
                "--until",
                until.as_str(),
                "--format",
                format,
                "--pubkey",
                public.to_str().unwrap(),
            ];
            if let Some(u) = user {
                args.extend(["--user", u]);
            }
            let (c1, out_many, err_many) = export(&[&many], &args);
            let (c2, out_one, err_one) = export(&[&one], &args);
            assert_eq!((c1, c2), (Some(0), Some(0)), "{err_many}\n{err_one}");
            assert_eq!(out_many, out_one, "{format} {user:?}");
            assert!(
                err_many.contains("outside the range skipped"),
                "files before --since are skipped: {err_many}"
            );
            assert!(err_many.contains("chain verified"), "{err_many}");
            assert!(err_many.contains("signatures checked"), "{err_many}");
            if format == "jsonl" {
                let want = expected(&records, |r| {
                    in_range(r, &since, &until) && user.is_none_or(|u| matches_user(r, u))
                });
                assert_eq!(jsonl_ids(&out_many), want);
            }
        }
    }
}

#[test]
fn export_reads_past_a_skipped_file_but_still_checks_the_link_into_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = config(&dir, "gw1");
    cfg.rotate_bytes = 8 * 1024;
    write_live(cfg, 120, |i| {
        vec![request(&now(), i, "alice", "gogs", "allow")]
    });
    let files = log_files(&dir);
    assert!(files.len() >= 5, "{files:?}");
    // From the first record of the fourth file: the first two files end before it (the third
    // may hold records created before the fourth was opened).
    let since = lines_of(&files[3])[0].clone();
    let since: serde_json::Value = serde_json::from_str(&since).unwrap();
    let since = since["time"].as_str().unwrap().to_string();
    let args = [
        "--since",
        &since,
        "--until",
        "2100-01-01",
        "--format",
        "jsonl",
    ];
    let (code, _, err) = export(&[&dir], &args);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("2 file(s) outside the range skipped"), "{err}");
    let original = lines_of(&files[1]);

    // An edit to the last record of the skipped second file is caught, though the file is
    // not read.
    let mut lines = original.clone();
    let n = lines.len();
    lines[n - 1] = lines[n - 1].replacen("alice", "alicf", 1);
    write_lines(&files[1], &lines);
    let (code, _, err) = export(&[&dir], &args);
    assert_eq!(code, Some(1), "{err}");
    let name = files[1].file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains("chain BROKEN at")
            && err.contains(name)
            && err.contains("does not match its hash"),
        "{err}"
    );

    // Without its last record (and its checkpoints), the first record read does not follow.
    write_lines(&files[1], &original[..n - 1]);
    std::fs::remove_file(checkpoints_of(&files[1])).unwrap();
    let (code, _, err) = export(&[&dir], &args);
    assert_eq!(code, Some(1), "{err}");
    let next = files[2].file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains(&format!("{next}:1: does not follow record")),
        "{err}"
    );
}

#[test]
fn replicas_in_one_directory_are_merged_by_time_and_verified_separately() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..200u64 {
        a.push(request(&at(i * 10), i, "alice", "gogs", "allow"));
        b.push(request(&at(i * 10 + 5), 1000 + i, "bob", "gogs", "deny"));
    }
    write_records(config(&dir, "gw1"), &a);
    write_records(config(&dir, "gw2"), &b);
    let (code, out, err) = export(
        &[&dir],
        &[
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-02",
            "--format",
            "jsonl",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let times: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["time"].to_string())
        .collect();
    assert_eq!(times.len(), 400);
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    assert!(err.contains("replicas gw1, gw2"), "{err}");
    assert!(
        err.contains("records 1..200 of gw1, records 1..200 of gw2"),
        "{err}"
    );
}

#[test]
fn a_tampered_log_makes_export_fail_and_name_the_record() {
    let f = Fixture::new(100);
    let file = &f.files()[1];
    let mut lines = lines_of(file);
    let at = lines
        .iter()
        .position(|l| l.contains("\"status\":200"))
        .unwrap();
    lines[at] = lines[at].replacen("\"status\":200", "\"status\":201", 1);
    write_lines(file, &lines);
    let out = tempfile::NamedTempFile::new().unwrap();
    let (code, _, err) = export(
        &[&f.dir],
        &[
            &WIDE[..],
            &[
                "--format",
                "csv",
                "--out",
                out.path().to_str().unwrap(),
                "--pubkey",
                f.public.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "chain BROKEN at {}:{}: the record's content does not match its hash",
            file.display(),
            at + 1
        )),
        "{err}"
    );
    // Everything readable was still exported.
    let rows = parse_csv(&std::fs::read_to_string(out.path()).unwrap());
    assert_eq!(rows.len() - 1, 100);
}

#[test]
fn export_refuses_bad_arguments_precisely() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    write_records(config(&dir, "gw1"), &[login(&now(), "alice")]);
    for (args, want) in [
        (
            vec![
                "--since",
                "yesterday",
                "--until",
                "2026-11-02",
                "--format",
                "csv",
            ],
            "--since: \"yesterday\" is not a time",
        ),
        (
            vec![
                "--since",
                "2026-11-02",
                "--until",
                "2026-11-01",
                "--format",
                "csv",
            ],
            "--since must be before --until",
        ),
        (
            [&WIDE[..], &["--format", "xml"]].concat(),
            "--format: \"xml\": expected csv or jsonl",
        ),
        (
            [&WIDE[..], &["--format", "csv", "--decision", "maybe"]].concat(),
            "--decision: \"maybe\": expected allow or deny",
        ),
        (
            [&WIDE[..], &["--format", "csv", "--kind", "requests"]].concat(),
            "--kind: \"requests\": expected one of",
        ),
    ] {
        let (code, _, err) = export(&[&dir], &args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err) = export(&[&empty], &[&WIDE[..], &["--format", "csv"]].concat());
    assert_eq!(code, Some(2));
    assert!(err.contains("no audit files"), "{err}");
}

/// Bytes of `file` in the page cache, and its size (`fincore` from util-linux).
fn resident(file: &Path) -> (u64, u64) {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES,SIZE"])
        .arg(file)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "fincore: {}", text(&out.stderr));
    let cells: Vec<u64> = text(&out.stdout)
        .split_whitespace()
        .map(|c| c.parse().expect("a byte count"))
        .collect();
    assert_eq!(cells.len(), 2, "fincore printed {:?}", text(&out.stdout));
    (cells[0], cells[1])
}

/// The log is written once and read rarely: once synced, its pages leave the page cache, so
/// what the gateway records does not crowd out memory others need. Reading the file back
/// brings them in again, which shows the count is the kernel's and not a constant.
#[test]
fn synced_records_leave_the_page_cache() {
    // Under the target dir, not /tmp: a tmpfs cannot drop pages that hold its only copy.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("audit");
    let records: Vec<Record> = (0..3000)
        .map(|n| request(&now(), n, "alice", "gogs", "allow"))
        .collect();
    write_records(config(&dir, "r1"), &records);
    let files = log_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let (cached, size) = resident(&files[0]);
    assert!(size > 1 << 20, "the log holds {size} bytes");
    // The last, partly written page may stay.
    assert!(
        cached <= 4096,
        "{cached} of {size} bytes still cached after the final sync"
    );
    let back = std::fs::read(&files[0]).unwrap();
    assert_eq!(back.len() as u64, size);
    let (cached, _) = resident(&files[0]);
    assert!(
        cached >= size - 4096,
        "{cached} of {size} bytes cached after reading it"
    );
}

/// The writer as the gateway runs it (a task of a multi-threaded runtime) keeps its timed
/// duties while records arrive without pause: interval checkpoints are signed under load,
/// not only at shutdown.
#[test]
fn interval_checkpoints_happen_under_sustained_load() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = config(&dir, "r1");
    cfg.checkpoint_every = u64::MAX;
    cfg.checkpoint_interval = Duration::from_millis(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = AuditLog::start(cfg, Arc::new(AuditMetrics::unregistered().unwrap())).unwrap();
        let until = std::time::Instant::now() + Duration::from_millis(800);
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while std::time::Instant::now() < until {
                        log.write(request(&now(), t * 1_000_000 + n, "alice", "gogs", "allow"))
                            .await
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut written = 0;
        for t in tasks {
            written += t.await.unwrap();
        }
        assert!(written > 1000, "only {written} records written");
        let files = log_files(&dir);
        let checkpoints = std::fs::read_to_string(checkpoints_of(&files[0])).unwrap_or_default();
        let timed = checkpoints.matches("\"reason\":\"interval\"").count();
        assert!(
            timed >= 3,
            "{timed} interval checkpoints in 800 ms of load ({written} records):\n{checkpoints}"
        );
        log.shutdown().await;
    });
}

/// Checkpoints are signed and written on the syncer thread, after the sync that puts their
/// records on disk. One that cannot be written is made again at the next interval, naming
/// the latest record even when nothing was written since, so the end of the log is covered
/// once the disk takes writes again.
#[test]
fn a_checkpoint_that_could_not_be_written_is_made_again() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = config(&dir, "r1");
    cfg.checkpoint_every = u64::MAX;
    // Long enough that the directory is in place before the first interval comes due.
    cfg.checkpoint_interval = Duration::from_secs(1);
    let metrics = Arc::new(AuditMetrics::unregistered().unwrap());
    runtime().block_on(async {
        let log = AuditLog::start(cfg, metrics.clone()).unwrap();
        log.write(request(&now(), 1, "alice", "gogs", "allow"))
            .await
            .unwrap();
        // A directory where the checkpoints file goes: appending to it fails.
        let files = log_files(&dir);
        let blocked = checkpoints_of(&files[0]);
        std::fs::create_dir(&blocked).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metrics.write_errors.get() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no failed checkpoint reported"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metrics.checkpoints.get(), 0);
        std::fs::remove_dir(&blocked).unwrap();
        while metrics.checkpoints.get() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint after the disk took writes again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let written = std::fs::read_to_string(&blocked).unwrap();
        assert!(
            written.contains("\"reason\":\"interval\"") && written.contains("\"seq\":1,"),
            "{written}"
        );
        log.shutdown().await;
    });
    // Nothing came after the retried checkpoint: shutdown had nothing new to name.
    let lines = std::fs::read_to_string(checkpoints_of(&log_files(&dir)[0])).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
}
