//! What untrusted bytes reach, one function per fuzz target: each takes any input and must
//! return without panicking, and checks what must hold of what it parsed. `fuzz/` drives them
//! with libFuzzer (`cargo fuzz run <target>`); `tests/corpora.rs` replays the minimised corpora
//! in `fuzz/corpus/` as ordinary tests.

use std::sync::OnceLock;

use tokentrace_model::{LogEventRequest, TraceParent};
use tokentrace_otlp::{Encoding, decode_logs, decode_metrics, decode_traces};
use tokentrace_pipeline::{Pipeline, PipelineOptions, Telemetry};

/// A fuzz target: any input, no panic.
pub type Target = fn(&[u8]);

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("events_json", events_json),
    ("otlp_protobuf", otlp_protobuf),
    ("otlp_json", otlp_json),
    ("sse", sse),
    ("run_config", run_config),
    ("traceparent", traceparent),
];

fn pipeline() -> &'static Telemetry {
    static P: OnceLock<(Pipeline, Telemetry)> = OnceLock::new();
    &P.get_or_init(|| {
        // No sinks: the assembler alone, with small bounds, so a long run stays small.
        let options = PipelineOptions {
            max_open_spans: 1_000,
            max_open_bytes: 1 << 20,
            ..PipelineOptions::default()
        };
        let p = match Pipeline::start(options, Vec::new()) {
            Ok(p) => p,
            Err(e) => panic!("cannot start the pipeline: {e}"),
        };
        let t = p.telemetry();
        (p, t)
    })
    .1
}

/// `POST /v1/telemetry/events`: the body as the server decodes it, then into the assembler.
pub fn events_json(data: &[u8]) {
    if let Ok(req) = tokentrace_server::extract::decode_json::<LogEventRequest>(data) {
        // A full queue is an answer (503), not a failure.
        let _ = pipeline().log_event(req.event, req.ttl_seconds);
    }
}

fn otlp(data: &[u8], encoding: Encoding) {
    if let Ok(req) = decode_traces(data, encoding) {
        let spans = tokentrace_otlp::traces_to_spans(&req, None);
        for s in &spans.items {
            assert!(s.end_time.is_none_or(|e| e >= s.start_time), "{s:?}");
        }
    }
    if let Ok(req) = decode_metrics(data, encoding) {
        let _ = tokentrace_otlp::metrics_to_points(&req, None);
    }
    if let Ok(req) = decode_logs(data, encoding) {
        let _ = tokentrace_otlp::logs_to_events(&req, None);
    }
}

/// The OTLP receiver's protobuf bodies, decoded and converted.
pub fn otlp_protobuf(data: &[u8]) {
    otlp(data, Encoding::Protobuf);
}

/// The OTLP receiver's JSON bodies, decoded and converted.
pub fn otlp_json(data: &[u8]) {
    otlp(data, Encoding::Json);
}

/// An upstream's server-sent events, split at every byte the first byte names: what is parsed
/// must not depend on where the chunks end.
pub fn sse(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let parse = |chunk: usize| {
        let mut p = tokentrace_server::gateway::sse::SseParser::default();
        let mut events: Vec<String> = Vec::new();
        for c in rest.chunks(chunk.max(1)) {
            events.extend(p.push(c).into_iter().map(|e| e.data));
        }
        events.extend(p.finish().map(|e| e.data));
        events
    };
    assert_eq!(parse(step as usize), parse(rest.len().max(1)));
}

/// A run config with `${env.*}` substitution.
pub fn run_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| match name {
        "SET" => Some("value".to_string()),
        "NUM" => Some("42".to_string()),
        "YAML" => Some("{a: [1, 2]}\n- x".to_string()),
        _ => None,
    };
    if let Ok(config) = tokentrace_config::load_from_str(text, "fuzz", &env) {
        // What check-config prints reads back (secrets aside).
        let _ = tokentrace_config::load_from_str(&config.effective_yaml(), "effective", &env);
    }
}

/// A W3C `traceparent` header: what parses prints back as itself.
pub fn traceparent(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tp) = TraceParent::parse(text) {
        let again = TraceParent::parse(&tp.to_string());
        assert_eq!(again.ok(), Some(tp), "{text:?}");
    }
}
