//! The loaded agreements, and the questions the services ask of them.
//!
//! Every answer depends on the time: an agreement counts only between its `valid_from` and
//! `valid_until`, so delivery under an expired agreement stops without anyone acting.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
};

use crate::{LoadError, fields::FieldTree};

/// One data-sharing agreement.
#[derive(Debug, Clone)]
pub struct Agreement {
    /// Unique id, quoted in audit records, for example `DSA-2026-014`.
    pub id: String,
    /// A short human title.
    pub title: String,
    /// The lawful basis, for example "Digital Economy Act 2017 s.35".
    pub legal_basis: String,
    /// Why the data is shared.
    pub purpose: String,
    /// Unix seconds from which it applies.
    pub valid_from: i64,
    /// Unix seconds from which it no longer applies.
    pub valid_until: i64,
    /// Who may publish what.
    pub publishers: Vec<PublisherGrant>,
    /// Who may receive what.
    pub subscribers: Vec<SubscriberGrant>,
}

/// May publish these event types.
#[derive(Debug, Clone)]
pub struct PublisherGrant {
    /// `<organisation>/<system>`.
    pub identity: String,
    /// Full event type names.
    pub event_types: BTreeSet<String>,
}

/// May receive these event types, about these areas, with these fields.
#[derive(Debug, Clone)]
pub struct SubscriberGrant {
    /// `<organisation>/<system>`.
    pub identity: String,
    /// GSS codes; `None` means every area.
    pub areas: Option<BTreeSet<String>>,
    /// Per event type, the payload fields shared.
    pub fields: BTreeMap<String, FieldTree>,
}

impl SubscriberGrant {
    fn covers_area(&self, area: &str) -> bool {
        self.areas.as_ref().is_none_or(|a| a.contains(area))
    }
}

/// A refusal, naming what no agreement covers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// What one delivery may carry, borrowed from the policy: it is judged for every delivery
/// (100,000 a second in the benchmark's fan-out), so the agreement ids and the field tree
/// are not copied for each one. Only a union of two grants' fields is made anew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement<'p> {
    /// The agreements that allow it, by id, in the policy's order, each once.
    pub agreements: Vec<&'p str>,
    /// The payload fields shared: the union over those agreements.
    pub fields: Cow<'p, FieldTree>,
}

/// All agreements in force or on file.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    agreements: Vec<Agreement>,
    /// Per subscriber identity, its grants as (agreement, grant) indices: entitlement is
    /// judged on every delivery, and a national policy lists hundreds of subscribers.
    grants_of: HashMap<String, Vec<(usize, usize)>>,
}

/// Checks an identity's shape: `<organisation>/<system>`, each part from `[A-Za-z0-9.-]`.
pub fn check_identity(id: &str) -> Result<(), String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    };
    match id.split_once('/') {
        Some((org, system)) if ok(org) && ok(system) => Ok(()),
        _ => Err(format!(
            "identity '{id}' is not <organisation>/<system>, for example uk.gov.dwp/tell-us-once"
        )),
    }
}

impl Policy {
    /// A policy of these agreements.
    pub fn new(agreements: Vec<Agreement>) -> Self {
        let mut grants_of: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (a, agreement) in agreements.iter().enumerate() {
            for (g, grant) in agreement.subscribers.iter().enumerate() {
                grants_of
                    .entry(grant.identity.clone())
                    .or_default()
                    .push((a, g));
            }
        }
        Self {
            agreements,
            grants_of,
        }
    }

