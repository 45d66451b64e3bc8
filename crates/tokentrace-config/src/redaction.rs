//! `telemetry.redaction`: personal data replaced before any sink sees it.

use serde::Deserialize;

/// Whether redaction runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactionMode {
    /// Nothing is changed (the default).
    #[default]
    Off,
    /// Matches are replaced by `[REDACTED:<kind>]`.
    Redact,
}

/// The built-in kinds.
pub const BUILTIN_KINDS: &[&str] = &[
    "email",
    "phone",
    "credit_card",
    "iban",
    "ip",
    "api_key",
    "jwt",
];

/// One pattern of the config's own.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionPattern {
    /// The kind named in the replacement and the counter.
    pub name: String,
    /// A regular expression (the `regex` crate's syntax: linear time).
    pub regex: String,
}

/// The redaction settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Off or redact.
    pub mode: RedactionMode,
    /// Built-in kinds to find; empty with `mode: redact`: all of them.
    pub builtin: Vec<String>,
    /// Patterns of the config's own.
    pub patterns: Vec<RedactionPattern>,
}

impl RedactionConfig {
    /// Checks kinds, names and patterns; the error names the key at fault.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        const AT: &str = "providers.telemetry[0].config.redaction";
        for b in &self.builtin {
            if !BUILTIN_KINDS.contains(&b.as_str()) {
                return Err((
                    format!("{AT}.builtin"),
                    format!("unknown kind {b:?}; kinds: {}", BUILTIN_KINDS.join(", ")),
                ));
            }
        }
        for (i, p) in self.patterns.iter().enumerate() {
            if p.name.is_empty()
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err((
                    format!("{AT}.patterns[{i}].name"),
                    "must be letters, digits and _".into(),
                ));
            }
            if let Err(e) = regex::RegexBuilder::new(&p.regex)
                .size_limit(1 << 20)
                .build()
            {
                return Err((format!("{AT}.patterns[{i}].regex"), e.to_string()));
            }
        }
        Ok(())
    }
}
