//! Authenticated encryption for everything the gateway hands to browsers (session, login
//! state, sealed Gogs cookies): AES-256-GCM with a random nonce per message.
//!
//! Keys come as a list, newest first: the newest seals, every key opens, so keys rotate
//! without logging anyone out. Each sealed value names its key by a 4-byte fingerprint. The
//! associated data binds a value to its purpose and host, so a session cookie from one host
//! cannot be replayed on another, nor a Gogs cookie passed off as a session.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

const KEY_ID_LEN: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyRingError {
    #[error("line {0}: not base64")]
    NotBase64(usize),
    #[error("line {line}: a key must be 32 bytes, this one has {len}")]
    WrongLength { line: usize, len: usize },
    #[error("no keys (one base64-encoded 32-byte key per line, newest first)")]
    Empty,
}

struct Key {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
    /// A separate MAC key derived from the same secret, for CSRF tokens.
    mac: aws_lc_rs::hmac::Key,
}

/// The session keys.
pub struct KeyRing {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({} keys)", self.keys.len())
    }
}

impl KeyRing {
    /// Parses one base64 key per line (standard or URL-safe alphabet); `#` starts a comment.
    /// Errors name the line, never the key.
    pub fn parse(text: &str) -> Result<KeyRing, KeyRingError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bytes = STANDARD
                .decode(line)
                .or_else(|_| URL_SAFE_NO_PAD.decode(line.trim_end_matches('=')))
                .map_err(|_| KeyRingError::NotBase64(i + 1))?;
            if bytes.len() != 32 {
                return Err(KeyRingError::WrongLength {
                    line: i + 1,
                    len: bytes.len(),
                });
            }
            let fingerprint = digest::digest(&digest::SHA256, &bytes);
            let mut id = [0u8; KEY_ID_LEN];
            id.copy_from_slice(&fingerprint.as_ref()[..KEY_ID_LEN]);
            let unbound =
                UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyRingError::WrongLength {
                    line: i + 1,
                    len: bytes.len(),
                })?;
            let mut mac_material = b"gatehouse mac key\0".to_vec();
            mac_material.extend_from_slice(&bytes);
            let mac_key = digest::digest(&digest::SHA256, &mac_material);
            keys.push(Key {
                id,
                key: LessSafeKey::new(unbound),
                mac: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, mac_key.as_ref()),
            });
        }
        if keys.is_empty() {
            return Err(KeyRingError::Empty);
        }
        Ok(KeyRing { keys })
    }

    /// Encrypts `plaintext` for `context` with the newest key; URL-safe base64 output.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> String {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        if aws_lc_rs::rand::fill(&mut nonce).is_err() {
            // The system RNG failing is fatal for confidentiality; refuse to produce output
            // that could reuse a nonce. An empty value never opens.
            return String::new();
        }
        let mut out = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        if key
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .is_err()
        {
            return String::new();
        }
        out.extend_from_slice(&body);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Decrypts a value sealed for `context` by any key of the ring; `None` for anything
    /// tampered with, truncated, for another context, or under an unknown key.
    pub fn open(&self, context: &[u8], sealed: &str) -> Option<Vec<u8>> {
        let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() < KEY_ID_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (id, rest) = raw.split_at(KEY_ID_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        for key in self.keys.iter().filter(|k| k.id == id) {
            let mut buf = ciphertext.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            if let Ok(plain) = key.key.open_in_place(nonce, Aad::from(context), &mut buf) {
                let len = plain.len();
                buf.truncate(len);
                return Some(buf);
            }
        }
        None
    }

    /// A deterministic MAC of `message` for `context` under the newest key (CSRF tokens).
    pub fn tag(&self, context: &[u8], message: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(mac(&self.keys[0].mac, context, message).as_ref())
    }

    /// Checks a [`KeyRing::tag`] against every key, in constant time.
    pub fn verify_tag(&self, context: &[u8], message: &[u8], tag: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        let mut material = Vec::with_capacity(context.len() + message.len() + 1);
        material.extend_from_slice(context);
        material.push(0);
        material.extend_from_slice(message);
        self.keys
            .iter()
            .any(|k| aws_lc_rs::hmac::verify(&k.mac, &material, &tag).is_ok())
    }
}

