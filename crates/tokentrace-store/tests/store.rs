//! The store on real SQLite files: writes, queries, the seed's SQL (also through the sqlite3
//! shell), batching, retention.
//!
//! Over 500 lines: one test per store behaviour, all on the same record builders at the top.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::sqlite3;

use std::path::Path;
use std::time::{Duration, Instant};

use tokentrace_model::query::{
    QueryCondition, QueryConditionOp, QueryMetricsRequest, QueryTracesRequest, validate_filters,
};
use tokentrace_model::{
    AttrValue, Attributes, LogSeverity, MetricPoint, MetricValue, SpanEvent, SpanEventBody, SpanId,
    SpanKind, SpanRecord, SpanStatus, Timestamp, TraceId,
};
use tokentrace_store::{MetricQuery, Record, Store, StoreOptions, Table};

fn now_minus(secs: i64) -> Timestamp {
    Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() - secs * 1_000_000_000)
}

fn span(
    t: TraceId,
    s: SpanId,
    parent: Option<SpanId>,
    name: &str,
    start: Timestamp,
    ms: i64,
) -> SpanRecord {
    SpanRecord {
        trace_id: t,
        span_id: s,
        parent_span_id: parent,
        name: name.into(),
        kind: SpanKind::Internal,
        start_time: start,
        end_time: Some(Timestamp::from_unix_nanos(
            start.unix_nanos() + ms * 1_000_000,
        )),
        status: Some(SpanStatus::Ok),
        status_message: None,
        attributes: [("model_id".to_string(), AttrValue::from("llama"))]
            .into_iter()
            .collect(),
        events: vec![],
        links: vec![],
        service_name: Some("svc".into()),
        expires_at: None,
    }
}

fn open(dir: &Path) -> Store {
    Store::open(&dir.join("trace_store.db"), StoreOptions::default()).unwrap()
}

/// Three traces: one recent with a slow span, one two hours old, one unfinished span.
fn seed(store: &Store) -> (TraceId, TraceId) {
    let (recent, old) = (TraceId::random(), TraceId::random());
    let root = SpanId::random();
    let w = store.writer();
    w.write(vec![
        Record::Span(span(recent, root, None, "chat", now_minus(10), 1500)),
        Record::Span(span(
            recent,
            SpanId::random(),
            Some(root),
            "llm",
            now_minus(9),
            1200,
        )),
        Record::Span(span(
            recent,
            SpanId::random(),
            Some(root),
            "tokenize",
            now_minus(9),
            3,
        )),
        Record::Span(span(
            old,
            SpanId::random(),
            None,
            "chat",
            now_minus(7200),
            500,
        )),
        Record::Span(SpanRecord {
            end_time: None,
            status: None,
            ..span(old, SpanId::random(), None, "open", now_minus(7100), 0)
        }),
    ])
    .unwrap();
    w.flush().unwrap();
    (recent, old)
}

const SEED_RECENT: &str = "SELECT * FROM traces WHERE timestamp > datetime('now', '-1 hour');";
const SEED_AVG: &str = "SELECT name, AVG(duration_ms) as avg_duration\nFROM spans\nGROUP BY name\nORDER BY avg_duration DESC;";
const SEED_SLOW: &str = "SELECT * FROM spans\nWHERE duration_ms > 1000\nORDER BY duration_ms DESC;";

#[test]
fn the_seed_sql_examples_run_verbatim_with_correct_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (recent, _) = seed(&store);
    let conn = rusqlite::Connection::open(store.path()).unwrap();

    let ids: Vec<String> = conn
        .prepare(SEED_RECENT)
        .unwrap()
        .query_map([], |r| r.get("trace_id"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids, [recent.to_string()]);

    let avg: Vec<(String, Option<f64>)> = conn
        .prepare(SEED_AVG)
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        avg,
        [
            ("llm".to_string(), Some(1200.0)),
            ("chat".to_string(), Some(1000.0)),
            ("tokenize".to_string(), Some(3.0)),
            ("open".to_string(), None)
        ]
    );
    let slow: Vec<String> = conn
        .prepare(SEED_SLOW)
        .unwrap()
        .query_map([], |r| r.get("name"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(slow, ["chat", "llm"]);
    drop(conn);
    store.close().unwrap();
}

/// Runs SQL through the sqlite3 shell and returns its output.

#[test]
fn the_seed_sql_examples_run_in_the_sqlite3_shell() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (recent, old) = seed(&store);
    // while tokentrace has the file open (WAL), and after it closed it
    for round in 0..2 {
        let out = sqlite3(store.path(), SEED_RECENT);
        assert!(
            out.contains(&recent.to_string()) && !out.contains(&old.to_string()),
            "{out}"
        );
        let out = sqlite3(store.path(), SEED_AVG);
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["llm|1200.0", "chat|1000.0", "tokenize|3.0", "open|"],
            "round {round}"
        );
        let out = sqlite3(store.path(), SEED_SLOW);
        let names: Vec<&str> = out.lines().map(|l| l.split('|').nth(3).unwrap()).collect();
        assert_eq!(names, ["chat", "llm"]);
        if round == 0 {
            store.writer().flush().unwrap();
        }
    }
    store.close().unwrap();
}

