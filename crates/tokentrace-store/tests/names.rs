//! Span attributes keyed by name ids (schema version 7) on real SQLite files: every kind of key
//! reads back the same through the query API, the `spans` view (rusqlite and the sqlite3
//! shell) and filters; past the name limit new names are stored as themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::sqlite3;

use rusqlite::Connection;
use tokentrace_model::query::{
    ListTracesRequest, QueryCondition, QueryConditionOp, QueryTracesRequest,
};
use tokentrace_model::{
    AttrValue, Attributes, SpanId, SpanKind, SpanRecord, SpanStatus, Timestamp, TraceId,
};
use tokentrace_store::{MAX_ATTRIBUTE_NAMES, Record, Store, StoreOptions};

fn span(trace: TraceId, attributes: Attributes) -> SpanRecord {
    let start = Timestamp::now();
    SpanRecord {
        trace_id: trace,
        span_id: SpanId::random(),
        parent_span_id: None,
        name: "call".into(),
        kind: SpanKind::Client,
        start_time: start,
        end_time: Some(Timestamp::from_unix_nanos(start.unix_nanos() + 5_000_000)),
        status: Some(SpanStatus::Ok),
        status_message: None,
        attributes,
        events: vec![],
        links: vec![],
        service_name: Some("svc".into()),
        expires_at: None,
    }
}

fn traces_with(store: &Store, key: &str, value: AttrValue) -> usize {
    let req = QueryTracesRequest {
        attribute_filters: Some(vec![QueryCondition {
            key: key.into(),
            op: QueryConditionOp::Eq,
            value,
        }]),
        ..Default::default()
    };
    store
        .reader()
        .query_traces(&req.validate().unwrap())
        .unwrap()
        .len()
}

/// The names in `attribute_names`, and the stored attributes of the first span row (the last
/// with `last`).
fn names_and_row(conn: &Connection, last: bool) -> (i64, String) {
    let sql = if last {
        "SELECT (SELECT count(*) FROM attribute_names), attributes FROM span_rows ORDER BY id DESC LIMIT 1"
    } else {
        "SELECT (SELECT count(*) FROM attribute_names), attributes FROM span_rows ORDER BY id LIMIT 1"
    };
    conn.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
}

