//! Realistic citizen events for the benchmark, built from the real schemas.
//!
//! A benchmark that publishes tiny or uniform events flatters every stage: validation,
//! compression, Kafka batching and the consumer's filter all behave differently on real
//! traffic. So the events here are `DeathRegistered` and `AddressChanged` payloads with
//! plausible names, dates, addresses, postcodes and 12-digit UPRNs, 300 to 800 bytes encoded,
//! about 400 local-authority GSS codes. Payloads are generated once into a pool of templates
//! (seeded, so every run publishes the same mix) and each publish stamps a fresh id on one,
//! which keeps generation cost out of the measured paths.

use std::sync::Arc;

use crier_proto::{
    events::v1 as ev,
    v1::{Classification, Event, classification::Level},
};
use prost::Message;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

/// The type name of a death registration.
pub(crate) const DEATH: &str = "crier.events.v1.DeathRegistered";
/// The type name of a change of address.
pub(crate) const MOVED: &str = "crier.events.v1.AddressChanged";

/// How many distinct templates (citizens) the pool holds.
const POOL_SIZE: usize = 4096;

/// `n` valid local-authority GSS codes: every entity type Crier accepts, in roughly the
/// proportions of the real register (mostly English districts), each code distinct.
pub(crate) fn area_codes(n: usize) -> Vec<String> {
    // (entity, how many of the first 400) — the real counts are E06 ~63, E08 36, E09 33,
    // W06 22, S12 32, N09 11, with English non-metropolitan districts (E07) the rest.
    let fixed: [(&str, usize); 6] = [
        ("E06", 63),
        ("E08", 36),
        ("E09", 33),
        ("W06", 22),
        ("S12", 32),
        ("N09", 11),
    ];
    let mut codes = Vec::with_capacity(n);
    for (entity, count) in fixed {
        codes.extend((1..=count).map(|i| format!("{entity}{i:06}")));
    }
    let mut district = 1;
    while codes.len() < n {
        codes.push(format!("E07{district:06}"));
        district += 1;
    }
    codes.truncate(n);
    // Interleave the entity types, so that any prefix of the list is a realistic mix.
    let mut rng = StdRng::seed_from_u64(7);
    let mut shuffled = codes;
    for i in (1..shuffled.len()).rev() {
        let j = rng.random_range(0..=i);
        shuffled.swap(i, j);
    }
    shuffled
}

/// One pre-built event, less the per-publish fields (`id`, `correlation_id`).
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// The event, with an empty id.
    pub(crate) event: Event,
}

/// The pool of templates every phase draws from, in a fixed cycle.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    templates: Arc<Vec<Template>>,
}

/// Sizes of what the pool publishes, for the report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) payload_min: usize,
    pub(crate) payload_avg: f64,
    pub(crate) payload_max: usize,
    pub(crate) event_min: usize,
    pub(crate) event_avg: f64,
    pub(crate) event_max: usize,
}

impl Pool {
    /// Builds the pool; events name areas from `areas` (the subscribed codes).
    pub(crate) fn new(areas: &[String]) -> Self {
        let mut rng = StdRng::seed_from_u64(2026);
        let templates = (0..POOL_SIZE)
            .map(|i| {
                if i % 2 == 0 {
                    death(&mut rng, areas)
                } else {
                    moved(&mut rng, areas)
                }
            })
            .collect();
        Self {
            templates: Arc::new(templates),
        }
    }

    /// Event number `seq`: the template it cycles to, with a fresh UUID as its id and
    /// `correlation_id` set as given.
    pub(crate) fn event(&self, seq: u64, correlation_id: String) -> Event {
        let mut event = self.template(seq).event.clone();
        event.id = uuid::Uuid::new_v4().to_string();
        event.correlation_id = correlation_id;
        event
    }

    /// The template event number `seq` is built from.
    pub(crate) fn template(&self, seq: u64) -> &Template {
        &self.templates[(seq % self.templates.len() as u64) as usize]
    }

    /// Encoded sizes over the pool (with a 36-character id and a typical correlation id).
    pub(crate) fn sizes(&self) -> Sizes {
        let mut s = Sizes {
            payload_min: usize::MAX,
            payload_avg: 0.0,
            payload_max: 0,
            event_min: usize::MAX,
            event_avg: 0.0,
            event_max: 0,
        };
        for i in 0..self.templates.len() {
            let e = self.event(i as u64, format!("bench:{i}:1234567890"));
            let (p, n) = (e.data.len(), e.encoded_len());
            s.payload_min = s.payload_min.min(p);
            s.payload_max = s.payload_max.max(p);
            s.event_min = s.event_min.min(n);
            s.event_max = s.event_max.max(n);
            s.payload_avg += p as f64;
            s.event_avg += n as f64;
        }
        let len = self.templates.len() as f64;
        s.payload_avg /= len;
        s.event_avg /= len;
        s
    }
}

