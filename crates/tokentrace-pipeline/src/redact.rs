//! Redaction of personal data before any sink sees it (`telemetry.redaction`): every string
//! attribute of spans, events and span events, span status messages and log messages, whatever
//! path they came in by (gateway capture, events API, OTLP receiver). A match is replaced by
//! `[REDACTED:<kind>]` and counted per kind.

use std::collections::BTreeMap;

use regex::Regex;
use tokentrace_config::{RedactionConfig, RedactionMode};
use tokentrace_model::{AttrValue, Attributes, SpanEvent, SpanEventBody, SpanRecord};

/// The built-in patterns. Card numbers are also checked with the Luhn sum.
fn builtin(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "email" => r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        "phone" => r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}\b",
        "credit_card" => r"\b\d(?:[ -]?\d){12,18}\b",
        "iban" => r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
        "ip" => r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b",
        "api_key" => {
            r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bxox[abpr]-[A-Za-z0-9-]{10,}"
        }
        "jwt" => r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+",
        _ => return None,
    })
}

fn luhn(digits: &str) -> bool {
    let d: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                if x * 2 > 9 { x * 2 - 9 } else { x * 2 }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The compiled rules.
pub struct Redactor {
    rules: Vec<(String, Regex)>,
    /// Matches replaced in the current batch, by kind.
    counts: BTreeMap<String, u64>,
}

impl Redactor {
    /// The redactor a config asks for; `None` when redaction is off.
    pub fn new(c: &RedactionConfig) -> Option<Self> {
        if c.mode == RedactionMode::Off {
            return None;
        }
        let mut rules = Vec::new();
        let kinds: Vec<&str> = if c.builtin.is_empty() {
            tokentrace_config::BUILTIN_KINDS.to_vec()
        } else {
            c.builtin.iter().map(String::as_str).collect()
        };
        // The most specific first: a card number or an IP address is not taken for a phone.
        const ORDER: [&str; 7] = [
            "jwt",
            "api_key",
            "email",
            "credit_card",
            "iban",
            "ip",
            "phone",
        ];
        for k in ORDER.iter().filter(|k| kinds.contains(k)) {
            if let Some(re) = builtin(k).and_then(|p| Regex::new(p).ok()) {
                rules.push((k.to_string(), re));
            }
        }
        for p in &c.patterns {
            // Checked when the config was read.
            if let Ok(re) = regex::RegexBuilder::new(&p.regex)
                .size_limit(1 << 20)
                .build()
            {
                rules.push((p.name.clone(), re));
            }
        }
        Some(Self {
            rules,
            counts: BTreeMap::new(),
        })
    }

    /// `s` with every match replaced; `None` when nothing matched.
    pub fn text(&mut self, s: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for (kind, re) in &self.rules {
            let current = out.as_deref().unwrap_or(s);
            if !re.is_match(current) {
                continue;
            }
            let mut n = 0u64;
            let replaced = re.replace_all(current, |c: &regex::Captures<'_>| {
                let m = &c[0];
                if kind == "credit_card" && !luhn(m) {
                    return m.to_string();
                }
                n += 1;
                format!("[REDACTED:{kind}]")
            });
            if n > 0 {
                *self.counts.entry(kind.clone()).or_insert(0) += n;
                out = Some(replaced.into_owned());
            }
        }
        out
    }

    fn value(&mut self, v: &mut AttrValue) {
        match v {
            AttrValue::String(s) => {
                if let Some(r) = self.text(s) {
                    *s = r;
                }
            }
            AttrValue::Array(items) => items.iter_mut().for_each(|i| self.value(i)),
            _ => {}
        }
    }

    /// Redacts attribute values (or a metric point's labels) in place.
    pub fn attributes(&mut self, a: &mut Attributes) {
        for v in a.values_mut() {
            self.value(v);
        }
    }

    /// Redacts an event in place.
    pub fn event(&mut self, e: &mut SpanEvent) {
        self.attributes(&mut e.attributes);
        if let SpanEventBody::Log { message, .. } = &mut e.body
            && let Some(r) = self.text(message)
        {
            *message = r;
        }
    }

    /// Redacts a span (and the events it carries) in place.
    pub fn span(&mut self, s: &mut SpanRecord) {
        self.attributes(&mut s.attributes);
        if let Some(m) = &mut s.status_message
            && let Some(r) = self.text(m)
        {
            *m = r;
        }
        for e in &mut s.events {
            self.event(e);
        }
    }

    /// The counts since the last call, by kind.
    pub fn take_counts(&mut self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Redactor {
        Redactor::new(&RedactionConfig {
            mode: RedactionMode::Redact,
            ..Default::default()
        })
        .unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn each_builtin_kind_is_found_and_counted() {
        let mut r = all();
        let cases = [
            ("mail alice.smith@example.co.uk now", "email"),
            ("call +44 20 7946 0958 today", "phone"),
            ("card 4111 1111 1111 1111 ok", "credit_card"),
            ("iban DE89370400440532013000 ok", "iban"),
            ("from 192.168.10.42 ok", "ip"),
            ("key sk-proj-abcdefghijklmnop1234 ok", "api_key"),
            (
                "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.abc_DEF-123 ok",
                "jwt",
            ),
        ];
        for (text, kind) in cases {
            let out = r.text(text).unwrap_or_default();
            assert!(
                out.contains(&format!("[REDACTED:{kind}]")),
                "{text} -> {out}"
            );
            assert!(
                out.ends_with(" ok") || out.ends_with(" now") || out.ends_with(" today"),
                "{out}"
            );
        }
        let counts = r.take_counts();
        for (_, kind) in cases {
            assert_eq!(counts.get(kind), Some(&1), "{kind}: {counts:?}");
        }
    }

    #[test]
    fn ordinary_text_and_numbers_are_left_alone() {
        let mut r = all();
        for text in [
            "The meeting is at 2026-12-01 14:00.",
            "order 1234567890123 shipped", // 13 digits, not a Luhn number
            "version 1.2.3 and port 8321",
            "trace 4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            assert_eq!(r.text(text), None, "{text}");
        }
    }

    #[test]
    fn own_patterns_and_nested_values() {
        let mut r = Redactor::new(&RedactionConfig {
            mode: RedactionMode::Redact,
            builtin: vec!["email".into()],
            patterns: vec![tokentrace_config::RedactionPattern {
                name: "employee".into(),
                regex: r"EMP-\d{6}".into(),
            }],
        })
        .unwrap_or_else(|| unreachable!());
        let mut v = AttrValue::Array(vec![AttrValue::from("EMP-123456 and bob@example.com")]);
        r.value(&mut v);
        assert_eq!(
            v,
            AttrValue::Array(vec![AttrValue::from(
                "[REDACTED:employee] and [REDACTED:email]"
            )])
        );
        assert!(Redactor::new(&RedactionConfig::default()).is_none());
    }
}
