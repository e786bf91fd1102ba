//! The `gatehouse` command.

#![forbid(unsafe_code)]
// Nothing a request or a file can influence may panic the gateway: outside tests, failures
// are errors with a message, never `unwrap`/`expect`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use gatehouse::config::Config;
use gatehouse::server::{self, ServeOptions};

/// mimalloc instead of the system allocator: a request allocates and frees many small
/// buffers, and glibc's free-list consolidation showed up in the proxy's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An identity-aware TLS gateway in front of Gogs and the Lightstep ingest API.
#[derive(Parser)]
#[command(name = "gatehouse", version, about, long_about = None)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "GATEHOUSE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or SIGINT (SIGHUP reloads config and certificate).
    Serve {
        /// Configuration file.
        #[arg(
            long,
            short,
            default_value = "gatehouse.toml",
            env = "GATEHOUSE_CONFIG"
        )]
        config: PathBuf,
        /// Write the bound listener addresses to this file once listening.
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Validate the configuration (and the files it names) without serving; exit 1 on problems.
    Check {
        /// Configuration file.
        #[arg(
            long,
            short,
            default_value = "gatehouse.toml",
            env = "GATEHOUSE_CONFIG"
        )]
        config: PathBuf,
    },
    /// Certificate helpers.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Sign in for git and other command-line tools (OAuth 2.0 device authorization grant);
    /// tokens are stored in ~/.config/gatehouse/credentials.json (mode 0600).
    Login {
        /// The gateway, e.g. https://git.example.com
        #[arg(long)]
        gateway: String,
        /// Trust only this CA for the gateway and the provider (default: system roots).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Audit log tools: verify the chain and checkpoints, export for auditors, make a key.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Authorization policy tools: run the test cases, explain a decision.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Webhook tools: list the outbox, requeue dead letters, look up a commit.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// git credential helper: `git config --global credential.https://git.example.com.helper
    /// "!gatehouse git-credential"` (the `!` runs it as a command, not as `git credential-...`).
    GitCredential {
        /// get, store or erase (git passes it): get prints the stored access token,
        /// refreshed first when it is about to expire; erase forgets the stored access token
        /// when git reports it refused (the refresh token is kept); store does nothing (the
        /// tokens come from `gatehouse login`).
        operation: String,
        /// Trust only this CA when refreshing tokens.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every file, chain link and checkpoint; report the first bad record (file, line,
    /// why). Exit 1 on any failure.
    Verify {
        /// Audit directories (several when replicas or archives live apart).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Public key the checkpoints must be signed with (PEM from `audit keygen`, or the
        /// private key).
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// The checkpoint mirror directory ([audit] checkpoint_mirror_dir), checked too.
        #[arg(long)]
        mirror: Option<PathBuf>,
    },
    /// Export the records of a time range as CSV or JSON lines, verifying the chain of
    /// everything read. Exit 0 when it verified, 1 when the export completed but the chain is
    /// broken (the summary on stderr names where), 2 when the export could not complete.
    Export {
        /// Audit directories (replicas are merged by time).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Start, inclusive: RFC 3339 (2026-11-01T00:00:00Z) or a date (midnight UTC).
        #[arg(long)]
        since: String,
        /// End, exclusive: RFC 3339 or a date.
        #[arg(long)]
        until: String,
        /// Identity username, email or subject (case-insensitive, exact).
        #[arg(long)]
        user: Option<String>,
        /// Route name.
        #[arg(long)]
        route: Option<String>,
        /// allow or deny.
        #[arg(long)]
        decision: Option<String>,
        /// Record kind (request, login, ...); repeat or separate with commas for several.
        #[arg(long)]
        kind: Vec<String>,
        /// csv (one row per request, outcome merged) or jsonl (the lines verbatim).
        #[arg(long)]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Public key the checkpoints must be signed with.
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
    /// Write a new Ed25519 checkpoint signing key and its public half.
    Keygen {
        /// Private key file (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Public key file (default: OUT with .pub appended).
        #[arg(long)]
        public_out: Option<PathBuf>,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum PolicyCommand {
    /// Replay the policy decisions of an audit log under OLD and NEW policy directories and
    /// show every decision that would change, grouped and counted.
    Diff {
        /// The policy directory in force (e.g. a checkout of the main branch).
        old: PathBuf,
        /// The proposed policy directory.
        new: PathBuf,
        /// Audit directories to replay (repeatable).
        #[arg(long = "audit", required = true)]
        audit: Vec<PathBuf>,
        /// Configuration file (routes are checked against it).
        #[arg(
            long,
            short,
            default_value = "gatehouse.toml",
            env = "GATEHOUSE_CONFIG"
        )]
        config: PathBuf,
        /// Exit 1 when any decision would change (for CI on policy pull requests).
        #[arg(long)]
        fail_on_change: bool,
    },
    /// Run the cases in DIR/tests/*.yaml against the policy in DIR; exit 1 on any failure.
    Test {
        /// Policy directory (default: the one the configuration names).
        dir: Option<PathBuf>,
        /// Configuration file (routes are checked against it).
        #[arg(
            long,
            short,
            default_value = "gatehouse.toml",
            env = "GATEHOUSE_CONFIG"
        )]
        config: PathBuf,
    },
    /// Show how a request is classified, every rule of its route with the first condition that
    /// failed (or that it matched), and the decision.
    Explain {
        #[arg(
            long,
            short,
            default_value = "gatehouse.toml",
            env = "GATEHOUSE_CONFIG"
        )]
        config: PathBuf,
        /// Policy directory (default: the one the configuration names).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        route: String,
        /// Caller subject; omit for an unauthenticated caller.
        #[arg(long)]
        sub: Option<String>,
        /// Caller groups, comma-separated or repeated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long)]
        client_id: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        email_verified: bool,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Path, with an optional ?query.
        #[arg(long)]
        path: String,
        /// A ref a push updates: "refs/heads/main", or "create|update|delete refs/...". Repeatable.
        #[arg(long = "ref-update")]
        ref_updates: Vec<String>,
        /// A service.name of an OTLP export. Repeatable.
        #[arg(long = "service")]
        services: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a development CA (ca.crt, ca.key) and a server certificate signed by it
    /// (server.crt, server.key) for the configured host names plus localhost.
    Dev {
        /// Directory to write into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Take host names from this configuration's routes.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Additional host name or IP address (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse: {}", describe(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause its parent already shows.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config, addr_file } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(server::serve(config, ServeOptions { addr_file }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => Ok(check(&config)),
        Command::Login { gateway, ca_file } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(gatehouse::cli::login(
                &gateway,
                ca_file.as_deref(),
                &mut std::io::stdout(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => policy_command(command),
        Command::Audit { command } => audit_command(command),
        Command::Webhooks { command } => webhooks_command(command),
        Command::GitCredential { operation, ca_file } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let stdin = std::io::stdin();
            runtime.block_on(gatehouse::cli::git_credential(
                &operation,
                &mut stdin.lock(),
                &mut std::io::stdout(),
                ca_file.as_deref(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs {
            command:
                CertsCommand::Dev {
                    out,
                    config,
                    hosts,
                    force,
                },
        } => {
            let mut names: Vec<String> = Vec::new();
            if let Some(path) = &config {
                let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
                for route in &config.routes {
                    names.extend(route.hosts.iter().filter(|h| *h != "*").cloned());
                }
            }
            names.extend(hosts);
            names.extend(gatehouse::certs::LOCAL_NAMES.iter().map(|s| s.to_string()));
            let mut seen = std::collections::HashSet::new();
            names.retain(|n| seen.insert(n.clone()));
            let certs = gatehouse::certs::generate(&names)?;
            for path in gatehouse::certs::write(&out, &certs, force)? {
                println!("wrote {}", path.display());
            }
            println!("server certificate names: {}", names.join(", "));
            println!("clients trust {}", out.join("ca.crt").display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Validates everything `serve` would load, reporting every problem found.
fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    if let Some(tls) = &config.tls
        && let Err(e) = gatehouse::server::tls::load_certified_key(&tls.cert_file, &tls.key_file)
    {
        eprintln!("{}: tls: {e}", path.display());
        ok = false;
    }
    for (key, secret) in secret_refs(&config) {
        match secret.load() {
            Ok(_) => {
                if let Some(warning) = secret.permission_warning() {
                    eprintln!("{}: warning: {key}: {warning}", path.display());
                }
            }
            Err(e) => {
                eprintln!("{}: {key}: {e}", path.display());
                ok = false;
            }
        }
    }
    if let Some(audit) = &config.audit {
        if let Some(key) = &audit.signing_key_file
            && let Err(e) = gatehouse::audit::checkpoint::Signer::load(key)
        {
            eprintln!("{}: audit.signing_key_file: {e}", path.display());
            ok = false;
        }
        if let Err(e) = writable_dir(&audit.dir) {
            eprintln!(
                "{}: audit.dir: {}: {e}",
                path.display(),
                audit.dir.display()
            );
            ok = false;
        }
        if let Some(mirror) = &audit.checkpoint_mirror_dir
            && let Err(e) = writable_dir(mirror)
        {
            eprintln!(
                "{}: audit.checkpoint_mirror_dir: {}: {e}",
                path.display(),
                mirror.display()
            );
            ok = false;
        }
    }
    if !ok {
        return ExitCode::FAILURE;
    }
    if let Some(r) = &config.redis
        && let Err(e) = gatehouse::shared::redis::check(r)
    {
        eprintln!("{}: {e}", path.display());
        ok = false;
    }
    match gatehouse::telemetry::metrics::Metrics::new() {
        Ok(metrics) => {
            let revocations = match gatehouse::identity::revocation::Revocations::embedded() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("metrics: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match gatehouse::proxy::Runtime::build(config.clone(), &metrics, &revocations) {
                Ok(_) => {}
                // Each policy problem names its own file (and line): one per line, as is.
                Err(gatehouse::proxy::RuntimeError::Policy(e)) => {
                    eprintln!("{e}");
                    ok = false;
                }
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    ok = false;
                }
            }
        }
        Err(e) => {
            eprintln!("metrics: {e}");
            ok = false;
        }
    }
    if !ok {
        return ExitCode::FAILURE;
    }
    println!(
        "{}: OK ({} route{}, {} TLS listener{}, {} plain listener{})",
        path.display(),
        config.routes.len(),
        plural(config.routes.len()),
        config.server.listen.len(),
        plural(config.server.listen.len()),
        config.server.plaintext_listen.len(),
        plural(config.server.plaintext_listen.len()),
    );
    ExitCode::SUCCESS
}

/// Whether the gateway could write into `dir` (or create it): probed with a file it removes.
fn writable_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let existing = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(std::path::Path::new("."));
    if !existing.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            existing.display()
        )));
    }
    let probe = existing.join(format!(".gatehouse-check-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

fn policy_dir(config: &Config, dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    dir.or_else(|| config.policy.as_ref().map(|p| p.dir.clone()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no [policy] dir configured; pass the directory",
                config.source.display()
            )
        })
}

fn policy_command(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    use gatehouse::policy::{self, testing};
    match command {
        PolicyCommand::Diff {
            old,
            new,
            audit,
            config,
            fail_on_change,
        } => {
            let config = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let routes = policy::compile::known_routes(&config);
            let load = |dir: &std::path::Path| policy::load_dir(dir, &routes);
            let (old_policy, new_policy) = match (load(&old), load(&new)) {
                (Ok(o), Ok(n)) => (o, n),
                (o, n) => {
                    for e in [o.err(), n.err()].into_iter().flatten() {
                        eprintln!("{e}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            };
            let records = policy::diff::read_records(&audit).context("reading the audit log")?;
            let report = policy::diff::replay(&old_policy, &new_policy, records);
            print!("{}", report.render());
            Ok(if fail_on_change && report.changed() > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        PolicyCommand::Test { dir, config } => {
            let config = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let dir = policy_dir(&config, dir)?;
            let routes = policy::compile::known_routes(&config);
            let compiled = match policy::load_dir(&dir, &routes) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            match testing::run(&compiled, &routes, &dir) {
                Ok(outcomes) => {
                    print!("{}", testing::table(&outcomes));
                    Ok(
                        if outcomes.iter().all(|o| o.passed) && !outcomes.is_empty() {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::FAILURE
                        },
                    )
                }
                Err(problems) => {
                    for p in problems {
                        eprintln!("{p}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PolicyCommand::Explain {
            config,
            dir,
            route,
            sub,
            groups,
            client_id,
            email,
            email_verified,
            method,
            path,
            ref_updates,
            services,
        } => {
            let config = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let dir = policy_dir(&config, dir)?;
            let routes = policy::compile::known_routes(&config);
            let compiled = match policy::load_dir(&dir, &routes) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let ref_updates = ref_updates
                .iter()
                .map(|r| {
                    if r.contains(' ') {
                        r.clone()
                    } else {
                        format!("update {r}")
                    }
                })
                .collect();
            let request = testing::request_of(
                &routes,
                &testing::CaseRequest {
                    route,
                    method,
                    path,
                    ref_updates,
                    services,
                },
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let caller = sub.map(|sub| policy::Subject {
                sub,
                groups,
                client_id,
                email,
                email_verified,
            });
            print!(
                "{}",
                gatehouse::policy::explain::render(&compiled, caller.as_ref(), &request)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Forwards in the outbox: pending, delivered (kept 7 days) and dead letters.
    List {
        #[arg(
            long,
            short,
            default_value = "gatehouse.toml",
            env = "GATEHOUSE_CONFIG"
        )]
        config: PathBuf,
        /// pending, delivered or dead (default: all).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put dead letter ID back in the queue (attempts start again from zero).
    Retry {
        id: i64,
        #[arg(
            long,
            short,
            default_value = "gatehouse.toml",
            env = "GATEHOUSE_CONFIG"
        )]
        config: PathBuf,
    },
    /// What the commit store knows of a SHA or an unambiguous prefix (7+ hex digits).
    Commit {
        sha: String,
        #[arg(
            long,
            short,
            default_value = "gatehouse.toml",
            env = "GATEHOUSE_CONFIG"
        )]
        config: PathBuf,
    },
}

/// The webhook store a configuration names, with the runtime a Redis store runs on.
struct CliStore {
    store: Box<dyn gatehouse::webhook::HookStore>,
    _runtime: Option<tokio::runtime::Runtime>,
}

fn webhook_store(config: &std::path::Path) -> anyhow::Result<CliStore> {
    let config = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let w = config
        .webhooks
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{}: no [webhooks] section", config.source.display()))?;
    if let Some(r) = &config.redis {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let redis = {
            let _in_runtime = runtime.enter();
            let metrics = gatehouse::shared::redis::RedisMetrics::unregistered()?;
            gatehouse::shared::redis::Redis::connect(r, std::sync::Arc::new(metrics))?
        };
        return Ok(CliStore {
            store: Box::new(gatehouse::webhook::RedisStore::new(std::sync::Arc::new(
                redis,
            ))),
            _runtime: Some(runtime),
        });
    }
    let path = w
        .store
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{}: no webhooks.store", config.source.display()))?;
    // A mistyped path must not quietly become a new, empty store.
    if !path.exists() {
        anyhow::bail!(
            "{}: no webhook store there yet (the gateway creates it when it starts)",
            path.display()
        );
    }
    Ok(CliStore {
        store: Box::new(gatehouse::webhook::SqliteStore::open(path)?),
        _runtime: None,
    })
}

fn webhooks_command(command: WebhooksCommand) -> anyhow::Result<ExitCode> {
    use gatehouse::cli::webhooks;
    use gatehouse::webhook::store::State;
    match command {
        WebhooksCommand::List {
            config,
            state,
            limit,
        } => {
            let state = match state.as_deref() {
                None => None,
                Some("pending") => Some(State::Pending),
                Some("delivered") => Some(State::Delivered),
                Some("dead") => Some(State::Dead),
                Some(other) => {
                    anyhow::bail!("--state {other:?}: expected pending, delivered or dead")
                }
            };
            let store = webhook_store(&config)?;
            webhooks::list(&*store.store, state, limit, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        WebhooksCommand::Retry { id, config } => {
            let store = webhook_store(&config)?;
            if webhooks::retry(&*store.store, id)? {
                println!("forward {id} is queued again");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "gatehouse: no dead letter with id {id} (see gatehouse webhooks list --state dead)"
                );
                Ok(ExitCode::FAILURE)
            }
        }
        WebhooksCommand::Commit { sha, config } => {
            let store = webhook_store(&config)?;
            Ok(
                if webhooks::commit(&*store.store, &sha, &mut std::io::stdout())? {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
    }
}

fn audit_command(command: AuditCommand) -> anyhow::Result<ExitCode> {
    use gatehouse::cli::audit;
    match command {
        AuditCommand::Verify {
            dirs,
            pubkey,
            mirror,
        } => {
            let ok = audit::verify(
                &dirs,
                pubkey.as_deref(),
                mirror.as_deref(),
                &mut std::io::stdout(),
            )?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Export {
            dirs,
            since,
            until,
            user,
            route,
            decision,
            kind,
            format,
            out,
            pubkey,
        } => {
            let run = || -> Result<bool, audit::AuditCliError> {
                let format = format
                    .parse()
                    .map_err(|e| audit::AuditCliError::Other(format!("--format: {e}")))?;
                let filter = audit::export_filter(&audit::ExportArgs {
                    since: &since,
                    until: &until,
                    user: user.as_deref(),
                    route: route.as_deref(),
                    decision: decision.as_deref(),
                    kinds: &kind,
                })?;
                let summary =
                    audit::export(&dirs, &filter, format, out.as_deref(), pubkey.as_deref())?;
                Ok(summary.chain_ok())
            };
            match run() {
                Ok(true) => Ok(ExitCode::SUCCESS),
                Ok(false) => Ok(ExitCode::FAILURE),
                Err(e) => {
                    eprintln!("gatehouse: {}", describe(&e));
                    Ok(ExitCode::from(2))
                }
            }
        }
        AuditCommand::Keygen {
            out,
            public_out,
            force,
        } => {
            let public_out = public_out.unwrap_or_else(|| {
                let mut p = out.clone().into_os_string();
                p.push(".pub");
                PathBuf::from(p)
            });
            audit::keygen(&out, &public_out, force)?;
            println!("wrote {} (private, 0600)", out.display());
            println!(
                "wrote {} (public: audit verify --pubkey)",
                public_out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Every secret the configuration names, with the key that names it.
fn secret_refs(config: &Config) -> Vec<(String, &gatehouse::config::SecretRef)> {
    let id = &config.identity;
    let mut refs = Vec::new();
    if let Some(o) = &id.oidc {
        refs.push(("identity.oidc.client_secret".to_string(), &o.client_secret));
    }
    if let Some(s) = &id.session {
        refs.push(("identity.session.keys".to_string(), &s.keys));
    }
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(g) = &r.gogs {
            for (j, c) in g.credentials.iter().enumerate() {
                refs.push((format!("routes[{i}].gogs.credentials[{j}].token"), &c.token));
            }
        }
        if let Some(t) = r.otlp.as_ref().and_then(|o| o.access_token.as_ref()) {
            refs.push((format!("routes[{i}].otlp.access_token"), t));
        }
    }
    if let Some(w) = &config.webhooks {
        for (i, s) in w.sources.iter().enumerate() {
            if let Some(r) = &s.secret {
                refs.push((format!("webhooks.sources[{i}].secret"), r));
            }
        }
        for (i, r) in w.receivers.iter().enumerate() {
            refs.push((format!("webhooks.receivers[{i}].secret"), &r.secret));
        }
    }
    refs
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