const GIVEN: &[&str] = &[
    "Margaret",
    "Ann",
    "John",
    "David",
    "Susan",
    "Patricia",
    "Michael",
    "Elizabeth",
    "Robert",
    "Mohammed",
    "Aisha",
    "Olivia",
    "Amelia",
    "Oliver",
    "George",
    "Harry",
    "Sophie",
    "Emily",
    "Daniel",
    "Priya",
    "Rhys",
    "Siobhan",
    "Eilidh",
    "Callum",
    "Thomas",
    "Joan",
    "Dorothy",
    "Kenneth",
    "Barbara",
    "Irene",
    "Gwen",
    "Dafydd",
    "Fatima",
    "Chloe",
    "Jack",
    "Grace",
];
const FAMILY: &[&str] = &[
    "Hughes",
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Roberts",
    "Johnson",
    "Lewis",
    "Walker",
    "Robinson",
    "Wood",
    "Thompson",
    "White",
    "Okafor",
    "Patel",
    "Khan",
    "Campbell",
    "MacDonald",
    "O'Neill",
    "Murphy",
    "Kowalski",
    "Nowak",
    "Ahmed",
    "Singh",
    "Clarke",
    "Fletcher",
    "Armstrong",
    "Pritchard",
    "Llewellyn",
];
const STREETS: &[&str] = &[
    "Albert Terrace",
    "Linthorpe Road",
    "Station Road",
    "High Street",
    "Church Lane",
    "Victoria Street",
    "Park Avenue",
    "Mill Lane",
    "The Crescent",
    "Queen's Road",
    "Marton Road",
    "Acklam Road",
    "Borough Road",
    "Grange Road",
    "Westbourne Grove",
    "Kingsway",
    "Windsor Close",
    "Orchard Way",
    "Manor Drive",
    "Beech Grove",
];
const BUILDINGS: &[&str] = &[
    "Rosewood House",
    "Ashdown Court",
    "Fern Lodge",
    "Harbour View",
    "St Hilda's Court",
    "Wellington Mews",
];
const LOCALITIES: &[&str] = &[
    "Linthorpe",
    "Acklam",
    "Marton",
    "Headingley",
    "Crookes",
    "Fallowfield",
    "Wavertree",
    "Bishopston",
    "Roath",
    "Uplands",
    "Hillhead",
    "Leith",
    "Stranmillis",
    "Golden Triangle",
    "St Leonards",
    "Walthamstow Village",
];
const TOWNS: &[(&str, &str)] = &[
    ("Middlesbrough", "TS1"),
    ("Redcar", "TS10"),
    ("Stockton-on-Tees", "TS18"),
    ("Hartlepool", "TS24"),
    ("Darlington", "DL1"),
    ("Leeds", "LS6"),
    ("Sheffield", "S10"),
    ("Manchester", "M14"),
    ("Liverpool", "L15"),
    ("Bristol", "BS7"),
    ("Cardiff", "CF24"),
    ("Swansea", "SA1"),
    ("Glasgow", "G12"),
    ("Edinburgh", "EH6"),
    ("Belfast", "BT9"),
    ("Norwich", "NR2"),
    ("Exeter", "EX4"),
    ("London", "SW1A"),
    ("London", "E17"),
    ("Reading", "RG1"),
];
const REPORTED_VIA: &[&str] = &[
    "DVLA driving licence",
    "HMRC personal tax account",
    "DWP Universal Credit",
    "Electoral registration",
    "NHS GP registration",
];

