//! Static checks of `deploy/systemd/gatehouse.service` against the binary and against the
//! configuration it ships with (`deploy/systemd/gatehouse.toml`):
//!
//! - `systemd-analyze verify` accepts the unit (with `ExecStart` pointed at the built binary,
//!   since `/usr/local/bin/gatehouse` need not exist here);
//! - the hardening options are set, with the values operations.md promises;
//! - the stop timeout outlasts the graceful drain, the file limit the connection limit;
//! - every `/run/credentials/gatehouse.service/<name>` the config reads is loaded by a
//!   `LoadCredential=<name>:...` line and every loaded credential is read, and everything the
//!   gateway writes lies in a writable directory of the unit.
//!
//! The `catches_*` tests inject one fault each and require the check to report it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gatehouse::config::{Config, defaults};

const UNIT: &str = "deploy/systemd/gatehouse.service";
const CONFIG: &str = "deploy/systemd/gatehouse.toml";
/// Where the unit's `ExecStart` reads the configuration.
const CONFIG_TARGET: &str = "/etc/gatehouse/gatehouse.toml";
/// `%d` of the unit: where systemd puts the credentials of `gatehouse.service`.
const CREDENTIALS: &str = "/run/credentials/gatehouse.service/";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `(section, key, value)` in file order; comments and blank lines skipped.
fn directives(unit: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn values<'a>(d: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// systemd time spans as the unit writes them: `45s`, `2min`, `1min 30s`, a bare number of
/// seconds.
fn timespan(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for part in text.split_whitespace() {
        let split = part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(part.len());
        let (n, unit) = part.split_at(split);
        let n: u64 = n.parse().ok()?;
        total += match unit {
            "" | "s" | "sec" => Duration::from_secs(n),
            "ms" | "msec" => Duration::from_millis(n),
            "m" | "min" => Duration::from_secs(60 * n),
            "h" | "hr" => Duration::from_secs(3600 * n),
            _ => return None,
        };
    }
    Some(total)
}

/// Directives that must be present with exactly this value (the last assignment wins).
const HARDENING: &[(&str, &str)] = &[
    ("Type", "simple"),
    ("DynamicUser", "yes"),
    ("StateDirectory", "gatehouse"),
    ("ConfigurationDirectory", "gatehouse"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
    ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallArchitectures", "native"),
    ("MemoryDenyWriteExecute", "yes"),
    ("LockPersonality", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("UMask", "0077"),
    ("Restart", "on-failure"),
    ("ExecReload", "/bin/kill -HUP $MAINPID"),
    (
        "ExecStart",
        "/usr/local/bin/gatehouse serve --config /etc/gatehouse/gatehouse.toml",
    ),
];

/// Every problem with the unit, given the configuration it starts the gateway with.
fn check_unit(unit: &str, config_text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let d = directives(unit);
    for (key, want) in HARDENING {
        match values(&d, key).last() {
            None => problems.push(format!("[Service] {key}= is not set (want {want})")),
            Some(got) if got != want => {
                problems.push(format!("[Service] {key}={got}, want {key}={want}"))
            }
            Some(_) => {}
        }
    }
    if !d
        .iter()
        .any(|(s, k, v)| s == "Install" && k == "WantedBy" && v == "multi-user.target")
    {
        problems.push("[Install] WantedBy=multi-user.target is not set".to_string());
    }

    let config = match Config::parse(Path::new(CONFIG_TARGET), config_text) {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!("gatehouse rejects {CONFIG}:\n{e}"));
            return problems;
        }
    };

    // Stop: systemd must let the drain finish, for the default and for this config.
    let grace = config.server.shutdown_grace.max(defaults::SHUTDOWN_GRACE);
    match values(&d, "TimeoutStopSec").last().map(|v| (v, timespan(v))) {
        None => problems.push(format!(
            "[Service] TimeoutStopSec= is not set: systemd's default (90s) is not tied to shutdown_grace ({grace:?})"
        )),
        Some((v, None)) => problems.push(format!("TimeoutStopSec={v} is not a time span")),
        Some((v, Some(t))) if t <= grace => problems.push(format!(
            "TimeoutStopSec={v} does not exceed shutdown_grace ({grace:?}): systemd would kill the drain"
        )),
        Some(_) => {}
    }
    if values(&d, "KillSignal")
        .last()
        .is_some_and(|s| *s != "SIGTERM")
    {
        problems.push("KillSignal is not SIGTERM, the signal that drains".to_string());
    }

    // Files: a socket per connection and usually one upstream.
    let conns = config.server.max_connections.max(defaults::MAX_CONNECTIONS) as u64;
    match values(&d, "LimitNOFILE")
        .last()
        .map(|v| (v, v.split(':').next().unwrap_or("").parse::<u64>()))
    {
        None => problems.push("[Service] LimitNOFILE= is not set".to_string()),
        Some((v, Ok(n))) if n < 2 * conns + 1024 => problems.push(format!(
            "LimitNOFILE={v} is below twice max_connections ({conns}) plus room for files"
        )),
        Some((v, Err(_))) if *v != "infinity" => {
            problems.push(format!("LimitNOFILE={v} is not a number"))
        }
        Some(_) => {}
    }

    // Credentials: what the config reads from %d is what the unit loads, and nothing else.
    let loaded: Vec<String> = values(&d, "LoadCredential")
        .iter()
        .map(|v| v.split(':').next().unwrap_or("").to_string())
        .collect();
    // Quoted values on lines that are not comments.
    let read: Vec<String> = config_text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split('"').skip(1).step_by(2))
        .filter_map(|v| v.strip_prefix(CREDENTIALS).map(String::from))
        .collect();
    // The files the service's dynamic user could not read anywhere else.
    for path in [
        config.tls.as_ref().map(|t| t.cert_file.clone()),
        config.tls.as_ref().map(|t| t.key_file.clone()),
        config
            .audit
            .as_ref()
            .and_then(|a| a.signing_key_file.clone()),
    ]
    .into_iter()
    .flatten()
    {
        if !path.starts_with(CREDENTIALS) {
            problems.push(format!(
                "{} is not a credential ({CREDENTIALS}...): the service's dynamic user cannot read root's files",
                path.display()
            ));
        }
    }
    for name in &read {
        if !loaded.contains(name) {
            problems.push(format!(
                "{CONFIG} reads {CREDENTIALS}{name}, but no LoadCredential={name}:... line loads it"
            ));
        }
    }
    for name in &loaded {
        if !read.contains(name) {
            problems.push(format!(
                "LoadCredential={name} is loaded but {CONFIG} never reads {CREDENTIALS}{name}"
            ));
        }
    }

    // Writes: the audit log, the webhook store and a checkpoint mirror must be writable under
    // ProtectSystem=strict.
    let mut writable: Vec<String> = values(&d, "StateDirectory")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|s| format!("/var/lib/{s}"))
        .collect();
    writable.extend(
        values(&d, "ReadWritePaths")
            .iter()
            .flat_map(|v| v.split_whitespace())
            .map(|s| s.trim_start_matches(['-', '+']).to_string()),
    );
    let mut written = Vec::new();
    if let Some(a) = &config.audit {
        written.push(("audit.dir", a.dir.clone()));
        if let Some(m) = &a.checkpoint_mirror_dir {
            written.push(("audit.checkpoint_mirror_dir", m.clone()));
        }
    }
    if let Some(store) = config.webhooks.as_ref().and_then(|w| w.store.clone()) {
        written.push(("webhooks.store", store));
    }
    for (what, path) in written {
        if !writable.iter().any(|w| path.starts_with(w)) {
            problems.push(format!(
                "{what} {} is outside the unit's writable directories {writable:?}",
                path.display()
            ));
        }
    }
    problems
}

