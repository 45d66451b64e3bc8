//! The attribute index on real files: filters on indexed keys give the answers of a scan of
//! every span (the same store opened without the index), a key configured after spans were
//! stored is filled from them, and the query plan reads the index.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tokentrace_model::query::{
    QueryCondition, QueryConditionOp, QueryTracesRequest, validate_filters,
};
use tokentrace_model::{
    AttrValue, Attributes, SpanId, SpanKind, SpanRecord, SpanStatus, Timestamp, TraceId,
};
use tokentrace_store::{Store, StoreOptions, text_key};

const KEYS: &[&str] = &[
    "user.id",
    "session.id",
    "http.response.status_code",
    "name",
    "status",
];

fn open(path: &Path, keys: &[&str]) -> Store {
    let options = StoreOptions {
        indexed_attributes: keys.iter().map(|k| k.to_string()).collect(),
        ..StoreOptions::default()
    };
    Store::open(path, options).unwrap()
}

/// 300 traces of 3 spans; users, status codes and names vary by trace and span.
fn write(store: &Store) {
    let mut spans = Vec::new();
    for t in 0..300i64 {
        // The same ids in both stores, so their answers compare exactly.
        let trace: TraceId = format!("{:032x}", t + 1).parse().unwrap();
        let id = |j: i64| -> SpanId { format!("{:016x}", t * 3 + j + 1).parse().unwrap() };
        let root = id(0);
        for j in 0..3i64 {
            let start = Timestamp::from_unix_nanos(BASE_NS + (t * 3 + j) * 1_000_000);
            let mut attributes = Attributes::new();
            attributes.insert(
                "user.id".into(),
                AttrValue::from(format!("user-{}", t % 17)),
            );
            // A value per trace: past `LOW_CARDINALITY` values, entries go to the sorted runs.
            attributes.insert("session.id".into(), AttrValue::from(format!("s-{t}")));
            if j == 2 {
                attributes.insert(
                    "http.response.status_code".into(),
                    AttrValue::Int(200 + (t % 4) * 100),
                );
            }
            let span = SpanRecord {
                trace_id: trace,
                span_id: id(j),
                parent_span_id: (j > 0).then_some(root),
                name: format!("step-{}", (t + j) % 5),
                kind: SpanKind::Internal,
                start_time: start,
                end_time: Some(start),
                status: Some(if t % 7 == 0 && j == 1 {
                    SpanStatus::Error
                } else {
                    SpanStatus::Ok
                }),
                status_message: None,
                attributes,
                events: Vec::new(),
                links: Vec::new(),
                service_name: None,
                expires_at: None,
            };
            // The sink encodes spans through the writer, which adds their index entries.
            spans.push(span);
        }
    }
    let w = store.writer();
    let rows = spans.iter().map(|s| w.span_row(s).unwrap()).collect();
    w.write_rows(rows).unwrap();
    w.flush().unwrap();
}

fn filters(list: &[(&str, QueryConditionOp, AttrValue)]) -> Vec<QueryCondition> {
    list.iter()
        .map(|(k, op, v)| QueryCondition {
            key: k.to_string(),
            op: *op,
            value: v.clone(),
        })
        .collect()
}

fn traces(store: &Store, f: &[QueryCondition]) -> Vec<String> {
    let req = QueryTracesRequest {
        attribute_filters: Some(f.to_vec()),
        limit: Some(10_000),
        ..Default::default()
    };
    let mut ids: Vec<String> = store
        .reader()
        .query_traces(&req.validate().unwrap())
        .unwrap()
        .into_iter()
        .map(|t| t.trace_id.to_string())
        .collect();
    ids.sort();
    ids
}

fn spans(store: &Store, f: &[QueryCondition]) -> Vec<String> {
    let f = validate_filters(f).unwrap();
    let mut ids: Vec<String> = store
        .reader()
        .query_spans(&f, &[], None)
        .unwrap()
        .into_iter()
        .map(|s| s.span_id.to_string())
        .collect();
    ids.sort();
    ids
}

