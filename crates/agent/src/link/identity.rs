//! Who an agent is to its backup server, and how it became so. An administrator makes
//! a one-time token for a host name on the server (`shadowcopy server enroll HOST`);
//! the token carries the SHA-256 of the server's CA, so the agent trusts the server it
//! enrols with without being given a CA file. The agent makes a key, sends a
//! certificate signing request with the token, and keeps the certificate the server's
//! CA signs for its host name. From then on it calls the server with that certificate
//! (mutual TLS) and trusts only that CA.
//!
//! Kept in the catalog directory, `server/` (0700): the key (0600) and the certificate,
//! `ca.pem` and `link.json` (the server's URL, the host name, which key and certificate
//! are current, and when the certificate was issued and expires). Nothing is written
//! unless the server accepted the enrolment. Two thirds of the way through its
//! certificate's life the agent renews it ([`Identity::renew`]): a new key, signed with
//! the current certificate; `link.json` is replaced whole to point at the new pair.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use shadowcopy_engine::UsageError;

use crate::link::https::ServerClient;
use crate::link::protocol::{EnrollRequest, EnrollResponse, RenewRequest};

/// The directory below the catalog holding the agent's identity.
pub const IDENTITY_DIR: &str = "server";

/// Prefix of enrolment tokens.
pub const ENROLL_PREFIX: &str = "sce1";
/// Prefix of operators' API tokens.
pub const OPERATOR_PREFIX: &str = "sco1";

/// A token as printed: `PREFIX_SECRET_CAPIN` (hex).
#[derive(Clone)]
pub struct Token {
    pub secret: String,
    pub ca_pin: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Token {
    /// Formats a token with `prefix`.
    pub fn format(prefix: &str, secret: &str, ca_pin: &[u8; 32]) -> String {
        format!("{prefix}_{secret}_{}", hex(ca_pin))
    }

    /// Reads a token of the kind `prefix` names (what it is, in `what`, for errors).
    pub fn parse(text: &str, prefix: &str, what: &str) -> anyhow::Result<Token> {
        let text = text.trim();
        let bad = || {
            UsageError::new(format!(
                "the {what} is not one the server printed (it starts `{prefix}_` and has two more parts); copy it again"
            ))
        };
        let mut parts = text.split('_');
        if parts.next() != Some(prefix) {
            return Err(bad().into());
        }
        let (Some(secret), Some(pin), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad().into());
        };
        if secret.len() < 32 || unhex(secret).is_none() {
            return Err(bad().into());
        }
        let pin: [u8; 32] = unhex(pin).and_then(|p| p.try_into().ok()).ok_or_else(bad)?;
        Ok(Token {
            secret: secret.to_string(),
            ca_pin: pin,
        })
    }
}

/// Trusts the server whose chain holds the CA with this SHA-256, and verifies the
/// server's certificate against that CA (name, validity, signature) as usual.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256(c.as_ref()) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA is not the one the token names: this is not the server that made the token"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that trusts the server whose CA has this SHA-256 (enrolment,
/// and operators, whose tokens carry it), without a client certificate.
pub fn pinned_client_config(pin: [u8; 32]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = crate::tls::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { pin, provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An operator's client: the server at `url`, trusted by the CA fingerprint in the token.
pub fn operator_client(url: &str, token: &str) -> anyhow::Result<ServerClient> {
    let parsed = Token::parse(token, OPERATOR_PREFIX, "API token")?;
    ServerClient::new(
        url,
        pinned_client_config(parsed.ca_pin)?,
        Some(token.trim().to_string()),
    )
}

/// Whether `name` can be a host's name: what a certificate can carry as a DNS name.
pub fn check_host_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(UsageError::new(format!(
            "`{name}` cannot be a host name: use letters, digits, `-` and `.` (as in a DNS name)"
        ))
        .into())
    }
}

/// This machine's name (`uname -n`).
pub fn this_host() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// What `link.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LinkFile {
    url: String,
    host: String,
    /// The current key and certificate, in the identity directory.
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_cert")]
    cert: String,
    #[serde(default)]
    issued_ms: i64,
    #[serde(default)]
    not_after_ms: i64,
}

fn default_key() -> String {
    "agent.key".into()
}

