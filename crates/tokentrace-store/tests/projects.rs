//! Projects in the store, on real files: one trace id written by two projects is two traces,
//! each with its own spans and events, and a reader limited to a project sees only its own; a
//! file of schema version 4 (before projects) is migrated in place, everything in `default`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rusqlite::Connection;
use tokentrace_model::{
    AttrValue, Attributes, SpanEvent, SpanEventBody, SpanId, SpanKind, SpanRecord, SpanStatus,
    Timestamp, TraceId, stamp_project,
};
use tokentrace_store::{Record, SCHEMA_VERSION, Store, StoreOptions};

fn span(trace: TraceId, id: SpanId, name: &str, project: &str) -> SpanRecord {
    let mut attributes = Attributes::new();
    attributes.insert("user.id".into(), AttrValue::from(name));
    stamp_project(&mut attributes, project);
    let start = Timestamp::now();
    SpanRecord {
        trace_id: trace,
        span_id: id,
        parent_span_id: None,
        name: name.into(),
        kind: SpanKind::Internal,
        start_time: start,
        end_time: Some(Timestamp::from_unix_nanos(start.unix_nanos() + 1_000_000)),
        status: Some(SpanStatus::Ok),
        status_message: None,
        attributes,
        events: vec![],
        links: vec![],
        service_name: None,
        expires_at: None,
    }
}

fn log(trace: TraceId, id: SpanId, message: &str, project: &str) -> SpanEvent {
    let mut attributes = Attributes::new();
    stamp_project(&mut attributes, project);
    SpanEvent {
        trace_id: Some(trace),
        span_id: Some(id),
        timestamp: Timestamp::now(),
        name: "log".into(),
        body: SpanEventBody::Log {
            severity: tokentrace_model::LogSeverity::Info,
            message: message.into(),
        },
        attributes,
        expires_at: None,
    }
}

fn every_trace() -> tokentrace_model::query::TraceQuery {
    tokentrace_model::query::QueryTracesRequest::default()
        .validate()
        .unwrap()
}

fn only(p: &str) -> Option<Arc<[String]>> {
    Some(Arc::from(vec![p.to_string()]))
}

#[test]
fn one_trace_id_in_two_projects_is_two_traces_each_read_only_by_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("trace_store.db"), StoreOptions::default()).unwrap();
    let (trace, a, b) = (TraceId::random(), SpanId::random(), SpanId::random());
    store
        .writer()
        .write(vec![
            Record::Span(span(trace, a, "in-alpha", "alpha")),
            Record::Event(log(trace, a, "alpha's log", "alpha")),
            Record::Span(span(trace, b, "in-default", "default")),
            Record::Event(log(trace, b, "default's log", "default")),
        ])
        .unwrap();
    // A later batch finds each project's trace again (not the other's).
    store
        .writer()
        .write(vec![Record::Event(log(trace, a, "alpha again", "alpha"))])
        .unwrap();
    store.writer().flush().unwrap();
    let all = store.reader();
    let alpha = all.for_projects(only("alpha"));
    let default = all.for_projects(only("default"));
    let nobody = all.for_projects(Some(Arc::from(Vec::<String>::new())));

    assert!(alpha.get_span(trace, a).unwrap().is_some());
    assert!(alpha.get_span(trace, b).unwrap().is_none());
    assert!(default.get_span(trace, b).unwrap().is_some());
    assert!(default.get_span(trace, a).unwrap().is_none());
    assert!(nobody.get_trace(trace).unwrap().is_none());
    assert!(all.get_span(trace, a).unwrap().is_some() && all.get_span(trace, b).unwrap().is_some());

    let messages = |r: &tokentrace_store::StoreReader, s| -> Vec<String> {
        r.span_events(trace, s)
            .unwrap()
            .into_iter()
            .map(|e| match e.body {
                SpanEventBody::Log { message, .. } => message,
                _ => String::new(),
            })
            .collect()
    };
    assert_eq!(messages(&alpha, a), ["alpha's log", "alpha again"]);
    assert!(messages(&default, a).is_empty());
    assert_eq!(messages(&default, b), ["default's log"]);

    let (_, spans) = alpha.trace_records(trace).unwrap().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "in-alpha");
    assert!(alpha.get_span_tree(b, None, None).unwrap().is_none());
    assert_eq!(
        all.query_traces(&every_trace()).unwrap().len(),
        2,
        "two traces of one id"
    );
    assert_eq!(alpha.query_traces(&every_trace()).unwrap().len(), 1);
    let conn = Connection::open(dir.path().join("trace_store.db")).unwrap();
    let per: Vec<(String, String)> = conn
        .prepare("SELECT project, trace_id FROM traces ORDER BY project")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        per,
        [
            ("alpha".to_string(), trace.to_string()),
            ("default".to_string(), trace.to_string())
        ]
    );
    store.close().unwrap();
}