fn cases() -> Vec<Vec<QueryCondition>> {
    use QueryConditionOp::*;
    vec![
        filters(&[("user.id", Eq, "user-3".into())]),
        filters(&[("user.id", Eq, "nobody".into())]),
        filters(&[("session.id", Eq, "s-7".into())]),
        filters(&[("session.id", Eq, "s-290".into())]),
        filters(&[("session.id", Gt, "s-298".into())]),
        filters(&[("http.response.status_code", Gt, AttrValue::Int(300))]),
        filters(&[("http.response.status_code", Lt, AttrValue::Int(300))]),
        filters(&[
            ("name", Eq, "step-4".into()),
            ("user.id", Eq, "user-5".into()),
        ]),
        filters(&[("status", Eq, "error".into())]),
        filters(&[("user.id", Ne, "user-3".into())]),
        filters(&[
            ("user.id", Eq, "user-3".into()),
            ("http.response.status_code", Eq, AttrValue::Int(400)),
        ]),
    ]
}

/// The one number a query on the file answers.
fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// A connection to the file with the entries of its live runs (blocks, which SQL does not
/// read) in the temporary table `live_lookup` (kind, key, target).
fn inspect(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("CREATE TEMP TABLE live_lookup (kind, key, target)")
        .unwrap();
    for (kind, key, target) in tokentrace_store::live_entries(&conn).unwrap() {
        conn.execute(
            "INSERT INTO live_lookup VALUES (?1, ?2, ?3)",
            rusqlite::params![kind, key, target],
        )
        .unwrap();
    }
    conn
}

/// Counts the attribute index's entries (in the live runs and in `attribute_values`), of keys
/// still registered (on a connection of [`inspect`]).
const LIVE_ENTRIES: &str = "SELECT COUNT(*) FROM (
        SELECT l.kind, l.key AS value FROM live_lookup l
        UNION ALL SELECT kind, value FROM attribute_values
     ) e JOIN attribute_keys k ON e.kind = 16 + k.id";

#[test]
fn indexed_filters_answer_what_a_scan_of_every_span_answers() {
    let dir = tempfile::tempdir().unwrap();
    let indexed = dir.path().join("indexed.db");
    let scanned = dir.path().join("scanned.db");
    let (a, b) = (open(&indexed, KEYS), open(&scanned, &[]));
    write(&a);
    write(&b);
    for f in cases() {
        assert_eq!(traces(&a, &f), traces(&b, &f), "{f:?}");
        assert_eq!(spans(&a, &f), spans(&b, &f), "{f:?}");
    }
    // The index is what answers: every trace of user-3, and no other.
    let f = filters(&[("user.id", QueryConditionOp::Eq, "user-3".into())]);
    assert_eq!(traces(&a, &f).len(), 300 / 17 + 1);
    let conn = inspect(&indexed);
    let n: i64 = count(&conn, &format!("{LIVE_ENTRIES} WHERE k.key = 'user.id'"));
    assert_eq!(n, 300, "one entry per trace and value, not per span");
    a.close().unwrap();
    b.close().unwrap();
}

/// The time written spans start at: span j of trace t starts `t * 3 + j` ms after `BASE_NS`.
const BASE_NS: i64 = 1_795_514_400_000_000_000;

fn at_ms(ms: i64) -> AttrValue {
    Timestamp::from_unix_nanos(BASE_NS + ms * 1_000_000)
        .to_iso()
        .into()
}

#[test]
fn time_filters_bound_the_spans_read_and_answer_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("trace_store.db"), &[]);
    write(&store);
    use QueryConditionOp::*;
    // Spans 0..=899 start at 0..=899 ms; trace t holds spans 3t..3t+2, each ending as it starts.
    for (f, want) in [
        (filters(&[("start_time", Gt, at_ms(600))]), 100),
        (filters(&[("start_time", Lt, at_ms(3))]), 1),
        (filters(&[("start_time", Eq, at_ms(451))]), 1),
        (filters(&[("end_time", Lt, at_ms(30))]), 10),
        (
            filters(&[
                ("start_time", Gt, at_ms(600)),
                ("user.id", Eq, "user-3".into()),
            ]),
            (200..300).filter(|t| t % 17 == 3).count(),
        ),
    ] {
        assert_eq!(traces(&store, &f).len(), want, "{f:?}");
        let spans = spans(&store, &f);
        assert!(!spans.is_empty(), "{f:?}");
    }
    store.close().unwrap();
}

