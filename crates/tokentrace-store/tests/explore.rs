//! The CLI's and UI's reads on real files: the trace list (summaries, filters answered the same
//! with and without the index, a cursor that holds while traces arrive), the span feed,
//! read-only SQL, and read-only handles that never change a file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use tokentrace_model::query::{
    ListTracesRequest, QueryCondition, QueryConditionOp, SpanFeedRequest, TraceStatus,
    TraceSummary, UsageGroup, UsageRequest,
};
use tokentrace_model::{
    AttrValue, Attributes, MetricValue, SpanEvent, SpanEventBody, SpanId, SpanKind, SpanRecord,
    SpanStatus, Timestamp, TraceId,
};
use tokentrace_store::{Record, Store, StoreError, StoreOptions, StoreReader};

const BASE_NS: i64 = 1_750_000_000_000_000_000;

fn open(path: &Path, indexed: bool) -> Store {
    let keys = [
        "gen_ai.request.model",
        "gen_ai.response.model",
        "model_id",
        "user.id",
        "status",
    ];
    let options = StoreOptions {
        indexed_attributes: if indexed {
            keys.iter().map(|k| k.to_string()).collect()
        } else {
            Vec::new()
        },
        ..StoreOptions::default()
    };
    Store::open(path, options).unwrap()
}

fn trace_id(t: i64) -> TraceId {
    format!("{:032x}", t + 1).parse().unwrap()
}

/// Trace `t`: a root and a provider call; every 5th call fails; calls carry model, usage and
/// a user; traces of `t % 3 == 0` have no usage attributes but Llama Stack token events.
fn trace(t: i64) -> Vec<Record> {
    let id = |j: i64| -> SpanId { format!("{:016x}", t * 2 + j + 1).parse().unwrap() };
    let start = BASE_NS + t * 1_000_000_000;
    let mut call = Attributes::new();
    call.insert(
        "gen_ai.request.model".into(),
        AttrValue::from(format!("model-{}", t % 4)),
    );
    call.insert("user.id".into(), AttrValue::from(format!("u{}", t % 7)));
    if t % 3 != 0 {
        call.insert("gen_ai.usage.input_tokens".into(), AttrValue::Int(10 + t));
        call.insert("gen_ai.usage.output_tokens".into(), AttrValue::Int(5));
    }
    let span = |j: i64, name: &str, attributes: Attributes, status| SpanRecord {
        trace_id: trace_id(t),
        span_id: id(j),
        parent_span_id: (j > 0).then(|| id(0)),
        name: name.into(),
        kind: SpanKind::Internal,
        start_time: Timestamp::from_unix_nanos(start + j * 1_000),
        end_time: Some(Timestamp::from_unix_nanos(start + 2_000_000 - j * 1_000)),
        status: Some(status),
        status_message: None,
        attributes,
        events: Vec::new(),
        links: Vec::new(),
        service_name: Some(if t % 2 == 0 { "even" } else { "odd" }.into()),
        expires_at: None,
    };
    let failed = if t % 5 == 0 {
        SpanStatus::Error
    } else {
        SpanStatus::Ok
    };
    // Stored as they end: the call before the request that contains it.
    let mut out = vec![
        Record::Span(span(1, "chat", call, failed)),
        Record::Span(span(
            0,
            "POST /v1/chat/completions",
            Attributes::new(),
            SpanStatus::Ok,
        )),
    ];
    if t % 3 == 0 {
        for (name, v) in [("prompt_tokens", 7), ("completion_tokens", 3)] {
            out.push(Record::Event(SpanEvent {
                trace_id: Some(trace_id(t)),
                span_id: Some(id(1)),
                timestamp: Timestamp::from_unix_nanos(start + 1_000_000),
                name: name.into(),
                body: SpanEventBody::Metric {
                    value: MetricValue::Int(v),
                    unit: "tokens".into(),
                },
                attributes: Attributes::new(),
                expires_at: None,
            }));
        }
    }
    out
}

fn fill(store: &Store, traces: std::ops::Range<i64>) {
    let records: Vec<Record> = traces.flat_map(trace).collect();
    let w = store.writer();
    w.write(records).unwrap();
    w.flush().unwrap();
}

fn cond(key: &str, op: QueryConditionOp, value: AttrValue) -> QueryCondition {
    QueryCondition {
        key: key.into(),
        op,
        value,
    }
}

