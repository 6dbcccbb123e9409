//! The demo exchange from the README: Middlesbrough Council (E06000002) subscribes to deaths
//! and changes of address in its area; the General Register Office and DVLA publish; the
//! council prints what it receives. An event for Westminster is published too, and is not
//! delivered, because it is outside the council's filter. Each party authenticates with its
//! own certificate, and the council receives only the fields its agreement allows: the
//! deceased's NHS number, in the published event, never reaches it.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use crier_proto::{
    events::v1 as ev,
    v1::{
        Ack, Classification, Delivery, Event, Filter, Open, PublishRequest, StartFrom,
        SubscribeRequest, classification::Level, publisher_client::PublisherClient, start_from,
        subscribe_request::Request as ClientMsg, subscribe_response::Response as ServerMsg,
        subscriber_client::SubscriberClient,
    },
};
use prost::Message;
use tokio_stream::StreamExt;

use crate::{connect::Credentials, payload, status_error};

const COUNCIL: &str = "uk.gov.local.E06000002/revenues";

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Producer service URL.
    #[arg(
        long,
        env = "CRIER_PRODUCER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    producer: String,
    /// Consumer service URL.
    #[arg(
        long,
        env = "CRIER_CONSUMER_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    consumer: String,
}

pub(crate) async fn run(args: DemoArgs, creds: &Credentials) -> anyhow::Result<()> {
    let name = format!("e06000002.revenues.demo-{}", uuid::Uuid::new_v4().simple());
    let council = creds.acting_as(COUNCIL);
    let mut subscriber = SubscriberClient::new(council.channel(&args.consumer).await?);

    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(open(&name)).await?;
    let mut stream = subscriber
        .subscribe(council.request(tokio_stream::wrappers::ReceiverStream::new(rx))?)
        .await
        .map_err(status_error)?
        .into_inner();
    match stream.next().await {
        Some(Ok(msg)) if matches!(msg.response, Some(ServerMsg::Opened(_))) => {
            println!("council   {COUNCIL} (mTLS) opened subscription {name}");
            println!("          filter: DeathRegistered, AddressChanged in E06000002\n");
        }
        other => bail!("subscription did not open: {other:?}"),
    }

    for (who, identity, event) in events() {
        let kind = event
            .r#type
            .trim_start_matches("crier.events.v1.")
            .to_owned();
        let areas = event.areas.join(",");
        let as_publisher = creds.acting_as(identity);
        let mut publisher = PublisherClient::new(as_publisher.channel(&args.producer).await?);
        let response = publisher
            .publish(as_publisher.request(PublishRequest { event: Some(event) })?)
            .await
            .map_err(status_error)?
            .into_inner();
        let pos = response.position.unwrap_or_default();
        println!(
            "{who:<9} published {kind:<16} areas={areas:<19} -> {}[{}]@{}",
            pos.topic, pos.partition, pos.offset
        );
    }
    println!();

    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .context("no delivery within 30 s")?
            .context("stream ended")?
            .map_err(status_error)?;
        let Some(ServerMsg::Delivery(d)) = msg.response else {
            continue;
        };
        println!(
            "council   received:\n{}",
            serde_json::to_string_pretty(&delivery_json(&d))?
        );
        tx.send(SubscribeRequest {
            request: Some(ClientMsg::Ack(Ack {
                ack_ids: vec![d.ack_id.clone()],
            })),
        })
        .await?;
    }
    // Nothing else may arrive: the Westminster event is outside the filter.
    if let Ok(Some(Ok(extra))) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        bail!("received an event outside the filter: {extra:?}");
    }
    println!(
        "\ncouncil   acknowledged 2 events; the Westminster (E09000033) death was not delivered: outside the filter"
    );
    println!(
        "          the deceased's NHS and NI numbers were published but not delivered: agreement DSA-2026-001 does not share `identifiers`"
    );
    drop(tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

fn open(name: &str) -> SubscribeRequest {
    SubscribeRequest {
        request: Some(ClientMsg::Open(Open {
            subscription: name.to_owned(),
            filter: Some(Filter {
                event_types: vec![
                    "crier.events.v1.DeathRegistered".into(),
                    "crier.events.v1.AddressChanged".into(),
                ],
                areas: vec!["E06000002".into()],
            }),
            start: Some(StartFrom {
                from: Some(start_from::From::Resume(start_from::Resume {})),
            }),
            max_batch: 0,
            max_in_flight: 0,
        })),
    }
}

fn envelope(
    identity: &str,
    subject: &str,
    areas: &[&str],
    data: impl Message,
    type_name: &str,
) -> Event {
    Event {
        id: uuid::Uuid::new_v4().to_string(),
        source: format!("urn:crier:{identity}"),
        r#type: format!("crier.events.v1.{type_name}"),
        subject: subject.into(),
        areas: areas.iter().map(|a| a.to_string()).collect(),
        classification: Some(Classification {
            level: Level::OfficialSensitive as i32,
        }),
        data: data.encode_to_vec(),
        correlation_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    }
}

const GRO: &str = "uk.gov.gro/death-registration";
const DVLA: &str = "uk.gov.dvla/licensing";

fn date(year: i32, month: i32, day: i32) -> Option<ev::Date> {
    Some(ev::Date { year, month, day })
}

fn events() -> Vec<(&'static str, &'static str, Event)> {
    let death = ev::DeathRegistered {
        registration_id: "DE-2026-0042317".into(),
        name: Some(ev::PersonName {
            given_names: vec!["Margaret".into(), "Ann".into()],
            family_name: "Hughes".into(),
        }),
        identifiers: Some(ev::PersonIdentifiers {
            nhs_number: "9434765919".into(),
            national_insurance_number: "QQ123456C".into(),
        }),
        date_of_birth: date(1941, 3, 14),
        date_of_death: date(2026, 11, 22),
        date_of_registration: date(2026, 11, 26),
        usual_address: Some(ev::Address {
            uprn: 100110034921,
            lines: vec!["14 Albert Terrace".into()],
            town: "Middlesbrough".into(),
            postcode: "TS1 3PA".into(),
            local_authority: "E06000002".into(),
        }),
        registration_district: "Middlesbrough".into(),
        tell_us_once_reference: "TUO-7731-2290".into(),
        ..Default::default()
    };
    let moved = ev::AddressChanged {
        name: Some(ev::PersonName {
            given_names: vec!["Daniel".into()],
            family_name: "Okafor".into(),
        }),
        date_of_birth: date(1988, 7, 2),
        previous_address: Some(ev::Address {
            uprn: 10023456789,
            lines: vec!["Flat 2".into(), "9 Station Road".into()],
            town: "Redcar".into(),
            postcode: "TS10 1AN".into(),
            local_authority: "E06000003".into(),
        }),
        new_address: Some(ev::Address {
            uprn: 100110067342,
            lines: vec!["31 Linthorpe Road".into()],
            town: "Middlesbrough".into(),
            postcode: "TS1 1RE".into(),
            local_authority: "E06000002".into(),
        }),
        effective_date: date(2026, 11, 20),
        reported_via: "DVLA driving licence".into(),
        ..Default::default()
    };
    let elsewhere = ev::DeathRegistered {
        registration_id: "DE-2026-0042318".into(),
        registration_district: "Westminster".into(),
        ..Default::default()
    };
    vec![
        (
            "GRO",
            GRO,
            envelope(
                GRO,
                "psn:7f3a91c2",
                &["E06000002"],
                death,
                "DeathRegistered",
            ),
        ),
        (
            "DVLA",
            DVLA,
            envelope(
                DVLA,
                "psn:2b8e4d10",
                &["E06000003", "E06000002"],
                moved,
                "AddressChanged",
            ),
        ),
        (
            "GRO",
            GRO,
            envelope(
                GRO,
                "psn:c4d2e8a0",
                &["E09000033"],
                elsewhere,
                "DeathRegistered",
            ),
        ),
    ]
}

/// A delivery as one JSON object, with the payload decoded to proto3 JSON.
pub(crate) fn delivery_json(d: &Delivery) -> serde_json::Value {
    let e = d.event.clone().unwrap_or_default();
    let pos = d.position.clone().unwrap_or_default();
    serde_json::json!({
        "ack_id": d.ack_id,
        "position": { "topic": pos.topic, "partition": pos.partition, "offset": pos.offset },
        "id": e.id,
        "source": e.source,
        "type": e.r#type,
        "time": e.time.map(|t| t.to_string()),
        "subject": e.subject,
        "areas": e.areas,
        "classification": e.classification.map(|c| c.level().as_str_name()),
        "correlation_id": e.correlation_id,
        "data": payload::to_json(&e.r#type, &e.data),
    })
}
