//! `tokentrace traces`: the trace list as a table, JSON or CSV.

use tokentrace_model::query::{MAX_PAGE, TraceStatus, TraceSummary};
use tokentrace_pipeline::sinks::console::tree::duration;

use super::out::{self, Cell, DIM, RED, Table, YELLOW};
use super::source::Source;
use super::{CliResult, FilterArgs, FormatArgs, SourceArgs};

/// Arguments of `tokentrace traces`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tokentrace traces --since 1h
  tokentrace traces --model gpt-4o-mini --errors --limit 100
  tokentrace traces --where user.id=alice --json
  tokentrace traces --url http://127.0.0.1:8321 --csv > traces.csv")]
pub struct TracesArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// At most this many traces, newest first.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// Runs `tokentrace traces`.
pub fn run(args: TracesArgs) -> CliResult {
    let mut req = args.filter.request()?;
    let source = Source::open(&args.source)?;
    let mut traces = Vec::new();
    while traces.len() < args.limit {
        req.limit = Some((args.limit - traces.len()).min(MAX_PAGE) as i64);
        let page = source.list_traces(&req)?;
        traces.extend(page.data);
        match page.next {
            Some(next) => req.cursor = Some(next),
            None => break,
        }
    }
    if args.format.json {
        return out::print_json(&traces);
    }
    if traces.is_empty() && !args.format.csv {
        eprintln!("no traces match");
        return Ok(());
    }
    table(&traces, args.format.csv).print(args.format.csv);
    Ok(())
}

fn tokens(n: Option<i64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

/// The table of a trace list; CSV gets full ids and ISO times.
pub fn table(traces: &[TraceSummary], csv: bool) -> Table {
    let rows = traces
        .iter()
        .map(|t| {
            let time = if csv {
                t.start_time.to_iso()
            } else {
                super::out::local_time(t.start_time)
            };
            let code = match t.status {
                TraceStatus::Error => RED,
                TraceStatus::Open => YELLOW,
                TraceStatus::Ok => "",
            };
            vec![
                Cell::new(time).paint(DIM),
                Cell::new(t.root_name.clone().unwrap_or_default()),
                Cell::new(t.service_name.clone().unwrap_or_default()),
                Cell::new(t.models.join(",")),
                Cell::num(t.duration_ms.map(duration).unwrap_or_default()),
                Cell::num(tokens(t.input_tokens)),
                Cell::num(tokens(t.output_tokens)),
                Cell::new(t.status.as_str()).paint(code),
                Cell::new(t.trace_id.to_string()).paint(DIM),
            ]
        })
        .collect();
    Table {
        headers: [
            "TIME", "ROOT", "SERVICE", "MODEL", "DURATION", "IN", "OUT", "STATUS", "TRACE ID",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        // The root's name is what people read: it keeps 28 characters longest.
        flexible: vec![(1, 28), (2, 8), (3, 8)],
    }
}