#[test]
fn a_key_configured_later_is_filled_from_the_spans_already_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let store = open(&path, &[]);
    write(&store);
    store.close().unwrap();
    // Added: filled at open. Dropped and added again: filled again, nothing doubled.
    for keys in [&["user.id"][..], &[][..], &["user.id", "name"][..]] {
        let store = open(&path, keys);
        store.close().unwrap();
    }
    let store = open(&path, &["user.id", "name"]);
    let f = filters(&[("user.id", QueryConditionOp::Eq, "user-3".into())]);
    assert_eq!(traces(&store, &f).len(), 300 / 17 + 1);
    let conn = inspect(&path);
    let (entries, complete): (i64, i64) = conn
        .query_row(
            &format!(
                "SELECT ({LIVE_ENTRIES}), (SELECT COUNT(*) FROM attribute_keys WHERE complete = 1)"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(complete, 2);
    // 300 traces × one user + each trace's distinct span names (3 of 5).
    assert_eq!(entries, 300 + 300 * 3);
    store.close().unwrap();
}

#[test]
fn retention_removes_the_index_runs_of_expired_spans() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let store = open(&path, &["user.id"]);
    let now = Timestamp::now().unix_nanos();
    let w = store.writer();
    let rows = [
        (now - 1_000_000_000, "gone"),
        (now + 3_600_000_000_000, "kept"),
    ]
    .into_iter()
    .map(|(expires, user)| {
        let mut attributes = Attributes::new();
        attributes.insert("user.id".into(), AttrValue::from(user));
        let start = Timestamp::from_unix_nanos(now);
        w.span_row(&SpanRecord {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            name: "s".into(),
            kind: SpanKind::Internal,
            start_time: start,
            end_time: Some(start),
            status: Some(SpanStatus::Ok),
            status_message: None,
            attributes,
            events: Vec::new(),
            links: Vec::new(),
            service_name: None,
            expires_at: Some(Timestamp::from_unix_nanos(expires)),
        })
        .unwrap()
    })
    .collect::<Vec<_>>();
    // One transaction each, so each span's entries are a run of their own: a run whose every
    // entry points at an expired trace goes as a whole.
    for row in rows {
        w.write_rows(vec![row]).unwrap();
        w.flush().unwrap();
    }
    w.expire(Timestamp::now()).unwrap();
    let conn = inspect(&path);
    let values: Vec<Vec<u8>> = conn
        .prepare(&LIVE_ENTRIES.replacen("COUNT(*)", "e.value", 1))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(values, [text_key("kept").to_vec()]);
    store.close().unwrap();
}

