//! How the CLI proves who it is: a client certificate (`--ca/--cert/--key`, or `--pki DIR
//! --as IDENTITY` for certificates made by `crier dev-certs`) or a bearer token (`--token`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tonic::{Request, metadata::MetadataValue, transport::Channel};

/// Credentials and trust, shared by every command that calls a service.
#[derive(Debug, Clone, Args)]
pub(crate) struct Credentials {
    /// CA certificate (PEM) that signed the service's certificate.
    #[arg(long, env = "CRIER_CA", global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) whose URI SAN is spiffe://<domain>/<organisation>/<system>.
    #[arg(long, env = "CRIER_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, env = "CRIER_KEY", global = true)]
    key: Option<PathBuf>,
    /// A directory made by `crier dev-certs`; with --as, sets --ca, --cert and --key.
    #[arg(long, env = "CRIER_PKI", global = true)]
    pki: Option<PathBuf>,
    /// The identity to act as from --pki, for example uk.gov.gro/death-registration.
    #[arg(long = "as", env = "CRIER_AS", global = true)]
    as_identity: Option<String>,
    /// A bearer token (JWT) instead of, or as well as, a client certificate.
    #[arg(long, env = "CRIER_TOKEN", global = true)]
    token: Option<String>,
}

impl Credentials {
    /// The same trust, acting as `identity` from the PKI directory.
    pub(crate) fn acting_as(&self, identity: &str) -> Self {
        Self {
            as_identity: Some(identity.to_owned()),
            ..self.clone()
        }
    }

    fn files(&self) -> (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>) {
        match (&self.pki, &self.as_identity) {
            (Some(dir), Some(id)) => {
                let stem = crier_identity::dev::file_stem(id);
                (
                    self.ca.clone().or_else(|| Some(dir.join("ca.pem"))),
                    self.cert
                        .clone()
                        .or_else(|| Some(dir.join(format!("{stem}.pem")))),
                    self.key
                        .clone()
                        .or_else(|| Some(dir.join(format!("{stem}.key")))),
                )
            }
            (Some(dir), None) => (
                self.ca.clone().or_else(|| Some(dir.join("ca.pem"))),
                self.cert.clone(),
                self.key.clone(),
            ),
            _ => (self.ca.clone(), self.cert.clone(), self.key.clone()),
        }
    }

    /// A channel to `url`, over TLS when a CA is given.
    pub(crate) async fn channel(&self, url: &str) -> anyhow::Result<Channel> {
        let mut endpoint = Channel::from_shared(url.to_owned()).context("bad URL")?;
        let (ca, cert, key) = self.files();
        if let Some(ca) = ca {
            let host = url
                .split("://")
                .nth(1)
                .and_then(|rest| rest.split([':', '/']).next())
                .unwrap_or("localhost");
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(
                    std::fs::read(&ca).with_context(|| format!("{}", ca.display()))?,
                ))
                .domain_name(host);
            if let (Some(cert), Some(key)) = (cert, key) {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    std::fs::read(&cert).with_context(|| format!("{}", cert.display()))?,
                    std::fs::read(&key).with_context(|| format!("{}", key.display()))?,
                ));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach {url}"))
    }

    /// Wraps a request, adding the bearer token if there is one.
    pub(crate) fn request<T>(&self, message: T) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            let value: MetadataValue<_> = format!("Bearer {token}").parse().context("bad token")?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}