#[test]
fn root_span_is_the_true_root_even_when_it_arrives_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = TraceId::random();
    let (root, child, grandchild) = (SpanId::random(), SpanId::random(), SpanId::random());
    let w = store.writer();
    w.write(vec![Record::Span(span(
        t,
        grandchild,
        Some(child),
        "g",
        now_minus(8),
        1,
    ))])
    .unwrap();
    w.flush().unwrap();
    assert_eq!(
        store.reader().get_trace(t).unwrap().unwrap().root_span_id,
        grandchild,
        "until the root arrives, the earliest span"
    );
    w.write(vec![Record::Span(span(
        t,
        child,
        Some(root),
        "c",
        now_minus(9),
        5,
    ))])
    .unwrap();
    w.flush().unwrap();
    assert_eq!(
        store.reader().get_trace(t).unwrap().unwrap().root_span_id,
        child
    );
    w.write(vec![Record::Span(span(
        t,
        root,
        None,
        "r",
        now_minus(5),
        1,
    ))])
    .unwrap();
    // a later, earlier-starting orphan does not displace the true root
    w.write(vec![Record::Span(span(
        t,
        SpanId::random(),
        Some(SpanId::random()),
        "o",
        now_minus(60),
        1,
    ))])
    .unwrap();
    w.flush().unwrap();
    let trace = store.reader().get_trace(t).unwrap().unwrap();
    assert_eq!(trace.root_span_id, root);
    assert!(
        trace.start_time <= now_minus(59),
        "the trace starts with its earliest span"
    );
    let tree = store
        .reader()
        .get_span_tree(root, None, None)
        .unwrap()
        .unwrap();
    assert_eq!(tree.len(), 3);
    // The starting span is depth 1: 1 is the span alone, 2 adds its children.
    let alone = store
        .reader()
        .get_span_tree(root, None, Some(1))
        .unwrap()
        .unwrap();
    assert_eq!(alone.keys().collect::<Vec<_>>(), [&root.to_string()]);
    let tree = store
        .reader()
        .get_span_tree(root, Some(&[]), Some(2))
        .unwrap()
        .unwrap();
    assert_eq!(tree.len(), 2);
    assert!(tree.values().all(|s| s.span.attributes.is_empty()));
    assert!(
        store
            .reader()
            .get_span_tree(SpanId::random(), None, None)
            .unwrap()
            .is_none()
    );
    store.close().unwrap();
}

#[test]
fn an_unfinished_span_is_completed_by_its_late_end_but_never_the_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, s) = (TraceId::random(), SpanId::random());
    let done = span(t, s, None, "x", now_minus(5), 100);
    let unfinished = SpanRecord {
        end_time: None,
        status: None,
        ..done.clone()
    };
    let w = store.writer();
    w.write(vec![Record::Span(unfinished.clone())]).unwrap();
    w.flush().unwrap();
    assert_eq!(
        store.reader().get_span(t, s).unwrap().unwrap().end_time,
        None
    );
    w.write(vec![Record::Span(done.clone()), Record::Span(unfinished)])
        .unwrap();
    w.flush().unwrap();
    assert_eq!(
        store.reader().get_span(t, s).unwrap().unwrap().end_time,
        done.end_time
    );
    assert_eq!(
        store.reader().get_trace(t).unwrap().unwrap().end_time,
        done.end_time
    );
    assert_eq!(store.reader().count_rows(Table::Spans).unwrap(), 1);
    store.close().unwrap();
}

