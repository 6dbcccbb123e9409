//! The interceptor that turns a client certificate or a bearer token into an [`Identity`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tonic::{Request, Status, service::Interceptor};

use crate::{Identity, config::AuthConfig};

/// Authenticates every request; see the crate docs for the two ways.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    trust_domain: String,
    mtls: bool,
    jwt: Option<(DecodingKey, Validation)>,
    /// Credentials already checked, by their bytes, with the Unix second they stop being
    /// good (a token's `exp`). A client makes thousands of calls with one certificate or
    /// token; parsing a certificate or verifying a signature on each was measurable.
    seen: Mutex<HashMap<Vec<u8>, (Identity, u64)>>,
}

/// Most credentials remembered; past this the memory is cleared rather than grown.
const MAX_SEEN: usize = 10_000;

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("trust_domain", &self.inner.trust_domain)
            .field("mtls", &self.inner.mtls)
            .field("jwt", &self.inner.jwt.is_some())
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl Authenticator {
    /// Builds the authenticator, refusing a configuration that authenticates nobody.
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let jwt = match &config.jwt {
            None => None,
            Some(j) => {
                let pem = std::fs::read(&j.public_key)
                    .map_err(|e| format!("{}: {e}", j.public_key.display()))?;
                let (algorithm, key) = match j.algorithm.as_str() {
                    "ES256" => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
                    "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
                    other => {
                        return Err(format!("auth.jwt.algorithm '{other}': use ES256 or RS256"));
                    }
                };
                let key = key.map_err(|e| format!("{}: {e}", j.public_key.display()))?;
                let mut validation = Validation::new(algorithm);
                validation.set_issuer(&[&j.issuer]);
                validation.set_audience(&[&j.audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                Some((key, validation))
            }
        };
        if !mtls && jwt.is_none() {
            return Err(
                "no way to authenticate callers: set [auth.tls] client_ca (mutual TLS) or [auth.jwt]".into(),
            );
        }
        if mtls && config.trust_domain.is_empty() {
            return Err("auth.trust_domain is required with mutual TLS".into());
        }
        Ok(Self {
            inner: Arc::new(Inner {
                trust_domain: config.trust_domain.clone(),
                mtls,
                jwt,
                seen: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The caller's identity, or why not.
    pub fn identify<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        if let Some(token) = bearer(request)? {
            return self.remembered(token.as_bytes(), || self.identify_token(token));
        }
        let certs = request.peer_certs();
        if let (true, Some(leaf)) = (self.inner.mtls, certs.as_ref().and_then(|c| c.first())) {
            // The certificate's chain and validity were checked in the TLS handshake; what
            // is remembered is only the identity read from it.
            return self.remembered(leaf.as_ref(), || {
                self.identify_certificate(leaf.as_ref())
                    .map(|id| (id, u64::MAX))
            });
        }
        Err(Status::unauthenticated(
            "no credentials: present a client certificate or an `authorization: Bearer <JWT>` header",
        ))
    }

    /// The identity for `credential`, from memory while it is good, otherwise from `check`.
    fn remembered(
        &self,
        credential: &[u8],
        check: impl FnOnce() -> Result<(Identity, u64), Status>,
    ) -> Result<Identity, Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let seen = |m: &HashMap<Vec<u8>, (Identity, u64)>| {
            m.get(credential)
                .filter(|(_, until)| now < *until)
                .map(|(id, _)| id.clone())
        };
        if let Some(id) = seen(&self.inner.seen.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(id);
        }
        let (id, until) = check()?;
        let mut memory = self.inner.seen.lock().unwrap_or_else(|e| e.into_inner());
        if memory.len() >= MAX_SEEN {
            memory.clear();
        }
        memory.insert(credential.to_vec(), (id.clone(), until));
        Ok(id)
    }

    fn identify_token(&self, token: &str) -> Result<(Identity, u64), Status> {
        let Some((key, validation)) = &self.inner.jwt else {
            return Err(Status::unauthenticated(
                "bearer tokens are not accepted here",
            ));
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| Status::unauthenticated(format!("invalid bearer token: {e}")))?;
        let id = Identity::parse(&data.claims.sub).ok_or_else(|| {
            Status::unauthenticated(format!(
                "token sub '{}' is not <organisation>/<system>",
                data.claims.sub
            ))
        })?;
        Ok((id, data.claims.exp))
    }

    fn identify_certificate(&self, der: &[u8]) -> Result<Identity, Status> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| Status::unauthenticated("client certificate does not parse"))?;
        let prefix = format!("spiffe://{}/", self.inner.trust_domain);
        let uris = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        uris.iter()
            .find_map(|u| u.strip_prefix(&prefix).and_then(Identity::parse))
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "client certificate has no URI SAN {prefix}<organisation>/<system> (found {uris:?})"
                ))
            })
    }
}

fn bearer<T>(request: &Request<T>) -> Result<Option<&str>, Status> {
    match request.metadata().get("authorization") {
        None => Ok(None),
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
            v.strip_prefix("Bearer ")
                .map(|t| Some(t.trim()))
                .ok_or_else(|| {
                    Status::unauthenticated("authorization header must be `Bearer <JWT>`")
                })
        }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.identify(&request) {
            Ok(identity) => {
                request.extensions_mut().insert(identity);
                Ok(request)
            }
            Err(status) => {
                metrics::counter!("crier_unauthenticated_total").increment(1);
                tracing::info!(reason = status.message(), "refused unauthenticated call");
                Err(status)
            }
        }
    }
}
