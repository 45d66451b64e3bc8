//! `tokentrace trace TRACE_ID`: one trace as a tree with a waterfall.

use tokentrace_model::TraceId;
use tokentrace_pipeline::sinks::console::tree::{self, TreeSpan, TreeStyle, duration};

use super::out::{self, BOLD, DIM, Term};
use super::source::Source;
use super::{CliError, CliResult, SourceArgs};

/// Arguments of `tokentrace trace`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tokentrace trace 4bf92f3577b34da6a3ce929d0e0e4736
  tokentrace trace 4bf92f3577b34da6a3ce929d0e0e4736 --full
  tokentrace trace 4bf92f3577b34da6a3ce929d0e0e4736 --json | jq '.[].name'")]
pub struct TraceArgs {
    /// The trace id (32 hex digits).
    pub trace_id: String,
    /// Every attribute, and the GenAI conversation as messages.
    #[arg(long)]
    pub full: bool,
    /// The spans as JSON (the `get_span_tree` answer of the root).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// Runs `tokentrace trace`.
pub fn run(args: TraceArgs) -> CliResult {
    let id: TraceId = args
        .trace_id
        .parse()
        .map_err(|e| CliError(format!("trace id {:?}: {e}", args.trace_id)))?;
    let source = Source::open(&args.source)?;
    let trace = source
        .get_trace(id)?
        .ok_or_else(|| CliError(format!("trace {id} not found")))?;
    let spans = source.span_tree(trace.root_span_id)?.unwrap_or_default();
    if args.json {
        return out::print_json(&spans);
    }
    let mut spans: Vec<_> = spans.into_values().collect();
    spans.sort_by_key(|s| s.span.start_time);
    let term = Term::stdout();
    let total = trace
        .end_time
        .map(|e| duration((e.unix_nanos() - trace.start_time.unix_nanos()) as f64 / 1e6))
        .unwrap_or_else(|| "open".into());
    let local = trace.start_time.to_datetime().with_timezone(&chrono::Local);
    out::line(&format!(
        "{}  {}",
        term.paint(BOLD, &format!("trace {id}")),
        term.paint(
            DIM,
            &format!(
                "{} spans · {total} · {}",
                spans.len(),
                local.format("%Y-%m-%d %H:%M:%S%.3f")
            )
        )
    ));
    let view: Vec<TreeSpan<'_>> = spans
        .iter()
        .map(|s| TreeSpan {
            span_id: s.span.span_id,
            parent: s.span.parent_span_id,
            name: &s.span.name,
            start: s.span.start_time,
            end: s.span.end_time,
            status: s.status,
            status_message: None,
            attributes: &s.span.attributes,
        })
        .collect();
    let style = if args.full {
        TreeStyle::full(term.color, term.width)
    } else {
        TreeStyle::brief(term.color, term.width)
    };
    for l in tree::render(&view, &style) {
        out::line(&l);
    }
    Ok(())
}
