//! Spans arrive child first (a span is complete when it ends, and a parent ends after its
//! children); people read traces parent first. [`Grouper`] holds a trace's spans until its root
//! arrives and then gives the whole trace, to print as a tree ([`super::tree`]). A span that
//! arrives after its trace was given is given alone, as late; a trace whose root does not come
//! within the wait is given as it is. Bounded: at most `max_spans` spans are held (past it the
//! oldest trace is given early), and at most [`REMEMBERED`] given traces are remembered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tokentrace_model::{Attributes, SpanId, SpanStatus, Timestamp, TraceId};

use super::tree::{self, TreeSpan, TreeStyle, duration};

/// Traces remembered after they were given, to tell a late span from a new trace.
pub const REMEMBERED: usize = 10_000;

/// A span, owned, with what the tree shows.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedSpan {
    /// Trace.
    pub trace_id: TraceId,
    /// Span.
    pub span_id: SpanId,
    /// Parent.
    pub parent: Option<SpanId>,
    /// Name.
    pub name: String,
    /// Start.
    pub start: Timestamp,
    /// End.
    pub end: Option<Timestamp>,
    /// Status.
    pub status: Option<SpanStatus>,
    /// Status message.
    pub status_message: Option<String>,
    /// Attributes.
    pub attributes: Attributes,
}

impl OwnedSpan {
    fn view(&self) -> TreeSpan<'_> {
        TreeSpan {
            span_id: self.span_id,
            parent: self.parent,
            name: &self.name,
            start: self.start,
            end: self.end,
            status: self.status,
            status_message: self.status_message.as_deref(),
            attributes: &self.attributes,
        }
    }
}

/// What to print.
#[derive(Debug, PartialEq)]
pub enum Block {
    /// A trace whose root arrived, with every span held for it.
    Trace(Vec<OwnedSpan>),
    /// A trace whose root did not arrive in time (or that was given early to stay in bounds).
    Incomplete(Vec<OwnedSpan>),
    /// A span of a trace given before.
    Late(OwnedSpan),
}

struct Pending {
    since: Instant,
    spans: Vec<OwnedSpan>,
}

/// Groups spans into traces (see the module's text).
pub struct Grouper {
    pending: HashMap<TraceId, Pending>,
    held: usize,
    max_spans: usize,
    wait: Duration,
    given: HashSet<TraceId>,
    given_order: VecDeque<TraceId>,
}

impl Grouper {
    /// Holds at most `max_spans` spans, each trace at most `wait` for its root.
    pub fn new(max_spans: usize, wait: Duration) -> Self {
        Self {
            pending: HashMap::new(),
            held: 0,
            max_spans: max_spans.max(1),
            wait,
            given: HashSet::new(),
            given_order: VecDeque::new(),
        }
    }

    fn remember(&mut self, id: TraceId) {
        if self.given.insert(id) {
            self.given_order.push_back(id);
            if self.given_order.len() > REMEMBERED
                && let Some(old) = self.given_order.pop_front()
            {
                self.given.remove(&old);
            }
        }
    }

    fn take(&mut self, id: TraceId) -> Vec<OwnedSpan> {
        let spans = self
            .pending
            .remove(&id)
            .map(|p| p.spans)
            .unwrap_or_default();
        self.held -= spans.len();
        self.remember(id);
        spans
    }

    /// Takes a span; returns what is ready to print.
    pub fn add(&mut self, span: OwnedSpan, now: Instant) -> Vec<Block> {
        let id = span.trace_id;
        if self.given.contains(&id) && !self.pending.contains_key(&id) {
            return vec![Block::Late(span)];
        }
        let is_root = span.parent.is_none();
        self.pending
            .entry(id)
            .or_insert_with(|| Pending {
                since: now,
                spans: Vec::new(),
            })
            .spans
            .push(span);
        self.held += 1;
        let mut out = Vec::new();
        if is_root {
            out.push(Block::Trace(self.take(id)));
        }
        while self.held > self.max_spans {
            let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.since)
                .map(|(k, _)| *k)
            else {
                break;
            };
            out.push(Block::Incomplete(self.take(oldest)));
        }
        out
    }

    /// The traces that waited longer than the wait for their root.
    pub fn expire(&mut self, now: Instant) -> Vec<Block> {
        let mut stale: Vec<(Instant, TraceId)> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= self.wait)
            .map(|(k, p)| (p.since, *k))
            .collect();
        stale.sort();
        stale
            .into_iter()
            .map(|(_, id)| Block::Incomplete(self.take(id)))
            .collect()
    }

    /// Everything still held (at the end).
    pub fn drain(&mut self) -> Vec<Block> {
        self.expire(Instant::now() + self.wait)
    }
}

