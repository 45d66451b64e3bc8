//! `tokentrace sql "SELECT …"`: read-only SQL on the store, as a table, JSON or CSV.

use serde_json::{Map, Value};

use super::out::{self, Cell, Table};
use super::source::Source;
use super::{CliResult, FormatArgs, SourceArgs};

/// Arguments of `tokentrace sql`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "The tables and views are those of docs/ARCHITECTURE.md: traces, spans, span_events, metrics.
Only reading is allowed; a statement that would write is refused.

Examples:
  tokentrace sql \"SELECT name, COUNT(*) FROM spans GROUP BY name ORDER BY 2 DESC\"
  tokentrace sql \"SELECT trace_id, start_time FROM traces ORDER BY start_time DESC LIMIT 5\" --json
  tokentrace sql --url http://127.0.0.1:8321 \"SELECT COUNT(*) AS spans FROM spans\" --csv"
)]
pub struct SqlArgs {
    /// One SQL statement.
    pub sql: String,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// Runs `tokentrace sql`.
pub fn run(args: SqlArgs) -> CliResult {
    let answer = Source::open(&args.source)?.sql(&args.sql)?;
    if answer.truncated {
        eprintln!(
            "tokentrace: only the first {} rows are shown; add a LIMIT or narrow the query",
            answer.rows.len()
        );
    }
    if args.format.json {
        let rows: Vec<Map<String, Value>> = answer
            .rows
            .iter()
            .map(|r| {
                answer
                    .columns
                    .iter()
                    .cloned()
                    .zip(r.iter().cloned())
                    .collect()
            })
            .collect();
        return out::print_json(&rows);
    }
    let n = answer.columns.len();
    let table = Table {
        headers: answer.columns.clone(),
        rows: answer
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|v| match v {
                        Value::Number(_) => Cell::num(out::json_text(v)),
                        _ => Cell::new(out::json_text(v)),
                    })
                    .collect()
            })
            .collect(),
        flexible: (0..n).map(|i| (i, 8)).collect(),
    };
    table.print(args.format.csv);
    Ok(())
}
