//! Signed checkpoints: every N records or T seconds, at rotation and at shutdown, the writer
//! signs (Ed25519) the position and hash of the latest record. They are written beside the
//! log (`<log>.checkpoints`) and optionally to a second directory. Rewriting the log then
//! needs the signing key, and cutting records off the end is seen as a missing signed record.

use std::path::Path;

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};

/// One checkpoint line. `sig` comes last and covers the line without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub time: String,
    pub replica: String,
    /// The log file the record is in.
    pub file: String,
    pub seq: u64,
    pub hash: String,
    /// Why it was written: interval, count, rotation, shutdown.
    pub reason: String,
    /// Fingerprint of the signing key.
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sig: String,
}

pub struct Signer {
    key: Ed25519KeyPair,
    pub fingerprint: String,
}

fn fingerprint(public: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
    super::chain::hex(&d.as_ref()[..8])
}

impl Signer {
    /// Loads an Ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes).
    pub fn load(path: &Path) -> Result<Signer, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let der = match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
            Ok(_) => {
                return Err(format!(
                    "{}: expected an Ed25519 key in PKCS#8 PEM",
                    path.display()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let key = Ed25519KeyPair::from_pkcs8(&der)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der))
            .map_err(|_| format!("{}: not an Ed25519 private key", path.display()))?;
        let fingerprint = fingerprint(key.public_key().as_ref());
        Ok(Signer { key, fingerprint })
    }

    #[cfg(test)]
    pub fn generate() -> Signer {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).expect("keygen");
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let fingerprint = fingerprint(key.public_key().as_ref());
        Signer { key, fingerprint }
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// The checkpoint's line, signed, newline included.
    pub fn sign(&self, mut cp: Checkpoint) -> Vec<u8> {
        cp.key = self.fingerprint.clone();
        cp.sig.clear();
        let unsigned = serde_json::to_vec(&cp).unwrap_or_default();
        let sig = self.key.sign(&unsigned);
        let mut line = unsigned;
        line.pop();
        line.extend_from_slice(b",\"sig\":\"");
        line.extend_from_slice(STANDARD.encode(sig.as_ref()).as_bytes());
        line.extend_from_slice(b"\"}\n");
        line
    }
}

/// A public key to check checkpoints with: a PEM public key (`openssl pkey -pubout`), a PEM
/// private key (its public half is used), or 32 raw bytes in base64.
pub fn load_public_key(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if let Ok(spki) = SubjectPublicKeyInfoDer::from_pem_slice(&bytes) {
        // An Ed25519 SPKI is a 12-byte prefix and the 32-byte key.
        let der = spki.as_ref();
        if der.len() == 44 {
            return Ok(der[12..].to_vec());
        }
        return Err(format!("{}: not an Ed25519 public key", path.display()));
    }
    if let Ok(PrivateKeyDer::Pkcs8(k)) = PrivateKeyDer::from_pem_slice(&bytes) {
        let key = Ed25519KeyPair::from_pkcs8(k.secret_pkcs8_der())
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der()))
            .map_err(|_| format!("{}: not an Ed25519 key", path.display()))?;
        return Ok(key.public_key().as_ref().to_vec());
    }
    let text = String::from_utf8_lossy(&bytes);
    match STANDARD.decode(text.trim()) {
        Ok(raw) if raw.len() == 32 => Ok(raw),
        _ => Err(format!(
            "{}: expected an Ed25519 public key (PEM) or 32 base64 bytes",
            path.display()
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a checkpoint line: {0}")]
    Malformed(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("not signed")]
    Unsigned,
}

/// Parses a checkpoint line and, when `public` is given, verifies its signature.
pub fn check(line: &[u8], public: Option<&[u8]>) -> Result<Checkpoint, CheckpointError> {
    let cp: Checkpoint =
        serde_json::from_slice(line).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    if let Some(public) = public {
        let marker = b",\"sig\":\"";
        let at = line
            .windows(marker.len())
            .rposition(|w| w == marker)
            .ok_or(CheckpointError::Unsigned)?;
        let mut unsigned = line[..at].to_vec();
        unsigned.push(b'}');
        let sig = STANDARD
            .decode(&cp.sig)
            .map_err(|_| CheckpointError::BadSignature)?;
        UnparsedPublicKey::new(&signature::ED25519, public)
            .verify(&unsigned, &sig)
            .map_err(|_| CheckpointError::BadSignature)?;
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint {
            time: "t".into(),
            replica: "r".into(),
            file: "f".into(),
            seq: 7,
            hash: "ab".repeat(32),
            reason: "count".into(),
            key: String::new(),
            sig: String::new(),
        }
    }

    #[test]
    fn checkpoints_verify_and_forgeries_do_not() {
        let s = Signer::generate();
        let line = s.sign(cp());
        let body = &line[..line.len() - 1];
        let back = check(body, Some(&s.public_key())).unwrap();
        assert_eq!(back.seq, 7);
        assert_eq!(back.key, s.fingerprint);
        // Edited position.
        let edited = String::from_utf8_lossy(body).replace("\"seq\":7", "\"seq\":8");
        assert_eq!(
            check(edited.as_bytes(), Some(&s.public_key())),
            Err(CheckpointError::BadSignature)
        );
        // Signed by another key.
        let other = Signer::generate();
        assert_eq!(
            check(body, Some(&other.public_key())),
            Err(CheckpointError::BadSignature)
        );
    }
}
