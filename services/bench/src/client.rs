//! How the benchmark connects to the services: the one function that makes a gRPC channel.
//!
//! Kept in one place on purpose: when the services gain TLS and tokens, only [`channel`]
//! (and the `--*-url` it is given) needs to change for every phase to keep working.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

/// One HTTP/2 connection to `url` (`http://host:port`), connected now.
pub(crate) async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad service URL {url}"))?
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
