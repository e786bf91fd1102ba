//! Credentials toward Lightstep: callers never hold the project token. Whatever credential a
//! caller sent (its `Authorization`, any `lightstep-access-token`) is removed, and the
//! gateway's token is added.

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;

use crate::classify::otlp::{Signal, signal_from_path};

use crate::config::{OtlpBroker, SecretError};

pub static LIGHTSTEP_TOKEN: HeaderName = HeaderName::from_static("lightstep-access-token");

pub struct OtlpRuntime {
    token: Option<HeaderValue>,
    traces_path: Option<PathAndQuery>,
    metrics_path: Option<PathAndQuery>,
    logs_path: Option<PathAndQuery>,
}

impl OtlpRuntime {
    pub fn load(broker: &OtlpBroker) -> Result<OtlpRuntime, SecretError> {
        let token = match &broker.access_token {
            None => None,
            Some(r) => {
                let secret = r.load()?;
                let mut v = HeaderValue::from_str(secret.expose())
                    .map_err(|_| SecretError::NotUtf8(r.clone()))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let path = |p: &Option<String>| p.as_deref().and_then(|p| PathAndQuery::try_from(p).ok());
        Ok(OtlpRuntime {
            token,
            traces_path: path(&broker.traces_path),
            metrics_path: path(&broker.metrics_path),
            logs_path: path(&broker.logs_path),
        })
    }

    /// The upstream path for an export to `path` (the configured one for its signal, else
    /// the client's).
    fn upstream_path(&self, path: &str) -> Option<&PathAndQuery> {
        match signal_from_path(path)? {
            Signal::Traces => self.traces_path.as_ref(),
            Signal::Metrics => self.metrics_path.as_ref(),
            Signal::Logs => self.logs_path.as_ref(),
        }
    }
}

pub fn request(parts: &mut Parts, broker: &OtlpRuntime) {
    if let Some(p) = broker.upstream_path(parts.uri.path()) {
        let mapped = match parts.uri.query() {
            None => Some(p.clone()),
            Some(q) => PathAndQuery::try_from(format!("{}?{q}", p.path())).ok(),
        };
        if let Some(mapped) = mapped {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.path_and_query = Some(mapped);
            if let Ok(u) = http::Uri::from_parts(uri) {
                parts.uri = u;
            }
        }
    }
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove(&LIGHTSTEP_TOKEN);
    if let Some(t) = &broker.token {
        parts.headers.insert(LIGHTSTEP_TOKEN.clone(), t.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretRef;

    #[test]
    fn the_callers_token_is_replaced_by_the_gateways() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ls");
        std::fs::write(&path, "gateway-token\n").unwrap();
        let broker = OtlpRuntime::load(&OtlpBroker {
            access_token: Some(SecretRef::File(path)),
            traces_path: Some("/traces/otlp/v0.9".into()),
            metrics_path: None,
            logs_path: None,
        })
        .unwrap();
        let mut p = http::Request::builder()
            .uri("/v1/traces")
            .header("authorization", "Bearer caller")
            .header("Lightstep-Access-Token", "caller-token")
            .header("LIGHTSTEP-ACCESS-TOKEN", "another")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        request(&mut p, &broker);
        assert_eq!(p.uri, "/traces/otlp/v0.9");
        assert!(p.headers.get("authorization").is_none());
        let values: Vec<_> = p.headers.get_all("lightstep-access-token").iter().collect();
        assert_eq!(values, ["gateway-token"]);
        assert!(values[0].is_sensitive());
    }
}