fn mac(key: &aws_lc_rs::hmac::Key, context: &[u8], message: &[u8]) -> aws_lc_rs::hmac::Tag {
    let mut material = Vec::with_capacity(context.len() + message.len() + 1);
    material.extend_from_slice(context);
    material.push(0);
    material.extend_from_slice(message);
    aws_lc_rs::hmac::sign(key, &material)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn sealed_values_open_only_in_their_context() {
        let ring = KeyRing::parse(K1).unwrap();
        let sealed = ring.seal(b"session|git.example.com", b"hello");
        assert_eq!(
            ring.open(b"session|git.example.com", &sealed).unwrap(),
            b"hello"
        );
        assert!(ring.open(b"session|evil.example.com", &sealed).is_none());
        assert!(ring.open(b"gogs-cookie|git.example.com", &sealed).is_none());
        // Fresh nonce every time.
        assert_ne!(sealed, ring.seal(b"session|git.example.com", b"hello"));
    }

    #[test]
    fn any_flipped_byte_is_rejected() {
        let ring = KeyRing::parse(K1).unwrap();
        let sealed = ring.seal(b"c", b"some session payload");
        let raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            assert!(
                ring.open(b"c", &URL_SAFE_NO_PAD.encode(&bad)).is_none(),
                "byte {i}"
            );
        }
        assert!(ring.open(b"c", &sealed[..sealed.len() - 2]).is_none());
        assert!(ring.open(b"c", "").is_none());
        assert!(ring.open(b"c", "!!!").is_none());
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_seals_with_the_newest() {
        let old = KeyRing::parse(K1).unwrap();
        let sealed_old = old.seal(b"c", b"v");
        let rotated = KeyRing::parse(&format!("# newest first\n{K2}\n\n{K1}\n")).unwrap();
        assert_eq!(rotated.open(b"c", &sealed_old).unwrap(), b"v");
        let sealed_new = rotated.seal(b"c", b"w");
        assert!(
            old.open(b"c", &sealed_new).is_none(),
            "the newest key must seal"
        );
        let only_new = KeyRing::parse(K2).unwrap();
        assert!(
            only_new.open(b"c", &sealed_old).is_none(),
            "a dropped key no longer opens"
        );
    }

    #[test]
    fn tags_verify_only_with_the_same_secret_and_message() {
        let ring = KeyRing::parse(K1).unwrap();
        let t = ring.tag(b"csrf", b"sid-1");
        assert!(ring.verify_tag(b"csrf", b"sid-1", &t));
        assert!(!ring.verify_tag(b"csrf", b"sid-2", &t));
        assert!(!ring.verify_tag(b"other", b"sid-1", &t));
        assert!(
            !KeyRing::parse(K2)
                .unwrap()
                .verify_tag(b"csrf", b"sid-1", &t)
        );
        assert!(!ring.verify_tag(b"csrf", b"sid-1", "garbage"));
    }

    #[test]
    fn bad_key_files_name_the_line_not_the_key() {
        assert_eq!(KeyRing::parse("").unwrap_err(), KeyRingError::Empty);
        assert_eq!(
            KeyRing::parse("# only a comment\n").unwrap_err(),
            KeyRingError::Empty
        );
        assert_eq!(
            KeyRing::parse(&format!("{K1}\nnot base64 at all!\n")).unwrap_err(),
            KeyRingError::NotBase64(2)
        );
        assert_eq!(
            KeyRing::parse("c2hvcnQ=").unwrap_err(),
            KeyRingError::WrongLength { line: 1, len: 5 }
        );
    }
}
