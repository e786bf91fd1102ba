//! The pinned OpenTelemetry Python SDK and exporters (`tests/otlp/requirements.txt`),
//! installed on first use into a venv under the system temp dir, keyed by the requirements,
//! under a file lock so parallel test processes install once; each step is bounded in time.
//! Needs `python3` (with `venv`) and PyPI; `GATEHOUSE_PYTHON` names another interpreter.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Runs `cmd` to completion or kills it after `limit`, returning its output.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

pub fn ok(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The venv's python, with the pinned packages installed (once per machine and
/// requirements, under a lock).
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(install_python_env).clone()
}

fn install_python_env() -> PathBuf {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/requirements.txt");
    let pins = fs::read(&requirements).unwrap();
    // FNV-1a: a new pin list gets a new venv.
    let hash = pins.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let tmp = std::env::temp_dir();
    let venv = tmp.join(format!("gatehouse-otlp-venv-{hash:016x}"));
    let lock = File::create(tmp.join("gatehouse-otlp-venv.lock")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15 * 60);
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("cannot lock the venv lock file: {e}"),
        }
    }
    let python = venv.join("bin/python");
    let imports = "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, \
                   opentelemetry.exporter.otlp.json.http, opentelemetry.exporter.otlp.proto.grpc, grpc";
    let ready = |python: &Path| {
        python.exists() && {
            let mut check = Command::new(python);
            check.args(["-c", imports]);
            run_bounded(check, Duration::from_secs(60)).status.success()
        }
    };
    if !ready(&python) {
        let _ = fs::remove_dir_all(&venv);
        let base = std::env::var_os("GATEHOUSE_PYTHON").unwrap_or_else(|| "python3".into());
        let mut create = Command::new(base);
        create.arg("-m").arg("venv").arg(&venv);
        ok(
            run_bounded(create, Duration::from_secs(120)),
            "python3 -m venv",
        );
        let mut pip = Command::new(&python);
        pip.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "-q",
        ])
        .arg("-r")
        .arg(&requirements);
        ok(
            run_bounded(pip, Duration::from_secs(10 * 60)),
            "pip install",
        );
        assert!(ready(&python), "packages missing after pip install");
    }
    python
}
