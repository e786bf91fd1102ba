//! `gatehouse certs dev`: a development CA and a server certificate signed by it.
//!
//! For trying the gateway and for tests only: clients trust `ca.crt`, the gateway serves
//! `server.crt`/`server.key`. Private keys are written with mode 0600, and nothing is
//! overwritten unless asked.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{} already exists (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no host names given")]
    NoHosts,
}

/// PEM texts of a development CA and a server certificate.
pub struct DevCerts {
    pub ca_cert: String,
    pub ca_key: String,
    pub server_cert: String,
    pub server_key: String,
}

/// Host names every dev certificate carries, so local tools work without extra flags.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Generates a CA valid for one year and a server certificate for `hosts` (DNS names or IP
/// addresses) valid for 90 days.
pub fn generate(hosts: &[String]) -> Result<DevCerts, CertsError> {
    if hosts.is_empty() {
        return Err(CertsError::NoHosts);
    }
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "gatehouse development CA");
    dn.push(DnType::OrganizationName, "gatehouse (development only)");
    ca.distinguished_name = dn;
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(365);
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(hosts.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hosts[0].as_str());
    server.distinguished_name = dn;
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    server.not_before = now - Duration::hours(1);
    server.not_after = now + Duration::days(90);
    let issuer = Issuer::new(ca, ca_key);
    let server_cert = server.signed_by(&server_key, &issuer)?;

    Ok(DevCerts {
        ca_cert: ca_cert.pem(),
        ca_key: issuer_key_pem(&issuer),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
    })
}

fn issuer_key_pem(issuer: &Issuer<'_, KeyPair>) -> String {
    issuer.key().serialize_pem()
}

/// Writes `ca.crt`, `ca.key`, `server.crt` and `server.key` into `dir`.
pub fn write(dir: &Path, certs: &DevCerts, force: bool) -> Result<Vec<PathBuf>, CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = [
        ("ca.crt", &certs.ca_cert, 0o644),
        ("ca.key", &certs.ca_key, 0o600),
        ("server.crt", &certs.server_cert, 0o644),
        ("server.key", &certs.server_key, 0o600),
    ];
    if !force {
        for (name, _, _) in &files {
            let path = dir.join(name);
            if path.exists() {
                return Err(CertsError::Exists(path));
            }
        }
    }
    let mut written = Vec::new();
    for (name, text, mode) in files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let result = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        result.map_err(|source| CertsError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tls::load_certified_key;

    #[test]
    fn generated_server_certificate_loads_and_matches_its_key() {
        let dir = std::env::temp_dir().join(format!("gatehouse-certs-{}", std::process::id()));
        let certs = generate(&["git.example.test".into(), "127.0.0.1".into()]).unwrap();
        let files = write(&dir, &certs, true).unwrap();
        assert_eq!(files.len(), 4);
        load_certified_key(&dir.join("server.crt"), &dir.join("server.key")).unwrap();
        // A mismatched key is refused.
        let err = load_certified_key(&dir.join("server.crt"), &dir.join("ca.key")).unwrap_err();
        assert!(err.to_string().contains("cannot be used"), "{err}");
        // Nothing is overwritten without force.
        assert!(matches!(
            write(&dir, &certs, false),
            Err(CertsError::Exists(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
