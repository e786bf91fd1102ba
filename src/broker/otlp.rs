//! Credentials toward Lightstep: callers never hold the project token. Whatever credential a
//! caller sent (its `Authorization`, any `lightstep-access-token`) is removed, and the
//! gateway's token is added.

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;

use crate::config::{OtlpBroker, SecretError};

pub static LIGHTSTEP_TOKEN: HeaderName = HeaderName::from_static("lightstep-access-token");

pub struct OtlpRuntime {
    token: Option<HeaderValue>,
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
        Ok(OtlpRuntime { token })
    }
}

pub fn request(parts: &mut Parts, broker: &OtlpRuntime) {
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
        assert!(p.headers.get("authorization").is_none());
        let values: Vec<_> = p.headers.get_all("lightstep-access-token").iter().collect();
        assert_eq!(values, ["gateway-token"]);
        assert!(values[0].is_sensitive());
    }
}
