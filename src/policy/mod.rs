//! Authorization: RBAC policies that security teams keep as YAML files in `policies/`.
//!
//! Files are parsed and compiled once ([`compile`]); [`evaluate::evaluate`] is a pure
//! function of caller and request. [`PolicyStore`] holds the policy in force and replaces it
//! atomically when the files change; a set that fails to load leaves the last good one in
//! force. See `policies/README.md` for the language.

pub mod compile;
pub mod diff;
pub mod evaluate;
pub mod explain;
pub mod file;
pub mod positions;
pub mod request;
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use crate::config::Diagnostic;
use crate::config::RouteKind;
pub use compile::CompiledPolicy;
pub use evaluate::{Decision, SubjectRef, evaluate};
pub use request::{GogsAction, PolicyRequest, RefChange, Resource, Signal, Subject, UpdateKind};

/// The route name policies use for the gateway's own endpoints (`/.gatehouse/audit/export`).
pub const GATEWAY_ROUTE: &str = "gatehouse";

/// What a policy may refer to about a route.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub name: String,
    pub kind: RouteKind,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read policies: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", join(.0))]
    Invalid(Vec<Diagnostic>),
}

fn join(d: &[Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The policy files of a directory: `*.yaml` and `*.yml` directly in it, in name order
/// (test cases live in `tests/` below it and are not policy).
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Parses one policy file, pointing at the line and column of a syntax or schema error.
pub fn parse_file(path: &Path, text: &str) -> Result<compile::Loaded, Diagnostic> {
    let file: file::PolicyFile = if text.trim().is_empty() {
        file::PolicyFile::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| yaml_diagnostic(path, &e))?
    };
    Ok(compile::Loaded {
        path: path.to_path_buf(),
        positions: positions::Positions::of(text),
        text_digest: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes())
            .as_ref()
            .to_vec(),
        file,
    })
}

/// A YAML syntax or schema error at its line and column. The parser's message is split into
/// the key it names (`rules[0].route`) and the reason, without the position it repeats.
pub fn yaml_diagnostic(path: &Path, e: &serde_yaml_ng::Error) -> Diagnostic {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    let mut message = e.to_string();
    let at = format!(" at line {line} column {column}");
    if let Some(m) = message.strip_suffix(&at) {
        message = m.to_string();
    }
    // "rules[0].route: invalid type ...": the part before ": " is the key when it has no
    // spaces (the parser writes the path of the node it was reading).
    let (key, message) = match message.split_once(": ") {
        Some((key, rest)) if !key.is_empty() && !key.contains(' ') => {
            (key.to_string(), rest.to_string())
        }
        _ => (String::new(), message),
    };
    Diagnostic {
        file: path.to_path_buf(),
        line,
        column,
        key,
        message,
    }
}

/// Loads and compiles every policy file of `dir` against `routes`, reporting every problem.
pub fn load_dir(dir: &Path, routes: &[RouteInfo]) -> Result<CompiledPolicy, PolicyError> {
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for path in policy_files(dir)? {
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse_file(&path, &text) {
                Ok(l) => loaded.push(l),
                Err(d) => problems.push(d),
            },
            Err(e) => problems.push(Diagnostic {
                file: path.clone(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(PolicyError::Invalid(problems));
    }
    for l in &loaded {
        let name = l.path.file_name().map(|n| n.to_string_lossy().into_owned());
        digest.update(name.unwrap_or_default().as_bytes());
        digest.update(b"\0");
        digest.update(&l.text_digest);
    }
    let mut compiled = compile::compile(&loaded, routes).map_err(PolicyError::Invalid)?;
    compiled.digest = crate::audit::chain::hex(digest.finish().as_ref());
    compiled.version = Arc::from(&compiled.digest[..16]);
    Ok(compiled)
}

/// The policy in force, swapped atomically on reload. Requests load it once and finish under
/// the policy they started with.
pub struct PolicyStore {
    current: ArcSwap<CompiledPolicy>,
    pub dir: Option<PathBuf>,
    routes: Vec<RouteInfo>,
}

impl PolicyStore {
    /// `dir` `None`: no policy configured; every authenticated request is denied.
    pub fn load(dir: Option<&Path>, routes: Vec<RouteInfo>) -> Result<PolicyStore, PolicyError> {
        let policy = match dir {
            Some(d) => load_dir(d, &routes)?,
            None => CompiledPolicy::default(),
        };
        Ok(PolicyStore {
            current: ArcSwap::from_pointee(policy),
            dir: dir.map(Path::to_path_buf),
            routes,
        })
    }

    pub fn current(&self) -> Arc<CompiledPolicy> {
        self.current.load_full()
    }

    /// Re-reads the directory; on any error the policy in force stays. Returns the new
    /// policy.
    pub fn reload(&self) -> Result<Arc<CompiledPolicy>, PolicyError> {
        let Some(dir) = &self.dir else {
            return Ok(self.current());
        };
        let policy = Arc::new(load_dir(dir, &self.routes)?);
        self.current.store(policy.clone());
        Ok(policy)
    }

    /// Whether any rule of `route` looks at OTLP services (the body must then be read).
    pub fn needs_services(&self, route: &str) -> bool {
        self.current
            .load()
            .routes
            .get(route)
            .is_some_and(|r| r.needs_services)
    }
}

#[cfg(test)]
mod tests;