#[test]
fn filters_bind_keys_and_values_so_crafted_ones_match_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    seed(&store);
    let q = |key: &str, op: QueryConditionOp, value: AttrValue| {
        let req = QueryTracesRequest {
            attribute_filters: Some(vec![QueryCondition {
                key: key.into(),
                op,
                value,
            }]),
            ..Default::default()
        };
        req.validate()
            .map(|q| store.reader().query_traces(&q).unwrap().len())
    };
    assert_eq!(q("model_id", QueryConditionOp::Eq, "llama".into()), Ok(2));
    assert_eq!(
        q("model_id", QueryConditionOp::Eq, "' OR '1'='1".into()),
        Ok(0)
    );
    assert_eq!(q("model_id", QueryConditionOp::Ne, "llama".into()), Ok(0));
    assert_eq!(q("name", QueryConditionOp::Eq, "tokenize".into()), Ok(1));
    assert_eq!(
        q("model_id) OR 1=1 --", QueryConditionOp::Eq, 1.into()),
        Ok(0)
    );
    assert!(q("x\") OR 1=1 --", QueryConditionOp::Eq, 1.into()).is_err());
    assert_eq!(store.reader().count_rows(Table::Spans).unwrap(), 5);
    let filters = validate_filters(&[QueryCondition {
        key: "name".into(),
        op: QueryConditionOp::Eq,
        value: "chat".into(),
    }])
    .unwrap();
    let spans = store
        .reader()
        .query_spans(&filters, &["model_id".to_string()], None)
        .unwrap();
    assert_eq!(
        spans.len(),
        4,
        "every span below the matching traces' roots"
    );
    let spans = store.reader().query_spans(&filters, &[], Some(0)).unwrap();
    assert_eq!(spans.len(), 2, "roots only");
    store.close().unwrap();
}

fn point(
    name: &str,
    at: Timestamp,
    value: f64,
    model: &str,
    expires_at: Option<Timestamp>,
) -> MetricPoint {
    MetricPoint {
        name: name.into(),
        timestamp: at,
        value,
        unit: "tokens".into(),
        labels: [("model_id".to_string(), AttrValue::from(model))]
            .into_iter()
            .collect(),
        trace_id: None,
        span_id: None,
        expires_at,
    }
}

#[test]
fn metrics_buckets_are_aligned_and_five_minutes_means_five_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let base = 1_795_514_400; // a multiple of 300
    let at = |s: i64| Timestamp::from_unix_nanos((base + s) * 1_000_000_000);
    store
        .writer()
        .write(vec![
            Record::Metric(point("total_tokens", at(10), 1.0, "a", None)),
            Record::Metric(point("total_tokens", at(299), 2.0, "a", None)),
            Record::Metric(point("total_tokens", at(300), 4.0, "a", None)),
            Record::Metric(point("total_tokens", at(301), 8.0, "b", None)),
            Record::Metric(point("prompt_tokens", at(301), 16.0, "b", None)),
        ])
        .unwrap();
    store.writer().flush().unwrap();
    let query = |body: serde_json::Value| {
        let req: QueryMetricsRequest = serde_json::from_value(body).unwrap();
        let q = MetricQuery::from_request(&req, Timestamp::now()).unwrap();
        store.reader().query_metrics("total_tokens", &q).unwrap()
    };
    let series = query(
        serde_json::json!({"start_time": base, "end_time": base + 600, "granularity": "5m", "query_type": "range"}),
    );
    assert_eq!(series.len(), 2);
    let a: Vec<(i64, f64)> = series[0]
        .values
        .iter()
        .map(|p| (p.timestamp, p.value))
        .collect();
    assert_eq!(a, [(base, 3.0), (base + 300, 4.0)]);
    let series = query(
        serde_json::json!({"start_time": base, "end_time": base + 600, "query_type": "instant", "label_matchers": [{"name": "model_id", "value": "a|b", "operator": "=~"}]}),
    );
    let totals: Vec<f64> = series.iter().map(|s| s.values[0].value).collect();
    assert_eq!(totals, [7.0, 8.0]);
    assert!(series.iter().all(|s| s.values[0].timestamp == base + 600));
    let too_many: QueryMetricsRequest = serde_json::from_value(serde_json::json!({"start_time": 0, "end_time": base, "granularity": "1s", "query_type": "range"})).unwrap();
    assert!(MetricQuery::from_request(&too_many, Timestamp::now()).is_err());
    store.close().unwrap();
}