/// The attributes of every span as the `spans` view gives them, through rusqlite.
fn view_attributes(conn: &Connection) -> Vec<String> {
    conn.prepare("SELECT attributes FROM spans ORDER BY start_time, span_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn every_kind_of_key_reads_back_through_the_api_the_view_the_shell_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("trace_store.db"), StoreOptions::default()).unwrap();
    let long = "k".repeat(300);
    let attributes: Attributes = [
        ("user.id", AttrValue::from("u-1")),
        ("gen_ai.usage.input_tokens", AttrValue::Int(12)),
        ("12", AttrValue::Int(1)),
        ("~x", AttrValue::Bool(true)),
        ("~", AttrValue::Bool(false)),
        ("ratio", AttrValue::Float(0.30000000000000004)),
        (
            "tags",
            AttrValue::Array(vec![AttrValue::Int(1), AttrValue::from("a")]),
        ),
        ("nothing", AttrValue::Null),
        ("a\"b", AttrValue::from("quoted")),
        ("", AttrValue::from("empty")),
        (long.as_str(), AttrValue::from("long")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let trace = TraceId::random();
    let s = span(trace, attributes.clone());
    store.writer().write(vec![Record::Span(s.clone())]).unwrap();
    // A second span with the same names adds no name.
    store
        .writer()
        .write(vec![Record::Span(span(
            TraceId::random(),
            attributes.clone(),
        ))])
        .unwrap();
    store.writer().flush().unwrap();

    let got = store.reader().get_span(trace, s.span_id).unwrap().unwrap();
    assert_eq!(got.attributes, attributes, "the API reads every key back");

    let conn = Connection::open(store.path()).unwrap();
    let (names, raw) = names_and_row(&conn, false);
    assert_eq!(
        names, 10,
        "each name once; the one over 256 bytes gets no id"
    );
    assert!(
        !raw.contains("user.id") && !raw.contains("input_tokens") && raw.contains(&long),
        "names are ids in the row, except the long one: {raw}"
    );
    let want = serde_json::to_string(&attributes).unwrap();
    assert_eq!(
        view_attributes(&conn),
        [want.clone(), want.clone()],
        "the view gives the names back"
    );
    let shell = sqlite3(
        store.path(),
        "SELECT attributes FROM spans ORDER BY start_time, span_id LIMIT 1",
    );
    assert_eq!(shell.trim_end(), want, "and so does the sqlite3 shell");
    let shell = sqlite3(
        store.path(),
        "SELECT json_extract(attributes, '$.\"user.id\"'), json_extract(attributes, '$.ratio') FROM spans LIMIT 1",
    );
    assert_eq!(shell.trim_end(), "u-1|0.3");

    assert_eq!(traces_with(&store, "user.id", "u-1".into()), 2);
    assert_eq!(traces_with(&store, "12", AttrValue::Int(1)), 2);
    assert_eq!(traces_with(&store, "~x", AttrValue::Bool(true)), 2);
    assert_eq!(
        traces_with(&store, "ratio", AttrValue::Float(0.30000000000000004)),
        2
    );
    assert_eq!(traces_with(&store, "user.id", "u-2".into()), 0);
    assert_eq!(traces_with(&store, "never.stored", "u-1".into()), 0);

    let page = store
        .reader()
        .list_traces(&ListTracesRequest::default().validate().unwrap())
        .unwrap();
    let summary = page.data.iter().find(|t| t.trace_id == trace).unwrap();
    assert_eq!(
        summary.user.as_deref(),
        Some("u-1"),
        "the trace list reads names too"
    );
    assert_eq!(summary.input_tokens, Some(12));
    store.close().unwrap();
}

#[test]
fn past_the_name_limit_new_names_are_stored_as_themselves_and_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    // Every id taken, 1,000 names a span.
    let mut records = Vec::new();
    for chunk in 0..MAX_ATTRIBUTE_NAMES.div_ceil(1_000) {
        let attributes: Attributes = (chunk * 1_000
            ..((chunk + 1) * 1_000).min(MAX_ATTRIBUTE_NAMES))
            .map(|i| (format!("filler.{i}"), AttrValue::Int(i as i64)))
            .collect();
        records.push(Record::Span(span(TraceId::random(), attributes)));
    }
    store.writer().write(records).unwrap();
    let late: Attributes = [
        ("filler.7", AttrValue::Int(7)),
        ("late.name", AttrValue::from("v")),
        ("99999", AttrValue::from("digits")),
        ("~y", AttrValue::from("tilde")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let trace = TraceId::random();
    let s = span(trace, late.clone());
    store.writer().write(vec![Record::Span(s.clone())]).unwrap();
    store.writer().flush().unwrap();

    let conn = Connection::open(&path).unwrap();
    let (names, raw) = names_and_row(&conn, true);
    assert_eq!(
        names, MAX_ATTRIBUTE_NAMES as i64,
        "no name past the limit gets an id"
    );
    assert!(
        raw.contains("\"late.name\"") && raw.contains("\"~99999\"") && raw.contains("\"~~y\""),
        "new names stored as themselves, escaped where they would read as an id: {raw}"
    );
    assert_eq!(
        store
            .reader()
            .get_span(trace, s.span_id)
            .unwrap()
            .unwrap()
            .attributes,
        late
    );
    let last = view_attributes(&conn).pop().unwrap();
    assert_eq!(last, serde_json::to_string(&late).unwrap());
    assert_eq!(traces_with(&store, "late.name", "v".into()), 1);
    assert_eq!(traces_with(&store, "99999", "digits".into()), 1);
    assert_eq!(traces_with(&store, "~y", "tilde".into()), 1);
    assert_eq!(traces_with(&store, "filler.7", AttrValue::Int(7)), 2);
    store.close().unwrap();
}

#[test]
fn a_span_stores_its_service_name_only_when_it_is_not_its_traces() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let trace = TraceId::random();
    // The trace's service comes from its first span; a later batch cannot change it.
    let with = |name: &str, service: Option<&str>| {
        let mut s = span(trace, Attributes::new());
        s.name = name.into();
        s.service_name = service.map(str::to_string);
        Record::Span(s)
    };
    store
        .writer()
        .write(vec![with("a", Some("svc")), with("b", None)])
        .unwrap();
    store.writer().flush().unwrap();
    store
        .writer()
        .write(vec![
            with("c", Some("svc")),
            with("d", Some("other")),
            with("e", None),
        ])
        .unwrap();
    store.writer().flush().unwrap();
    let (_, records) = store.reader().trace_records(trace).unwrap().unwrap();
    let mut got: Vec<(String, Option<String>)> = records
        .iter()
        .map(|s| (s.name.clone(), s.service_name.clone()))
        .collect();
    got.sort();
    let want: Vec<(String, Option<String>)> = [
        ("a", Some("svc")),
        ("b", None),
        ("c", Some("svc")),
        ("d", Some("other")),
        ("e", None),
    ]
    .iter()
    .map(|(n, s)| (n.to_string(), s.map(str::to_string)))
    .collect();
    assert_eq!(got, want);
    store.close().unwrap();
    let stored = sqlite3(
        &path,
        "SELECT name, quote(service_name) FROM span_rows ORDER BY name;",
    );
    assert_eq!(stored, "a|NULL\nb|''\nc|NULL\nd|'other'\ne|''\n");
    let shown = sqlite3(
        &path,
        "SELECT name, ifnull(service_name, '-') FROM spans ORDER BY name;",
    );
    assert_eq!(shown, "a|svc\nb|-\nc|svc\nd|other\ne|-\n");
}

#[test]
fn kinds_are_stored_as_codes_and_spans_expire_with_their_trace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let trace = TraceId::random();
    let kinds = [
        SpanKind::Internal,
        SpanKind::Server,
        SpanKind::Client,
        SpanKind::Producer,
        SpanKind::Consumer,
    ];
    let expiry = Timestamp::now().unix_nanos() + 3_600_000_000_000;
    let spans: Vec<Record> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let mut s = span(trace, Attributes::new());
            s.kind = *kind;
            s.name = kind.as_str().into();
            // The trace expires with the latest of its spans.
            s.expires_at = Some(Timestamp::from_unix_nanos(expiry - i as i64));
            Record::Span(s)
        })
        .collect();
    store.writer().write(spans).unwrap();
    store.writer().flush().unwrap();
    let (_, records) = store.reader().trace_records(trace).unwrap().unwrap();
    let mut got: Vec<(String, SpanKind, Option<i64>)> = records
        .iter()
        .map(|s| (s.name.clone(), s.kind, s.expires_at.map(|t| t.unix_nanos())))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<(String, SpanKind, Option<i64>)> = kinds
        .iter()
        .map(|k| (k.as_str().to_string(), *k, Some(expiry)))
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);
    store.close().unwrap();
    let conn = Connection::open(&path).unwrap();
    let stored: String = conn
        .query_row(
            "SELECT group_concat(kind || ':' || ifnull(expires_at, '-'), ',') FROM (SELECT kind, expires_at FROM span_rows ORDER BY kind)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        stored, "1:-,2:-,3:-,4:-,5:-",
        "one byte a kind, no expiry of their own"
    );
    // The shell of Debian 12 reads the names and the trace's expiry through the view.
    let shown = sqlite3(
        &path,
        "SELECT name = kind, expires_at FROM spans ORDER BY name;",
    );
    assert_eq!(shown, format!("1|{expiry}\n").repeat(5));
}
