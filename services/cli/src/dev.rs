//! `crier dev-certs` and `crier dev-token`: credentials for demos and tests.

use std::{path::PathBuf, time::Duration};

use anyhow::anyhow;
use clap::Args;

/// The organisations of the demo, and of `deploy/agreements.toml`.
pub(crate) const DEMO_IDENTITIES: &[&str] = &[
    "uk.gov.gro/death-registration",
    "uk.gov.dvla/licensing",
    "uk.gov.dwp/tell-us-once",
    "uk.gov.local.E06000002/revenues",
    "uk.gov.local.E06000002/childrens-services",
];

#[derive(Debug, Args)]
pub(crate) struct DevCertsArgs {
    /// Directory to write into (created if missing).
    #[arg(long, default_value = ".cache/pki")]
    out: PathBuf,
    /// SPIFFE trust domain of the client certificates.
    #[arg(long, default_value = "crier.dev")]
    trust_domain: String,
    /// Identities to issue client certificates for; default: the demo organisations.
    #[arg(long = "identity")]
    identities: Vec<String>,
}

pub(crate) fn certs(args: DevCertsArgs) -> anyhow::Result<()> {
    let identities: Vec<String> = if args.identities.is_empty() {
        DEMO_IDENTITIES.iter().map(|s| s.to_string()).collect()
    } else {
        args.identities
    };
    for id in &identities {
        crier_identity::Identity::parse(id)
            .ok_or_else(|| anyhow!("'{id}' is not <organisation>/<system>"))?;
    }
    let files = crier_identity::dev::write_pki(&args.out, &args.trust_domain, &identities)
        .map_err(|e| anyhow!(e))?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct DevTokenArgs {
    /// Signing key written by dev-certs.
    #[arg(long, default_value = ".cache/pki/token-signing.key")]
    key: PathBuf,
    /// Token issuer (iss).
    #[arg(long, default_value = "https://sts.crier.dev")]
    issuer: String,
    /// Token audience (aud).
    #[arg(long, default_value = "crier")]
    audience: String,
    /// The identity (sub), for example uk.gov.dwp/tell-us-once.
    #[arg(long)]
    sub: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

pub(crate) fn token(args: DevTokenArgs) -> anyhow::Result<()> {
    let pem =
        std::fs::read_to_string(&args.key).map_err(|e| anyhow!("{}: {e}", args.key.display()))?;
    let token = crier_identity::dev::token(
        &pem,
        &args.issuer,
        &args.audience,
        &args.sub,
        Duration::from_secs(args.ttl),
    )
    .map_err(|e| anyhow!(e))?;
    println!("{token}");
    Ok(())
}
