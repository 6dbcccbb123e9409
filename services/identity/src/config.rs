//! The `[auth]` section both services share.

use std::path::PathBuf;

use serde::Deserialize;

/// How callers are authenticated. At least one of `tls.client_ca` and `jwt` must be set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// SPIFFE trust domain expected in client certificates, for example `crier.gov.uk`.
    pub trust_domain: String,
    /// TLS for the gRPC listener; with `client_ca`, callers may present certificates.
    pub tls: Option<TlsConfig>,
    /// Bearer tokens.
    pub jwt: Option<JwtConfig>,
}

/// `[auth.tls]`: the server's certificate, and the CA whose client certificates it accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of this service.
    pub cert: PathBuf,
    /// PEM private key of this service.
    pub key: PathBuf,
    /// PEM CA certificate(s) that issue client certificates. Unset: no mTLS.
    pub client_ca: Option<PathBuf>,
}

/// `[auth.jwt]`: which tokens are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// PEM public key of the issuer (EC P-256 for ES256, or RSA for RS256).
    pub public_key: PathBuf,
    /// `ES256` (default) or `RS256`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
}

fn default_algorithm() -> String {
    "ES256".into()
}