    /// The grants to `identity` in agreements in force at `now`, with their agreement.
    fn grants_to<'a>(
        &'a self,
        identity: &str,
        now: i64,
    ) -> impl Iterator<Item = (&'a Agreement, &'a SubscriberGrant)> + 'a {
        self.grants_of
            .get(identity)
            .into_iter()
            .flatten()
            .map(|(a, g)| (&self.agreements[*a], &self.agreements[*a].subscribers[*g]))
            .filter(move |(a, _)| a.valid_from <= now && now < a.valid_until)
    }

    /// Loads and checks the policy file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::new(crate::file::parse(
            &path.display().to_string(),
            &text,
        )?))
    }

    /// The agreements, as loaded.
    pub fn agreements(&self) -> &[Agreement] {
        &self.agreements
    }

    fn in_force(&self, now: i64) -> impl Iterator<Item = &Agreement> {
        self.agreements
            .iter()
            .filter(move |a| a.valid_from <= now && now < a.valid_until)
    }

    /// The agreements under which `identity` may publish `event_type` now.
    pub fn may_publish(
        &self,
        identity: &str,
        event_type: &str,
        now: i64,
    ) -> Result<Vec<String>, Denied> {
        let ids: Vec<String> = self
            .in_force(now)
            .filter(|a| {
                a.publishers
                    .iter()
                    .any(|p| p.identity == identity && p.event_types.contains(event_type))
            })
            .map(|a| a.id.clone())
            .collect();
        if ids.is_empty() {
            return Err(Denied(format!(
                "no agreement in force lets {identity} publish {event_type}"
            )));
        }
        Ok(ids)
    }

    /// Checks that agreements in force cover everything a subscription asks for: each event
    /// type, in each requested area (or in every area when `areas` is empty).
    pub fn may_subscribe(
        &self,
        identity: &str,
        event_types: &[String],
        areas: &[String],
        now: i64,
    ) -> Result<(), Denied> {
        for t in event_types {
            let grants: Vec<&SubscriberGrant> = self
                .grants_to(identity, now)
                .map(|(_, g)| g)
                .filter(|g| g.fields.contains_key(t))
                .collect();
            if grants.is_empty() {
                return Err(Denied(format!(
                    "no agreement in force lets {identity} receive {t}"
                )));
            }
            if areas.is_empty() {
                if !grants.iter().any(|g| g.areas.is_none()) {
                    return Err(Denied(format!(
                        "no agreement in force lets {identity} receive {t} for every area; list the areas it covers"
                    )));
                }
            } else if let Some(area) = areas
                .iter()
                .find(|area| !grants.iter().any(|g| g.covers_area(area)))
            {
                return Err(Denied(format!(
                    "no agreement in force lets {identity} receive {t} in {area}"
                )));
            }
        }
        Ok(())
    }

    /// What `identity` may receive of an event of `event_type` about `areas`, now: `None`
    /// when nothing, otherwise the agreements and the union of their fields.
    pub fn entitlement<'p, 'a>(
        &'p self,
        identity: &str,
        event_type: &str,
        areas: impl Iterator<Item = &'a str> + Clone,
        now: i64,
    ) -> Option<Entitlement<'p>> {
        let mut agreements = Vec::new();
        let mut fields: Option<Cow<'p, FieldTree>> = None;
        for (a, g) in self.grants_to(identity, now) {
            let Some(tree) = g.fields.get(event_type) else {
                continue;
            };
            if !areas.clone().any(|area| g.covers_area(area)) {
                continue;
            }
            if !agreements.contains(&a.id.as_str()) {
                agreements.push(a.id.as_str());
            }
            fields = Some(match fields {
                Some(f) => Cow::Owned(f.union(tree)),
                None => Cow::Borrowed(tree),
            });
        }
        fields.map(|fields| Entitlement { agreements, fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agreement A: the GRO publishes deaths, and Middlesbrough's revenues team receives
    /// their registration ids.
    const FIXTURE: &str = r#"
[[agreement]]
id = "A"
legal_basis = "x"
purpose = "y"
valid_from = "2026-01-01T00:00:00Z"
valid_until = "2027-01-01T00:00:00Z"
[[agreement.publisher]]
identity = "uk.gov.gro/deaths"
event_types = ["crier.events.v1.DeathRegistered"]
[[agreement.subscriber]]
identity = "uk.gov.local.E06000002/revenues"
areas = ["E06000002"]
[agreement.subscriber.fields]
"crier.events.v1.DeathRegistered" = ["registration_id"]
"#;

    fn policy() -> Policy {
        Policy::new(crate::file::parse("t", FIXTURE).unwrap())
    }

    const IN_2026: i64 = 1_780_000_000;
    const IN_2027: i64 = 1_800_000_000;
    const LA: &str = "uk.gov.local.E06000002/revenues";
    const DEATH: &str = "crier.events.v1.DeathRegistered";

    #[test]
    fn publishing_needs_an_agreement_in_force() {
        let p = policy();
        assert_eq!(
            p.may_publish("uk.gov.gro/deaths", DEATH, IN_2026).unwrap(),
            vec!["A"]
        );
        assert!(p.may_publish("uk.gov.gro/deaths", DEATH, IN_2027).is_err());
        let denied = p.may_publish("uk.gov.dwp/x", DEATH, IN_2026).unwrap_err();
        assert!(
            denied
                .0
                .contains("uk.gov.dwp/x publish crier.events.v1.DeathRegistered")
        );
    }

    #[test]
    fn subscriptions_may_ask_only_for_covered_types_and_areas() {
        let p = policy();
        let types = vec![DEATH.to_string()];
        assert!(
            p.may_subscribe(LA, &types, &["E06000002".into()], IN_2026)
                .is_ok()
        );
        assert!(
            p.may_subscribe(LA, &types, &[], IN_2026)
                .unwrap_err()
                .0
                .contains("every area")
        );
        assert!(
            p.may_subscribe(LA, &types, &["E06000003".into()], IN_2026)
                .unwrap_err()
                .0
                .contains("E06000003")
        );
        let other = vec!["crier.events.v1.BirthRegistered".to_string()];
        assert!(
            p.may_subscribe(LA, &other, &["E06000002".into()], IN_2026)
                .is_err()
        );
        assert!(
            p.may_subscribe(LA, &types, &["E06000002".into()], IN_2027)
                .is_err()
        );
    }

    #[test]
    fn an_entitlement_under_two_agreements_names_each_once_and_shares_both_fields() {
        // The fixture's A, and B, which grants the same subscriber twice, for two areas
        // the event is about.
        let agreement_b = r#"
[[agreement]]
id = "B"
legal_basis = "x"
purpose = "y"
valid_from = "2026-01-01T00:00:00Z"
valid_until = "2027-01-01T00:00:00Z"
[[agreement.subscriber]]
identity = "uk.gov.local.E06000002/revenues"
areas = ["E06000002"]
[agreement.subscriber.fields]
"crier.events.v1.DeathRegistered" = ["name"]
[[agreement.subscriber]]
identity = "uk.gov.local.E06000002/revenues"
areas = ["E10000023"]
[agreement.subscriber.fields]
"crier.events.v1.DeathRegistered" = ["name"]
"#;
        let p = Policy::new(crate::file::parse("t", &[FIXTURE, agreement_b].concat()).unwrap());

        let both = p
            .entitlement(LA, DEATH, ["E06000002", "E10000023"].into_iter(), IN_2026)
            .unwrap();
        assert_eq!(both.agreements.as_slice(), ["A", "B"]);
        assert!(both.fields.child("registration_id").is_some());
        assert!(both.fields.child("name").is_some());
        assert!(both.fields.child("date_of_death").is_none());

        // Only B covers E10000023 alone: its fields, not A's.
        let b = p
            .entitlement(LA, DEATH, ["E10000023"].into_iter(), IN_2026)
            .unwrap();
        assert_eq!(b.agreements.as_slice(), ["B"]);
        assert!(b.fields.child("name").is_some());
        assert!(b.fields.child("registration_id").is_none());
    }

    #[test]
    fn an_entitlement_needs_a_shared_area_and_carries_the_fields() {
        let p = policy();
        let e = p
            .entitlement(LA, DEATH, ["E10000023", "E06000002"].into_iter(), IN_2026)
            .unwrap();
        assert_eq!(e.agreements.as_slice(), ["A"]);
        assert!(e.fields.child("registration_id").is_some());
        assert!(
            p.entitlement(LA, DEATH, ["E06000003"].into_iter(), IN_2026)
                .is_none()
        );
        assert!(
            p.entitlement(LA, DEATH, ["E06000002"].into_iter(), IN_2027)
                .is_none()
        );
    }
}