fn default_cert() -> String {
    "agent.pem".into()
}

/// An enrolled agent: its server, its host name, and where its key and certificates are.
#[derive(Clone, Debug)]
pub struct Identity {
    pub dir: PathBuf,
    pub url: String,
    pub host: String,
    key: String,
    cert: String,
    /// When the certificate was issued and expires (Unix ms; 0: unknown).
    pub issued_ms: i64,
    pub not_after_ms: i64,
}

impl Identity {
    /// The identity kept below `catalog_dir`, if the agent has enrolled.
    pub fn load(catalog_dir: &Path) -> anyhow::Result<Option<Identity>> {
        let dir = catalog_dir.join(IDENTITY_DIR);
        let link = dir.join("link.json");
        let text = match std::fs::read(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => anyhow::bail!("cannot read {}: {e}", link.display()),
        };
        let file: LinkFile = serde_json::from_slice(&text)
            .map_err(|e| anyhow::anyhow!("{} is damaged ({e}); enrol again", link.display()))?;
        Ok(Some(Identity {
            dir,
            url: file.url,
            host: file.host,
            key: file.key,
            cert: file.cert,
            issued_ms: file.issued_ms,
            not_after_ms: file.not_after_ms,
        }))
    }

    /// Whether the certificate is two thirds of the way through its life (or of an
    /// unknown one: an identity kept before the times were, renewed once to learn them).
    pub fn needs_renewal(&self, now_ms: i64) -> bool {
        if self.issued_ms <= 0 || self.not_after_ms <= self.issued_ms {
            return true;
        }
        now_ms >= self.issued_ms + (self.not_after_ms - self.issued_ms) * 2 / 3
    }

