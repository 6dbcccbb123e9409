//! The subscriber side, as local authorities would run it: open named subscriptions, one
//! connection per organisation, and acknowledge every delivery, as it arrives or within
//! the plan's `ack_every`.
//!
//! Used by the fan-out latency phase (`e2e`) and the memory phase (`memory`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use crier_proto::{
    codec::ProtoCodec,
    v1::{
        Ack, Filter, Open, StartFrom, SubscribeRequest, start_from,
        subscribe_request::Request as ClientMsg,
    },
};
use futures::{FutureExt, StreamExt, stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, client::Grpc, codegen::http::uri::PathAndQuery, transport::Channel};

use crate::slim::{self, Delivery, Kind as ServerMsg};

use crate::client;

/// Most deliveries acknowledged in one Ack message: whatever has already arrived.
const MAX_ACK_BATCH: usize = 512;

/// One subscription to open.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Its durable name.
    pub(crate) name: String,
    /// What it receives.
    pub(crate) filter: Filter,
    /// Which organisation (connection) holds it.
    pub(crate) org: usize,
}

/// An open stream: the way to send acks, and the deliveries.
#[derive(Debug)]
pub(crate) struct OpenStream {
    pub(crate) name: String,
    /// Longest an acknowledgement is held, to go out with later ones.
    ack_every: Duration,
    acks: mpsc::Sender<SubscribeRequest>,
    inbound: Streaming<slim::Response>,
}

/// Counters over every stream of a phase.
#[derive(Debug, Default)]
pub(crate) struct StreamStats {
    pub(crate) deliveries: AtomicU64,
    /// Streams the server ended (with an error) before the phase did.
    pub(crate) ended_early: AtomicU64,
    pub(crate) first_end: std::sync::Mutex<Option<String>>,
}

/// Opens every subscription in `specs` (new subscriptions, starting from now, with the
/// plan's `max_batch` and `max_in_flight`), with one connection per distinct `org`,
/// `concurrency` opens at a time. Returns the streams in `specs` order and how long opening took.
pub(crate) async fn open_all(
    url: &str,
    specs: &[Spec],
    plan: &crate::Plan,
    concurrency: usize,
) -> anyhow::Result<(Vec<OpenStream>, Duration)> {
    let orgs = specs.iter().map(|s| s.org).max().map_or(0, |m| m + 1);
    let started = Instant::now();
    let channels: Vec<Channel> = stream::iter(0..orgs)
        .map(|_| client::channel(url))
        .buffered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let opened: Vec<OpenStream> = stream::iter(specs.iter().cloned())
        .map(|spec| open(channels[spec.org].clone(), spec, plan))
        .buffered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    Ok((opened, started.elapsed()))
}

async fn open(channel: Channel, spec: Spec, plan: &crate::Plan) -> anyhow::Result<OpenStream> {
    let (acks, rx) = mpsc::channel(16);
    acks.send(SubscribeRequest {
        request: Some(ClientMsg::Open(Open {
            subscription: spec.name.clone(),
            filter: Some(spec.filter),
            start: Some(StartFrom {
                from: Some(start_from::From::Resume(start_from::Resume {})),
            }),
            max_in_flight: plan.max_in_flight,
            max_batch: plan.max_batch,
        })),
    })
    .await?;
    // The generated client's call, decoding into the slim messages (see `slim.rs`).
    let mut grpc = Grpc::new(channel);
    grpc.ready()
        .await
        .with_context(|| format!("cannot open {}", spec.name))?;
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static("/crier.v1.Subscriber/Subscribe"),
            ProtoCodec::<SubscribeRequest, slim::Response>::default(),
        )
        .await
        .with_context(|| format!("cannot open {}", spec.name))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(msg)) if matches!(msg.response, Some(ServerMsg::Opened(_))) => {}
        other => bail!("subscription {} did not open: {other:?}", spec.name),
    }
    Ok(OpenStream {
        name: spec.name,
        ack_every: plan.ack_every,
        acks,
        inbound,
    })
}

impl OpenStream {
    /// Receives until `stop`, calling `on_delivery` with each delivery and the instant it
    /// arrived, and acknowledging every delivery: with whatever else has arrived, and held
    /// up to `ack_every` (or until [`MAX_ACK_BATCH`] have gathered) to go out with later ones.
    /// Acknowledgements still held when `stop` comes are not sent: the phase is over, and
    /// its subscriptions are not opened again.
    pub(crate) async fn consume<F>(
        mut self,
        stop: CancellationToken,
        stats: Arc<StreamStats>,
        mut on_delivery: F,
    ) where
        F: FnMut(&Delivery, Instant),
    {
        let mut ack_ids = Vec::with_capacity(MAX_ACK_BATCH);
        // When the acknowledgements held must go: `ack_every` after the first of them.
        let mut ack_due: Option<tokio::time::Instant> = None;
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => break,
                () = tokio::time::sleep_until(ack_due.unwrap_or_else(tokio::time::Instant::now)),
                    if ack_due.is_some() => None,
                msg = self.inbound.message() => Some(msg),
            };
            let mut next = msg;
            while let Some(msg) = next.take() {
                match msg {
                    Ok(Some(m)) => {
                        let now = Instant::now();
                        let deliveries = match m.response {
                            Some(ServerMsg::Delivery(d)) => vec![d],
                            Some(ServerMsg::Deliveries(batch)) => batch.deliveries,
                            _ => Vec::new(),
                        };
                        let n = deliveries.len() as u64;
                        for d in deliveries {
                            on_delivery(&d, now);
                            ack_ids.push(d.ack_id);
                        }
                        stats.deliveries.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(None) | Err(_) => {
                        stats.ended_early.fetch_add(1, Ordering::Relaxed);
                        let mut first = stats.first_end.lock().unwrap_or_else(|p| p.into_inner());
                        if first.is_none() {
                            *first = Some(format!("{}: {msg:?}", self.name));
                        }
                        return;
                    }
                }
                if ack_ids.len() < MAX_ACK_BATCH {
                    next = self.inbound.message().now_or_never();
                }
            }
            if ack_ids.is_empty() {
                continue;
            }
            let due = *ack_due.get_or_insert_with(|| tokio::time::Instant::now() + self.ack_every);
            if ack_ids.len() < MAX_ACK_BATCH && tokio::time::Instant::now() < due {
                continue;
            }
            ack_due = None;
            let ack = SubscribeRequest {
                request: Some(ClientMsg::Ack(Ack {
                    ack_ids: std::mem::take(&mut ack_ids),
                })),
            };
            if self.acks.send(ack).await.is_err() {
                return;
            }
        }
        // Closing our half ends the stream; the server saves the cursor.
        drop(self.acks);
    }
}