#[test]
fn retention_finds_expired_metric_points_among_points_of_other_times_to_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    const HOUR: i64 = 3_600_000_000_000;
    let now = Timestamp::now().unix_nanos();
    let at = |ns: i64| Timestamp::from_unix_nanos(ns);
    // Four times to live, interleaved in every batch: expired two hours ago, a second ago, in
    // an hour, never. The points that expire go in one minute, the others in the next.
    let expiry = |i: i64| match i % 4 {
        0 => Some(at(now - 2 * HOUR)),
        1 => Some(at(now - 1_000_000_000)),
        2 => Some(at(now + HOUR)),
        _ => None,
    };
    let minute = (now / 60_000_000_000 - 10) * 60_000_000_000;
    for batch in 0..3i64 {
        let records = (0..1_000)
            .map(|j| {
                let i = batch * 1_000 + j;
                let ts = minute + if i % 4 < 2 { 0 } else { 60_000_000_000 } + i;
                Record::Metric(point("total_tokens", at(ts), 1.0, "a", expiry(i)))
            })
            .collect();
        store.writer().write(records).unwrap();
        store.writer().flush().unwrap();
    }
    let conn = rusqlite::Connection::open(dir.path().join("trace_store.db")).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    // Every point with an expiry lies in the range of its hour.
    let outside = "SELECT COUNT(*) FROM metric_points p WHERE p.expires_at IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM metric_point_expiry e
            WHERE e.hour = p.expires_at / 3600000000000 AND p.id BETWEEN e.first AND e.last)";
    assert_eq!(count(outside), 0);
    let rollups = "SELECT COUNT(*) FROM metric_rollups";
    assert_eq!(count(rollups), 2);
    let hourly = "SELECT COUNT(*) FROM metric_rollups_hourly";
    // One hour, or two when the minutes are the last of an hour and the first of the next.
    let hours = count(hourly);
    let deleted = store.writer().expire(at(now)).unwrap();
    let r = store.reader();
    assert_eq!(r.count_rows(Table::Metrics).unwrap(), 1_500);
    assert_eq!(
        count("SELECT COUNT(*) FROM metric_points WHERE expires_at IS NULL"),
        750
    );
    // The minute of the expired points goes with them (and its hour, unless the next minute
    // is in it too); the other stays.
    assert_eq!(count(rollups), 1);
    assert_eq!(count(hourly), 1);
    assert_eq!(deleted as i64, 1_500 + 1 + (hours - 1));
    // No range of an hour wholly past is left; the future hour's is.
    assert_eq!(
        count(&format!(
            "SELECT COUNT(*) FROM metric_point_expiry WHERE hour < {}",
            now.div_euclid(HOUR)
        )),
        0
    );
    assert_eq!(
        count(&format!(
            "SELECT COUNT(*) FROM metric_point_expiry WHERE hour = {}",
            (now + HOUR).div_euclid(HOUR)
        )),
        1
    );
    assert_eq!(count(outside), 0);
    // Two hours on, the points of an hour's time to live go too; those without expiry stay.
    store.writer().expire(at(now + 2 * HOUR)).unwrap();
    assert_eq!(r.count_rows(Table::Metrics).unwrap(), 750);
    assert_eq!(count("SELECT COUNT(*) FROM metric_point_expiry"), 0);
    assert_eq!(
        count(rollups),
        1,
        "the minute of the points that never expire"
    );
    store.close().unwrap();
}

#[test]
fn retention_deletes_expired_rows_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let past = now_minus(60);
    let future = Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() + 3_600_000_000_000);
    let (t, s) = (TraceId::random(), SpanId::random());
    let event = |expires_at| SpanEvent {
        trace_id: Some(t),
        span_id: Some(s),
        timestamp: now_minus(100),
        name: "log".into(),
        body: SpanEventBody::Log {
            severity: LogSeverity::Info,
            message: "m".into(),
        },
        attributes: Attributes::new(),
        expires_at,
    };
    let mut records = Vec::new();
    for i in 0..5_000 {
        records.push(Record::Event(event(Some(if i % 2 == 0 {
            past
        } else {
            future
        }))));
        records.push(Record::Metric(point(
            "total_tokens",
            now_minus(100),
            1.0,
            "a",
            Some(if i % 2 == 0 { past } else { future }),
        )));
    }
    records.push(Record::Span(SpanRecord {
        expires_at: Some(past),
        ..span(t, s, None, "gone", now_minus(100), 1)
    }));
    records.push(Record::Span(SpanRecord {
        expires_at: Some(future),
        ..span(
            TraceId::random(),
            SpanId::random(),
            None,
            "kept",
            now_minus(100),
            1,
        )
    }));
    records.push(Record::Event(event(None)));
    store.writer().write(records).unwrap();
    store.writer().flush().unwrap();
    let deleted = store.writer().expire(Timestamp::now()).unwrap();
    assert_eq!(
        deleted,
        2_500 + 2_500 + 1 + 1,
        "events, metrics, the span and its trace"
    );
    let r = store.reader();
    assert_eq!(r.count_rows(Table::SpanEvents).unwrap(), 2_501);
    assert_eq!(r.count_rows(Table::Metrics).unwrap(), 2_500);
    assert_eq!(r.count_rows(Table::Spans).unwrap(), 1);
    assert_eq!(r.count_rows(Table::Traces).unwrap(), 1);
    assert_eq!(store.writer().stats().rows_expired, deleted);
    store.close().unwrap();
}

