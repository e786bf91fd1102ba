//! The `[telemetry.traces]` section: where the gateway sends its own spans, and how many.
//!
//! The file types live here rather than in `file.rs` so the section is one piece; `file.rs`
//! only names [`FileTelemetry`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Validator;
use super::secret::SecretRef;

pub mod defaults {
    use std::time::Duration;
    pub const SERVICE_NAME: &str = "gatehouse";
    pub const SAMPLE_RATIO: f64 = 1.0;
    /// About two seconds of spans at a thousand requests a second.
    pub const MAX_QUEUE: u64 = 2048;
    /// The OpenTelemetry SDKs' default batch.
    pub const BATCH_SIZE: u64 = 512;
    pub const BATCH_DELAY: Duration = Duration::from_secs(1);
    pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTelemetry {
    pub traces: Option<FileTraces>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTraces {
    pub endpoint: Spanned<String>,
    pub ca_file: Option<Spanned<String>>,
    pub access_token_env: Option<Spanned<String>>,
    pub access_token_file: Option<Spanned<String>>,
    pub sample_ratio: Option<Spanned<f64>>,
    pub service_name: Option<Spanned<String>>,
    pub max_queue: Option<Spanned<i64>>,
    pub batch_size: Option<Spanned<i64>>,
    pub batch_delay: Option<Spanned<String>>,
    pub export_timeout: Option<Spanned<String>>,
}

/// Where and how the gateway exports its own spans.
#[derive(Debug, Clone)]
pub struct TracesConfig {
    /// The full OTLP/HTTP traces URL (protobuf is posted to it as is).
    pub endpoint: http::Uri,
    /// For an https endpoint: trust only this bundle instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Sent as `lightstep-access-token`; read when the tracer starts.
    pub access_token: Option<SecretRef>,
    /// Share of new traces recorded; a caller's sampling decision always wins.
    pub sample_ratio: f64,
    pub service_name: String,
    /// `service.instance.id`: the audit log's replica name, so a span and the audit records
    /// of the same replica name the same thing.
    pub instance_id: String,
    pub max_queue: usize,
    pub batch_size: usize,
    pub batch_delay: Duration,
    /// Bounds each attempt, connection included.
    pub export_timeout: Duration,
}

impl Validator<'_> {
    pub(super) fn traces(&mut self, t: &FileTraces, instance_id: &str) -> Option<TracesConfig> {
        let endpoint = self.traces_endpoint(&t.endpoint);
        let https = endpoint
            .as_ref()
            .is_some_and(|u| u.scheme() == Some(&http::uri::Scheme::HTTPS));
        let ca_file = t.ca_file.as_ref().map(|ca| {
            if endpoint.is_some() && !https {
                self.report(
                    ca,
                    "telemetry.traces.ca_file",
                    "only applies to an https:// endpoint",
                );
            }
            self.path(ca.get_ref())
        });
        let access_token = if t.access_token_env.is_none() && t.access_token_file.is_none() {
            None
        } else {
            self.secret(
                &t.access_token_env,
                &t.access_token_file,
                "telemetry.traces.access_token",
                None,
            )
        };
        let sample_ratio = match &t.sample_ratio {
            None => defaults::SAMPLE_RATIO,
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => {
                self.report(
                    r,
                    "telemetry.traces.sample_ratio",
                    format!("must be between 0.0 and 1.0, got {}", r.get_ref()),
                );
                defaults::SAMPLE_RATIO
            }
        };
        let service_name = match &t.service_name {
            None => defaults::SERVICE_NAME.to_string(),
            Some(n) => {
                let name = n.get_ref();
                if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
                    self.report(
                        n,
                        "telemetry.traces.service_name",
                        format!("{name:?}: use 1 to 255 printable characters"),
                    );
                }
                name.clone()
            }
        };
        let max_queue = self.count(
            &t.max_queue,
            "telemetry.traces.max_queue",
            1_000_000,
            defaults::MAX_QUEUE,
        );
        let batch_size = self.count(
            &t.batch_size,
            "telemetry.traces.batch_size",
            100_000,
            defaults::BATCH_SIZE.min(max_queue),
        );
        if let Some(b) = &t.batch_size
            && batch_size > max_queue
        {
            self.report(
                b,
                "telemetry.traces.batch_size",
                format!("{batch_size} is more than max_queue ({max_queue}): a batch is taken from the queue"),
            );
        }
        let batch_delay = self.duration(
            &t.batch_delay,
            "telemetry.traces.batch_delay",
            defaults::BATCH_DELAY,
        );
        let export_timeout = self.duration(
            &t.export_timeout,
            "telemetry.traces.export_timeout",
            defaults::EXPORT_TIMEOUT,
        );
        Some(TracesConfig {
            endpoint: endpoint?,
            ca_file,
            access_token,
            sample_ratio,
            service_name,
            instance_id: instance_id.to_string(),
            max_queue: max_queue as usize,
            batch_size: batch_size as usize,
            batch_delay,
            export_timeout,
        })
    }

