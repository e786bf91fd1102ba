//! A standalone git smart-HTTP server for demos: `git http-backend` run as CGI behind a
//! small hyper server (the same code the integration tests use), on 127.0.0.1 only.
//!
//! ```text
//! cargo run --example git_http_server -- --root DIR --addr-file FILE
//! ```
//!
//! Serves every bare repository under DIR (pushes included) on 127.0.0.1 with a port chosen
//! by the system, writes `http=IP:PORT` to FILE once listening, and runs until SIGTERM or
//! SIGINT.

#[allow(dead_code)]
#[path = "../tests/support/git_server.rs"]
mod git_server;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: git_http_server --root DIR --addr-file FILE";

struct Args {
    root: PathBuf,
    addr_file: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut root = None;
    let mut addr_file = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(PathBuf::from(v))),
            _ => (arg.clone(), None),
        };
        let slot = match name.as_str() {
            "--root" => &mut root,
            "--addr-file" => &mut addr_file,
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        };
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?,
        };
        *slot = Some(value);
    }
    Ok(Args {
        root: root.ok_or_else(|| format!("--root is required\n{USAGE}"))?,
        addr_file: addr_file.ok_or_else(|| format!("--addr-file is required\n{USAGE}"))?,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    if !args.root.is_dir() {
        eprintln!(
            "git_http_server: {} is not a directory",
            args.root.display()
        );
        return ExitCode::FAILURE;
    }
    let root = match args.root.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("git_http_server: {}: {e}", args.root.display());
            return ExitCode::FAILURE;
        }
    };
    let server = git_server::GitServer::start(&root).await;

    // Write the address atomically so a reader never sees a partial line.
    let tmp = args.addr_file.with_extension("tmp");
    let written = std::fs::write(&tmp, format!("http={}\n", server.addr))
        .and_then(|()| std::fs::rename(&tmp, &args.addr_file));
    if let Err(e) = written {
        eprintln!("git_http_server: writing {}: {e}", args.addr_file.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "git_http_server: serving {} at {}",
        root.display(),
        server.url()
    );

    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("git_http_server: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("git_http_server: stopping");
    drop(server);
    ExitCode::SUCCESS
}
