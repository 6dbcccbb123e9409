//! A development PKI: a CA, a server certificate for localhost and client certificates for
//! named identities, plus a token-signing key. For demos and tests only: keys are written
//! unencrypted.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A CA that can issue server and client certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    trust_domain: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl DevCa {
    /// A new CA for `trust_domain`.
    pub fn new(trust_domain: &str) -> Result<Self, String> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("Crier development CA ({trust_domain})"),
        );
        params.distinguished_name = dn;
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Result<Issued, String> {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(err)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, names.first().copied().unwrap_or("server"))
    }

    /// A client certificate for `identity` (`<organisation>/<system>`), carrying the SPIFFE
    /// ID `spiffe://<trust-domain>/<identity>`.
    pub fn client(&self, identity: &str) -> Result<Issued, String> {
        let mut params = CertificateParams::default();
        let uri = format!("spiffe://{}/{identity}", self.trust_domain);
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(err)?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, identity)
    }

    fn sign(&self, mut params: CertificateParams, common_name: &str) -> Result<Issued, String> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A token-signing key pair (ES256): private PKCS#8 PEM and public SPKI PEM.
pub fn token_keys() -> Result<(String, String), String> {
    let key = KeyPair::generate().map_err(err)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// A signed ES256 token for `sub`, valid for `ttl`.
pub fn token(
    private_pem: &str,
    issuer: &str,
    audience: &str,
    sub: &str,
    ttl: Duration,
) -> Result<String, String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        aud: &'a str,
        sub: &'a str,
        exp: u64,
        iat: u64,
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(err)?
        .as_secs();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(err)?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &Claims {
            iss: issuer,
            aud: audience,
            sub,
            exp: now + ttl.as_secs(),
            iat: now,
        },
        &key,
    )
    .map_err(err)
}

/// File name stem for an identity's certificate: `/` becomes `__`.
pub fn file_stem(identity: &str) -> String {
    identity.replace('/', "__")
}

/// Writes a complete development PKI into `dir`: `ca.pem`, `server.pem`/`server.key`
/// (localhost, 127.0.0.1), `<identity>.pem`/`.key` per identity, and
/// `token-signing.key`/`token-signing.pub.pem`. Returns the files written.
pub fn write_pki(
    dir: &Path,
    trust_domain: &str,
    identities: &[String],
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = DevCa::new(trust_domain)?;
    let mut files = Vec::new();
    let mut put = |name: &str, contents: &str| -> Result<(), String> {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push(path);
        Ok(())
    };
    put("ca.pem", ca.cert_pem())?;
    let server = ca.server(&["localhost", "127.0.0.1"])?;
    put("server.pem", &server.cert_pem)?;
    put("server.key", &server.key_pem)?;
    for identity in identities {
        let issued = ca.client(identity)?;
        let stem = file_stem(identity);
        put(&format!("{stem}.pem"), &issued.cert_pem)?;
        put(&format!("{stem}.key"), &issued.key_pem)?;
    }
    let (private, public) = token_keys()?;
    put("token-signing.key", &private)?;
    put("token-signing.pub.pem", &public)?;
    Ok(files)
}