/// `systemd-analyze verify` on a copy of the unit whose ExecStart is the built binary.
fn analyze_verify(unit: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let text = unit.replace(
        "ExecStart=/usr/local/bin/gatehouse ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_gatehouse")),
    );
    let path = dir.path().join("gatehouse.service");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .map_err(|e| format!("systemd-analyze: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // On machines not booted with systemd it may warn about the host; only the unit counts.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("gatehouse.service"))
        .collect();
    if !out.status.success() || !about_unit.is_empty() {
        return Err(format!(
            "systemd-analyze verify failed ({}):\n{stderr}",
            out.status
        ));
    }
    Ok(())
}

fn systemd_analyze_present() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn repository_unit_is_hardened_and_matches_its_config() {
    let problems = check_unit(&read(UNIT), &read(CONFIG));
    assert!(
        problems.is_empty(),
        "{UNIT}: {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

#[test]
fn repository_unit_passes_systemd_analyze_verify() {
    if !systemd_analyze_present() {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is not installed (CI installs the systemd package)"
        );
        eprintln!("systemd-analyze not found: {UNIT} checked by the parser only");
        return;
    }
    analyze_verify(&read(UNIT)).unwrap_or_else(|e| panic!("{UNIT}: {e}"));
}

#[test]
fn catches_what_systemd_analyze_refuses() {
    if !systemd_analyze_present() {
        eprintln!("systemd-analyze not found");
        return;
    }
    let bad = read(UNIT).replace("ProtectSystem=strict", "ProtectSystem=sometimes");
    assert!(analyze_verify(&bad).is_err());
    let bad = read(UNIT).replace("Type=simple", "Type=simplest");
    assert!(analyze_verify(&bad).is_err());
}

fn assert_reports(unit: &str, config: &str, needle: &str) {
    let problems = check_unit(unit, config);
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {problems:?}"
    );
}

fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "mutation: {from:?} not found");
    text.replacen(from, to, 1)
}