fn short(id: &impl std::fmt::Display) -> String {
    id.to_string().chars().take(8).collect()
}

/// The lines of a block: a header line (time, trace id, root, duration), then the tree.
pub fn render(block: &Block, style: &TreeStyle) -> Vec<String> {
    let paint = |code: &str, s: &str| tree::paint(style.color, code, s);
    let (spans, note): (Vec<&OwnedSpan>, &str) = match block {
        Block::Trace(s) => (s.iter().collect(), ""),
        Block::Incomplete(s) => (s.iter().collect(), "  (without its root)"),
        Block::Late(s) => (vec![s], "  late span"),
    };
    let Some(first) = spans.iter().min_by_key(|s| s.start) else {
        return Vec::new();
    };
    let end = spans.iter().filter_map(|s| s.end).max();
    let took = end
        .map(|e| duration((e.unix_nanos() - first.start.unix_nanos()) as f64 / 1e6))
        .unwrap_or_default();
    let at = end
        .unwrap_or(first.start)
        .to_datetime()
        .with_timezone(&chrono::Local);
    let count = match spans.len() {
        1 => "1 span".to_string(),
        n => format!("{n} spans"),
    };
    let mut out = vec![format!(
        "{}  {}  {}",
        paint(tree::DIM, &at.format("%H:%M:%S%.3f").to_string()),
        paint(tree::BOLD, &format!("trace {}", short(&first.trace_id))),
        paint(tree::DIM, &format!("{count} · {took}{note}")),
    )];
    let view: Vec<TreeSpan<'_>> = spans.iter().map(|s| s.view()).collect();
    let inner = TreeStyle {
        width: style.width.saturating_sub(2),
        ..*style
    };
    out.extend(
        tree::render(&view, &inner)
            .into_iter()
            .map(|l| format!("  {l}")),
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn span(trace: TraceId, parent: Option<SpanId>, name: &str) -> OwnedSpan {
        OwnedSpan {
            trace_id: trace,
            span_id: SpanId::random(),
            parent,
            name: name.into(),
            start: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
            end: Some(Timestamp::from_unix_nanos(1_700_000_000_100_000_000)),
            status: Some(SpanStatus::Ok),
            status_message: None,
            attributes: Attributes::new(),
        }
    }

    #[test]
    fn a_trace_is_given_whole_when_its_root_arrives_and_later_spans_are_late() {
        let mut g = Grouper::new(100, Duration::from_secs(10));
        let now = Instant::now();
        let t = TraceId::random();
        let root = span(t, None, "request");
        let child = span(t, Some(root.span_id), "call");
        assert!(g.add(child.clone(), now).is_empty());
        let out = g.add(root.clone(), now);
        assert_eq!(out, vec![Block::Trace(vec![child, root.clone()])]);
        let late = span(t, Some(root.span_id), "after");
        assert_eq!(g.add(late.clone(), now), vec![Block::Late(late)]);
        let lines = render(&out[0], &TreeStyle::brief(false, 100));
        assert!(lines[0].contains("2 spans"), "{lines:#?}");
        assert!(lines[1].trim_start().starts_with("request"), "{lines:#?}");
        assert!(lines[2].trim_start().starts_with("└─ call"), "{lines:#?}");
    }

    #[test]
    fn waiting_and_holding_are_bounded() {
        let mut g = Grouper::new(2, Duration::from_secs(10));
        let now = Instant::now();
        let (a, b) = (TraceId::random(), TraceId::random());
        let orphan = Some(SpanId::random());
        assert!(g.add(span(a, orphan, "a1"), now).is_empty());
        assert!(g.add(span(a, orphan, "a2"), now).is_empty());
        // A third span held is one too many: the oldest trace goes out as it is.
        let out = g.add(span(b, orphan, "b1"), now + Duration::from_millis(1));
        assert!(
            matches!(&out[..], [Block::Incomplete(s)] if s.len() == 2),
            "{out:?}"
        );
        assert!(g.expire(now + Duration::from_secs(5)).is_empty());
        let out = g.expire(now + Duration::from_secs(11));
        assert!(
            matches!(&out[..], [Block::Incomplete(s)] if s[0].name == "b1"),
            "{out:?}"
        );
        assert_eq!(g.held, 0);
    }
}
