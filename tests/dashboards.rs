//! The Grafana dashboard and the Prometheus alerting rules in `dashboards/` name only metrics
//! the gateway exports, show every one of them, and the rules pass `promtool check rules` and
//! their own unit tests (`promtool test rules`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `gatehouse_*` metric name defined in the sources (as a string literal).
fn defined_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![Path::new(ROOT).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                for piece in text.split("\"gatehouse_").skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if piece[name.len()..].starts_with('"') {
                        names.insert(format!("gatehouse_{name}"));
                    }
                }
            }
        }
    }
    names
}

/// Metric names used in a PromQL expression, histogram suffixes taken off.
fn used_in(expr: &str, out: &mut BTreeSet<String>) {
    for piece in expr.split("gatehouse_").skip(1) {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let name = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(&name);
        out.insert(format!("gatehouse_{name}"));
    }
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_shows_every_metric_and_only_real_ones() {
    let defined = defined_metrics();
    assert!(defined.len() > 20, "{defined:?}");
    let text = std::fs::read_to_string(Path::new(ROOT).join("dashboards/gatehouse.json"))
        .expect("dashboards/gatehouse.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let mut used = BTreeSet::new();
    for e in &all {
        used_in(e, &mut used);
    }
    let unknown: Vec<_> = used.difference(&defined).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics the gateway does not export: {unknown:?}"
    );
    let missing: Vec<_> = defined
        .iter()
        .filter(|m| !m.ends_with("_bucket"))
        .filter(|m| !used.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics not on the dashboard: {missing:?}"
    );
    // Every panel queries something, and ids are unique.
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id {p}"
        );
        if p["type"] != "row" {
            assert!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{p}"
            );
        }
    }
}

#[test]
fn alert_rules_name_real_metrics_and_pass_promtool() {
    let defined = defined_metrics();
    let path = Path::new(ROOT).join("dashboards/gatehouse-alerts.yml");
    let rules: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("rules")).expect("YAML");
    let mut used = BTreeSet::new();
    let mut alerts = 0;
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr");
            used_in(expr, &mut used);
            assert!(rule["alert"].is_string(), "{rule}");
            assert!(rule["annotations"]["summary"].is_string(), "{rule}");
            assert!(rule["labels"]["severity"].is_string(), "{rule}");
            alerts += 1;
        }
    }
    assert!(alerts >= 10, "{alerts} alerts");
    let unknown: Vec<_> = used.difference(&defined).collect();
    assert!(
        unknown.is_empty(),
        "rules name unknown metrics: {unknown:?}"
    );
    for wanted in [
        "gatehouse_audit_healthy",
        "gatehouse_audit_records_lost_total",
        "gatehouse_policy_reloads_total",
        "gatehouse_jwks_refresh_total",
        "gatehouse_webhook_outbox",
        "gatehouse_http_requests_total",
    ] {
        assert!(used.contains(wanted), "no alert on {wanted}");
    }

    // promtool, from Debian's prometheus package (.ci/run installs it).
    let Ok(out) = Command::new("promtool")
        .current_dir(Path::new(ROOT).join("dashboards"))
        .args(["check", "rules", "gatehouse-alerts.yml"])
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed (CI installs the prometheus package)"
        );
        eprintln!("promtool not found: rules checked by the parser only");
        return;
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("promtool")
        .current_dir(Path::new(ROOT).join("dashboards"))
        .args(["test", "rules", "gatehouse-alerts.test.yml"])
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
