//! What a stream sends, and the response stream tonic takes it from.
//!
//! Between a session and the subscriber's socket sits the stream's channel, which holds up
//! to its window of messages: a subscriber that reads slowly, or a machine short of CPU,
//! shows up as messages waiting there. So delivery lag is measured as tonic takes each
//! message for writing (`crier_delivery_lag_seconds`: now minus the Kafka timestamp of
//! the message's oldest event), not as the session queues it.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use crier_proto::wire::EncodedResponse;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::record::{now_ms, seconds_since};

/// A message for a stream, with the Kafka timestamp (Unix ms) of its oldest event; `None`
/// for messages that carry no event.
#[derive(Debug)]
pub struct Outgoing {
    pub response: EncodedResponse,
    pub oldest_ms: Option<i64>,
}

impl From<EncodedResponse> for Outgoing {
    fn from(response: EncodedResponse) -> Self {
        Self {
            response,
            oldest_ms: None,
        }
    }
}

/// The sending half a session writes to.
pub type Sender = mpsc::Sender<Result<Outgoing, Status>>;

/// The response stream of one subscription stream.
#[derive(Debug)]
pub struct Responses {
    rx: mpsc::Receiver<Result<Outgoing, Status>>,
    lag: metrics::Histogram,
}

impl Responses {
    /// A channel for a stream that may hold `capacity` messages.
    pub fn channel(capacity: usize) -> (Sender, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        let lag = metrics::histogram!("crier_delivery_lag_seconds");
        (tx, Self { rx, lag })
    }
}

impl Stream for Responses {
    type Item = Result<EncodedResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(self.rx.poll_recv(cx));
        Poll::Ready(item.map(|r| {
            r.map(|m| {
                if let Some(written) = m.oldest_ms {
                    self.lag.record(seconds_since(written, now_ms()));
                }
                m.response
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn messages_come_out_in_order_without_their_timestamps_and_errors_pass_through() {
        let (tx, mut rx) = Responses::channel(4);
        let opened = EncodedResponse::from(&crier_proto::v1::SubscribeResponse::default());
        tx.send(Ok(Outgoing::from(opened.clone()))).await.unwrap();
        tx.send(Ok(Outgoing {
            response: opened.clone(),
            oldest_ms: Some(now_ms()),
        }))
        .await
        .unwrap();
        tx.send(Err(Status::unavailable("bye"))).await.unwrap();
        drop(tx);
        assert_eq!(
            rx.next().await.unwrap().unwrap().as_bytes(),
            opened.as_bytes()
        );
        assert_eq!(
            rx.next().await.unwrap().unwrap().as_bytes(),
            opened.as_bytes()
        );
        assert_eq!(
            rx.next().await.unwrap().unwrap_err().code(),
            tonic::Code::Unavailable
        );
        assert!(rx.next().await.is_none());
    }
}