#[test]
fn a_trace_is_deleted_whole_once_the_last_of_its_spans_has_expired() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, root, child) = (TraceId::random(), SpanId::random(), SpanId::random());
    let now = Timestamp::now().unix_nanos();
    let at = |secs: i64| Timestamp::from_unix_nanos(now + secs * 1_000_000_000);
    store
        .writer()
        .write(vec![
            Record::Span(SpanRecord {
                expires_at: Some(at(-60)),
                ..span(t, root, None, "root", now_minus(100), 1)
            }),
            Record::Span(SpanRecord {
                expires_at: Some(at(60)),
                ..span(t, child, Some(root), "child", now_minus(99), 1)
            }),
        ])
        .unwrap();
    store.writer().flush().unwrap();
    assert_eq!(
        store.writer().expire(at(0)).unwrap(),
        0,
        "its child keeps the trace"
    );
    let tree = store
        .reader()
        .get_span_tree(root, None, None)
        .unwrap()
        .unwrap();
    assert_eq!(tree.len(), 2, "the whole trace, the expired root too");
    assert_eq!(
        store.writer().expire(at(61)).unwrap(),
        3,
        "both spans and the trace row"
    );
    assert_eq!(store.reader().count_rows(Table::Spans).unwrap(), 0);
    assert!(store.reader().get_trace(t).unwrap().is_none());
    store.close().unwrap();
}

#[test]
fn small_writes_are_batched_and_idle_rows_commit_without_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let w = store.writer();
    let t = TraceId::random();
    for i in 0..10_000 {
        w.write(vec![Record::Span(span(
            t,
            SpanId::random(),
            None,
            &format!("s{i}"),
            now_minus(5),
            1,
        ))])
        .unwrap();
    }
    w.flush().unwrap();
    let stats = w.stats();
    assert_eq!(stats.rows_committed, 10_000);
    assert_eq!(stats.spans_committed, 10_000);
    assert!(stats.max_batch_rows >= 100, "{stats:?}");
    assert!(stats.batches_committed <= 100, "{stats:?}");

    w.write(vec![Record::Span(span(
        TraceId::random(),
        SpanId::random(),
        None,
        "idle",
        now_minus(1),
        1,
    ))])
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.reader().count_rows(Table::Spans).unwrap() < 10_001 {
        assert!(Instant::now() < deadline, "an idle row was never committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    store.close().unwrap();
}

#[test]
fn close_commits_everything_and_reopening_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let w = store.writer();
    let t = TraceId::random();
    for _ in 0..100 {
        w.write(
            (0..50)
                .map(|_| Record::Span(span(t, SpanId::random(), None, "s", now_minus(5), 1)))
                .collect(),
        )
        .unwrap();
    }
    store.close().unwrap();
    assert!(matches!(
        w.write(vec![Record::Span(span(
            t,
            SpanId::random(),
            None,
            "late",
            now_minus(1),
            1
        ))]),
        Err(tokentrace_store::StoreError::Closed)
    ));
    let store = open(dir.path());
    assert_eq!(store.reader().count_rows(Table::Spans).unwrap(), 5_000);
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, tokentrace_store::SCHEMA_VERSION);
    store.close().unwrap();
}

#[test]
fn events_and_datasets_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t, s) = (TraceId::random(), SpanId::random());
    let ev = SpanEvent {
        trace_id: Some(t),
        span_id: Some(s),
        timestamp: now_minus(3),
        name: "total_tokens".into(),
        body: SpanEventBody::Metric {
            value: MetricValue::Int(42),
            unit: "tokens".into(),
        },
        attributes: [("model_id".to_string(), AttrValue::from("m"))]
            .into_iter()
            .collect(),
        expires_at: None,
    };
    store
        .writer()
        .write(vec![Record::Event(ev.clone())])
        .unwrap();
    store.writer().flush().unwrap();
    assert_eq!(store.reader().span_events(t, s).unwrap(), [ev]);

    let row = |i: i64| serde_json::json!({"i": i}).as_object().unwrap().clone();
    assert_eq!(
        store
            .writer()
            .append_dataset_rows("d", "default", vec![row(0), row(1)], None)
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .writer()
            .append_dataset_rows("d", "default", vec![row(2)], None)
            .unwrap(),
        3
    );
    let (rows, more) = store.reader().iterrows("d", 1, Some(1)).unwrap().unwrap();
    assert_eq!((rows, more), (vec![row(1)], true));
    let (rows, more) = store.reader().iterrows("d", 0, None).unwrap().unwrap();
    assert_eq!((rows.len(), more), (3, false));
    assert!(
        store
            .reader()
            .iterrows("missing", 0, None)
            .unwrap()
            .is_none()
    );
    store.close().unwrap();
}

