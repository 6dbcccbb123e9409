//! Who is calling Crier.
//!
//! Every caller is an organisation's system, named `<organisation>/<system>`, for example
//! `uk.gov.dwp/tell-us-once` or `uk.gov.local.E06000002/revenues`. Agreements and audit
//! records use these names. A caller proves its identity in one of two ways:
//!
//! - **mutual TLS**: a client certificate, issued by the CA Crier trusts, whose URI SAN is
//!   the SPIFFE ID `spiffe://<trust-domain>/<organisation>/<system>`;
//! - **a bearer token**: a JWT signed by the configured issuer, for the configured
//!   audience, whose `sub` is `<organisation>/<system>` (for callers behind a proxy that
//!   terminates TLS).
//!
//! [`Authenticator`] is a tonic interceptor: it refuses anything else with UNAUTHENTICATED
//! and puts the [`Identity`] in the request's extensions for the services to read.

pub mod authenticate;
pub mod config;
pub mod dev;
pub mod tls;

pub use authenticate::Authenticator;
pub use config::AuthConfig;

/// An authenticated caller: an organisation's system.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity(String);

impl Identity {
    /// Parses `<organisation>/<system>`, each part non-empty from `[A-Za-z0-9.-]`.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        };
        match s.split_once('/') {
            Some((org, system)) if ok(org) && ok(system) => Some(Self(s.to_owned())),
            _ => None,
        }
    }

    /// `<organisation>/<system>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The organisation part.
    pub fn organisation(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(o, _)| o)
    }

    /// The CloudEvents `source` this identity publishes as.
    pub fn source(&self) -> String {
        format!("urn:crier:{}", self.0)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The caller's identity, as put there by [`Authenticator`]. A service behind the
/// authenticator always has one; its absence is a wiring error and is refused.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no authenticated identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_organisation_slash_system() {
        let id = Identity::parse("uk.gov.local.E06000002/revenues").unwrap();
        assert_eq!(id.organisation(), "uk.gov.local.E06000002");
        assert_eq!(id.source(), "urn:crier:uk.gov.local.E06000002/revenues");
        for bad in ["", "uk.gov.dwp", "/x", "a/", "a/b/c", "a b/c"] {
            assert!(Identity::parse(bad).is_none(), "{bad}");
        }
    }
}
