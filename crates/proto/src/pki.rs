//! The cluster's private PKI: one self-signed CA per cluster and one certificate per member,
//! generated with rcgen (ECDSA P-256 keys) and stored as PEM files in one directory:
//!
//! - `ca.pem`, `ca-key.pem`: the cluster CA (the key only needs to exist where certificates
//!   are issued; members need `ca.pem` only),
//! - `<member>.pem`, `<member>-key.pem`: a member's certificate and key.
//!
//! Key files are written with mode 0600 and replaced atomically (temporary file + rename),
//! so a crash never leaves half a key behind.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use uphold_core::NodeName;

use crate::error::ProtoError;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Member certificates are valid for 10 years: the cluster is private, rotation is a
/// manual operation, and an expired certificate takes the whole cluster down.
pub const MEMBER_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// The CA outlives every certificate it can issue during its first 10 years.
pub const CA_CERT_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 60 * 60);
/// Certificates start being valid one day in the past so that members whose clocks lag
/// the issuing machine accept them immediately.
const BACKDATE: Duration = DAY;

pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca-key.pem")
}

pub fn member_cert_path(dir: &Path, member: &NodeName) -> PathBuf {
    dir.join(format!("{member}.pem"))
}

pub fn member_key_path(dir: &Path, member: &NodeName) -> PathBuf {
    dir.join(format!("{member}-key.pem"))
}

/// Creates the cluster CA in `dir` (created with mode 0700 if missing). Refuses to replace
/// an existing `ca.pem` or `ca-key.pem` unless `force` is set, because a new CA silently
/// invalidates every member certificate already deployed. The CA is valid for 20 years.
pub fn init_ca(dir: &Path, cluster: &str, force: bool) -> Result<(), ProtoError> {
    let cert_path = ca_cert_path(dir);
    let key_path = ca_key_path(dir);
    if !force {
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(ProtoError::CaExists { path: path.clone() });
            }
        }
    }
    create_dir(dir)?;
    let key = KeyPair::generate().map_err(|e| gen_err("the CA key", e))?;
    let cert = ca_params(cluster, &key)?
        .self_signed(&key)
        .map_err(|e| gen_err("the CA certificate", e))?;
    // Key first: a crash between the two writes leaves a key without a matching cert,
    // which `issue_member_cert` detects, instead of a cert whose key is lost.
    write_atomic(&key_path, key.serialize_pem().as_bytes())?;
    write_atomic(&cert_path, cert.pem().as_bytes())?;
    Ok(())
}

/// Issues `<member>.pem` and `<member>-key.pem` in `dir`, signed by the CA in `dir`.
/// The certificate carries the SAN DNS name `<member>`, serves both as TLS server and
/// client certificate, and is valid for 10 years ([`MEMBER_CERT_VALIDITY`]).
/// An existing certificate for the member is replaced (re-issuing is how keys rotate).
pub fn issue_member_cert(dir: &Path, cluster: &str, member: &NodeName) -> Result<(), ProtoError> {
    // Peers dial members by this name, so it must be usable as a TLS server name;
    // `NodeName` accepts names such as "123" that DNS rules reject.
    match ServerName::try_from(member.as_str()) {
        Ok(ServerName::DnsName(_)) => {}
        _ => {
            return Err(ProtoError::CertGen {
                what: format!("a certificate for member {member}"),
                reason: "the name is not a valid DNS name (all-numeric or hex-like names \
                         cannot be used in certificates)"
                    .to_string(),
            })
        }
    }
    let (ca_cert, ca_key) = load_ca(dir, cluster)?;

    let key = KeyPair::generate().map_err(|e| gen_err("a member key", e))?;
    let mut params = CertificateParams::new(vec![member.to_string()])
        .map_err(|e| gen_err(&format!("a certificate for member {member}"), e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, member.as_str());
    dn.push(
        DnType::OrganizationName,
        format!("uphold cluster {cluster}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, MEMBER_CERT_VALIDITY);
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(|e| gen_err(&format!("a certificate for member {member}"), e))?;

    write_atomic(
        &member_key_path(dir, member),
        key.serialize_pem().as_bytes(),
    )?;
    write_atomic(&member_cert_path(dir, member), cert.pem().as_bytes())?;
    Ok(())
}

/// The CA's name includes a fingerprint of its key: two clusters (or a re-created CA) with
/// the same cluster name then have different names, so a certificate from the wrong CA is
/// reported as "unknown issuer" instead of a confusing signature failure. Derived from the
/// key rather than random so that `load_ca` can rebuild the same name.
fn ca_params(cluster: &str, key: &KeyPair) -> Result<CertificateParams, ProtoError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| gen_err("the CA", e))?;
    // Raw P-256 public key: 0x04, then the X coordinate, whose bytes are uniformly random.
    let fingerprint: String = key
        .public_key_raw()
        .iter()
        .skip(1)
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("uphold cluster CA {cluster} {fingerprint}"),
    );
    dn.push(DnType::OrganizationName, "uphold");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_CERT_VALIDITY);
    Ok(params)
}