    /// A new key and certificate from the server (called with the current one), kept
    /// beside the current pair, then made current by replacing `link.json` whole; the
    /// old pair is removed after. A crash leaves the old pair current, and still valid.
    pub async fn renew(&self, client: &ServerClient) -> anyhow::Result<Identity> {
        let (key, csr) = key_and_csr(&self.host)?;
        let answer: EnrollResponse = client
            .json(
                "POST",
                "/v1/agent/renew",
                Some(&RenewRequest { csr_pem: csr }),
                Duration::from_secs(30),
            )
            .await?;
        let stem = format!("agent-{}", answer.not_after_ms);
        let (key_file, cert_file) = (format!("{stem}.key"), format!("{stem}.pem"));
        let _ = std::fs::remove_file(self.dir.join(&key_file));
        let _ = std::fs::remove_file(self.dir.join(&cert_file));
        write_new(
            &self.dir.join(&key_file),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_new(
            &self.dir.join(&cert_file),
            answer.certificate_pem.as_bytes(),
            0o644,
        )?;
        let renewed = Identity {
            key: key_file.clone(),
            cert: cert_file.clone(),
            issued_ms: answer.issued_ms,
            not_after_ms: answer.not_after_ms,
            ..self.clone()
        };
        // The new pair is made current only once the server has taken it in a call.
        let proven = async {
            let client = renewed.client()?;
            let _: serde_json::Value = client
                .json(
                    "GET",
                    "/v1/agent/jobs/open",
                    None::<&()>,
                    Duration::from_secs(30),
                )
                .await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = proven {
            let _ = std::fs::remove_file(self.dir.join(&key_file));
            let _ = std::fs::remove_file(self.dir.join(&cert_file));
            return Err(e.context("the renewed certificate does not work; the current one stays"));
        }
        renewed.write_link()?;
        for old in [&self.key, &self.cert] {
            if *old != renewed.key && *old != renewed.cert {
                let _ = std::fs::remove_file(self.dir.join(old));
            }
        }
        Ok(renewed)
    }

    /// Writes `link.json` anew (a new file renamed over the old one, synced).
    fn write_link(&self) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(&LinkFile {
            url: self.url.clone(),
            host: self.host.clone(),
            key: self.key.clone(),
            cert: self.cert.clone(),
            issued_ms: self.issued_ms,
            not_after_ms: self.not_after_ms,
        })?;
        let temporary = self.dir.join(format!(".link.json.{}", std::process::id()));
        let _ = std::fs::remove_file(&temporary);
        write_new(&temporary, &text, 0o644)?;
        std::fs::rename(&temporary, self.dir.join("link.json"))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// A short name of the server (the first bytes of its CA's SHA-256), so that the
    /// agent's jobs for one server's job ids are never taken for another's.
    pub fn server_tag(&self) -> anyhow::Result<String> {
        let ca = CertificateDer::from_pem_file(self.dir.join("ca.pem"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.dir.join("ca.pem").display()))?;
        Ok(hex(&sha256(ca.as_ref())[..4]))
    }

    /// The trigger of the agent's job that runs the server's job `id`.
    pub fn trigger(tag: &str, id: i64) -> String {
        format!("server:{tag}:{id}")
    }

    /// The client the agent calls its server with: its certificate, the server's CA.
    pub fn client(&self) -> anyhow::Result<ServerClient> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(self.dir.join("ca.pem"))? {
            roots.add(ca?)?;
        }
        let chain = CertificateDer::pem_file_iter(self.dir.join(&self.cert))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(self.dir.join(&self.key))?;
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        ServerClient::new(&self.url, Arc::new(config), None)
    }
}

/// Enrols this agent with the server at `url` as `host`, with `token` (from `shadowcopy
/// server enroll HOST`); writes the identity below `catalog_dir` only once the server
/// has signed its certificate. Refused if the agent is enrolled already.
pub fn enroll(catalog_dir: &Path, url: &str, token: &str, host: &str) -> anyhow::Result<Identity> {
    check_host_name(host)?;
    let parsed = Token::parse(token, ENROLL_PREFIX, "enrolment token")?;
    let dir = catalog_dir.join(IDENTITY_DIR);
    if let Some(existing) = Identity::load(catalog_dir)? {
        return Err(UsageError::new(format!(
            "this agent is enrolled already, as `{}` with {}; to enrol again, remove {} first",
            existing.host,
            existing.url,
            dir.display()
        ))
        .into());
    }
    if dir.exists() {
        return Err(UsageError::new(format!(
            "{} exists without link.json (an enrolment that did not finish?); remove it and enrol again",
            dir.display()
        ))
        .into());
    }
    let (key, csr) = key_and_csr(host)?;
    let client = ServerClient::new(url, pinned_client_config(parsed.ca_pin)?, None)?;
    let request = EnrollRequest {
        host: host.to_string(),
        token: parsed.secret.clone(),
        csr_pem: csr,
    };
    let answer: EnrollResponse = client.json_blocking(
        "POST",
        "/v1/enroll",
        Some(&request),
        Duration::from_secs(30),
    )?;
    let ca = CertificateDer::from_pem_slice(answer.ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the server sent a CA that does not parse: {e}"))?;
    if sha256(ca.as_ref()) != parsed.ca_pin {
        anyhow::bail!("the server sent a CA other than the one the token names; nothing was kept");
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| anyhow::anyhow!("cannot make {}: {e}", dir.display()))?;
    let written = (|| -> anyhow::Result<()> {
        write_new(
            &dir.join("agent.key"),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_new(
            &dir.join("agent.pem"),
            answer.certificate_pem.as_bytes(),
            0o644,
        )?;
        write_new(&dir.join("ca.pem"), answer.ca_pem.as_bytes(), 0o644)?;
        let link = serde_json::to_vec_pretty(&LinkFile {
            url: client.url().to_string(),
            host: host.to_string(),
            key: default_key(),
            cert: default_cert(),
            issued_ms: answer.issued_ms,
            not_after_ms: answer.not_after_ms,
        })?;
        // Last: its presence says the enrolment is complete.
        write_new(&dir.join("link.json"), &link, 0o644)?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.context(format!(
            "the identity could not be kept in {}",
            dir.display()
        )));
    }
    Ok(Identity {
        dir,
        url: client.url().to_string(),
        host: host.to_string(),
        key: default_key(),
        cert: default_cert(),
        issued_ms: answer.issued_ms,
        not_after_ms: answer.not_after_ms,
    })
}

/// A new key, and a certificate signing request for `host` made with it.
fn key_and_csr(host: &str) -> anyhow::Result<(rcgen::KeyPair, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

/// Creates `path` (it must not exist, and is never a symlink followed), writes `bytes`
/// and syncs it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}