/// The index entries of a file of schema version 9, which kept a run's entries as rows of
/// `lookup`, span ids whole and texts as they are: a live run with every span keyed by its
/// whole id, every trace id, and every entry of the indexed keys, for (text value, trace key)
/// pairs computed from the stored spans (user ids and sessions), the others in
/// `attribute_values` (names, statuses and the status codes, numbers, which stay as they are);
/// and a dead run, whose entries nobody reads.
const VERSION_9_ENTRIES: &str = "
    DROP TABLE lookup_blocks;
    DELETE FROM lookup_runs;
    CREATE TABLE lookup (
        run    INTEGER NOT NULL,
        kind   INTEGER NOT NULL,
        key    NOT NULL,
        target INTEGER NOT NULL,
        PRIMARY KEY (run, kind, key, target)
    ) WITHOUT ROWID;
    DELETE FROM attribute_values;
    INSERT INTO lookup_runs (run, level, state, entries, traces, span_max, trace_max)
        VALUES (1000, 0, 0, 0, 300, (SELECT MAX(id) FROM span_rows), (SELECT MAX(id) FROM trace_rows)),
               (999, 0, 2, 1, 0, 1, NULL);
    INSERT INTO lookup (run, kind, key, target) VALUES (999, 0, x'00000001', 1);
    INSERT INTO lookup (run, kind, key, target) SELECT 1000, 0, s.span_id, s.id FROM span_rows s;
    INSERT INTO lookup (run, kind, key, target) SELECT 1000, 1, t.trace_id, t.id FROM trace_rows t;
    INSERT OR IGNORE INTO lookup (run, kind, key, target)
        SELECT 1000, 16 + k.id, json_extract(s.attributes, '$.\"' || n.id || '\"'), s.trace
        FROM span_rows s, attribute_keys k JOIN attribute_names n ON n.name = k.key
        WHERE k.key IN ('user.id', 'session.id')
          AND json_extract(s.attributes, '$.\"' || n.id || '\"') IS NOT NULL;
    INSERT OR IGNORE INTO attribute_values (kind, value, trace)
        SELECT 16 + k.id, CASE k.key WHEN 'name' THEN s.name ELSE s.status END, s.trace
        FROM span_rows s, attribute_keys k WHERE k.key IN ('name', 'status') AND s.status IS NOT NULL;
    INSERT OR IGNORE INTO attribute_values (kind, value, trace)
        SELECT 16 + k.id, json_extract(s.attributes, '$.\"' || n.id || '\"'), s.trace
        FROM span_rows s, attribute_keys k JOIN attribute_names n ON n.name = k.key
        WHERE k.key = 'http.response.status_code'
          AND json_extract(s.attributes, '$.\"' || n.id || '\"') IS NOT NULL;
    UPDATE lookup_runs SET entries = (SELECT COUNT(*) FROM lookup WHERE run = 1000) WHERE run = 1000;
    PRAGMA user_version = 9;";

