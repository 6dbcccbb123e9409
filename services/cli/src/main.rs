//! `crier`: the command people use by hand to publish, subscribe and try the demo.

mod audit;
mod connect;
mod demo;
mod dev;
mod payload;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use crier_proto::v1::{
    Ack, Classification, Event, Filter, Open, PublishRequest, StartFrom, SubscribeRequest,
    classification::Level, publisher_client::PublisherClient, start_from,
    subscribe_request::Request as ClientMsg, subscribe_response::Response as ServerMsg,
    subscriber_client::SubscriberClient,
};
use tokio_stream::StreamExt;

/// Crier: publish and subscribe to citizen-service events by hand.
///
/// Payloads are given and shown in proto3 JSON. `crier types` lists the event types; the
/// fields of each are documented in proto/crier/events/v1.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    credentials: connect::Credentials,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish one event to the producer service and print where Kafka holds it.
    Publish(PublishArgs),
    /// Open a durable subscription and print each delivery as a JSON line.
    Subscribe(SubscribeArgs),
    /// Run the demo exchange: a council subscribes, a department publishes a death
    /// registration and a change of address, and the council prints what it receives.
    Demo(demo::DemoArgs),
    /// List the event types.
    Types,
    /// Create a development CA, a localhost server certificate, client certificates and a
    /// token-signing key (for demos and tests, never production).
    DevCerts(dev::DevCertsArgs),
    /// Sign a development bearer token (JWT) with a key made by dev-certs.
    DevToken(dev::DevTokenArgs),
    /// Check the audit trail, or ask who received events about a subject.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Check a service's gRPC health (exit 0 when SERVING), for scripts and container probes.
    Health {
        /// Service URL, for example http://127.0.0.1:50051.
        #[arg(default_value = "https://localhost:50051")]
        url: String,
        /// Keep asking until SERVING or this many seconds have passed.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// Producer service URL.
    #[arg(
        long,
        env = "CRIER_PRODUCER_URL",
        default_value = "https://localhost:50051"
    )]
    producer: String,
    /// Event type, for example crier.events.v1.DeathRegistered.
    #[arg(long = "type")]
    event_type: String,
    /// Pseudonymous reference of the citizen, for example psn:4c1f0b7e.
    #[arg(long)]
    subject: String,
    /// GSS code of an area the event concerns; repeat for several.
    #[arg(long = "area", required = true)]
    areas: Vec<String>,
    /// The payload in proto3 JSON, for example '{"registrationId":"DE-1"}'.
    #[arg(long)]
    data: String,
    /// The publishing system (CloudEvents source): urn:crier:<your identity>.
    #[arg(long)]
    source: String,
    /// Event id; a new UUID when absent. Reuse an id to retry safely.
    #[arg(long)]
    id: Option<String>,
    /// Mark the payload OFFICIAL-SENSITIVE rather than OFFICIAL.
    #[arg(long)]
    sensitive: bool,
    /// Correlation id tying related events together.
    #[arg(long, default_value = "")]
    correlation_id: String,
}

#[derive(Debug, Args)]
struct SubscribeArgs {
    /// Consumer service URL.
    #[arg(
        long,
        env = "CRIER_CONSUMER_URL",
        default_value = "https://localhost:50052"
    )]
    consumer: String,
    /// Durable subscription name, for example e06000002.revenues.deaths.
    #[arg(long)]
    name: String,
    /// Event type to receive; repeat for several.
    #[arg(long = "type", required = true)]
    event_types: Vec<String>,
    /// GSS code to receive; repeat for several; none means every area.
    #[arg(long = "area")]
    areas: Vec<String>,
    /// Where to start: `resume` (default), `beginning`, or an RFC 3339 time.
    #[arg(long, default_value = "resume")]
    from: String,
    /// Exit after this many deliveries.
    #[arg(long)]
    count: Option<usize>,
    /// Do not acknowledge (they will be delivered again next time).
    #[arg(long)]
    no_ack: bool,
    /// Take up to this many deliveries per message (1 to 500), acknowledged together:
    /// much cheaper for a busy subscription. The default takes them one at a time.
    #[arg(long, default_value_t = 1)]
    max_batch: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let creds = cli.credentials;
    match cli.command {
        Command::Publish(args) => publish(args, &creds).await,
        Command::Subscribe(args) => subscribe(args, &creds).await,
        Command::Demo(args) => demo::run(args, &creds).await,
        Command::Health { url, wait } => health(&url, wait, &creds).await,
        Command::DevCerts(args) => dev::certs(args),
        Command::DevToken(args) => dev::token(args),
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Types => {
            for t in crier_schema::registry::EVENT_TYPES {
                println!("{t}");
            }
            Ok(())
        }
    }
}

