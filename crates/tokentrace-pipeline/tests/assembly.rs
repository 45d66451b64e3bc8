//! Span assembly through a running pipeline into an in-memory sink.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokentrace_model::{
    AttrValue, Attributes, Event, LogSeverity, MetricEvent, MetricValue, SpanEndPayload, SpanId,
    SpanStartPayload, SpanStatus, StructuredLogEvent, StructuredLogPayload, Timestamp, TraceId,
    UnstructuredLogEvent,
};
use tokentrace_pipeline::sinks::memory::MemorySink;
use tokentrace_pipeline::{Pipeline, PipelineOptions, SubmitError};

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + secs * 1_000_000_000 + 123_456_789)
}

fn attrs(pairs: &[(&str, AttrValue)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn start(
    t: TraceId,
    s: SpanId,
    parent: Option<SpanId>,
    name: &str,
    at: i64,
    a: Attributes,
) -> Event {
    Event::StructuredLog(StructuredLogEvent {
        trace_id: t,
        span_id: s,
        timestamp: ts(at),
        attributes: a,
        payload: StructuredLogPayload::SpanStart(SpanStartPayload {
            name: name.to_string(),
            parent_span_id: parent,
        }),
    })
}

fn end(t: TraceId, s: SpanId, at: i64, status: SpanStatus) -> Event {
    Event::StructuredLog(StructuredLogEvent {
        trace_id: t,
        span_id: s,
        timestamp: ts(at),
        attributes: Attributes::new(),
        payload: StructuredLogPayload::SpanEnd(SpanEndPayload { status }),
    })
}

fn log(t: TraceId, s: SpanId, at: i64, msg: &str) -> Event {
    Event::UnstructuredLog(UnstructuredLogEvent {
        trace_id: t,
        span_id: s,
        timestamp: ts(at),
        attributes: Attributes::new(),
        message: msg.to_string(),
        severity: LogSeverity::Warn,
    })
}

fn metric(t: TraceId, s: SpanId, at: i64, value: i64) -> Event {
    Event::Metric(MetricEvent {
        trace_id: t,
        span_id: s,
        timestamp: ts(at),
        attributes: attrs(&[("model_id", "m".into())]),
        metric: "total_tokens".to_string(),
        value: MetricValue::Int(value),
        unit: "tokens".to_string(),
    })
}

#[test]
fn start_and_end_become_one_span_with_the_ids_and_times_sent() {
    let sink = MemorySink::new();
    let pipeline =
        Pipeline::start(PipelineOptions::default(), vec![Box::new(sink.clone())]).unwrap();
    let tel = pipeline.telemetry();
    let (t, root, child) = (TraceId::random(), SpanId::random(), SpanId::random());
    tel.log_event(
        start(t, root, None, "root", 0, attrs(&[("a", 1.into())])),
        None,
    )
    .unwrap();
    tel.log_event(
        start(t, child, Some(root), "child", 1, Attributes::new()),
        Some(60),
    )
    .unwrap();
    tel.log_event(log(t, child, 2, "hello"), None).unwrap();
    tel.log_event(metric(t, child, 2, 42), None).unwrap();
    tel.log_event(end(t, child, 3, SpanStatus::Error), None)
        .unwrap();
    tel.log_event(end(t, root, 4, SpanStatus::Ok), None)
        .unwrap();
    tel.flush().unwrap();

    let rec = sink.recorded();
    assert_eq!(rec.starts.len(), 2);
    assert_eq!(rec.spans.len(), 2);
    let c = &rec.spans[0];
    assert_eq!(
        (c.trace_id, c.span_id, c.parent_span_id),
        (t, child, Some(root))
    );
    assert_eq!(c.name, "child");
    assert_eq!(c.start_time, ts(1));
    assert_eq!(c.end_time, Some(ts(3)));
    assert_eq!(c.status, Some(SpanStatus::Error));
    assert_eq!(c.events.len(), 2, "log and metric kept inside their span");
    assert_eq!(c.duration_ms(), Some(2000.0));
    // ttl from the start event applies when the end has none
    let ttl = c.expires_at.unwrap().unix_nanos() - Timestamp::now().unix_nanos();
    assert!(ttl > 0 && ttl <= 60_000_000_000, "{ttl}");
    let r = &rec.spans[1];
    assert_eq!(r.parent_span_id, None);
    assert_eq!(r.attributes.get("a"), Some(&AttrValue::Int(1)));
    assert_eq!(rec.events.len(), 2);
    assert_eq!(rec.metrics.len(), 1);
    assert_eq!(rec.metrics[0].value, 42.0);
    assert_eq!(rec.metrics[0].span_id, Some(child));
    assert!(rec.syncs >= 1);
    drop(rec);
    pipeline.shutdown();
}

#[test]
fn logs_and_metrics_of_unknown_spans_are_kept() {
    let sink = MemorySink::new();
    let pipeline =
        Pipeline::start(PipelineOptions::default(), vec![Box::new(sink.clone())]).unwrap();
    let tel = pipeline.telemetry();
    let (t, s) = (TraceId::random(), SpanId::random());
    tel.log_event(log(t, s, 0, "orphan log"), None).unwrap();
    tel.log_event(metric(t, s, 0, 7), None).unwrap();
    tel.flush().unwrap();
    let rec = sink.recorded();
    assert_eq!(rec.events.len(), 2);
    assert_eq!(rec.events[0].span_id, Some(s));
    assert_eq!(rec.metrics.len(), 1);
    drop(rec);
    pipeline.shutdown();
}

#[test]
fn duplicate_start_is_ignored_and_orphan_end_is_stored() {
    let sink = MemorySink::new();
    let pipeline =
        Pipeline::start(PipelineOptions::default(), vec![Box::new(sink.clone())]).unwrap();
    let tel = pipeline.telemetry();
    let (t, s, o) = (TraceId::random(), SpanId::random(), SpanId::random());
    tel.log_event(start(t, s, None, "first", 0, Attributes::new()), None)
        .unwrap();
    tel.log_event(start(t, s, None, "second", 1, Attributes::new()), None)
        .unwrap();
    tel.log_event(end(t, s, 2, SpanStatus::Ok), None).unwrap();
    tel.log_event(
        start(t, s, None, "late duplicate", 3, Attributes::new()),
        None,
    )
    .unwrap();
    tel.log_event(end(t, o, 5, SpanStatus::Ok), None).unwrap();
    tel.flush().unwrap();
    let rec = sink.recorded();
    assert_eq!(rec.starts.len(), 1);
    assert_eq!(rec.spans.len(), 2);
    assert_eq!(rec.spans[0].name, "first");
    assert_eq!(rec.spans[0].start_time, ts(0));
    let orphan = &rec.spans[1];
    assert_eq!(orphan.span_id, o);
    assert_eq!(orphan.name, "unknown");
    assert_eq!(orphan.end_time, Some(ts(5)));
    assert_eq!(
        orphan.attributes.get("tokentrace.span_start_missing"),
        Some(&AttrValue::Bool(true))
    );
    assert_eq!(
        tel.stats()
            .duplicate_starts
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    drop(rec);
    pipeline.shutdown();
}

#[test]
fn a_span_end_of_another_project_does_not_end_the_span() {
    let sink = MemorySink::new();
    let pipeline =
        Pipeline::start(PipelineOptions::default(), vec![Box::new(sink.clone())]).unwrap();
    let tel = pipeline.telemetry();
    let (t, s) = (TraceId::random(), SpanId::random());
    let in_alpha = attrs(&[("tokentrace.project", AttrValue::from("alpha"))]);
    tel.log_event(start(t, s, None, "alpha's", 0, in_alpha.clone()), None)
        .unwrap();
    // Beta's sender knows the ids: its end is an orphan of its own project.
    let mut beta_end = end(t, s, 1, SpanStatus::Error);
    if let Event::StructuredLog(e) = &mut beta_end {
        e.attributes = attrs(&[("tokentrace.project", AttrValue::from("beta"))]);
    }
    tel.log_event(beta_end, None).unwrap();
    tel.flush().unwrap();
    {
        let rec = sink.recorded();
        assert_eq!(rec.spans.len(), 1, "{:?}", rec.spans);
        assert_eq!(rec.spans[0].name, "unknown");
        assert_eq!(
            rec.spans[0].attributes.get("tokentrace.project"),
            Some(&AttrValue::from("beta"))
        );
    }
    let mut alpha_end = end(t, s, 2, SpanStatus::Ok);
    if let Event::StructuredLog(e) = &mut alpha_end {
        e.attributes = in_alpha;
    }
    tel.log_event(alpha_end, None).unwrap();
    tel.flush().unwrap();
    let rec = sink.recorded();
    assert_eq!(rec.spans.len(), 2);
    assert_eq!(rec.spans[1].name, "alpha's");
    assert_eq!(rec.spans[1].status, Some(SpanStatus::Ok));
    drop(rec);
    pipeline.shutdown();
}

#[test]
fn traceparent_attribute_names_the_remote_parent_and_is_not_stored() {
    let sink = MemorySink::new();
    let pipeline =
        Pipeline::start(PipelineOptions::default(), vec![Box::new(sink.clone())]).unwrap();
    let tel = pipeline.telemetry();
    let (t, s, remote) = (TraceId::random(), SpanId::random(), SpanId::random());
    let tp = format!("00-{t}-{remote}-01");
    let a = attrs(&[
        ("traceparent", tp.into()),
        ("tracestate", "k=v".into()),
        ("x", 1.into()),
    ]);
    tel.log_event(start(t, s, None, "joined", 0, a), None)
        .unwrap();
    tel.log_event(end(t, s, 1, SpanStatus::Ok), None).unwrap();
    tel.flush().unwrap();
    let rec = sink.recorded();
    assert_eq!(rec.spans[0].parent_span_id, Some(remote));
    assert_eq!(
        rec.spans[0].attributes.keys().collect::<Vec<_>>(),
        vec!["x"]
    );
    drop(rec);
    pipeline.shutdown();
}

#[test]
fn spans_never_ended_are_flushed_unfinished_and_a_late_end_completes_them() {
    let sink = MemorySink::new();
    let options = PipelineOptions {
        span_timeout: Duration::from_millis(100),
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::start(options, vec![Box::new(sink.clone())]).unwrap();
    let tel = pipeline.telemetry();
    let (t, s) = (TraceId::random(), SpanId::random());
    tel.log_event(start(t, s, None, "slow", 0, Attributes::new()), None)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.recorded().spans.is_empty() {
        assert!(Instant::now() < deadline, "open span was never flushed");
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        let rec = sink.recorded();
        assert_eq!(rec.spans[0].end_time, None);
        assert_eq!(rec.spans[0].status, None);
    }
    tel.log_event(end(t, s, 9, SpanStatus::Ok), None).unwrap();
    tel.flush().unwrap();
    let rec = sink.recorded();
    assert_eq!(rec.spans.len(), 2);
    assert_eq!(rec.spans[1].name, "slow");
    assert_eq!(rec.spans[1].start_time, ts(0));
    assert_eq!(rec.spans[1].end_time, Some(ts(9)));
    drop(rec);
    pipeline.shutdown();
}

#[test]
fn open_spans_are_bounded_in_bytes_the_oldest_flushed_unfinished_and_counted() {
    let sink = MemorySink::new();
    let options = PipelineOptions {
        max_open_bytes: 1 << 20,
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::start(options, vec![Box::new(sink.clone())]).unwrap();
    let tel = pipeline.telemetry();
    let t = TraceId::random();
    // 30 spans that never end, each with a 100 KB attribute: about 10 fit in 1 MiB.
    let ids: Vec<SpanId> = (0..30).map(|_| SpanId::random()).collect();
    for (i, s) in ids.iter().enumerate() {
        let mut a = Attributes::new();
        a.insert("blob".into(), AttrValue::from("x".repeat(100_000)));
        tel.log_event(start(t, *s, None, &format!("big {i}"), i as i64, a), None)
            .unwrap();
    }
    tel.flush().unwrap();
    let flushed: Vec<String> = sink
        .recorded()
        .spans
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert!((19..=21).contains(&flushed.len()), "{flushed:?}");
    // Oldest first, unfinished, counted.
    let want: Vec<String> = (0..flushed.len()).map(|i| format!("big {i}")).collect();
    assert_eq!(flushed, want);
    assert!(sink.recorded().spans.iter().all(|s| s.end_time.is_none()));
    assert_eq!(
        tel.stats().spans_unfinished.load(Ordering::Relaxed),
        flushed.len() as u64
    );
    pipeline.shutdown();
    assert_eq!(sink.recorded().spans.len(), 30, "the rest at shutdown");
}

#[test]
fn open_spans_are_bounded_and_flushed_at_shutdown() {
    let sink = MemorySink::new();
    let options = PipelineOptions {
        max_open_spans: 10,
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::start(options, vec![Box::new(sink.clone())]).unwrap();
    let tel = pipeline.telemetry();
    let t = TraceId::random();
    for i in 0..25 {
        tel.log_event(
            start(t, SpanId::random(), None, "open", i, Attributes::new()),
            None,
        )
        .unwrap();
    }
    tel.flush().unwrap();
    assert_eq!(
        sink.recorded().spans.len(),
        15,
        "the 15 oldest were flushed unfinished"
    );
    pipeline.shutdown();
    let rec = sink.recorded();
    assert_eq!(rec.spans.len(), 25);
    assert!(rec.spans.iter().all(|s| s.end_time.is_none()));
}

#[test]
fn a_full_queue_is_reported_not_blocked() {
    struct Slow;
    impl tokentrace_pipeline::Sink for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn span_ended(&mut self, _: &tokentrace_model::SpanRecord) {}
        fn event(&mut self, _: &tokentrace_model::SpanEvent) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let options = PipelineOptions {
        queue_capacity: 4,
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::start(options, vec![Box::new(Slow)]).unwrap();
    let tel = pipeline.telemetry();
    let (t, s) = (TraceId::random(), SpanId::random());
    let results: Vec<_> = (0..50)
        .map(|i| tel.log_event(log(t, s, i, "x"), None))
        .collect();
    assert!(results.contains(&Err(SubmitError::Full)));
    assert!(results.iter().any(|r| r.is_ok()));
    pipeline.shutdown();
}

/// A sink that blocks on every event until its gate (the sender) is dropped: the queue fills
/// behind it.
struct Gate(std::sync::mpsc::Receiver<()>);

impl tokentrace_pipeline::Sink for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }
    fn span_ended(&mut self, _: &tokentrace_model::SpanRecord) {}
    fn event(&mut self, _: &tokentrace_model::SpanEvent) {
        let _ = self.0.recv();
    }
}

#[test]
fn the_queue_is_bounded_in_bytes_as_well_as_in_items() {
    let (closed, gate) = std::sync::mpsc::channel::<()>();
    let options = PipelineOptions {
        queue_capacity: 10_000,
        queue_max_bytes: 1 << 20,
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::start(options, vec![Box::new(Gate(gate))]).unwrap();
    let tel = pipeline.telemetry();
    let (t, s) = (TraceId::random(), SpanId::random());
    tel.log_event(log(t, s, 0, "x"), None).unwrap();
    while tel.stats().queue_depth.load(Ordering::Relaxed) > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Events of 100 KB each: the tenth or so passes the 1 MiB bound, far below 10,000 items.
    let big = "m".repeat(100_000);
    let results: Vec<_> = (1..=30)
        .map(|i| tel.log_event(log(t, s, i, &big), None))
        .collect();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert!((9..=11).contains(&accepted), "{accepted} accepted");
    assert!(
        results[accepted..]
            .iter()
            .all(|r| *r == Err(SubmitError::Full))
    );
    let held = tel.stats().queue_bytes.load(Ordering::Relaxed);
    assert!(held <= 1 << 20, "{held} bytes queued");
    assert!(!tel.has_room());
    drop(closed);
    tel.flush().unwrap();
    assert_eq!(tel.stats().queue_bytes.load(Ordering::Relaxed), 0);
    pipeline.shutdown();
}

#[test]
fn waiting_for_room_ends_when_the_sinks_catch_up_or_the_limit_passes() {
    let (closed, gate) = std::sync::mpsc::channel::<()>();
    let options = PipelineOptions {
        queue_capacity: 8,
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::start(options, vec![Box::new(Gate(gate))]).unwrap();
    let tel = pipeline.telemetry();
    let (t, s) = (TraceId::random(), SpanId::random());
    assert!(tel.has_room());
    // The first event holds the pipeline thread at the gate once it has taken it...
    tel.log_event(log(t, s, 0, "x"), None).unwrap();
    while tel.stats().queue_depth.load(Ordering::Relaxed) > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // ...so the next ones fill the queue.
    let accepted = (1..20)
        .filter(|i| tel.log_event(log(t, s, *i, "x"), None).is_ok())
        .count();
    assert_eq!(accepted, 8);
    assert!(!tel.has_room());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // Ingestion's level is lower: it waits too, and is let in once the queue drains.
    assert!(!tel.has_room_for_ingest());
    assert!(!rt.block_on(tel.wait_for_ingest_room(Duration::from_millis(20))));
    let started = Instant::now();
    assert!(!rt.block_on(tel.wait_for_room(Duration::from_millis(100))));
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(tel.stats().room_wait_timeouts.load(Ordering::Relaxed), 1);

    // Released while a caller waits: the wait ends as soon as the queue drains.
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(closed);
    });
    assert!(rt.block_on(tel.wait_for_ingest_room(Duration::from_secs(30))));
    assert!(tel.has_room_for_ingest());
    assert!(rt.block_on(tel.wait_for_room(Duration::from_secs(30))));
    assert!(tel.has_room());
    // The last wait found room at once; ingestion's waits are not counted with the API
    // requests' (`tokentrace_backpressure_*`): only the first, timed-out wait is.
    assert_eq!(tel.stats().room_waits.load(Ordering::Relaxed), 1);
    assert_eq!(tel.stats().room_wait_timeouts.load(Ordering::Relaxed), 1);
    opener.join().unwrap();
    pipeline.shutdown();
}

/// An OpenLLMetry LLM span sent as Llama Stack events is understood when it ends: canonical
/// attributes, a price, token and cost metric points (one per series, in name order) labelled
/// by origin, once even when sent again; a gateway call's span makes an application's span of
/// the same call counted by it.
#[test]
fn llm_spans_sent_as_events_are_understood_priced_and_counted_once() {
    let sink = MemorySink::new();
    let pipeline =
        Pipeline::start(PipelineOptions::default(), vec![Box::new(sink.clone())]).unwrap();
    let tel = pipeline.telemetry();
    let (t, s) = (TraceId::random(), SpanId::random());
    let llm = attrs(&[
        ("llm.request.type", "chat".into()),
        ("gen_ai.system", "openai".into()),
        ("gen_ai.request.model", "gpt-4o-mini".into()),
        ("gen_ai.response.model", "gpt-4o-mini-2024-07-18".into()),
        ("gen_ai.response.id", "chatcmpl-app".into()),
        ("gen_ai.usage.input_tokens", AttrValue::Int(1000)),
        ("gen_ai.usage.output_tokens", AttrValue::Int(100)),
        ("gen_ai.prompt.0.role", "user".into()),
        ("gen_ai.prompt.0.content", "hi".into()),
    ]);
    for _ in 0..2 {
        tel.log_event(start(t, s, None, "openai.chat", 0, llm.clone()), None)
            .unwrap();
        tel.log_event(end(t, s, 1, SpanStatus::Ok), None).unwrap();
    }
    tel.flush().unwrap();
    {
        let rec = sink.recorded();
        let span = &rec.spans[0];
        assert_eq!(
            span.attributes["tokentrace.genai.origin"],
            "openllmetry".into()
        );
        assert_eq!(span.attributes["gen_ai.provider.name"], "openai".into());
        assert_eq!(span.attributes["gen_ai.operation.name"], "chat".into());
        // gpt-4o-mini: 0.15 / 0.6 USD per million input / output tokens.
        let cost = (1000.0 * 0.15 + 100.0 * 0.6) / 1e6;
        assert_eq!(
            span.attributes["tokentrace.cost.usd"],
            AttrValue::Float(cost)
        );
        let names: Vec<(&str, f64)> = rec
            .metrics
            .iter()
            .map(|m| (m.name.as_str(), m.value))
            .collect();
        assert_eq!(
            names,
            [
                ("completion_tokens", 100.0),
                ("cost_usd", cost),
                ("prompt_tokens", 1000.0),
                ("total_tokens", 1100.0)
            ],
            "counted once although the span came twice"
        );
        assert_eq!(rec.metrics[0].labels["origin"], "openllmetry".into());
        assert_eq!(
            rec.metrics[0].labels["model_id"],
            "gpt-4o-mini-2024-07-18".into()
        );
    }

    // The gateway's span of a call, then the application's span of the same call.
    let gateway = tokentrace_model::SpanRecord {
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: None,
        name: "chat gpt-4o-mini".into(),
        kind: tokentrace_model::SpanKind::Client,
        start_time: ts(2),
        end_time: Some(ts(3)),
        status: Some(SpanStatus::Ok),
        status_message: None,
        attributes: attrs(&[
            ("tokentrace.genai.origin", "gateway".into()),
            ("gen_ai.operation.name", "chat".into()),
            ("gen_ai.response.id", "chatcmpl-through".into()),
            ("gen_ai.usage.input_tokens", AttrValue::Int(5)),
        ]),
        events: Vec::new(),
        links: Vec::new(),
        service_name: None,
        expires_at: None,
    };
    // A complete span sent twice (a retried OTLP export) is counted once.
    let resent = tokentrace_model::SpanRecord {
        span_id: SpanId::random(),
        attributes: llm.clone(),
        ..gateway.clone()
    };
    tel.record_span(resent.clone()).unwrap();
    tel.record_span(resent).unwrap();
    tel.record_span(gateway.clone()).unwrap();
    let mut app = llm.clone();
    app.insert("gen_ai.response.id".into(), "chatcmpl-through".into());
    let app_span = SpanId::random();
    tel.log_event(start(t, app_span, None, "openai.chat", 4, app), None)
        .unwrap();
    tel.log_event(end(t, app_span, 5, SpanStatus::Ok), None)
        .unwrap();
    tel.flush().unwrap();
    let rec = sink.recorded();
    let app = rec.spans.iter().find(|s| s.span_id == app_span).unwrap();
    assert_eq!(
        app.attributes["tokentrace.genai.counted_by"],
        gateway.span_id.to_string().into()
    );
    assert!(!app.attributes.contains_key("tokentrace.cost.usd"));
    assert_eq!(
        rec.metrics.len(),
        8,
        "the re-sent span counted once, the call the gateway counted not at all"
    );
    drop(rec);
    pipeline.shutdown();
}