#[test]
fn a_version_9_index_is_migrated_to_4_byte_keys_in_blocks_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let indexed = dir.path().join("indexed.db");
    let scanned = dir.path().join("scanned.db");
    let (a, b) = (open(&indexed, KEYS), open(&scanned, &[]));
    write(&a);
    write(&b);
    a.close().unwrap();
    let conn = rusqlite::Connection::open(&indexed).unwrap();
    conn.execute_batch(VERSION_9_ENTRIES).unwrap();
    let texts = "SELECT (SELECT COUNT(*) FROM lookup WHERE kind >= 16 AND typeof(key) = 'text'),
                        (SELECT COUNT(*) FROM attribute_values WHERE typeof(value) = 'text')";
    let before: (i64, i64) = conn
        .query_row(texts, [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    // 300 traces × a user and a session; the distinct names (3 a trace) and statuses.
    assert_eq!(before.0, 600);
    let spans_whole: i64 = count(
        &conn,
        "SELECT COUNT(*) FROM lookup WHERE kind = 0 AND length(key) = 8",
    );
    assert_eq!(spans_whole, 900);
    assert!(before.1 >= 900, "{before:?}");
    let rows: i64 = count(&conn, "SELECT COUNT(*) FROM lookup WHERE run = 1000");
    drop(conn);
    let a = open(&indexed, KEYS);
    let conn = inspect(&indexed);
    let after: (i64, i64) = conn
        .query_row(&texts.replace("FROM lookup", "FROM live_lookup"), [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(after, (0, 0));
    // Every live entry is in the blocks now (the run's figures with it), the dead run and
    // the table of rows are gone.
    let (live, counted, runs, table): (i64, i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM live_lookup), (SELECT SUM(entries) FROM lookup_runs),
                    (SELECT COUNT(*) FROM lookup_runs),
                    (SELECT COUNT(*) FROM sqlite_master WHERE name = 'lookup')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!((live, counted, runs, table), (rows, rows, 1, 0));
    let traces_found: i64 = count(&conn, "SELECT COUNT(*) FROM live_lookup WHERE kind = 1");
    assert_eq!(traces_found, 300);
    let keys: i64 = count(
        &conn,
        &format!("{LIVE_ENTRIES} WHERE typeof(e.value) = 'blob' AND length(e.value) = 4"),
    );
    assert_eq!(keys, before.0 + before.1, "every text now a 4-byte key");
    let numbers: i64 = count(
        &conn,
        &format!("{LIVE_ENTRIES} WHERE typeof(e.value) = 'integer'"),
    );
    assert_eq!(numbers, 300, "a status code a trace");
    // Span entries keyed by whole ids (runs written before version 10) are keyed by their
    // first 4 bytes now, and find their spans.
    let whole: i64 = count(
        &conn,
        "SELECT COUNT(*) FROM live_lookup WHERE kind = 0 AND length(key) <> 4",
    );
    assert_eq!(whole, 0);
    for n in [1u64, 450, 900] {
        let id: SpanId = format!("{n:016x}").parse().unwrap();
        let tree = a.reader().get_span_tree(id, None, Some(1)).unwrap();
        assert_eq!(tree.map(|t| t.len()), Some(1), "span {n}");
    }
    for f in cases() {
        assert_eq!(traces(&a, &f), traces(&b, &f), "{f:?}");
        assert_eq!(spans(&a, &f), spans(&b, &f), "{f:?}");
    }
    a.close().unwrap();
    b.close().unwrap();
}

/// A span of trace `t` (its own id space, apart from [`write`]'s) starting `start_ms` after
/// `BASE_NS`, with token usage so that usage counts it.
fn timed_span(t: i64, j: i64, start_ms: i64, ended: bool) -> SpanRecord {
    let start = Timestamp::from_unix_nanos(BASE_NS + start_ms * 1_000_000);
    let mut attributes = Attributes::new();
    attributes.insert("gen_ai.usage.input_tokens".into(), AttrValue::Int(1));
    attributes.insert("model_id".into(), AttrValue::from("m"));
    SpanRecord {
        trace_id: format!("{:032x}", 0x7000 + t).parse().unwrap(),
        span_id: format!("{:016x}", 0x7000_0000 + t * 16 + j)
            .parse()
            .unwrap(),
        parent_span_id: (j > 0).then(|| format!("{:016x}", 0x7000_0000 + t * 16).parse().unwrap()),
        name: format!("step-{j}"),
        kind: SpanKind::Internal,
        start_time: start,
        end_time: ended.then(|| Timestamp::from_unix_nanos(start.unix_nanos() + 5_000_000)),
        status: Some(SpanStatus::Ok),
        status_message: None,
        attributes,
        events: Vec::new(),
        links: Vec::new(),
        service_name: None,
        expires_at: None,
    }
}

#[test]
fn a_time_window_finds_the_spans_of_long_traces_and_of_traces_that_started_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("trace_store.db"), &[]);
    let w = store.writer();
    // Every span written, as (trace, start in ms), each batch its own transaction.
    let mut all: Vec<(i64, i64)> = Vec::new();
    let mut batch = |spans: Vec<SpanRecord>| {
        for s in &spans {
            let t = i64::from_str_radix(&s.trace_id.to_string(), 16).unwrap() - 0x7000;
            let ms = (s.start_time.unix_nanos() - BASE_NS) / 1_000_000;
            all.push((t, ms));
        }
        w.write_rows(spans.iter().map(|s| w.span_row(s).unwrap()).collect())
            .unwrap();
        w.flush().unwrap();
    };
    // Short traces: 5 spans 10 ms apart, one a second.
    batch(
        (0..120)
            .flat_map(|t| (0..5).map(move |j| timed_span(t, j, t * 1_000 + j * 10, true)))
            .collect(),
    );
    for t in 120..130 {
        // Long traces: children 90 s and 5 minutes after the root, each sent on its own.
        let at = (t - 120) * 7_000;
        batch(vec![timed_span(t, 0, at, true)]);
        batch(vec![timed_span(t, 1, at + 90_000, true)]);
        batch(vec![timed_span(t, 2, at + 300_000, false)]);
        // Traces whose start moves back: an unfinished child first, its root 3 minutes
        // earlier later on.
        let u = t + 20;
        let at = 40_000 + (t - 120) * 11_000;
        batch(vec![timed_span(u, 1, at + 180_000, false)]);
        batch(vec![timed_span(u, 0, at, true)]);
    }
    use QueryConditionOp::*;
    let mut seed = 7u64;
    let mut next = |n: i64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as i64 % n
    };
    let mut windows: Vec<(i64, i64)> = (0..40)
        .map(|_| {
            let a = next(420_000) - 10_000;
            (a, a + 1 + next(30_000))
        })
        .collect();
    // Around the latest starts of the long traces and of the traces that moved back.
    windows.extend([(300_000, 300_001), (359_000, 400_000), (219_999, 220_001)]);
    for (a, b) in windows {
        let mut want: Vec<String> = all
            .iter()
            .filter(|(_, ms)| *ms > a && *ms < b)
            .map(|(t, _)| format!("{:032x}", 0x7000 + t))
            .collect();
        want.sort();
        want.dedup();
        let f = filters(&[("start_time", Gt, at_ms(a)), ("start_time", Lt, at_ms(b))]);
        assert_eq!(traces(&store, &f), want, "query_traces in ({a}, {b}) ms");
        let spans_of_traces = all
            .iter()
            .filter(|(t, _)| want.contains(&format!("{:032x}", 0x7000 + t)))
            .count();
        assert_eq!(
            spans(&store, &f).len(),
            spans_of_traces,
            "query_spans in ({a}, {b}) ms"
        );
        let usage = store
            .reader()
            .usage(&tokentrace_model::query::UsageQuery {
                since: Timestamp::from_unix_nanos(BASE_NS + a * 1_000_000),
                until: Timestamp::from_unix_nanos(BASE_NS + b * 1_000_000),
                by: tokentrace_model::query::UsageGroup::Model,
            })
            .unwrap();
        let calls: u64 = usage.data.iter().map(|r| r.calls).sum();
        let want_calls = all.iter().filter(|(_, ms)| *ms >= a && *ms < b).count();
        assert_eq!(calls as usize, want_calls, "usage in [{a}, {b}) ms");
    }
    // One bound only, and an end time bounding the starts.
    let f = filters(&[("start_time", Gt, at_ms(355_000))]);
    assert_eq!(
        traces(&store, &f).len(),
        2,
        "two long traces have a span that late"
    );
    let f = filters(&[("end_time", Lt, at_ms(25))]);
    assert_eq!(
        traces(&store, &f).len(),
        2,
        "the first short and the first long trace"
    );
    store.close().unwrap();
}

