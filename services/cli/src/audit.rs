//! `crier audit verify` and `crier audit subject`: for information-governance officers.

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check every hash chain in the trail; report the first broken link (exit 1).
    Verify(Trail),
    /// Which organisations received events about this pseudonymous subject, and when:
    /// support for a subject access request.
    Subject {
        /// The subject reference, for example psn:7f3a91c2.
        subject: String,
        #[command(flatten)]
        trail: Trail,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Trail {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "CRIER_KAFKA__BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    kafka: String,
    /// The audit topic.
    #[arg(
        long,
        env = "CRIER_KAFKA__AUDIT_TOPIC",
        default_value = "crier.audit.v1"
    )]
    topic: String,
}

impl Trail {
    async fn read(&self) -> anyhow::Result<Vec<crier_audit::AuditRecord>> {
        let config = crier_kafka::KafkaConfig {
            bootstrap_servers: self.kafka.clone(),
            ..Default::default()
        };
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || crier_audit::reader::read_all(&config, &topic))
            .await?
            .map_err(|e| anyhow!("{e}"))
    }
}

pub(crate) async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify(trail) => {
            let records = trail.read().await?;
            match crier_audit::chain::verify(&records) {
                Ok(summary) => {
                    println!(
                        "audit trail intact: {} records in {} chains",
                        summary.records, summary.chains
                    );
                    Ok(())
                }
                Err(broken) => bail!("audit trail broken at {broken}"),
            }
        }
        AuditCommand::Subject { subject, trail } => {
            let records = trail.read().await?;
            let found = crier_audit::chain::deliveries_about(&records, &subject);
            for r in &found {
                let (record, actor) = (r.record, &r.record.entry.actor);
                println!(
                    "{}",
                    serde_json::json!({
                        "time": record.time, "recipient": actor,
                        "organisation": actor.split('/').next(),
                        "subscription": record.entry.subscription, "event_id": r.event_id,
                        "event_type": r.event_type, "agreements": r.agreements,
                    })
                );
            }
            eprintln!("{} deliveries about {subject}", found.len());
            let unattributed = crier_audit::chain::unattributed(&records);
            if unattributed > 0 {
                eprintln!(
                    "warning: {unattributed} deliveries are named by a position their chain \
                     never described, so whom they were about is unknown here; run \
                     `crier audit verify`"
                );
            }
            Ok(())
        }
    }
}