#[test]
fn a_version_4_file_is_migrated_in_place_everything_in_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let (trace, s) = (TraceId::random(), SpanId::random());
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    store
        .writer()
        .write(vec![
            Record::Span(span(trace, s, "old", "default")),
            Record::Event(log(trace, s, "old log", "default")),
        ])
        .unwrap();
    store
        .writer()
        .append_dataset_rows("ds", "default", vec![serde_json::Map::new()], None)
        .unwrap();
    store.close().unwrap();
    // Back to what version 4 wrote: no projects, a `traces` view without them, the `metrics`
    // table of versions 1 to 5.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP INDEX trace_rows_project_start;
         DROP VIEW traces;
         ALTER TABLE trace_rows DROP COLUMN project;
         ALTER TABLE datasets DROP COLUMN project;
         DROP TABLE projects;
         CREATE VIEW traces AS SELECT lower(hex(t.trace_id)) AS trace_id FROM trace_rows t;
         DROP VIEW metrics;
         DROP TABLE metric_points;
         CREATE TABLE metrics (id INTEGER PRIMARY KEY, name TEXT NOT NULL, timestamp TEXT NOT NULL,
             ts_nanos INTEGER NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL, labels TEXT NOT NULL,
             trace_id TEXT, span_id TEXT, expires_at INTEGER);
         CREATE INDEX metrics_name_time ON metrics (name, ts_nanos);
         CREATE INDEX metrics_expires_at ON metrics (expires_at);
         PRAGMA user_version = 4;",
    )
    .unwrap();
    drop(conn);

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let reader = store.reader().for_projects(only("default"));
    assert_eq!(reader.get_span(trace, s).unwrap().unwrap().name, "old");
    assert_eq!(reader.span_events(trace, s).unwrap().len(), 1);
    assert!(reader.iterrows("ds", 0, None).unwrap().is_some());
    assert!(
        store
            .reader()
            .for_projects(only("alpha"))
            .get_trace(trace)
            .unwrap()
            .is_none()
    );
    store.close().unwrap();
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let project: String = conn
        .query_row("SELECT project FROM traces", [], |r| r.get(0))
        .unwrap();
    assert_eq!(project, "default");
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn a_trace_page_reads_the_spans_of_the_trace_it_names_when_another_project_only_logged_to_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("trace_store.db"), StoreOptions::default()).unwrap();
    let (trace, logged, spanned) = (TraceId::random(), SpanId::random(), SpanId::random());
    // The id's first trace row is gamma's, which has an event and no span.
    store
        .writer()
        .write(vec![Record::Event(log(
            trace,
            logged,
            "gamma's log",
            "gamma",
        ))])
        .unwrap();
    store.writer().flush().unwrap();
    store
        .writer()
        .write(vec![Record::Span(span(
            trace,
            spanned,
            "in-default",
            "default",
        ))])
        .unwrap();
    store.writer().flush().unwrap();
    let all = store.reader();
    let (header, spans) = all.trace_records(trace).unwrap().unwrap();
    assert_eq!(header, all.get_trace(trace).unwrap().unwrap());
    assert_eq!(header.root_span_id, spanned);
    assert_eq!(spans.len(), 1, "the spans of the trace the page shows");
    assert_eq!(spans[0].name, "in-default");
    store.close().unwrap();
}