/// rcgen 0.13 cannot read a CA certificate back without the x509-parser feature, but
/// signing only needs the issuer's name and key: rebuild the CA from the cluster name and
/// the stored key, then check that the result really is the CA on disk (same subject,
/// same public key) so a wrong cluster name or a mismatched key file is an error rather
/// than certificates that no member accepts.
fn load_ca(dir: &Path, cluster: &str) -> Result<(Certificate, KeyPair), ProtoError> {
    let cert_path = ca_cert_path(dir);
    let key_path = ca_key_path(dir);
    let key_pem = read_to_string(&key_path)?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| ProtoError::bad_file(&key_path, format!("not a usable private key: {e}")))?;
    let on_disk = read_certs(&cert_path)?
        .into_iter()
        .next()
        .ok_or_else(|| ProtoError::bad_file(&cert_path, "contains no certificate"))?;
    let on_disk_parsed = webpki::EndEntityCert::try_from(&on_disk)
        .map_err(|e| ProtoError::bad_file(&cert_path, format!("not a valid certificate: {e}")))?;

    let rebuilt = ca_params(cluster, &key)?
        .self_signed(&key)
        .map_err(|e| gen_err("the CA certificate", e))?;
    let rebuilt_parsed = webpki::EndEntityCert::try_from(rebuilt.der())
        .map_err(|e| gen_err("the CA certificate", e))?;
    if rebuilt_parsed.subject_public_key_info() != on_disk_parsed.subject_public_key_info() {
        return Err(ProtoError::bad_file(
            &key_path,
            format!(
                "does not belong to the certificate in {}",
                cert_path.display()
            ),
        ));
    }
    if rebuilt_parsed.subject() != on_disk_parsed.subject() {
        return Err(ProtoError::bad_file(
            &cert_path,
            format!("is not the CA of cluster {cluster:?} (was the CA created for another cluster name?)"),
        ));
    }
    Ok((rebuilt, key))
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

fn gen_err(what: &str, e: impl std::fmt::Display) -> ProtoError {
    ProtoError::CertGen {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

fn create_dir(dir: &Path) -> Result<(), ProtoError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ProtoError::io("create directory", dir, e))
}

/// Gives `to` a member's bundle from the CA directory `from`: the CA certificate,
/// the member's certificate and key, never the CA key (members sign nothing).
pub fn copy_member_bundle(from: &Path, to: &Path, member: &NodeName) -> Result<(), ProtoError> {
    create_dir(to)?;
    for (src, dst) in [
        (ca_cert_path(from), ca_cert_path(to)),
        (member_cert_path(from, member), member_cert_path(to, member)),
        (member_key_path(from, member), member_key_path(to, member)),
    ] {
        let data = fs::read(&src).map_err(|e| ProtoError::io("read", &src, e))?;
        write_atomic(&dst, &data)?;
    }
    Ok(())
}