#[test]
fn one_batch_folds_its_spans_into_each_trace_row_like_separate_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (t1, t2) = (TraceId::random(), TraceId::random());
    let (root, child, orphan) = (SpanId::random(), SpanId::random(), SpanId::random());
    let (early, late) = (SpanId::random(), SpanId::random());
    store
        .writer()
        .write(vec![
            Record::Span(span(t1, child, Some(root), "child", now_minus(20), 5)),
            Record::Span(span(t1, root, None, "root", now_minus(10), 50_000)),
            Record::Span(span(
                t1,
                orphan,
                Some(SpanId::random()),
                "orphan",
                now_minus(30),
                1,
            )),
            Record::Span(span(
                t2,
                late,
                Some(SpanId::random()),
                "late",
                now_minus(5),
                1,
            )),
            Record::Span(span(
                t2,
                early,
                Some(SpanId::random()),
                "early",
                now_minus(8),
                1,
            )),
        ])
        .unwrap();
    store.writer().flush().unwrap();
    let r = store.reader();
    let a = r.get_trace(t1).unwrap().unwrap();
    assert_eq!(
        a.root_span_id, root,
        "the true root wins over earlier spans"
    );
    assert!(
        a.start_time <= now_minus(29),
        "start is the earliest span's"
    );
    assert!(
        a.end_time.unwrap() >= now_minus(-39),
        "end is the latest span's end"
    );
    assert_eq!(
        r.get_trace(t2).unwrap().unwrap().root_span_id,
        early,
        "without a root, the earliest span"
    );
    assert_eq!(r.count_rows(Table::Traces).unwrap(), 2);
    store.close().unwrap();
}

fn spans_of_one_trace(n: usize) -> Vec<Record> {
    let t = TraceId::random();
    (0..n)
        .map(|i| {
            Record::Span(span(
                t,
                SpanId::random(),
                None,
                &format!("s{i}"),
                now_minus(5),
                1,
            ))
        })
        .collect()
}

#[test]
fn the_writer_backlog_is_bounded_in_bytes_and_writers_wait_for_room() {
    let dir = tempfile::tempdir().unwrap();
    // The writer thread waits at its start until the test lets it go.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let options = StoreOptions {
        queue_max_bytes: 64 * 1024,
        on_writer_start: Some(tokentrace_store::ThreadStart(std::sync::Arc::new(
            move || {
                let _ = go_rx.lock().unwrap().recv();
            },
        ))),
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.path().join("trace_store.db"), options).unwrap();
    let w = store.writer();
    // 300 spans (over 32 KB) fit; the next 300 do not while the first wait.
    w.write(spans_of_one_trace(300)).unwrap();
    let first = w.queued_bytes();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let second = {
        let w = w.clone();
        std::thread::spawn(move || {
            w.write(spans_of_one_trace(300)).unwrap();
            done_tx.send(()).unwrap();
        })
    };
    let waited = done_rx.recv_timeout(Duration::from_millis(300)).is_err();
    let queued = w.queued_bytes();
    // Let the writer go before asserting, so that a failure does not leave it waiting.
    go_tx.send(()).unwrap();
    assert!(first > 32 * 1024 && first <= 64 * 1024, "{first}");
    assert!(waited, "the second write waits for room");
    assert_eq!(queued, first, "the waiting rows are not queued");
    done_rx.recv().unwrap();
    second.join().unwrap();
    w.flush().unwrap();
    let stats = w.stats();
    assert_eq!(stats.spans_committed, 600);
    assert_eq!(stats.queued_bytes, 0);
    store.close().unwrap();
}

/// The WAL's checkpoint sequence number (its header's bytes 12..16), which grows each time the
/// WAL starts over from its beginning; and the file's size.
fn wal_state(db: &Path) -> (u32, u64) {
    let wal = db.with_extension("db-wal");
    let bytes = std::fs::read(&wal).unwrap_or_default();
    let sequence = bytes
        .get(12..16)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    (sequence, std::fs::metadata(&wal).map_or(0, |m| m.len()))
}

