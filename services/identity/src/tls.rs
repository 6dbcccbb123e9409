//! TLS settings for servers and clients, from PEM files.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

use crate::config::TlsConfig;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The server side: this service's certificate, and (with `client_ca`) client certificates
/// requested and verified. They stay optional when bearer tokens are also accepted.
pub fn server_config(tls: &TlsConfig, tokens_accepted: bool) -> Result<ServerTlsConfig, String> {
    let identity = TlsIdentity::from_pem(read(&tls.cert)?, read(&tls.key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(tokens_accepted);
    }
    Ok(config)
}

/// The client side: trust `ca`, present `cert`/`key`.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    domain: &str,
) -> Result<ClientTlsConfig, String> {
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .identity(TlsIdentity::from_pem(read(cert)?, read(key)?))
        .domain_name(domain))
}

/// The gRPC server's TLS settings from `[auth]`, if it terminates TLS itself.
pub fn server_from(auth: &crate::AuthConfig) -> Result<Option<ServerTlsConfig>, String> {
    auth.tls
        .as_ref()
        .map(|tls| server_config(tls, auth.jwt.is_some()))
        .transpose()
}
