//! Reads the whole audit trail back from Kafka, for verification and queries.

use std::time::Duration;

use crier_kafka::KafkaConfig;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
};

use crate::record::AuditRecord;

/// Why the trail could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A record is not an audit record.
    #[error("offset {offset}: not an audit record: {reason}")]
    Malformed {
        /// Where.
        offset: i64,
        /// Why.
        reason: String,
    },
}

/// Every record in `topic` (one partition), in order, unpacked from the messages that
/// hold them. Blocking: call from a plain thread or
/// `spawn_blocking`.
pub fn read_all(config: &KafkaConfig, topic: &str) -> Result<Vec<AuditRecord>, ReadError> {
    let consumer: BaseConsumer = config.reader().create()?;
    let timeout = Duration::from_secs(10);
    let (low, high) = consumer.fetch_watermarks(topic, 0, timeout)?;
    let mut records = Vec::new();
    if high <= low {
        return Ok(records);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))?;
    consumer.assign(&tpl)?;
    let mut next = low;
    while next < high {
        match consumer.poll(timeout) {
            Some(Ok(msg)) => {
                next = msg.offset() + 1;
                // One message holds one or more records, a JSON object per line.
                let lines = msg.payload().unwrap_or_default().split(|b| *b == b'\n');
                for line in lines.filter(|l| !l.is_empty()) {
                    let record =
                        serde_json::from_slice(line).map_err(|e| ReadError::Malformed {
                            offset: msg.offset(),
                            reason: e.to_string(),
                        })?;
                    records.push(record);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(KafkaError::Canceled.into()),
        }
    }
    Ok(records)
}