#[test]
fn the_wal_is_checkpointed_beside_the_writer_and_starts_over_at_its_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("trace_store.db");
    let store = Store::open(&db, StoreOptions::default()).unwrap();
    let w = store.writer();
    let page: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let (first, _) = wal_state(&db);
    let mut largest = 0;
    let mut written = 0;
    // Until the WAL has started over twice: the checkpoints that let it are the checkpointer
    // thread's (the writer's own come only at four times the threshold, a WAL four times
    // larger).
    while wal_state(&db).0 < first + 2 {
        for _ in 0..10 {
            w.write(spans_of_one_trace(500)).unwrap();
        }
        w.flush().unwrap();
        written += 5_000;
        largest = largest.max(wal_state(&db).1);
        assert!(written <= 2_000_000, "the WAL never started over");
    }
    let bound = 2 * tokentrace_store::CHECKPOINT_PAGES as u64 * (page as u64 + 24);
    assert!(
        largest < bound,
        "the WAL grew to {largest} bytes (bound {bound}) over {written} spans"
    );
    assert_eq!(
        store.reader().count_rows(Table::Spans).unwrap(),
        written as u64
    );
    store.close().unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn a_large_write_commits_in_transactions_of_at_most_batch_max_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let w = store.writer();
    w.write(spans_of_one_trace(12_000)).unwrap();
    w.flush().unwrap();
    let stats = w.stats();
    assert_eq!(stats.rows_committed, 12_000);
    assert_eq!(stats.max_batch_rows, 5_000, "{stats:?}");
    assert_eq!(stats.batches_committed, 3, "{stats:?}");
    assert_eq!(store.reader().count_rows(Table::Spans).unwrap(), 12_000);
    store.close().unwrap();
}

#[test]
fn with_retention_in_steady_state_the_file_stops_growing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let store = open(dir.path());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let auto: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        auto, 2,
        "a new file is created with auto_vacuum = INCREMENTAL"
    );
    let w = store.writer();
    let mut sizes = Vec::new();
    for round in 0..4 {
        // Each round: 20,000 spans that have expired by the time retention runs.
        let expired = Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() - 1);
        let records = spans_of_one_trace(20_000)
            .into_iter()
            .map(|r| match r {
                Record::Span(s) => Record::Span(SpanRecord {
                    expires_at: Some(expired),
                    name: format!("round {round}"),
                    ..s
                }),
                other => other,
            })
            .collect();
        w.write(records).unwrap();
        w.flush().unwrap();
        assert!(w.expire(Timestamp::now()).unwrap() >= 20_000);
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        sizes.push(std::fs::metadata(&path).unwrap().len());
    }
    assert!(
        sizes.iter().all(|s| *s <= sizes[0]),
        "the file does not grow once retention keeps up: {sizes:?}"
    );
    drop(conn);
    store.close().unwrap();
}

#[test]
fn answers_past_the_cap_fail_with_a_message_saying_how_to_narrow_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        max_answer_rows: 25,
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.path().join("trace_store.db"), options).unwrap();
    let w = store.writer();
    // 10 traces of 3 spans: 30 spans in all, 3 in each trace.
    for _ in 0..10 {
        let (t, root) = (TraceId::random(), SpanId::random());
        w.write(vec![
            Record::Span(span(t, root, None, "root", now_minus(10), 5)),
            Record::Span(span(t, SpanId::random(), Some(root), "a", now_minus(9), 1)),
            Record::Span(span(t, SpanId::random(), Some(root), "b", now_minus(8), 1)),
        ])
        .unwrap();
    }
    w.flush().unwrap();
    let r = store.reader();
    let err = r.query_spans(&[], &[], None).unwrap_err();
    assert!(
        matches!(err, tokentrace_store::StoreError::TooLarge(_)),
        "{err}"
    );
    assert!(err.to_string().contains("more than 25 spans"), "{err}");
    assert!(err.to_string().contains("start_time"), "{err}");
    // Roots only (max_depth 1): 10 spans, under the cap.
    assert_eq!(r.query_spans(&[], &[], Some(1)).unwrap().len(), 10);

    let rows = (0..30)
        .map(|i| serde_json::Map::from_iter([("i".to_string(), serde_json::json!(i))]))
        .collect();
    assert_eq!(
        w.append_dataset_rows("d", "default", rows, None).unwrap(),
        30
    );
    let err = r.iterrows("d", 0, None).unwrap_err();
    assert!(
        err.to_string().contains("has 30 rows from start_index 0"),
        "{err}"
    );
    assert!(err.to_string().contains("limit"), "{err}");
    let (page, more) = r.iterrows("d", 0, Some(25)).unwrap().unwrap();
    assert_eq!((page.len(), more), (25, true));
    let (rest, more) = r.iterrows("d", 25, None).unwrap().unwrap();
    assert_eq!((rest.len(), more), (5, false));
    store.close().unwrap();
}

