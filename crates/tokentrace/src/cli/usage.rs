//! `tokentrace usage`: LLM calls and tokens over a window, per model, provider, user, session or
//! service.

use tokentrace_model::Timestamp;
use tokentrace_model::query::{UsageGroup, UsageRequest};
use tokentrace_pipeline::sinks::console::tree::duration;

use super::out::{self, Cell, Table};
use super::source::Source;
use super::{CliResult, FormatArgs, SourceArgs, iso_time};

/// What to group by, as typed.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum By {
    /// The answering model.
    #[value(name = "model_id", alias = "model")]
    Model,
    /// The provider.
    #[value(name = "provider_id", alias = "provider")]
    Provider,
    /// `user.id`.
    #[value(name = "user", alias = "user.id")]
    User,
    /// `session.id`.
    #[value(name = "session", alias = "session.id")]
    Session,
    /// The service.
    #[value(name = "service", alias = "service.name")]
    Service,
}

/// Arguments of `tokentrace usage`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Calls are the spans that carry token usage (gen_ai.usage.input_tokens / output_tokens): the
gateway's provider calls and the LLM spans of OpenTelemetry GenAI instrumentations. COST adds up
tokentrace.cost.usd (the price table's); ? marks calls of models without a price.

Examples:
  tokentrace usage
  tokentrace usage --since 7d --by user
  tokentrace usage --since 1h --by session --json"
)]
pub struct UsageArgs {
    /// Window start: an age (1h, 24h, 7d), an ISO time or unix seconds.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Window end (default now).
    #[arg(long)]
    pub until: Option<String>,
    /// Group by.
    #[arg(long, value_enum, default_value = "model_id")]
    pub by: By,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// A cost in USD as shown in tables: cents for a cent or more, else four significant digits;
/// `?` when no call was priced, `+?` after it when some were not.
pub fn cost(usd: Option<f64>, unpriced: u64) -> String {
    let shown = match usd {
        None => return "?".into(),
        Some(c) if c >= 0.01 || c == 0.0 => format!("${c:.2}"),
        Some(c) => {
            let decimals = ((-c.log10()).ceil() as usize + 3).min(12);
            format!("${c:.decimals$}")
        }
    };
    if unpriced > 0 {
        format!("{shown}+?")
    } else {
        shown
    }
}

/// Runs `tokentrace usage`.
pub fn run(args: UsageArgs) -> CliResult {
    let now = Timestamp::now();
    let req = UsageRequest {
        since: iso_time(Some(&args.since), now)?,
        until: iso_time(args.until.as_deref(), now)?,
        by: match args.by {
            By::Model => UsageGroup::Model,
            By::Provider => UsageGroup::Provider,
            By::User => UsageGroup::User,
            By::Session => UsageGroup::Session,
            By::Service => UsageGroup::Service,
        },
    };
    let answer = Source::open(&args.source)?.usage(&req)?;
    if args.format.json {
        return out::print_json(&answer);
    }
    if answer.data.is_empty() && !args.format.csv {
        eprintln!("no LLM calls in this window");
        return Ok(());
    }
    let rows = answer
        .data
        .iter()
        .map(|u| {
            vec![
                Cell::new(u.key.clone().unwrap_or_else(|| "(none)".into())),
                Cell::num(u.calls.to_string()),
                Cell::num(u.traces.to_string()),
                Cell::num(u.errors.to_string()),
                Cell::num(u.input_tokens.to_string()),
                Cell::num(u.output_tokens.to_string()),
                Cell::num((u.input_tokens + u.output_tokens).to_string()),
                Cell::num(cost(u.cost_usd, u.unpriced_calls)),
                Cell::num(u.p50_duration_ms.map(duration).unwrap_or_default()),
                Cell::num(u.p95_duration_ms.map(duration).unwrap_or_default()),
            ]
        })
        .collect();
    let table = Table {
        headers: [
            answer.by.as_str(),
            "CALLS",
            "TRACES",
            "ERRORS",
            "IN",
            "OUT",
            "TOTAL",
            "COST",
            "P50",
            "P95",
        ]
        .map(|h| h.to_uppercase())
        .to_vec(),
        rows,
        flexible: vec![(0, 8)],
    };
    table.print(args.format.csv);
    Ok(())
}