    fn traces_endpoint(&mut self, e: &Spanned<String>) -> Option<http::Uri> {
        let key = "telemetry.traces.endpoint";
        let text = e.get_ref();
        let uri = match text.parse::<http::Uri>() {
            Ok(u) => u,
            Err(err) => {
                self.report(e, key, format!("{text:?}: {err}"));
                return None;
            }
        };
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            self.report(
                e,
                key,
                format!("{text:?}: an absolute http:// or https:// URL is required"),
            );
            return None;
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            self.report(
                e,
                key,
                "must not carry credentials: use access_token_env or access_token_file",
            );
            return None;
        }
        if matches!(uri.path(), "" | "/") {
            self.report(
                e,
                key,
                format!(
                    "{text:?} has no path: give the full traces URL, e.g. \"https://ingest.lightstep.com/traces/otlp/v0.9\" or \"http://collector:4318/v1/traces\""
                ),
            );
            return None;
        }
        Some(uri)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    const BASE: &str = r#"
[server]
plaintext_listen = ["127.0.0.1:8080"]

[audit]
dir = "audit"
replica = "edge-2"

[[routes]]
name = "gogs"
kind = "gogs"
hosts = ["git.example.com"]
upstream = "http://127.0.0.1:3000"
public = true
"#;

    fn parse(section: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("/etc/gatehouse/gatehouse.toml"),
            &format!("{BASE}\n{section}"),
        )
    }

    fn problems(section: &str) -> Vec<String> {
        match parse(section) {
            Ok(_) => panic!("expected errors for:\n{section}"),
            Err(ConfigError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    /// The line of `section`'s first line within the parsed text.
    fn line_of_section() -> usize {
        BASE.lines().count() + 2
    }

    #[test]
    fn the_example_section_is_valid_once_uncommented() {
        let example = include_str!("../../gatehouse.example.toml");
        let start = example.find("# [telemetry.traces]\n").unwrap();
        let mut section = String::from("[telemetry.traces]\n");
        for line in example[start..].lines().skip(1) {
            let Some(text) = line.strip_prefix("# ") else {
                break;
            };
            let key_len = text
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
                .count();
            if key_len > 0 && text[key_len..].starts_with(" = ") {
                section.push_str(text);
                section.push('\n');
            }
        }
        let t = parse(&section)
            .unwrap_or_else(|e| panic!("{e}\n{section}"))
            .telemetry
            .unwrap();
        assert_eq!(t.endpoint, "https://ingest.lightstep.com/traces/otlp/v0.9");
        assert!(t.ca_file.is_some() && t.access_token.is_some());
        assert_eq!(section.lines().count(), 10, "every key is shown: {section}");
    }

    #[test]
    fn no_section_means_no_tracing() {
        assert!(parse("").unwrap().telemetry.is_none());
        assert!(parse("[telemetry]\n").unwrap().telemetry.is_none());
    }

    #[test]
    fn an_endpoint_alone_gets_the_documented_defaults() {
        let t = parse(
            "[telemetry.traces]\nendpoint = \"https://ingest.lightstep.com/traces/otlp/v0.9\"\n",
        )
        .unwrap()
        .telemetry
        .unwrap();
        assert_eq!(t.endpoint, "https://ingest.lightstep.com/traces/otlp/v0.9");
        assert_eq!(t.ca_file, None);
        assert_eq!(t.access_token, None);
        assert_eq!(t.sample_ratio, defaults::SAMPLE_RATIO);
        assert_eq!(t.service_name, "gatehouse");
        assert_eq!(
            t.instance_id, "edge-2",
            "the audit replica names the instance"
        );
        assert_eq!(t.max_queue, 2048);
        assert_eq!(t.batch_size, 512);
        assert_eq!(t.batch_delay, defaults::BATCH_DELAY);
        assert_eq!(t.export_timeout, defaults::EXPORT_TIMEOUT);
    }

    #[test]
    fn every_key_is_read() {
        let t = parse(
            r#"[telemetry.traces]
endpoint = "https://collector.internal:4318/v1/traces"
ca_file = "certs/collector-ca.pem"
access_token_env = "LIGHTSTEP_TOKEN"
sample_ratio = 0.25
service_name = "gatehouse-edge"
max_queue = 100
batch_size = 50
batch_delay = "250ms"
export_timeout = "3s"
"#,
        )
        .unwrap()
        .telemetry
        .unwrap();
        assert_eq!(
            t.ca_file.as_deref(),
            Some(Path::new("/etc/gatehouse/certs/collector-ca.pem"))
        );
        assert_eq!(
            t.access_token,
            Some(SecretRef::Env("LIGHTSTEP_TOKEN".to_string()))
        );
        assert_eq!(t.sample_ratio, 0.25);
        assert_eq!(t.service_name, "gatehouse-edge");
        assert_eq!((t.max_queue, t.batch_size), (100, 50));
        assert_eq!(t.batch_delay, Duration::from_millis(250));
        assert_eq!(t.export_timeout, Duration::from_secs(3));

        let t = parse(
            "[telemetry.traces]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\naccess_token_file = \"/run/secrets/ls\"\nsample_ratio = 0\nmax_queue = 100\n",
        )
        .unwrap()
        .telemetry
        .unwrap();
        assert_eq!(
            t.access_token,
            Some(SecretRef::File("/run/secrets/ls".into()))
        );
        assert_eq!(t.sample_ratio, 0.0, "an integer is a ratio too");
        assert_eq!(
            t.batch_size, 100,
            "the default batch never exceeds the queue"
        );
    }

    #[test]
    fn mistakes_name_file_line_column_and_key() {
        let line = line_of_section();
        let p = problems(
            "[telemetry.traces]\nendpoint = \"http://collector:4318/v1/traces\"\nsample_ratio = 1.5\n",
        );
        assert_eq!(
            p,
            [format!(
                "/etc/gatehouse/gatehouse.toml:{}:16: telemetry.traces.sample_ratio: must be between 0.0 and 1.0, got 1.5",
                line + 2
            )]
        );

        let p = problems(
            "[telemetry.traces]\nendpoint = \"http://collector:4318/v1/traces\"\nsampler = \"always\"\n",
        );
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with(&format!(
                "/etc/gatehouse/gatehouse.toml:{}:1: unknown field `sampler`",
                line + 2
            )),
            "{p:?}"
        );

        let p = problems("[telemetry.metrics]\nendpoint = \"http://collector:4318/v1/metrics\"\n");
        assert!(p[0].contains("unknown field `metrics`"), "{p:?}");

        let p = problems("[telemetry.traces]\nsample_ratio = 0.5\n");
        assert!(p[0].contains("missing field `endpoint`"), "{p:?}");
    }

    #[test]
    fn bad_values_are_each_reported() {
        let cases = [
            (
                "endpoint = \"https://ingest.lightstep.com\"",
                "telemetry.traces.endpoint: \"https://ingest.lightstep.com\" has no path",
            ),
            (
                "endpoint = \"ftp://collector/v1/traces\"",
                "an absolute http:// or https:// URL is required",
            ),
            (
                "endpoint = \"/v1/traces\"",
                "an absolute http:// or https:// URL is required",
            ),
            (
                "endpoint = \"https://user:pw@collector/v1/traces\"",
                "must not carry credentials",
            ),
            (
                "endpoint = \"http://collector:4318/v1/traces\"\nca_file = \"ca.pem\"",
                "telemetry.traces.ca_file: only applies to an https:// endpoint",
            ),
            (
                "endpoint = \"http://collector:4318/v1/traces\"\naccess_token_env = \"A\"\naccess_token_file = \"/a\"",
                "set either telemetry.traces.access_token_env or telemetry.traces.access_token_file, not both",
            ),
            (
                "endpoint = \"http://collector:4318/v1/traces\"\naccess_token_env = \"not a name\"",
                "is not an environment variable name",
            ),
            (
                "endpoint = \"http://collector:4318/v1/traces\"\nsample_ratio = -0.1",
                "telemetry.traces.sample_ratio: must be between 0.0 and 1.0",
            ),
            (
                "endpoint = \"http://collector:4318/v1/traces\"\nsample_ratio = nan",
                "telemetry.traces.sample_ratio: must be between 0.0 and 1.0",
            ),
            (
                "endpoint = \"http://collector:4318/v1/traces\"\nservice_name = \"\"",
                "telemetry.traces.service_name",
            ),
            (
                "endpoint = \"http://collector:4318/v1/traces\"\nmax_queue = 0",
                "telemetry.traces.max_queue: must be between 1 and 1000000, got 0",
            ),
            (
                "endpoint = \"http://collector:4318/v1/traces\"\nmax_queue = 10\nbatch_size = 20",
                "telemetry.traces.batch_size: 20 is more than max_queue (10)",
            ),
            (
                "endpoint = \"http://collector:4318/v1/traces\"\nbatch_delay = \"1\"",
                "telemetry.traces.batch_delay: \"1\" is not a duration",
            ),
            (
                "endpoint = \"http://collector:4318/v1/traces\"\nexport_timeout = \"0s\"",
                "telemetry.traces.export_timeout: must be greater than zero",
            ),
        ];
        for (body, expected) in cases {
            let p = problems(&format!("[telemetry.traces]\n{body}\n"));
            assert!(
                p.iter().any(|m| m.contains(expected)),
                "{body}: expected {expected:?} in {p:?}"
            );
            assert!(
                p.iter()
                    .all(|m| m.starts_with("/etc/gatehouse/gatehouse.toml:")
                        && m.split(':')
                            .nth(1)
                            .is_some_and(|l| l.parse::<usize>().is_ok_and(|l| l > 0))),
                "{p:?}"
            );
        }
    }
}