#[test]
fn catches_a_missing_hardening_option() {
    let (unit, config) = (read(UNIT), read(CONFIG));
    for (line, key) in [
        ("ProtectSystem=strict\n", "ProtectSystem"),
        ("DynamicUser=yes\n", "DynamicUser"),
        ("NoNewPrivileges=yes\n", "NoNewPrivileges"),
        ("MemoryDenyWriteExecute=yes\n", "MemoryDenyWriteExecute"),
    ] {
        assert_reports(
            &replaced(&unit, line, ""),
            &config,
            &format!("{key}= is not set"),
        );
    }
    assert_reports(
        &replaced(
            &unit,
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SYS_ADMIN",
        ),
        &config,
        "want CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    );
}

#[test]
fn catches_a_stop_timeout_shorter_than_the_drain() {
    let (unit, config) = (read(UNIT), read(CONFIG));
    assert_reports(
        &replaced(&unit, "TimeoutStopSec=45s", "TimeoutStopSec=20s"),
        &config,
        "does not exceed shutdown_grace",
    );
    assert_reports(
        &unit,
        &replaced(
            &config,
            "shutdown_grace = \"30s\"",
            "shutdown_grace = \"2m\"",
        ),
        "does not exceed shutdown_grace (120s)",
    );
}

#[test]
fn catches_too_few_file_descriptors() {
    assert_reports(
        &replaced(&read(UNIT), "LimitNOFILE=65536", "LimitNOFILE=4096"),
        &read(CONFIG),
        "below twice max_connections",
    );
}

#[test]
fn catches_a_credential_the_unit_does_not_load() {
    let (unit, config) = (read(UNIT), read(CONFIG));
    assert_reports(
        &replaced(
            &unit,
            "LoadCredential=session-keys:/etc/gatehouse/credentials/session-keys\n",
            "",
        ),
        &config,
        "reads /run/credentials/gatehouse.service/session-keys, but no LoadCredential",
    );
    assert_reports(
        &replaced(
            &unit,
            "#LoadCredential=redis-password",
            "LoadCredential=redis-password",
        ),
        &config,
        "LoadCredential=redis-password is loaded but",
    );
    assert_reports(
        &unit,
        &replaced(
            &config,
            "key_file = \"/run/credentials/gatehouse.service/tls.key\"",
            "key_file = \"/etc/gatehouse/tls.key\"",
        ),
        "/etc/gatehouse/tls.key is not a credential",
    );
}

#[test]
fn catches_data_outside_the_writable_directories() {
    assert_reports(
        &read(UNIT),
        &replaced(
            &read(CONFIG),
            "store = \"/var/lib/gatehouse/webhooks.sqlite\"",
            "store = \"/srv/gatehouse/webhooks.sqlite\"",
        ),
        "webhooks.store /srv/gatehouse/webhooks.sqlite is outside",
    );
}

#[test]
fn time_spans_are_read_as_systemd_writes_them() {
    assert_eq!(timespan("45s"), Some(Duration::from_secs(45)));
    assert_eq!(timespan("1min 30s"), Some(Duration::from_secs(90)));
    assert_eq!(timespan("90"), Some(Duration::from_secs(90)));
    assert_eq!(timespan("soon"), None);
}
