//! Tokens `gatehouse login` obtained, one entry per gateway, in the user's config directory
//! (`$XDG_CONFIG_HOME/gatehouse/credentials.json`, else `~/.config/...`), readable by the
//! user alone (directory 0700, file 0600), written atomically.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::CliError;

/// What is kept for one gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub issuer: String,
    pub client_id: String,
    pub token_endpoint: String,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    /// Unix seconds.
    pub expires_at: u64,
}

/// All entries, keyed by gateway origin (`https://host[:port]`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    #[serde(default)]
    pub gateways: BTreeMap<String, Entry>,
}

pub fn path() -> Result<PathBuf, CliError> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").ok_or(CliError::NoHome)?).join(".config"),
    };
    Ok(base.join("gatehouse").join("credentials.json"))
}

impl Store {
    pub fn load() -> Result<Store, CliError> {
        let path = path()?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CliError::Store {
                path,
                message: format!("not valid: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(e) => Err(CliError::Store {
                path,
                message: e.to_string(),
            }),
        }
    }

    pub fn save(&self) -> Result<(), CliError> {
        let path = path()?;
        let dir = path.parent().map(PathBuf::from).unwrap_or_default();
        let fail = |e: std::io::Error| CliError::Store {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(fail)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
        let tmp = dir.join(".credentials.json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| CliError::Store {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)
    }
}

/// `https://host[:port]` of a gateway URL or bare host, lower-cased, default port dropped.
pub fn origin(gateway: &str) -> Result<String, CliError> {
    let with_scheme = if gateway.contains("://") {
        gateway.to_string()
    } else {
        format!("https://{gateway}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|_| CliError::BadGateway(gateway.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(CliError::BadGateway(format!(
            "{gateway} (only https:// gateways)"
        )));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| CliError::BadGateway(gateway.to_string()))?;
    let host = authority.host().to_ascii_lowercase();
    Ok(match authority.port_u16() {
        Some(443) | None => format!("https://{host}"),
        Some(p) => format!("https://{host}:{p}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_canonical() {
        assert_eq!(
            origin("git.example.com").unwrap(),
            "https://git.example.com"
        );
        assert_eq!(
            origin("https://Git.Example.com:443/x").unwrap(),
            "https://git.example.com"
        );
        assert_eq!(
            origin("https://git.example.com:8443").unwrap(),
            "https://git.example.com:8443"
        );
        assert!(origin("http://git.example.com").is_err());
    }
}
