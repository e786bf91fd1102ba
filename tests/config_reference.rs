//! README's configuration reference against the config structs: for every section in the
//! table, the keys the parser accepts there (it names them when it refuses an unknown key)
//! are exactly the keys the table lists, and every key in `gatehouse.example.toml` is one the
//! parser knows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gatehouse::config::Config;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Tables documented in rows of their own, so not keys of their parent.
const SUBTABLES: &[&str] = &[
    "timeouts",
    "limits",
    "oidc",
    "session",
    "jwt",
    "assertion",
    "gogs",
    "otlp",
    "credentials",
    "sources",
    "receivers",
    "services",
    "traces",
];

/// Section (as a TOML header) → keys, from README's table.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README");
    let table = readme
        .split("| section | keys |")
        .nth(1)
        .expect("README has the configuration table");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in table.lines().skip(2) {
        let Some(row) = row.strip_prefix("| ") else {
            break;
        };
        let (section, keys) = row.split_once(" | ").expect("two cells");
        let mut section = match section {
            "route auth" => "[[routes]]".to_string(),
            s => s
                .split('`')
                .nth(1)
                .expect("section in backticks")
                .to_string(),
        };
        // Split at commas outside parentheses.
        let keys = keys.trim_end_matches(" |");
        let (mut depth, mut piece, mut pieces) = (0, String::new(), Vec::new());
        for c in keys.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    pieces.push(std::mem::take(&mut piece));
                    continue;
                }
                _ => {}
            }
            piece.push(c);
        }
        pieces.push(piece);
        for piece in pieces {
            let ticked: Vec<&str> = piece.split('`').skip(1).step_by(2).collect();
            let mut names = ticked.iter();
            let Some(mut first) = names.next().copied() else {
                continue;
            };
            if first.starts_with("[[") {
                section = first.to_string();
                first = names.next().copied().expect("a key after a table header");
            }
            let set = out.entry(section.clone()).or_default();
            // `x_env`/`_file` and `x_env`/`x_file` name two keys.
            let before_paren = piece.split('(').next().unwrap_or("");
            if let Some((a, b)) = before_paren.split_once("`/`") {
                let a = a.rsplit('`').next().unwrap_or(a);
                let b = b.split('`').next().unwrap_or(b);
                set.insert(a.to_string());
                set.insert(match b.strip_prefix('_') {
                    Some(suffix) => format!("{}_{suffix}", a.rsplit_once('_').map_or(a, |p| p.0)),
                    None => b.to_string(),
                });
            } else {
                set.insert(first.to_string());
            }
        }
    }
    out
}

/// The fields the parser accepts in `section`, read from its refusal of an unknown key.
fn accepted(section: &str) -> BTreeSet<String> {
    let body = match section {
        "[routes.timeouts]" | "[routes.gogs]" | "[routes.otlp]" | "[[routes.gogs.credentials]]" => {
            format!("[[routes]]\nname = \"a\"\n{section}\nzz_unknown = 1\n")
        }
        s => format!("{s}\nzz_unknown = 1\n"),
    };
    let err = match Config::parse(Path::new("reference.toml"), &body) {
        Ok(_) => panic!("{section}: an unknown key was accepted"),
        Err(e) => e.to_string(),
    };
    let list = err
        .split("expected one of ")
        .nth(1)
        .or_else(|| err.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("{section}: {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !SUBTABLES.contains(k))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_table_lists_exactly_the_keys_the_parser_accepts() {
    let documented = documented();
    assert!(documented.len() >= 20, "{documented:#?}");
    let mut wrong = Vec::new();
    for (section, keys) in &documented {
        let accepted = accepted(section);
        let missing: Vec<_> = accepted.difference(keys).collect();
        let unknown: Vec<_> = keys.difference(&accepted).collect();
        if !missing.is_empty() || !unknown.is_empty() {
            wrong.push(format!(
                "{section}: not in README: {missing:?}; in README but not accepted: {unknown:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_key_in_the_example_config_is_one_the_parser_knows() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("gatehouse.example.toml"))
        .expect("example config");
    let documented = documented();
    let mut section = String::new();
    let mut checked = 0;
    for line in text.lines() {
        // Commented-out settings count too: they are documentation of real keys.
        let line = line.trim_start_matches("# ").trim();
        if line.starts_with('[') && line.ends_with(']') {
            section = line.to_string();
            continue;
        }
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        let keys = documented
            .get(&section)
            .unwrap_or_else(|| panic!("{section} is in the example but not in README"));
        assert!(
            keys.contains(key),
            "{section} {key} is in the example config but not in README's table"
        );
        checked += 1;
    }
    assert!(checked > 80, "only {checked} keys found in the example");
}
