//! `tokentrace tail`: spans as they are stored, each trace printed as a tree once its root
//! arrives (as the console sink prints them), until Ctrl-C. From a file it follows the store;
//! from a server, its span feed.

use std::time::{Duration, Instant};

use tokentrace_model::SpanWithStatus;
use tokentrace_model::query::SpanFeedRequest;
use tokentrace_pipeline::sinks::console::group::{self, Grouper, OwnedSpan};
use tokentrace_pipeline::sinks::console::tree::TreeStyle;

use super::out::{self, Term};
use super::source::Source;
use super::{CliResult, SourceArgs, parse_where};

/// Arguments of `tokentrace tail`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Spans are stored when they end, children before their parents: a trace is printed when its
root arrives, and a span that comes after that under a \"late span\" line.

Examples:
  tokentrace tail
  tokentrace tail --service my-agent
  tokentrace tail --where gen_ai.request.model=gpt-4o-mini --full
  tokentrace tail --url http://127.0.0.1:8321"
)]
pub struct TailArgs {
    /// Only spans of this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only spans matching this attribute filter (key=value, key!=value, key>value, key<value).
    #[arg(long = "where", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Every attribute and the GenAI conversation.
    #[arg(long)]
    pub full: bool,
    /// Longest a trace waits for its root before it is printed without it, in seconds
    /// (default 10; 1 with --where, which may leave the root out).
    #[arg(long)]
    pub wait: Option<u64>,
    /// Time between two looks at the store, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub interval: u64,
    #[command(flatten)]
    pub source: SourceArgs,
}

fn owned(s: SpanWithStatus) -> OwnedSpan {
    OwnedSpan {
        trace_id: s.span.trace_id,
        span_id: s.span.span_id,
        parent: s.span.parent_span_id,
        name: s.span.name,
        start: s.span.start_time,
        end: s.span.end_time,
        status: s.status,
        status_message: None,
        attributes: s.span.attributes,
    }
}

/// Runs `tokentrace tail`.
pub fn run(args: TailArgs) -> CliResult {
    let source = Source::open(&args.source)?;
    let mut req = SpanFeedRequest {
        after: None,
        limit: None,
        service: args.service.clone(),
        filters: args
            .filters
            .iter()
            .map(|f| parse_where(f))
            .collect::<Result<_, _>>()?,
    };
    // Starts at the newest span: only what is stored from now on is printed.
    req.after = Some(source.spans_after(&req)?.next);
    let term = Term::stdout();
    let style = if args.full {
        TreeStyle::full(term.color, term.width)
    } else {
        TreeStyle::brief(term.color, term.width)
    };
    let wait = args
        .wait
        .unwrap_or(if args.filters.is_empty() { 10 } else { 1 });
    let mut grouper = Grouper::new(100_000, Duration::from_secs(wait));
    eprintln!("following new spans; Ctrl-C stops");
    loop {
        let feed = source.spans_after(&req)?;
        let full_page = feed.data.len() >= tokentrace_model::query::MAX_FEED;
        req.after = Some(feed.next);
        let now = Instant::now();
        let mut blocks = Vec::new();
        for s in feed.data {
            blocks.extend(grouper.add(owned(s), now));
        }
        blocks.extend(grouper.expire(now));
        for b in &blocks {
            group::render(b, &style).iter().for_each(|l| out::line(l));
        }
        if !full_page {
            std::thread::sleep(Duration::from_millis(args.interval.max(10)));
        }
    }
}