/// A store of 20,000 spans with attributes, so that a filter on a key that is not indexed reads
/// the JSON of every span: many thousands of SQLite steps.
fn store_for_slow_queries(dir: &Path, options: StoreOptions) -> Store {
    let store = Store::open(&dir.join("trace_store.db"), options).unwrap();
    let w = store.writer();
    let records = (0..20_000)
        .map(|i| {
            let mut s = span(
                TraceId::random(),
                SpanId::random(),
                None,
                "s",
                now_minus(5),
                1,
            );
            s.attributes
                .insert("n".into(), tokentrace_model::AttrValue::Int(i));
            Record::Span(s)
        })
        .collect();
    w.write(records).unwrap();
    w.flush().unwrap();
    store
}

fn scan_query() -> tokentrace_model::query::TraceQuery {
    let req: tokentrace_model::query::QueryTracesRequest = serde_json::from_value(
        serde_json::json!({"attribute_filters": [{"key": "n", "op": "eq", "value": -1}]}),
    )
    .unwrap();
    req.validate().unwrap()
}

#[test]
fn a_query_past_its_time_budget_is_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        query_timeout: Duration::ZERO,
        ..StoreOptions::default()
    };
    let store = store_for_slow_queries(dir.path(), options);
    let err = store.reader().query_traces(&scan_query()).unwrap_err();
    assert!(err.is_interrupted(), "{err}");
    // A lookup that needs only a few steps still answers.
    assert!(
        store
            .reader()
            .get_trace(TraceId::random())
            .unwrap()
            .is_none()
    );
    store.close().unwrap();
}

#[test]
fn interrupt_all_stops_running_and_later_queries() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_for_slow_queries(dir.path(), StoreOptions::default());
    let r = store.reader();
    assert!(r.query_traces(&scan_query()).unwrap().is_empty());
    r.interrupt_all();
    let err = r.query_traces(&scan_query()).unwrap_err();
    assert!(err.is_interrupted(), "{err}");
    store.close().unwrap();
}

#[test]
fn datasets_expire_whole_after_their_last_append_and_the_rest_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let w = store.writer();
    let rows = |n: usize| {
        (0..n)
            .map(|i| serde_json::Map::from_iter([("i".to_string(), serde_json::json!(i))]))
            .collect::<Vec<_>>()
    };
    let past = now_minus(60);
    let future = Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() + 3_600_000_000_000);
    w.append_dataset_rows("old", "default", rows(1_200), Some(past))
        .unwrap();
    w.append_dataset_rows("renewed", "default", rows(3), Some(past))
        .unwrap();
    w.append_dataset_rows("renewed", "default", rows(2), Some(future))
        .unwrap();
    w.append_dataset_rows("forever", "default", rows(4), None)
        .unwrap();
    let deleted = w.expire(Timestamp::now()).unwrap();
    assert_eq!(deleted, 1_200, "the expired dataset's rows");
    let r = store.reader();
    assert!(r.iterrows("old", 0, None).unwrap().is_none(), "gone whole");
    assert_eq!(r.iterrows("renewed", 0, None).unwrap().unwrap().0.len(), 5);
    assert_eq!(r.iterrows("forever", 0, None).unwrap().unwrap().0.len(), 4);
    // The id can be used again, from an empty dataset.
    assert_eq!(
        w.append_dataset_rows("old", "default", rows(2), None)
            .unwrap(),
        2
    );
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let left: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM dataset_rows WHERE dataset_id = 'old'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 2);
    drop(conn);
    store.close().unwrap();
}

/// The sessions' user filter finds a session by any of its users, not only by the first ones
/// the answer lists.
#[test]
fn sessions_are_found_by_any_of_their_users() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let records: Vec<Record> = (0..30)
        .map(|i| {
            let mut s = span(
                TraceId::random(),
                SpanId::random(),
                None,
                "chat",
                now_minus(60),
                5,
            );
            for (k, v) in [
                ("session.id", AttrValue::from("s-big")),
                ("user.id", AttrValue::from(format!("u-{i:02}").as_str())),
                ("gen_ai.usage.input_tokens", AttrValue::Int(10)),
                ("gen_ai.usage.output_tokens", AttrValue::Int(2)),
            ] {
                s.attributes.insert(k.to_string(), v);
            }
            Record::Span(s)
        })
        .collect();
    store.writer().write(records).unwrap();
    store.writer().flush().unwrap();
    let sessions = |user: &str| {
        let q = tokentrace_model::query::SessionsRequest {
            user: Some(user.to_string()),
            ..Default::default()
        }
        .validate(Timestamp::now())
        .unwrap();
        store.reader().sessions(&q).unwrap().data
    };
    let found = sessions("u-29");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].session_id, "s-big");
    assert_eq!(found[0].usage.calls, 30);
    assert!(
        found[0].usage.users.len() < 30,
        "the answer lists only the first users"
    );
    assert!(sessions("nobody").is_empty());
    store.close().unwrap();
}
