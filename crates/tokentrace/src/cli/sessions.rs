//! `tokentrace sessions`: the sessions with LLM calls in a window, latest activity first, with
//! their calls, tokens, cost and users.

use tokentrace_model::Timestamp;
use tokentrace_model::query::SessionsRequest;

use super::out::{self, Cell, Table};
use super::source::Source;
use super::usage::cost;
use super::{CliResult, FormatArgs, SourceArgs, iso_time};

/// Arguments of `tokentrace sessions`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "A session is the calls' (or their traces') session.id (also session_id,
gen_ai.conversation.id). The gateway reads it from W3C baggage, the X-Session-Id header or the
request's metadata.session_id.

Examples:
  tokentrace sessions
  tokentrace sessions --since 7d --user alice
  tokentrace sessions --json | jq '.data[0]'"
)]
pub struct SessionsArgs {
    /// Window start: an age (1h, 24h, 7d), an ISO time or unix seconds.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Window end (default now).
    #[arg(long)]
    pub until: Option<String>,
    /// Only the sessions of this user (`user.id`).
    #[arg(long)]
    pub user: Option<String>,
    /// Only sessions with a call of this (answering) model.
    #[arg(long)]
    pub model: Option<String>,
    /// Most sessions (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// Runs `tokentrace sessions`.
pub fn run(args: SessionsArgs) -> CliResult {
    let now = Timestamp::now();
    let req = SessionsRequest {
        since: iso_time(Some(&args.since), now)?,
        until: iso_time(args.until.as_deref(), now)?,
        user: args.user,
        model: args.model,
        limit: Some(args.limit),
    };
    let answer = Source::open(&args.source)?.sessions(&req)?;
    if args.format.json {
        return out::print_json(&answer);
    }
    if answer.data.is_empty() && !args.format.csv {
        eprintln!("no sessions in this window");
        return Ok(());
    }
    let rows = answer
        .data
        .iter()
        .map(|s| {
            let u = &s.usage;
            vec![
                Cell::new(s.session_id.clone()),
                Cell::num(u.traces.to_string()),
                Cell::num(u.calls.to_string()),
                Cell::num(u.input_tokens.to_string()),
                Cell::num(u.output_tokens.to_string()),
                Cell::num(cost(u.cost_usd, u.unpriced_calls)),
                Cell::new(u.users.join(",")),
                Cell::new(out::local_time(u.first)),
                Cell::new(out::local_time(u.last)),
            ]
        })
        .collect();
    let table = Table {
        headers: [
            "SESSION", "TURNS", "CALLS", "IN", "OUT", "COST", "USERS", "FIRST", "LAST",
        ]
        .map(str::to_string)
        .to_vec(),
        rows,
        flexible: vec![(0, 12), (6, 8)],
    };
    table.print(args.format.csv);
    if answer.more > 0 && !args.format.csv {
        eprintln!(
            "{} more sessions: narrow the window or raise --limit",
            answer.more
        );
    }
    Ok(())
}
