//! Checks a subscription's name and filter, and decides whether an event matches it.

use crier_proto::v1::Filter;

use crate::{Invalid, Registry, codes::check_gss};

/// Longest subscription name.
pub const MAX_NAME_LEN: usize = 200;

/// Checks a subscription name: 1–200 characters from `[A-Za-z0-9._-]`, so it is safe as a
/// Kafka key, a metric label and a log field.
pub fn check_name(name: &str) -> Result<(), Invalid> {
    let field = "open.subscription";
    if name.is_empty() {
        return Err(Invalid::new(
            field,
            "required, for example e06000002.revenues.deaths",
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Invalid::new(
            field,
            format!("at most {MAX_NAME_LEN} characters"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Invalid::new(
            field,
            format!("'{bad}' is not allowed; use letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

/// Checks a filter: at least one known event type, and well-formed area codes.
pub fn check_filter(registry: &Registry, filter: &Filter) -> Result<(), Invalid> {
    if filter.event_types.is_empty() {
        return Err(Invalid::new(
            "open.filter.event_types",
            "at least one event type is required",
        ));
    }
    for (i, t) in filter.event_types.iter().enumerate() {
        if registry.event_type(t).is_none() {
            return Err(Registry::unknown_type(
                &format!("open.filter.event_types[{i}]"),
                t,
            ));
        }
    }
    for (i, area) in filter.areas.iter().enumerate() {
        check_gss(area).map_err(|m| Invalid::new(format!("open.filter.areas[{i}]"), m))?;
    }
    Ok(())
}

/// The canonical form of a filter (sorted, without repeats), so that two filters asking for
/// the same thing compare equal whatever order the client listed them in.
pub fn canonical(filter: &Filter) -> Filter {
    let tidy = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    Filter {
        event_types: tidy(&filter.event_types),
        areas: tidy(&filter.areas),
    }
}

/// True when an event of `event_type` concerning `areas` matches `filter`.
pub fn matches<'a>(
    filter: &Filter,
    event_type: &str,
    mut areas: impl Iterator<Item = &'a str>,
) -> bool {
    filter.event_types.iter().any(|t| t == event_type)
        && (filter.areas.is_empty() || areas.any(|a| filter.areas.iter().any(|f| f == a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(types: &[&str], areas: &[&str]) -> Filter {
        Filter {
            event_types: types.iter().map(|s| s.to_string()).collect(),
            areas: areas.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn names_with_unsafe_characters_are_refused() {
        assert!(check_name("e06000002.revenues-1_a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").unwrap_err().message.contains("' '"));
    }

    #[test]
    fn filters_need_known_types_and_valid_areas() {
        let r = Registry::new();
        assert!(
            check_filter(
                &r,
                &filter(&["crier.events.v1.DeathRegistered"], &["E06000002"])
            )
            .is_ok()
        );
        assert_eq!(
            check_filter(&r, &filter(&[], &[])).unwrap_err().field,
            "open.filter.event_types"
        );
        assert_eq!(
            check_filter(
                &r,
                &filter(&["crier.events.v1.DeathRegistered"], &["E0600000"])
            )
            .unwrap_err()
            .field,
            "open.filter.areas[0]"
        );
    }

    #[test]
    fn an_event_matches_on_type_and_any_shared_area() {
        let f = filter(&["T"], &["E06000002"]);
        assert!(matches(&f, "T", ["E10000023", "E06000002"].into_iter()));
        assert!(!matches(&f, "T", ["E06000003"].into_iter()));
        assert!(!matches(&f, "U", ["E06000002"].into_iter()));
        assert!(matches(&filter(&["T"], &[]), "T", std::iter::empty()));
    }

    #[test]
    fn canonical_filters_ignore_order_and_repeats() {
        assert_eq!(
            canonical(&filter(&["B", "A", "A"], &[])),
            canonical(&filter(&["A", "B"], &[]))
        );
    }
}