#[test]
fn span_ids_that_share_their_first_4_bytes_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("trace_store.db"), &[]);
    // Two traces of a root and a child; all four span ids start with the same 4 bytes, so
    // their index entries have one key.
    let mut spans = Vec::new();
    for t in 0..2i64 {
        for j in 0..2i64 {
            let mut s = timed_span(t, j, t * 10 + j, true);
            s.span_id = format!("abcdef01{:08x}", t * 2 + j).parse().unwrap();
            s.parent_span_id = (j == 1).then(|| format!("abcdef01{:08x}", t * 2).parse().unwrap());
            spans.push(s);
        }
    }
    let w = store.writer();
    let rows = spans.iter().map(|s| w.span_row(s).unwrap()).collect();
    w.write_rows(rows).unwrap();
    w.flush().unwrap();
    for s in &spans {
        let tree = store
            .reader()
            .get_span_tree(s.span_id, None, None)
            .unwrap()
            .unwrap();
        let mut got: Vec<String> = tree.keys().cloned().collect();
        got.sort();
        // A root's tree is itself and its child; a child's, itself alone.
        let want: Vec<String> = spans
            .iter()
            .filter(|o| o.span_id == s.span_id || o.parent_span_id == Some(s.span_id))
            .map(|o| o.span_id.to_string())
            .collect();
        assert_eq!(got, want, "{}", s.span_id);
        assert_eq!(tree[&s.span_id.to_string()].span.trace_id, s.trace_id);
    }
    store.close().unwrap();
}