fn pick<'a>(rng: &mut StdRng, list: &'a [&'a str]) -> &'a str {
    list.choose(rng).copied().unwrap_or_default()
}

fn name(rng: &mut StdRng) -> ev::PersonName {
    let given = (0..rng.random_range(1..=3))
        .map(|_| pick(rng, GIVEN).to_owned())
        .collect();
    ev::PersonName {
        given_names: given,
        family_name: pick(rng, FAMILY).to_owned(),
    }
}

fn date(rng: &mut StdRng, years: std::ops::RangeInclusive<i32>) -> Option<ev::Date> {
    Some(ev::Date {
        year: rng.random_range(years),
        month: rng.random_range(1..=12),
        day: rng.random_range(1..=28),
    })
}

/// A 10-digit NHS number with a valid modulus-11 check digit (payload only, never a key).
fn nhs_number(rng: &mut StdRng) -> String {
    loop {
        let digits: Vec<u32> = (0..9).map(|_| rng.random_range(0..10)).collect();
        let sum: u32 = digits
            .iter()
            .enumerate()
            .map(|(i, d)| d * (10 - i as u32))
            .sum();
        let check = 11 - sum % 11;
        let check = match check {
            11 => 0,
            10 => continue,
            c => c,
        };
        return digits
            .iter()
            .chain(std::iter::once(&check))
            .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
            .collect();
    }
}

fn nino(rng: &mut StdRng) -> String {
    const PREFIX: &[&str] = &["AB", "CE", "JT", "NP", "SK", "WL", "ZA", "HR"];
    const SUFFIX: &[&str] = &["A", "B", "C", "D"];
    format!(
        "{}{:06}{}",
        pick(rng, PREFIX),
        rng.random_range(0..1_000_000),
        pick(rng, SUFFIX)
    )
}

fn address(rng: &mut StdRng, local_authority: &str) -> ev::Address {
    let (town, district) = *TOWNS.choose(rng).unwrap_or(&TOWNS[0]);
    let mut lines = Vec::new();
    if rng.random_bool(0.3) {
        lines.push(format!(
            "Flat {} {}",
            rng.random_range(1..40),
            pick(rng, BUILDINGS)
        ));
    }
    lines.push(format!(
        "{} {}",
        rng.random_range(1..220),
        pick(rng, STREETS)
    ));
    if rng.random_bool(0.6) {
        lines.push(pick(rng, LOCALITIES).to_owned());
    }
    let letters = b"ABDEFGHJLNPQRSTUWXYZ";
    let mut letter = || char::from(letters[rng.random_range(0..letters.len())]);
    let inward = format!("{}{}", letter(), letter());
    ev::Address {
        // AddressBase UPRNs for residential properties are typically 11 or 12 digits.
        uprn: rng.random_range(10_000_000_000..200_000_000_000),
        lines,
        town: town.to_owned(),
        postcode: format!("{district} {}{inward}", rng.random_range(1..10)),
        local_authority: local_authority.to_owned(),
    }
}

fn subject(rng: &mut StdRng) -> String {
    format!("psn:{:012x}", rng.random_range(0..(1u64 << 48)))
}

fn envelope(
    rng: &mut StdRng,
    type_name: &str,
    source: &str,
    areas: Vec<String>,
    data: Vec<u8>,
) -> Template {
    Template {
        event: Event {
            id: String::new(),
            source: source.to_owned(),
            r#type: type_name.to_owned(),
            subject: subject(rng),
            areas,
            classification: Some(Classification {
                level: Level::OfficialSensitive as i32,
            }),
            data,
            ..Default::default()
        },
    }
}

fn death(rng: &mut StdRng, areas: &[String]) -> Template {
    let area = areas.choose(rng).cloned().unwrap_or_default();
    let address = address(rng, &area);
    let payload = ev::DeathRegistered {
        registration_id: format!("DE-2026-{:07}", rng.random_range(0..10_000_000)),
        name: Some(name(rng)),
        identifiers: Some(ev::PersonIdentifiers {
            nhs_number: nhs_number(rng),
            national_insurance_number: nino(rng),
        }),
        date_of_birth: date(rng, 1925..=1990),
        date_of_death: date(rng, 2026..=2026),
        date_of_registration: date(rng, 2026..=2026),
        registration_district: address.town.clone(),
        usual_address: Some(address),
        coroner_involved: rng.random_bool(0.1),
        tell_us_once_reference: if rng.random_bool(0.7) {
            format!(
                "TUO-{:04}-{:04}",
                rng.random_range(0..10_000),
                rng.random_range(0..10_000)
            )
        } else {
            String::new()
        },
    };
    envelope(
        rng,
        DEATH,
        crate::client::BENCH_SOURCE,
        vec![area],
        payload.encode_to_vec(),
    )
}

fn moved(rng: &mut StdRng, areas: &[String]) -> Template {
    // Both the old and the new authority receive a move; they differ.
    let new_area = areas.choose(rng).cloned().unwrap_or_default();
    let old_area = loop {
        let a = areas.choose(rng).cloned().unwrap_or_default();
        if a != new_area || areas.len() < 2 {
            break a;
        }
    };
    let payload = ev::AddressChanged {
        name: Some(name(rng)),
        identifiers: Some(ev::PersonIdentifiers {
            nhs_number: nhs_number(rng),
            national_insurance_number: nino(rng),
        }),
        date_of_birth: date(rng, 1940..=2006),
        previous_address: Some(address(rng, &old_area)),
        new_address: Some(address(rng, &new_area)),
        effective_date: date(rng, 2026..=2026),
        reported_via: pick(rng, REPORTED_VIA).to_owned(),
    };
    envelope(
        rng,
        MOVED,
        crate::client::BENCH_SOURCE,
        vec![new_area, old_area],
        payload.encode_to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_codes_are_distinct_valid_local_authority_codes() {
        let codes = area_codes(400);
        assert_eq!(codes.len(), 400);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), 400);
        for c in &codes {
            assert_eq!(crier_schema::codes::check_gss(c), Ok(()), "{c}");
        }
    }

    #[test]
    fn every_template_passes_crier_validation_at_a_realistic_size() {
        let pool = Pool::new(&area_codes(400));
        let registry = crier_schema::Registry::new();
        for i in 0..POOL_SIZE as u64 {
            let e = pool.event(i, format!("bench:{i}:0"));
            crier_schema::validate::validate_event(&registry, &e, 256 * 1024).unwrap();
        }
        let s = pool.sizes();
        assert!(s.event_min >= 300 && s.event_max <= 800, "{s:?}");
    }
}
