//! Field allow-lists: which parts of a payload an agreement shares.
//!
//! A list of dotted paths, such as `name` or `usual_address.postcode`, becomes a tree: a
//! path that ends at a field shares the whole field (sub-messages included); a longer path
//! shares only that part of the sub-message. `*` shares every field.

use std::collections::BTreeMap;

use prost_reflect::{Kind, MessageDescriptor};

/// The fields shared of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldTree {
    /// Every field, at every depth.
    All,
    /// Only these fields; each maps to what is shared inside it.
    Some(BTreeMap<String, FieldTree>),
}

impl FieldTree {
    /// Nothing shared.
    pub fn none() -> Self {
        Self::Some(BTreeMap::new())
    }

    /// Builds a tree from dotted paths, checking each against `desc`. Returns the first
    /// path that does not exist, with why.
    pub fn parse(desc: &MessageDescriptor, paths: &[String]) -> Result<Self, String> {
        let mut tree = Self::none();
        for path in paths {
            if path == "*" {
                return Ok(Self::All);
            }
            check_path(desc, path)?;
            let segments: Vec<&str> = path.split('.').collect();
            tree.add(&segments);
        }
        Ok(tree)
    }

    fn add(&mut self, segments: &[&str]) {
        let Self::Some(children) = self else { return };
        let Some((first, rest)) = segments.split_first() else {
            return;
        };
        let child = children
            .entry((*first).to_owned())
            .or_insert_with(Self::none);
        if rest.is_empty() {
            *child = Self::All;
        } else {
            child.add(rest);
        }
    }

    /// The union of two trees: everything either shares.
    pub fn union(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::All, _) | (_, Self::All) => Self::All,
            (Self::Some(a), Self::Some(b)) => {
                let mut out = a.clone();
                for (name, sub) in b {
                    let merged = match out.get(name) {
                        Some(existing) => existing.union(sub),
                        None => sub.clone(),
                    };
                    out.insert(name.clone(), merged);
                }
                Self::Some(out)
            }
        }
    }

    /// What is shared inside field `name`, if anything.
    pub fn child(&self, name: &str) -> Option<&FieldTree> {
        match self {
            Self::All => Some(&Self::All),
            Self::Some(children) => children.get(name),
        }
    }
}

fn check_path(desc: &MessageDescriptor, path: &str) -> Result<(), String> {
    let mut current = desc.clone();
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let field = current.get_field_by_name(segment).ok_or_else(|| {
            let known: Vec<String> = current.fields().map(|f| f.name().to_owned()).collect();
            format!(
                "unknown field '{segment}' in '{path}': {} has {}",
                current.full_name(),
                known.join(", ")
            )
        })?;
        if i + 1 < segments.len() {
            match field.kind() {
                Kind::Message(inner) => current = inner,
                _ => {
                    return Err(format!(
                        "'{path}': '{segment}' is not a message, so it has no fields"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn death() -> MessageDescriptor {
        crier_schema::Registry::new()
            .event_type("crier.events.v1.DeathRegistered")
            .unwrap()
    }

    #[test]
    fn paths_become_a_tree_and_unknown_ones_are_refused() {
        let tree =
            FieldTree::parse(&death(), &["name".into(), "usual_address.postcode".into()]).unwrap();
        assert_eq!(tree.child("name"), Some(&FieldTree::All));
        assert!(matches!(
            tree.child("usual_address"),
            Some(FieldTree::Some(_))
        ));
        assert_eq!(tree.child("identifiers"), None);
        let err = FieldTree::parse(&death(), &["usual_address.colour".into()]).unwrap_err();
        assert!(err.contains("unknown field 'colour'"), "{err}");
        assert!(FieldTree::parse(&death(), &["registration_id.x".into()]).is_err());
    }

    #[test]
    fn union_shares_what_either_shares() {
        let a = FieldTree::parse(&death(), &["usual_address.postcode".into()]).unwrap();
        let b = FieldTree::parse(&death(), &["usual_address".into(), "name".into()]).unwrap();
        let u = a.union(&b);
        assert_eq!(u.child("usual_address"), Some(&FieldTree::All));
        assert_eq!(u.child("name"), Some(&FieldTree::All));
    }
}