fn list(r: &StoreReader, req: &ListTracesRequest) -> Vec<TraceSummary> {
    let mut req = req.clone();
    let mut all = Vec::new();
    loop {
        let page = r.list_traces(&req.validate().unwrap()).unwrap();
        all.extend(page.data);
        match page.next {
            Some(n) => req.cursor = Some(n),
            None => return all,
        }
    }
}

#[test]
fn summaries_say_root_service_models_tokens_user_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.db"), true);
    fill(&store, 0..20);
    let page = store
        .reader()
        .list_traces(&ListTracesRequest::default().validate().unwrap())
        .unwrap();
    assert_eq!(page.data.len(), 20);
    assert_eq!(page.next, None);
    // Newest first.
    assert_eq!(page.data[0].trace_id, trace_id(19));
    let by = |t: i64| {
        page.data
            .iter()
            .find(|s| s.trace_id == trace_id(t))
            .unwrap()
    };
    let s = by(7);
    assert_eq!(s.root_name.as_deref(), Some("POST /v1/chat/completions"));
    assert_eq!(s.service_name.as_deref(), Some("odd"));
    assert_eq!(s.models, vec!["model-3".to_string()]);
    assert_eq!((s.input_tokens, s.output_tokens), (Some(17), Some(5)));
    assert_eq!(s.user.as_deref(), Some("u0"));
    assert_eq!((s.spans, s.errors, s.status), (2, 0, TraceStatus::Ok));
    assert_eq!(s.duration_ms, Some(2.0));
    // Tokens from metric events when no span carries usage.
    assert_eq!(
        (by(9).input_tokens, by(9).output_tokens),
        (Some(7), Some(3))
    );
    assert_eq!((by(10).errors, by(10).status), (1, TraceStatus::Error));

    // Usage: the calls with usage attributes (not traces 0, 3, …, 18, which have token events).
    let window = |by| UsageRequest {
        since: Some(Timestamp::from_unix_nanos(BASE_NS).to_iso()),
        until: Some(Timestamp::from_unix_nanos(BASE_NS + 20 * 1_000_000_000).to_iso()),
        by,
    };
    let u = store
        .reader()
        .usage(
            &window(UsageGroup::Model)
                .validate(Timestamp::now())
                .unwrap(),
        )
        .unwrap();
    let with_usage: Vec<i64> = (0..20).filter(|t| t % 3 != 0).collect();
    assert_eq!(
        u.data.iter().map(|r| r.calls).sum::<u64>(),
        with_usage.len() as u64
    );
    let m1 = u
        .data
        .iter()
        .find(|r| r.key.as_deref() == Some("model-1"))
        .unwrap();
    let want: Vec<i64> = with_usage.iter().copied().filter(|t| t % 4 == 1).collect();
    assert_eq!(m1.calls, want.len() as u64);
    assert_eq!(m1.input_tokens, want.iter().map(|t| 10 + t).sum::<i64>());
    assert_eq!(m1.output_tokens, 5 * want.len() as i64);
    assert_eq!(
        m1.errors,
        want.iter().filter(|t| *t % 5 == 0).count() as u64
    );
    // Most tokens first.
    let totals: Vec<i64> = u
        .data
        .iter()
        .map(|r| r.input_tokens + r.output_tokens)
        .collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}");
    let by_user = store
        .reader()
        .usage(&window(UsageGroup::User).validate(Timestamp::now()).unwrap())
        .unwrap();
    assert_eq!(by_user.data.len(), 7);
    let bad = UsageRequest {
        since: Some("2030-01-01T00:00:00Z".into()),
        until: Some("2020-01-01T00:00:00Z".into()),
        by: UsageGroup::Model,
    };
    assert!(bad.validate(Timestamp::now()).is_err());
    store.close().unwrap();
}

