//! HTTPS for the sandbox: gcapi refuses plain HTTP, so the sandbox makes a throw-away CA and a leaf
//! certificate for 127.0.0.1 / localhost. rustls refuses a self-signed certificate used as its own CA, so
//! the leaf is a separate `CA:FALSE`, `serverAuth` certificate signed by the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The server side of TLS plus the CA file clients should trust.
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub ca_path: PathBuf,
}

pub fn setup(dir: &Path) -> anyhow::Result<Tls> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let now = OffsetDateTime::now_utc();

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "gc-hotfolder sandbox CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - Duration::days(1);
    ca.not_after = now + Duration::days(365);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::V6(
            std::net::Ipv6Addr::LOCALHOST,
        )));
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - Duration::days(1);
    leaf.not_after = now + Duration::days(365);
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    let ca_path = dir.join("ca.pem");
    // Written beside and renamed, so that a client reading the path sees a whole certificate. No fsync:
    // the certificate is made afresh at every start and is worth nothing after a crash.
    let tmp = dir.join(".ca.pem.tmp");
    std::fs::write(&tmp, ca_cert.pem().as_bytes())
        .and_then(|()| std::fs::rename(&tmp, &ca_path))
        .with_context(|| format!("cannot write {}", ca_path.display()))?;

    let chain = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_path,
    })
}
