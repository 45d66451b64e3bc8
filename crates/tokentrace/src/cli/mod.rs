//! The subcommands that look at stored telemetry: `traces`, `trace`, `tail`, `sql`, `metrics`,
//! `usage`, `sessions`, `export`, and beside them `import` and `check-config`. Each reading one reads a store file
//! directly (read-only, `--db`/`--config`) or asks a running server (`--url`), through
//! [`source::Source`], which calls the same store functions either way: in-process, or behind
//! the server's routes. `import` sends to a server's (or any) OTLP receiver.

pub mod check;
pub mod export;
pub mod metrics;
pub mod out;
pub mod sessions;
pub mod source;
pub mod sql;
pub mod tail;
pub mod trace;
pub mod traces;
pub mod usage;

use std::path::PathBuf;

use tokentrace_model::Timestamp;
use tokentrace_model::query::parse_granularity;

/// Where the telemetry is read from.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SourceArgs {
    /// Read this store file (read-only: safe while a server writes to it). Default: the
    /// run config's `sqlite_db_path` (with --config), else the default store.
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Run config whose `telemetry.sqlite_db_path` is the store to read.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Ask this running server instead of reading a file, e.g. http://127.0.0.1:8321.
    #[arg(
        long,
        env = "TOKENTRACE_URL",
        value_name = "URL",
        conflicts_with = "db"
    )]
    pub url: Option<String>,
    /// Key sent to the server as `Authorization: Bearer <key>`.
    #[arg(
        long,
        env = "TOKENTRACE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// Only this project's telemetry: sent to the server as `X-Tokentrace-Project` (one of the
    /// key's projects), and with a file, every read is limited to it.
    #[arg(long, env = "TOKENTRACE_PROJECT", value_name = "NAME")]
    pub project: Option<String>,
}

/// Which traces: the filters of `traces` and `export`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FilterArgs {
    /// Traces that started at or after this: an age (15m, 1h, 7d), an ISO time or unix seconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Traces that started before this (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only traces with a span of this model (requested or answering).
    #[arg(long)]
    pub model: Option<String>,
    /// Only traces with an error span.
    #[arg(long)]
    pub errors: bool,
    /// An attribute filter some span must match: key=value, key!=value, key>value, key<value.
    #[arg(long = "where", value_name = "FILTER")]
    pub filters: Vec<String>,
}

impl FilterArgs {
    /// The trace-list request these select (first page, default size).
    pub fn request(&self) -> Result<tokentrace_model::query::ListTracesRequest, CliError> {
        let now = Timestamp::now();
        Ok(tokentrace_model::query::ListTracesRequest {
            since: iso_time(self.since.as_deref(), now)?,
            until: iso_time(self.until.as_deref(), now)?,
            service: self.service.clone(),
            model: self.model.clone(),
            errors_only: self.errors,
            filters: self
                .filters
                .iter()
                .map(|f| parse_where(f))
                .collect::<Result<_, _>>()?,
            limit: None,
            cursor: None,
        })
    }
}

/// Output format of tables.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct FormatArgs {
    /// JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV (RFC 4180, with a header row) instead of a table.
    #[arg(long)]
    pub csv: bool,
}

/// Why a subcommand failed: printed as `tokentrace: <message>`, exit code 1. Anything that
/// displays converts into it.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// Result of a subcommand.
pub type CliResult = Result<(), CliError>;

/// An optional time as typed ([`parse_time`]), as the ISO text the query routes take.
pub fn iso_time(s: Option<&str>, now: Timestamp) -> Result<Option<String>, CliError> {
    s.map(|s| parse_time(s, now).map(Timestamp::to_iso))
        .transpose()
}

/// Parses a time given on the command line: an age (`30s`, `15m`, `1h`, `7d`, `2w`: that long
/// before `now`), an ISO 8601 time, or unix seconds.
pub fn parse_time(s: &str, now: Timestamp) -> Result<Timestamp, CliError> {
    if let Ok(secs) = parse_granularity(s) {
        return Ok(Timestamp::from_unix_nanos(
            now.unix_nanos()
                .saturating_sub(secs.saturating_mul(1_000_000_000)),
        ));
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Timestamp::from_unix_seconds_f64(secs)
            .ok_or_else(|| CliError(format!("time {s:?} is out of range")));
    }
    Timestamp::parse_iso(s).map_err(|_| {
        CliError(format!(
            "time {s:?}: give an age such as 15m, 1h or 7d, an ISO 8601 time (2026-01-31T12:00:00Z) or unix seconds"
        ))
    })
}

/// Parses `key=value` (also `key!=value`, `key>value`, `key<value`) into a filter. A value that
/// reads as a number or `true`/`false` is compared as one.
pub fn parse_where(s: &str) -> Result<tokentrace_model::query::QueryCondition, CliError> {
    use tokentrace_model::AttrValue;
    use tokentrace_model::query::{QueryCondition, QueryConditionOp as Op};
    let (key, op, value) = [("!=", Op::Ne), ("=", Op::Eq), (">", Op::Gt), ("<", Op::Lt)]
        .iter()
        .find_map(|(sym, op)| s.split_once(sym).map(|(k, v)| (k, *op, v)))
        .ok_or_else(|| {
            CliError(format!(
                "--where {s:?}: expected key=value (or key!=value, key>value, key<value)"
            ))
        })?;
    let value = if let Ok(i) = value.parse::<i64>() {
        AttrValue::Int(i)
    } else if let Ok(f) = value.parse::<f64>() {
        AttrValue::Float(f)
    } else if let Ok(b) = value.parse::<bool>() {
        AttrValue::Bool(b)
    } else {
        AttrValue::String(value.to_string())
    };
    Ok(QueryCondition {
        key: key.trim().to_string(),
        op,
        value,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_are_ages_iso_or_unix_seconds() {
        let now = Timestamp::from_unix_nanos(10_000 * 1_000_000_000);
        assert_eq!(
            parse_time("1h", now).unwrap().unix_seconds(),
            10_000 - 3_600
        );
        assert_eq!(
            parse_time("1700000000", now).unwrap().unix_seconds(),
            1_700_000_000
        );
        assert_eq!(
            parse_time("2026-01-31T12:00:00Z", now).unwrap().to_iso(),
            "2026-01-31T12:00:00.000000Z"
        );
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn where_reads_operators_and_typed_values() {
        use tokentrace_model::AttrValue;
        use tokentrace_model::query::QueryConditionOp as Op;
        let c = parse_where("http.response.status_code!=200").unwrap();
        assert_eq!(
            (c.key.as_str(), c.op, c.value),
            ("http.response.status_code", Op::Ne, AttrValue::Int(200))
        );
        let c = parse_where("user.id=alice").unwrap();
        assert_eq!((c.op, c.value), (Op::Eq, AttrValue::from("alice")));
        assert!(parse_where("nothing").is_err());
    }
}