/// Writes `data` to a fresh 0600 temporary file next to `path`, syncs it and renames it over
/// `path`. Every file we write holds or accompanies secret material, so all get 0600.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ProtoError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // An unpredictable name, created exclusively and never through a symlink: a
    // file or link planted in the directory can neither receive the key nor
    // redirect it.
    let tmp = path.with_file_name(format!(".{file_name}.tmp{:016x}", rand::random::<u64>()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| ProtoError::io("create", &tmp, e))?;
    let result = (|| {
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .map_err(|e| ProtoError::io("write", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| ProtoError::io("rename into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, ProtoError> {
    fs::read_to_string(path).map_err(|e| ProtoError::io("read", path, e))
}

/// All certificates in a PEM file, in order. An empty result is left to the caller to judge.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ProtoError> {
    let pem = read_to_string(path)?;
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProtoError::bad_file(path, format!("not valid PEM: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn name(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn ca_and_member_files_are_private_and_ca_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "prod", false).unwrap();
        issue_member_cert(dir.path(), "prod", &name("alpha")).unwrap();
        for file in ["ca.pem", "ca-key.pem", "alpha.pem", "alpha-key.pem"] {
            let mode = fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let before = fs::read(dir.path().join("ca-key.pem")).unwrap();
        let err = init_ca(dir.path(), "prod", false).unwrap_err();
        assert!(matches!(err, ProtoError::CaExists { .. }), "{err}");
        assert_eq!(fs::read(dir.path().join("ca-key.pem")).unwrap(), before);
        init_ca(dir.path(), "prod", true).unwrap();
        assert_ne!(fs::read(dir.path().join("ca-key.pem")).unwrap(), before);
    }

    #[test]
    fn a_symlink_planted_for_a_key_never_receives_it() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let bait = elsewhere.path().join("stolen");
        init_ca(dir.path(), "prod", false).unwrap();
        std::os::unix::fs::symlink(&bait, dir.path().join("alpha-key.pem")).unwrap();
        // Where a temporary file named after the process id would have gone.
        let predictable = format!(".alpha-key.pem.tmp{}", std::process::id());
        std::os::unix::fs::symlink(&bait, dir.path().join(&predictable)).unwrap();
        issue_member_cert(dir.path(), "prod", &name("alpha")).unwrap();
        assert!(!bait.exists(), "the key was written through the symlink");
        let key = dir.path().join("alpha-key.pem");
        assert!(fs::symlink_metadata(&key).unwrap().is_file());
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().contains(".tmp")
                    && e.file_name() != predictable.as_str()
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn issuing_with_the_wrong_cluster_name_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "prod", false).unwrap();
        let err = issue_member_cert(dir.path(), "staging", &name("alpha")).unwrap_err();
        assert!(err.to_string().contains("staging"), "{err}");
        assert!(!dir.path().join("alpha.pem").exists());
    }

    #[test]
    fn issuing_without_a_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue_member_cert(dir.path(), "prod", &name("alpha")).unwrap_err();
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
    }

    #[test]
    fn numeric_member_names_are_rejected_with_a_reason() {
        // Names are checked where they are made, so no certificate is ever
        // requested for one that is not a DNS name.
        let err = NodeName::new("123").unwrap_err();
        assert!(err.to_string().contains("letter"), "{err}");
    }

    #[test]
    fn member_cert_names_the_member_and_chains_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "prod", false).unwrap();
        issue_member_cert(dir.path(), "prod", &name("beta-2")).unwrap();
        let cert = read_certs(&dir.path().join("beta-2.pem"))
            .unwrap()
            .remove(0);
        let parsed = webpki::EndEntityCert::try_from(&cert).unwrap();
        assert_eq!(parsed.valid_dns_names().collect::<Vec<_>>(), ["beta-2"]);
        let ca = read_certs(&dir.path().join("ca.pem")).unwrap().remove(0);
        let ca_parsed = webpki::EndEntityCert::try_from(&ca).unwrap();
        assert_eq!(parsed.issuer(), ca_parsed.subject());
    }
}
