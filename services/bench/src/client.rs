//! How the benchmark connects to the services: the one function that makes a gRPC channel.
//!
//! The services authenticate every caller, so the benchmark makes its own development PKI
//! once per run ([`init`]) and connects over mutual TLS as one identity, [`BENCH`], which
//! the run's agreements let publish and receive every event type, so security costs
//! (TLS, authentication, entitlement checks, audit) are part of every figure.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use anyhow::Context;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The identity every benchmark client uses.
pub(crate) const BENCH: &str = "uk.gov.bench/client";
/// The CloudEvents source that identity publishes as.
pub(crate) const BENCH_SOURCE: &str = "urn:crier:uk.gov.bench/client";
const TRUST_DOMAIN: &str = "crier.bench";

static PKI: OnceLock<PathBuf> = OnceLock::new();

/// Writes the run's PKI and agreements under `dir`; call once before any [`channel`].
pub(crate) fn init(dir: &Path) -> anyhow::Result<()> {
    let pki = dir.join("pki");
    crier_identity::dev::write_pki(&pki, TRUST_DOMAIN, &[BENCH.to_owned()])
        .map_err(|e| anyhow::anyhow!(e))?;
    let types = [
        "crier.events.v1.DeathRegistered",
        "crier.events.v1.AddressChanged",
    ];
    let quoted: Vec<String> = types.iter().map(|t| format!("\"{t}\"")).collect();
    let fields: String = types
        .iter()
        .map(|t| format!("\"{t}\" = [\"*\"]\n"))
        .collect();
    let agreements = format!(
        "[[agreement]]\nid = \"BENCH\"\nlegal_basis = \"benchmark\"\npurpose = \"measure Crier\"\n\
         valid_from = \"2020-01-01T00:00:00Z\"\nvalid_until = \"2100-01-01T00:00:00Z\"\n\
         [[agreement.publisher]]\nidentity = \"{BENCH}\"\nevent_types = [{}]\n\
         [[agreement.subscriber]]\nidentity = \"{BENCH}\"\nareas = [\"*\"]\n\
         [agreement.subscriber.fields]\n{fields}",
        quoted.join(", ")
    );
    std::fs::write(pki.join("agreements.toml"), agreements)?;
    let _ = PKI.set(pki);
    Ok(())
}

/// The run's PKI directory (after [`init`]).
pub(crate) fn pki_dir() -> &'static Path {
    PKI.get().map_or(Path::new("."), PathBuf::as_path)
}

/// The service settings that make a child process trust the run's PKI and agreements.
pub(crate) fn service_env(producer: bool) -> Vec<(&'static str, String)> {
    let p = |f: &str| pki_dir().join(f).display().to_string();
    let mut env = vec![
        ("CRIER_AUTH__TRUST_DOMAIN", TRUST_DOMAIN.to_owned()),
        ("CRIER_AUTH__TLS__CERT", p("server.pem")),
        ("CRIER_AUTH__TLS__KEY", p("server.key")),
        ("CRIER_AUTH__TLS__CLIENT_CA", p("ca.pem")),
        ("CRIER_AGREEMENTS__PATH", p("agreements.toml")),
    ];
    if producer {
        // The benchmark measures capacity, so the per-publisher quota is off.
        env.push(("CRIER_LIMITS__PUBLISH_RATE_PER_SEC", "0".to_owned()));
    }
    env
}

/// One HTTP/2 connection to `url` (`https://localhost:port`), over mutual TLS, connected now.
pub(crate) async fn channel(url: &str) -> anyhow::Result<Channel> {
    let read = |f: &str| {
        let path = pki_dir().join(f);
        std::fs::read(&path).with_context(|| format!("{}", path.display()))
    };
    let stem = crier_identity::dev::file_stem(BENCH);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(
            read(&format!("{stem}.pem"))?,
            read(&format!("{stem}.key"))?,
        ))
        .domain_name("localhost");
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad service URL {url}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// `n` separate connections to `url`, as `n` independent clients would hold.
pub(crate) async fn channels(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(channel(url).await?);
    }
    Ok(out)
}
