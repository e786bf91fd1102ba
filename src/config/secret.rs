//! Secrets are named in the config, never written there: an environment variable or a file.
//!
//! The value is read when the gateway builds its runtime (start and reload), kept in memory
//! that is wiped on drop, and never printed: `Debug` shows only where it comes from.

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroizing;

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "environment variable {name}"),
            SecretRef::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A secret value. Its bytes are zeroed when dropped and it never prints itself.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0} is not set")]
    Missing(SecretRef),
    #[error("{0} is empty")]
    Empty(SecretRef),
    #[error("{source_ref}: cannot read: {error}")]
    Read {
        source_ref: SecretRef,
        error: std::io::Error,
    },
    #[error("{0} is not valid UTF-8")]
    NotUtf8(SecretRef),
}

impl SecretRef {
    /// Reads the secret. File contents lose one trailing newline (editors add it).
    pub fn load(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) => Zeroizing::new(v),
                Err(std::env::VarError::NotPresent) => {
                    return Err(SecretError::Missing(self.clone()));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SecretError::NotUtf8(self.clone()));
                }
            },
            SecretRef::File(path) => {
                let bytes =
                    Zeroizing::new(std::fs::read(path).map_err(|error| SecretError::Read {
                        source_ref: self.clone(),
                        error,
                    })?);
                let text =
                    std::str::from_utf8(&bytes).map_err(|_| SecretError::NotUtf8(self.clone()))?;
                let text = text.strip_suffix('\n').unwrap_or(text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                Zeroizing::new(text.to_string())
            }
        };
        if value.trim().is_empty() {
            return Err(SecretError::Empty(self.clone()));
        }
        Ok(Secret(value))
    }

    /// A warning when a secret file can be read by other users.
    pub fn permission_warning(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let SecretRef::File(path) = self else {
            return None;
        };
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o077 != 0).then(|| {
            format!(
                "{} is readable by group or others (mode {:o}); use chmod 600",
                path.display(),
                mode & 0o777
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_their_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "hunter2\n").unwrap();
        let r = SecretRef::File(path.clone());
        let s = r.load().unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert!(!format!("{r:?} {r}").contains("hunter2"));
    }

    #[test]
    fn missing_and_empty_secrets_say_where_to_look() {
        let r = SecretRef::Env("GATEHOUSE_TEST_SURELY_UNSET_VARIABLE".into());
        assert_eq!(
            r.load().unwrap_err().to_string(),
            "environment variable GATEHOUSE_TEST_SURELY_UNSET_VARIABLE is not set"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        let err = SecretRef::File(path.clone())
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("is empty"), "{err}");
        let err = SecretRef::File(dir.path().join("nope"))
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn world_readable_secret_files_are_flagged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SecretRef::File(path.clone()).permission_warning().is_some());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SecretRef::File(path).permission_warning().is_none());
    }
}