async fn publish(args: PublishArgs, creds: &connect::Credentials) -> anyhow::Result<()> {
    let level = if args.sensitive {
        Level::OfficialSensitive
    } else {
        Level::Official
    };
    let event = Event {
        id: args.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        source: args.source,
        data: payload::from_json(&args.event_type, &args.data)?,
        r#type: args.event_type,
        subject: args.subject,
        areas: args.areas,
        classification: Some(Classification {
            level: level as i32,
        }),
        correlation_id: args.correlation_id,
        ..Default::default()
    };
    let mut client = PublisherClient::new(creds.channel(&args.producer).await?);
    let id = event.id.clone();
    let response = client
        .publish(creds.request(PublishRequest { event: Some(event) })?)
        .await
        .map_err(status_error)?
        .into_inner();
    let position = response.position.unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "id": id, "topic": position.topic, "partition": position.partition,
            "offset": position.offset, "duplicate": response.duplicate,
        })
    );
    Ok(())
}

async fn subscribe(args: SubscribeArgs, creds: &connect::Credentials) -> anyhow::Result<()> {
    let start = parse_start(&args.from)?;
    let open = Open {
        subscription: args.name,
        filter: Some(Filter {
            event_types: args.event_types,
            areas: args.areas,
        }),
        start: Some(start),
        max_in_flight: 0,
        max_batch: args.max_batch,
    };
    let mut client = SubscriberClient::new(creds.channel(&args.consumer).await?);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(SubscribeRequest {
        request: Some(ClientMsg::Open(open)),
    })
    .await?;
    let mut stream = client
        .subscribe(creds.request(tokio_stream::wrappers::ReceiverStream::new(rx))?)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut received = 0;
    let mut deliveries = Vec::new();
    while let Some(msg) = stream.next().await {
        match msg.map_err(status_error)?.response {
            Some(ServerMsg::Opened(opened)) => eprintln!(
                "opened subscription {} (created: {})",
                opened.subscription, opened.created
            ),
            Some(ServerMsg::Delivery(d)) => deliveries = vec![d],
            Some(ServerMsg::Deliveries(batch)) => deliveries = batch.deliveries,
            None => {}
        }
        let wanted = args.count.map_or(deliveries.len(), |n| n - received);
        deliveries.truncate(wanted);
        for d in &deliveries {
            println!("{}", demo::delivery_json(d));
        }
        received += deliveries.len();
        if !args.no_ack && !deliveries.is_empty() {
            let ack_ids = deliveries.drain(..).map(|d| d.ack_id).collect();
            tx.send(SubscribeRequest {
                request: Some(ClientMsg::Ack(Ack { ack_ids })),
            })
            .await?;
        }
        if args.count.is_some_and(|n| received >= n) {
            break;
        }
    }
    // Give the acks a moment to reach the server before the stream closes.
    drop(tx);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Ok(())
}

async fn health(url: &str, wait_secs: u64, creds: &connect::Credentials) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
    loop {
        let answer = match creds.channel(url).await {
            Ok(channel) => HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status())
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message())),
            Err(e) => Err(anyhow::anyhow!("cannot connect: {e}")),
        };
        match answer {
            Ok(ServingStatus::Serving) => {
                println!("{url}: SERVING");
                return Ok(());
            }
            other if std::time::Instant::now() >= deadline => {
                bail!("{url}: not serving ({other:?})")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

fn parse_start(from: &str) -> anyhow::Result<StartFrom> {
    let from = match from {
        "resume" => start_from::From::Resume(start_from::Resume {}),
        "beginning" => start_from::From::Beginning(start_from::Beginning {}),
        time => match time.parse::<prost_types::Timestamp>() {
            Ok(ts) => start_from::From::Time(ts),
            Err(_) => bail!("--from must be resume, beginning or an RFC 3339 time, not '{time}'"),
        },
    };
    Ok(StartFrom { from: Some(from) })
}

/// Shows a gRPC error as its code and message, which name what is wrong.
fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}
