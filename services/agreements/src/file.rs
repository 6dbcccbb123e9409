//! The policy file format, and loading it with errors that name the line.
//!
//! ```toml
//! [[agreement]]
//! id = "DSA-2026-014"
//! legal_basis = "Digital Economy Act 2017 s.35"
//! purpose = "Stop council services and recover overpayments after a death"
//! valid_from = "2026-01-01T00:00:00Z"
//! valid_until = "2028-01-01T00:00:00Z"
//!
//! [[agreement.publisher]]
//! identity = "uk.gov.gro/death-registration"
//! event_types = ["crier.events.v1.DeathRegistered"]
//!
//! [[agreement.subscriber]]
//! identity = "uk.gov.local.E06000002/revenues"
//! areas = ["E06000002"]           # or ["*"] for every area
//! [agreement.subscriber.fields]    # event type -> payload fields shared ("*" for all)
//! "crier.events.v1.DeathRegistered" = ["registration_id", "name", "date_of_death"]
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    LoadError,
    fields::FieldTree,
    policy::{Agreement, PublisherGrant, SubscriberGrant},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    agreement: Vec<Spanned<FileAgreement>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAgreement {
    id: Spanned<String>,
    #[serde(default)]
    title: String,
    legal_basis: Spanned<String>,
    purpose: Spanned<String>,
    valid_from: Spanned<String>,
    valid_until: Spanned<String>,
    #[serde(default)]
    publisher: Vec<FilePublisher>,
    #[serde(default)]
    subscriber: Vec<FileSubscriber>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePublisher {
    identity: Spanned<String>,
    event_types: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSubscriber {
    identity: Spanned<String>,
    areas: Vec<Spanned<String>>,
    fields: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
}

/// Parses and checks a policy file. `name` is used in error messages (`name:line: …`).
pub fn parse(name: &str, text: &str) -> Result<Vec<Agreement>, LoadError> {
    let registry = crier_schema::Registry::new();
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let err = |offset: usize, msg: String| {
        LoadError::Invalid(format!("{name}:{}: {msg}", line_of(offset)))
    };
    let doc: FileDoc = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(s.start));
        LoadError::Invalid(format!("{name}:{line}: {}", e.message()))
    })?;

    let mut ids = BTreeSet::new();
    let mut agreements = Vec::new();
    for spanned in doc.agreement {
        let at = spanned.span().start;
        let a = spanned.into_inner();
        let check_text = |s: &Spanned<String>, what: &str| {
            if s.get_ref().trim().is_empty() {
                Err(err(s.span().start, format!("{what} must not be empty")))
            } else {
                Ok(s.get_ref().clone())
            }
        };
        let id = check_text(&a.id, "id")?;
        if !ids.insert(id.clone()) {
            return Err(err(
                a.id.span().start,
                format!("agreement id '{id}' is used twice"),
            ));
        }
        let time = |s: &Spanned<String>| {
            s.get_ref()
                .parse::<prost_types::Timestamp>()
                .map(|t| t.seconds)
                .map_err(|_| {
                    err(
                        s.span().start,
                        format!("'{}' is not an RFC 3339 time", s.get_ref()),
                    )
                })
        };
        let valid_from = time(&a.valid_from)?;
        let valid_until = time(&a.valid_until)?;
        if valid_until <= valid_from {
            return Err(err(
                a.valid_until.span().start,
                "valid_until must be after valid_from".into(),
            ));
        }
        if a.publisher.is_empty() && a.subscriber.is_empty() {
            return Err(err(
                at,
                format!("agreement '{id}' names no publisher and no subscriber"),
            ));
        }
        let mut publishers = Vec::new();
        for p in a.publisher {
            let identity =
                check_identity(&p.identity).map_err(|m| err(p.identity.span().start, m))?;
            let mut event_types = BTreeSet::new();
            for t in &p.event_types {
                registry.event_type(t.get_ref()).ok_or_else(|| {
                    err(
                        t.span().start,
                        format!("unknown event type '{}'", t.get_ref()),
                    )
                })?;
                event_types.insert(t.get_ref().clone());
            }
            if event_types.is_empty() {
                return Err(err(
                    p.identity.span().start,
                    "a publisher needs at least one event type".into(),
                ));
            }
            publishers.push(PublisherGrant {
                identity,
                event_types,
            });
        }
        let mut subscribers = Vec::new();
        for s in a.subscriber {
            let identity =
                check_identity(&s.identity).map_err(|m| err(s.identity.span().start, m))?;
            let mut areas = BTreeSet::new();
            let mut all_areas = false;
            for area in &s.areas {
                if area.get_ref() == "*" {
                    all_areas = true;
                } else {
                    crier_schema::codes::check_gss(area.get_ref())
                        .map_err(|m| err(area.span().start, m))?;
                    areas.insert(area.get_ref().clone());
                }
            }
            if !all_areas && areas.is_empty() {
                return Err(err(
                    s.identity.span().start,
                    "areas must list GSS codes, or \"*\" for every area".into(),
                ));
            }
            let mut fields = BTreeMap::new();
            for (t, paths) in &s.fields {
                let desc = registry.event_type(t.get_ref()).ok_or_else(|| {
                    err(
                        t.span().start,
                        format!("unknown event type '{}'", t.get_ref()),
                    )
                })?;
                for p in paths {
                    FieldTree::parse(&desc, std::slice::from_ref(p.get_ref()))
                        .map_err(|m| err(p.span().start, m))?;
                }
                let list: Vec<String> = paths.iter().map(|p| p.get_ref().clone()).collect();
                let tree = FieldTree::parse(&desc, &list).map_err(|m| err(t.span().start, m))?;
                fields.insert(t.get_ref().clone(), tree);
            }
            if fields.is_empty() {
                return Err(err(
                    s.identity.span().start,
                    "a subscriber needs [fields] for at least one event type".into(),
                ));
            }
            subscribers.push(SubscriberGrant {
                identity,
                areas: if all_areas { None } else { Some(areas) },
                fields,
            });
        }
        agreements.push(Agreement {
            id,
            title: a.title,
            legal_basis: check_text(&a.legal_basis, "legal_basis")?,
            purpose: check_text(&a.purpose, "purpose")?,
            valid_from,
            valid_until,
            publishers,
            subscribers,
        });
    }
    Ok(agreements)
}

