//! The server's certificate authority, made at the first start in the state directory
//! (`ca/ca.key` 0600, `ca/ca.pem`; the directories 0700): it signs each enrolled agent's
//! certificate (bound to its host name, for client authentication only) and, at every
//! start, the server's own certificate for the names it is reached by. The SHA-256 of
//! the CA certificate is what tokens carry so that agents and operators trust it.

use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shadowcopy_agent::link::identity::{sha256, write_new};
use shadowcopy_engine::UsageError;
use time::{Duration, OffsetDateTime};

/// The CA's directory in the state directory: `ca.key` (0600) and `ca.pem`.
pub const CA_DIR: &str = "ca";

/// How long an agent's certificate is valid (its agent renews it two thirds of the way).
pub const AGENT_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(397 * 24 * 3600);

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
}

/// An agent's certificate as signed.
pub struct Signed {
    pub pem: String,
    pub issued: OffsetDateTime,
    pub fingerprint: [u8; 32],
    pub serial: String,
    pub not_after: OffsetDateTime,
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// Makes the state directory (0700) if it is missing; refuses one others can enter.
pub fn state_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => anyhow::bail!("cannot make the state directory {}: {e}", dir.display()),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(UsageError::new(format!("{} is not a directory", dir.display())).into());
    }
    let me = rustix::process::geteuid().as_raw();
    if std::os::unix::fs::MetadataExt::uid(&meta) != me {
        return Err(UsageError::new(format!(
            "the state directory {} belongs to another user (uid {}, not {me}); it holds the CA's key: give one of your own",
            dir.display(),
            std::os::unix::fs::MetadataExt::uid(&meta)
        ))
        .into());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(UsageError::new(format!(
            "the state directory {} is open to other users (mode {:o}); it holds the CA's key: chmod 700 it",
            dir.display(),
            meta.permissions().mode() & 0o777
        ))
        .into());
    }
    Ok(dir.to_path_buf())
}

fn read_private(path: &Path) -> anyhow::Result<String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    Ok(std::io::read_to_string(f)?)
}

impl Authority {
    /// The CA of the state directory `dir` (in `dir/ca`), if it has one.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Authority>> {
        let ca = dir.join(CA_DIR);
        if !ca.exists() {
            return Ok(None);
        }
        let key_path = ca.join("ca.key");
        let cert_path = ca.join("ca.pem");
        let key = KeyPair::from_pem(&read_private(&key_path)?)
            .map_err(|e| anyhow::anyhow!("{} does not parse: {e}", key_path.display()))?;
        let pem = read_private(&cert_path)?;
        let issuer = Issuer::from_ca_cert_pem(&pem, key)
            .map_err(|e| anyhow::anyhow!("{} does not parse: {e}", cert_path.display()))?;
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("{} does not parse: {e}", cert_path.display()))?;
        Ok(Some(Authority {
            issuer,
            ca_der: der,
            ca_pem: pem,
        }))
    }

    /// The CA of `dir`, made if it has none (the server's first start). The key and
    /// the certificate are written into a new directory that is then renamed into
    /// place: a crash leaves both or neither.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Authority> {
        if let Some(ca) = Authority::load(dir)? {
            return Ok(ca);
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "shadowcopy server CA");
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let new = dir.join(format!(".{CA_DIR}.new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&new);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&new)
            .map_err(|e| anyhow::anyhow!("cannot make {}: {e}", new.display()))?;
        write_new(&new.join("ca.key"), key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&new.join("ca.pem"), cert.pem().as_bytes(), 0o644)?;
        std::fs::File::open(&new)?.sync_all()?;
        std::fs::rename(&new, dir.join(CA_DIR)).map_err(|e| {
            anyhow::anyhow!("cannot put the new CA in place in {}: {e}", dir.display())
        })?;
        std::fs::File::open(dir)?.sync_all()?;
        tracing::info!(ca = %dir.join(CA_DIR).join("ca.pem").display(), "made the server's CA");
        Ok(Authority {
            ca_der: cert.der().clone(),
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The SHA-256 of the CA certificate: what tokens carry.
    pub fn pin(&self) -> [u8; 32] {
        sha256(self.ca_der.as_ref())
    }

    /// Signs a certificate for `host` with the key of `csr_pem` (whose signature proves
    /// the agent holds it). Only the key is taken from the request: the name, the
    /// lifetime and the use (client authentication) are the server's.
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        host: &str,
        lifetime: std::time::Duration,
    ) -> anyhow::Result<Signed> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            UsageError::new(format!("the certificate signing request is not valid: {e}"))
        })?;
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(|e| {
            UsageError::new(format!("`{host}` cannot be a certificate's name: {e}"))
        })?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now
            .checked_add(Duration::try_from(lifetime)?)
            .ok_or_else(|| anyhow::anyhow!("the certificate lifetime is too long"))?;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(Signed {
            issued: now,
            pem: cert.pem(),
            fingerprint: sha256(cert.der().as_ref()),
            serial: shadowcopy_agent::link::identity::hex(&serial.to_bytes()),
            not_after: params.not_after,
        })
    }

    /// The server's TLS settings: a certificate made now for `names` (host names or
    /// addresses), sent with the CA; client certificates checked against the CA when
    /// given (agents), not required (enrolment, operators with tokens).
    pub fn server_config(&self, names: &[String]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().map_err(|e| {
                    UsageError::new(format!("`{name}` cannot be the server's name: {e}"))
                })?),
            });
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "shadowcopy server");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(825);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        let provider = shadowcopy_agent::tls::provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![cert.der().clone(), self.ca_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        Ok(Arc::new(config))
    }
}