#[test]
fn filters_answer_the_same_with_and_without_the_index_and_pages_hold_while_traces_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let with = open(&dir.path().join("with.db"), true);
    let without = open(&dir.path().join("without.db"), false);
    // More traces than the first pass of a filtered list reads (2,000): pages cross from the
    // first pass to the second.
    fill(&with, 0..2300);
    fill(&without, 0..2300);
    use QueryConditionOp::*;
    let since = Timestamp::from_unix_nanos(BASE_NS + 50 * 1_000_000_000).to_iso();
    let cases = vec![
        ListTracesRequest {
            model: Some("model-2".into()),
            ..Default::default()
        },
        ListTracesRequest {
            errors_only: true,
            service: Some("even".into()),
            ..Default::default()
        },
        ListTracesRequest {
            filters: vec![
                cond("user.id", Eq, "u3".into()),
                cond("gen_ai.usage.input_tokens", Gt, AttrValue::Int(100)),
            ],
            since: Some(since),
            ..Default::default()
        },
        ListTracesRequest {
            filters: vec![cond("user.id", Eq, "nobody".into())],
            ..Default::default()
        },
        // Only the oldest traces match: found by the second pass.
        ListTracesRequest {
            filters: vec![cond("gen_ai.usage.input_tokens", Lt, AttrValue::Int(20))],
            ..Default::default()
        },
    ];
    for case in cases {
        let mut small = case.clone();
        small.limit = Some(7);
        let a = list(&with.reader(), &small);
        let b = list(&without.reader(), &case);
        assert_eq!(a, b, "{case:?}");
        // What a scan of the summaries gives.
        let all = list(&without.reader(), &ListTracesRequest::default());
        let expected: Vec<&TraceSummary> = all
            .iter()
            .filter(|s| case.model.as_ref().is_none_or(|m| s.models.contains(m)))
            .filter(|s| !case.errors_only || s.errors > 0)
            .filter(|s| case.service.is_none() || s.service_name == case.service)
            .filter(|s| {
                case.filters
                    .iter()
                    .all(|f| match (f.key.as_str(), &f.value) {
                        ("user.id", AttrValue::String(u)) => s.user.as_ref() == Some(u),
                        ("gen_ai.usage.input_tokens", AttrValue::Int(n)) => {
                            // Traces with token events (7) have no usage attribute.
                            let t = s.input_tokens.filter(|_| s.input_tokens != Some(7));
                            match f.op {
                                Gt => t.is_some_and(|i| i > *n),
                                _ => t.is_some_and(|i| i < *n),
                            }
                        }
                        _ => unreachable!(),
                    })
            })
            .filter(|s| {
                case.since
                    .as_ref()
                    .is_none_or(|t| s.start_time >= Timestamp::parse_iso(t).unwrap())
            })
            .collect();
        assert_eq!(a.iter().collect::<Vec<_>>(), expected, "{case:?}");
    }
    // A cursor taken before new traces arrive continues where it was.
    let reader = with.reader();
    let first = reader
        .list_traces(
            &ListTracesRequest {
                limit: Some(10),
                ..Default::default()
            }
            .validate()
            .unwrap(),
        )
        .unwrap();
    fill(&with, 2300..2320);
    let second = reader
        .list_traces(
            &ListTracesRequest {
                limit: Some(10),
                cursor: first.next.clone(),
                ..Default::default()
            }
            .validate()
            .unwrap(),
        )
        .unwrap();
    assert_eq!(second.data[0].trace_id, trace_id(2289));
    with.close().unwrap();
    without.close().unwrap();
}

#[test]
fn the_feed_gives_each_span_once_in_stored_order_and_moves_past_what_matches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.db"), true);
    let r = store.reader();
    let start = r
        .spans_after(&SpanFeedRequest::default().validate().unwrap())
        .unwrap();
    assert!(start.data.is_empty());
    fill(&store, 0..10);
    let mut req = SpanFeedRequest {
        after: Some(start.next),
        limit: Some(7),
        ..Default::default()
    };
    let mut names = Vec::new();
    loop {
        let feed = r.spans_after(&req.validate().unwrap()).unwrap();
        if feed.data.is_empty() {
            break;
        }
        names.extend(feed.data.into_iter().map(|s| s.span.name));
        req.after = Some(feed.next);
    }
    assert_eq!(names.len(), 20);
    assert_eq!(names[0], "chat");
    assert_eq!(names[1], "POST /v1/chat/completions");
    // A filter that matches nothing still moves the position to the newest span.
    let none = SpanFeedRequest {
        after: Some(start.next),
        filters: vec![cond("user.id", QueryConditionOp::Eq, "nobody".into())],
        ..Default::default()
    };
    let feed = r.spans_after(&none.validate().unwrap()).unwrap();
    assert!(feed.data.is_empty());
    assert_eq!(feed.next, req.after.unwrap());
    let odd = SpanFeedRequest {
        after: Some(start.next),
        service: Some("odd".into()),
        filters: vec![cond(
            "gen_ai.request.model",
            QueryConditionOp::Eq,
            "model-1".into(),
        )],
        ..Default::default()
    };
    let feed = r.spans_after(&odd.validate().unwrap()).unwrap();
    let ids: Vec<TraceId> = feed.data.iter().map(|s| s.span.trace_id).collect();
    assert_eq!(ids, vec![trace_id(1), trace_id(5), trace_id(9)]);
    store.close().unwrap();
}