/// Identities are `<organisation>/<system>`: a dotted organisation id and a system name,
/// both from `[A-Za-z0-9.-]`; see SECURITY.md.
pub fn check_identity(s: &Spanned<String>) -> Result<String, String> {
    let id = s.get_ref();
    crate::policy::check_identity(id).map(|()| id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[agreement]]
id = "DSA-1"
legal_basis = "Digital Economy Act 2017 s.35"
purpose = "Stop services after a death"
valid_from = "2026-01-01T00:00:00Z"
valid_until = "2028-01-01T00:00:00Z"

[[agreement.publisher]]
identity = "uk.gov.gro/death-registration"
event_types = ["crier.events.v1.DeathRegistered"]

[[agreement.subscriber]]
identity = "uk.gov.local.E06000002/revenues"
areas = ["E06000002"]
[agreement.subscriber.fields]
"crier.events.v1.DeathRegistered" = ["registration_id", "usual_address.postcode"]
"#;

    #[test]
    fn a_valid_file_loads() {
        let agreements = parse("p.toml", GOOD).unwrap();
        assert_eq!(agreements.len(), 1);
        assert_eq!(agreements[0].subscribers[0].fields.len(), 1);
    }

    fn error_of(text: &str) -> String {
        parse("p.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn mistakes_are_reported_with_their_line() {
        let bad_type = GOOD.replace(
            "event_types = [\"crier.events.v1.DeathRegistered\"]",
            "event_types = [\"crier.events.v1.Nope\"]",
        );
        assert_eq!(
            error_of(&bad_type),
            "p.toml:11: unknown event type 'crier.events.v1.Nope'"
        );
        let bad_field = GOOD.replace("usual_address.postcode", "usual_address.colour");
        assert!(
            error_of(&bad_field).starts_with("p.toml:17: unknown field 'colour'"),
            "{}",
            error_of(&bad_field)
        );
        let bad_area = GOOD.replace("areas = [\"E06000002\"]", "areas = [\"E0600002\"]");
        assert!(
            error_of(&bad_area).starts_with("p.toml:15: "),
            "{}",
            error_of(&bad_area)
        );
        let bad_key = GOOD.replace("purpose =", "porpoise =");
        assert!(
            error_of(&bad_key).contains("porpoise"),
            "{}",
            error_of(&bad_key)
        );
        let bad_time = GOOD.replace("2028-01-01T00:00:00Z", "next year");
        assert!(
            error_of(&bad_time).starts_with("p.toml:7: "),
            "{}",
            error_of(&bad_time)
        );
    }
}

#[cfg(test)]
mod example {
    #[test]
    fn the_example_agreements_in_deploy_load() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/agreements.toml");
        let policy = crate::Policy::load(std::path::Path::new(path)).unwrap();
        assert_eq!(policy.agreements().len(), 3);
    }
}
