//! Projects: every span, event and metric point belongs to the project of the credential that
//! wrote it. The project travels with the record as the attribute (or metric label)
//! [`PROJECT_ATTRIBUTE`], set by the server where telemetry enters and absent for the project
//! [`DEFAULT_PROJECT`], so a store without projects holds exactly what it held before.

use crate::{AttrValue, Attributes};

/// The attribute (span, event) or label (metric point) naming a record's project.
pub const PROJECT_ATTRIBUTE: &str = "tokentrace.project";

/// The project of records written without one (no authentication, or a credential without
/// projects).
pub const DEFAULT_PROJECT: &str = "default";

/// Longest project name.
pub const MAX_PROJECT_LEN: usize = 64;

/// Checks a project name: 1 to [`MAX_PROJECT_LEN`] letters, digits, `-`, `_` or `.`.
pub fn validate_project(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_PROJECT_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "project {name:?} is not a valid name: 1 to {MAX_PROJECT_LEN} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// Puts a record in `project`: whatever the sender said in [`PROJECT_ATTRIBUTE`] is replaced
/// (a sender cannot write into another project), and the default project leaves it absent.
pub fn stamp_project(attributes: &mut Attributes, project: &str) {
    if project == DEFAULT_PROJECT {
        attributes.remove(PROJECT_ATTRIBUTE);
    } else {
        attributes.insert(PROJECT_ATTRIBUTE.into(), AttrValue::from(project));
    }
}

/// Puts a span and the events recorded in it in `project` ([`stamp_project`]).
pub fn stamp_span(span: &mut crate::SpanRecord, project: &str) {
    stamp_project(&mut span.attributes, project);
    for e in &mut span.events {
        stamp_project(&mut e.attributes, project);
    }
}

/// Puts a Llama Stack event in `project` ([`stamp_project`]).
pub fn stamp_event(event: &mut crate::Event, project: &str) {
    let attributes = match event {
        crate::Event::UnstructuredLog(e) => &mut e.attributes,
        crate::Event::Metric(e) => &mut e.attributes,
        crate::Event::StructuredLog(e) => &mut e.attributes,
    };
    stamp_project(attributes, project);
}

/// The project a record's attributes (or labels) name.
pub fn project_of(attributes: &Attributes) -> &str {
    match attributes.get(PROJECT_ATTRIBUTE) {
        Some(AttrValue::String(p)) => p,
        _ => DEFAULT_PROJECT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_stamps_replace_what_the_sender_said() {
        assert!(validate_project("team-a_1.prod").is_ok());
        for bad in ["", "a b", "a/b", "ä", &"x".repeat(65)] {
            assert!(validate_project(bad).is_err(), "{bad:?}");
        }
        let mut a = Attributes::new();
        a.insert(PROJECT_ATTRIBUTE.into(), AttrValue::from("other"));
        stamp_project(&mut a, DEFAULT_PROJECT);
        assert!(a.is_empty());
        assert_eq!(project_of(&a), DEFAULT_PROJECT);
        a.insert(PROJECT_ATTRIBUTE.into(), AttrValue::from("other"));
        stamp_project(&mut a, "mine");
        assert_eq!(project_of(&a), "mine");
    }
}