#[test]
fn sql_reads_and_refuses_everything_else_and_files_stay_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = open(&path, true);
    fill(&store, 0..5);
    let reader = StoreReader::open_read_only(&path, 3, Duration::from_secs(10)).unwrap();
    let a = reader
        .read_sql("SELECT name, count(*) AS n FROM spans GROUP BY name ORDER BY name")
        .unwrap();
    assert_eq!(a.columns, vec!["name", "n"]);
    assert_eq!(
        a.rows[0],
        vec![serde_json::json!("POST /v1/chat/completions"), 5.into()]
    );
    // Ids read as hex; answers stop at the limit and say so.
    let a = reader
        .read_sql("SELECT span_id FROM span_rows ORDER BY id")
        .unwrap();
    assert!(a.truncated && a.rows.len() == 3);
    assert_eq!(a.rows[0][0], serde_json::json!("0000000000000002"));
    for bad in [
        "DELETE FROM span_rows",
        "WITH x AS (SELECT 1) DELETE FROM metrics",
        "ATTACH 'other.db' AS o",
        "PRAGMA journal_mode = DELETE",
        "SELECT 1; DELETE FROM span_rows",
        "SELEC 1",
        "",
    ] {
        let e = reader.read_sql(bad).unwrap_err();
        assert!(matches!(e, StoreError::BadQuery(_)), "{bad}: {e}");
    }
    // The writer's own reader gets the same refusals.
    assert!(store.reader().read_sql("DROP TABLE span_rows").is_err());
    let n = reader.read_sql("SELECT count(*) FROM span_rows").unwrap();
    assert_eq!(n.rows[0][0], serde_json::json!(10));
    store.close().unwrap();

    // Read-only handles: a missing file, a file that is not a store, one of a newer schema.
    let missing = dir.path().join("missing.db");
    assert!(matches!(
        StoreReader::open_read_only(&missing, 10, Duration::from_secs(1)),
        Err(StoreError::Missing(_))
    ));
    assert!(!missing.exists());
    let newer = dir.path().join("newer.db");
    {
        let c = rusqlite::Connection::open(&newer).unwrap();
        c.execute_batch("CREATE TABLE t (x); PRAGMA user_version = 99;")
            .unwrap();
    }
    let before = std::fs::read(&newer).unwrap();
    let e = StoreReader::open_read_only(&newer, 10, Duration::from_secs(1))
        .err()
        .unwrap();
    assert!(e.to_string().contains("newer"), "{e}");
    assert_eq!(std::fs::read(&newer).unwrap(), before);
}

#[test]
fn a_span_written_again_keeps_its_events_once_and_new_events_still_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.db"), false);
    let events = |store: &Store| {
        store
            .reader()
            .read_sql("SELECT COUNT(*) FROM event_rows")
            .unwrap()
            .rows[0][0]
            .as_i64()
            .unwrap()
    };
    // Trace 3 has two metric events on its call span.
    fill(&store, 3..4);
    assert_eq!(events(&store), 2);
    // Sent again, as a retried export or a re-import would: nothing new.
    fill(&store, 3..4);
    fill(&store, 3..4);
    assert_eq!(events(&store), 2);
    // Another event of the same span, and the same event of a new span, are stored.
    let mut records = trace(3);
    let Record::Event(e) = records.pop().unwrap() else {
        unreachable!()
    };
    let w = store.writer();
    w.write(vec![Record::Event(SpanEvent {
        timestamp: Timestamp::from_unix_nanos(e.timestamp.unix_nanos() + 1),
        ..e.clone()
    })])
    .unwrap();
    w.flush().unwrap();
    assert_eq!(events(&store), 3);
    fill(&store, 6..7);
    assert_eq!(events(&store), 5);
    // The same span twice in one batch (two imports that meet in one transaction).
    let twice: Vec<Record> = [trace(9), trace(9)].concat();
    store.writer().write(twice).unwrap();
    store.writer().flush().unwrap();
    assert_eq!(events(&store), 7);
    store.close().unwrap();
}

#[cfg(unix)]
#[test]
fn a_new_store_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new-dir/s.db");
    let store = open(&path, false);
    fill(&store, 0..2);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&path.with_extension("db-wal")), 0o600);
    store.close().unwrap();
}
