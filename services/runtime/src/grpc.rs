//! The gRPC server both services build, and the bound on request metadata it enforces.
//!
//! hyper's HTTP/2 server takes header lists up to 16 KiB. Past that, h2 answers HTTP 431
//! without a gRPC status, and past 4 × 16 KiB it closes the whole connection with GOAWAY
//! (ENHANCE_YOUR_CALM). Clients report either without saying what was wrong (tonic:
//! `UNKNOWN`, or `RESOURCE_EXHAUSTED "h2 protocol error"`). So the HTTP/2 layer is allowed
//! [`HTTP2_MAX_HEADER_LIST_BYTES`], and [`metadata_limit`] refuses anything over
//! [`MAX_METADATA_BYTES`] with a status that names the limit. Memory stays bounded: h2
//! keeps at most the HTTP/2 bound per request, and drops a refused request's headers at once.
use tonic::{
    Request, Status,
    service::interceptor::InterceptorLayer,
    transport::{Server, server::ServerTlsConfig},
};

/// Request metadata a Crier service accepts, counted as HTTP/2 does (RFC 9113 §6.5.2: name
/// plus value plus 32 bytes per entry). 16 KiB, hyper's own default, is far more than a
/// bearer token and the gRPC headers need.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// What the HTTP/2 layer accepts, so that metadata a little or a lot over
/// [`MAX_METADATA_BYTES`] still reaches [`metadata_limit`] and gets a clear status.
/// Beyond it (and up to four times it) h2 answers HTTP 431; beyond that it closes the
/// connection. Both are what a client sees without this module.
pub const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 256 * 1024;

/// Most requests open at once on one connection. tonic leaves HTTP/2 streams unbounded
/// (hyper's own default is 200). An open-loop client facing a server that falls behind
/// then opens thousands of streams, which share the connection's flow-control window in
/// slivers: the request bodies arrive as many small DATA frames, and h2's flood
/// protection closes the whole connection (GOAWAY `too_many_data_frames`,
/// ENHANCE_YOUR_CALM), failing every call on it (PERFORMANCE.md). With a bound, the
/// client waits for a free stream instead, and the requests in flight fit in the window.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Requests a client may cancel before the server has taken them up, per connection.
/// h2's default is 20, a guard against "rapid reset" floods; past it h2 closes the whole
/// connection (GOAWAY `too_many_resets`, ENHANCE_YOUR_CALM). A server behind under load
/// meets it honestly: callers whose deadlines pass cancel requests still queued, and
/// then every other call on that connection fails too (`RESOURCE_EXHAUSTED: h2 protocol
/// error`, thousands per benchmark run; PERFORMANCE.md). Cancelled requests are dropped
/// as soon as the server takes them up, so the memory this allows stays small.
pub const MAX_PENDING_ACCEPT_RESETS: usize = MAX_CONCURRENT_STREAMS as usize;

/// A tonic server with the HTTP/2 header, stream and reset bounds set, and TLS when `tls`
/// is given.
pub fn server(tls: Option<ServerTlsConfig>) -> Result<Server, tonic::transport::Error> {
    let server = Server::builder()
        .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS));
    match tls {
        Some(tls) => server.tls_config(tls),
        None => Ok(server),
    }
}

/// The connections accepted on `listener`, with Nagle's algorithm off. A gRPC answer is
/// one small write; with Nagle on, it can wait for the client's delayed ACK (40 ms on
/// Linux), which showed as a second hump of unary latencies around 45 ms in ghz.
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let conn = accepted?;
        if let Err(e) = conn.set_nodelay(true) {
            tracing::warn!(error = %e, "TCP_NODELAY not set on a connection");
        }
        Ok(conn)
    })
}

/// The signature of [`refuse_oversized_metadata`], as a layer's type parameter.
pub type MetadataCheck = fn(Request<()>) -> Result<Request<()>, Status>;

/// A layer, for every service on the server, that refuses requests whose metadata is over
/// [`MAX_METADATA_BYTES`] with `RESOURCE_EXHAUSTED`, before any service sees them.
pub fn metadata_limit() -> InterceptorLayer<MetadataCheck> {
    InterceptorLayer::new(refuse_oversized_metadata)
}

/// Refuses `request` when its metadata is over [`MAX_METADATA_BYTES`]. `RESOURCE_EXHAUSTED`
/// is what gRPC's own servers answer for metadata over their limit.
pub fn refuse_oversized_metadata(request: Request<()>) -> Result<Request<()>, Status> {
    let size = metadata_bytes(&request);
    if size > MAX_METADATA_BYTES {
        metrics::counter!("crier_oversized_metadata_total").increment(1);
        return Err(Status::resource_exhausted(format!(
            "request metadata is {size} bytes; at most {MAX_METADATA_BYTES} bytes are accepted \
             (names and values, plus 32 bytes per entry)"
        )));
    }
    Ok(request)
}

/// The metadata's size as HTTP/2 counts a header list.
fn metadata_bytes(request: &Request<()>) -> usize {
    let headers: &tonic::codegen::http::HeaderMap = request.metadata().as_ref();
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

#[cfg(test)]
mod tests {
    use tonic::{Code, metadata::MetadataValue};

    use super::*;

    fn request_with_padding(bytes: usize) -> Request<()> {
        let mut request = Request::new(());
        let padding = MetadataValue::try_from("a".repeat(bytes)).expect("ASCII is a valid value");
        request.metadata_mut().insert("x-padding", padding);
        request
    }

    #[test]
    fn metadata_within_the_limit_passes() {
        let request = request_with_padding(MAX_METADATA_BYTES - 100);
        assert!(refuse_oversized_metadata(request).is_ok());
    }

    #[test]
    fn metadata_over_the_limit_is_resource_exhausted_naming_the_limit() {
        let status = refuse_oversized_metadata(request_with_padding(64 * 1024))
            .expect_err("64 KiB is over the limit");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains(&MAX_METADATA_BYTES.to_string()),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("metadata"),
            "{}",
            status.message()
        );
    }
}
