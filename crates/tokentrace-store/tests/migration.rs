//! Schema versions on real files: a file written by the release with schema version 1 is
//! migrated in place to the current version (every row kept, as the views show it; metric
//! rollups filled from its points; spans copied to the compact tables in batches and the
//! attribute index rebuilt), and a file from a newer version is refused and left byte for byte
//! as it was. Metric queries answered from the rollups agree with the points they summarise, on
//! windows that cut minutes in half. Long because each case builds its old file by hand, with
//! the SQL of the release that wrote it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, params};
use tokentrace_model::query::QueryMetricsRequest;
use tokentrace_model::{AttrValue, MetricPoint, Timestamp};
use tokentrace_store::{MetricQuery, Record, SCHEMA_VERSION, Store, StoreOptions};

/// The schema of version 1, as the release that wrote it created it.
const SCHEMA_V1: &str = r#"
CREATE TABLE traces (trace_id TEXT PRIMARY KEY, service_name TEXT, root_span_id TEXT NOT NULL,
    root_is_true_root INTEGER NOT NULL DEFAULT 0, start_time TEXT NOT NULL, end_time TEXT,
    timestamp TEXT NOT NULL, expires_at INTEGER);
CREATE INDEX traces_start_time ON traces (start_time);
CREATE INDEX traces_timestamp ON traces (timestamp);
CREATE INDEX traces_expires_at ON traces (expires_at);
CREATE TABLE spans (trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT,
    name TEXT NOT NULL, kind TEXT NOT NULL, start_time TEXT NOT NULL, end_time TEXT,
    duration_ms REAL, status TEXT, status_message TEXT, attributes TEXT NOT NULL, links TEXT,
    service_name TEXT, expires_at INTEGER, PRIMARY KEY (trace_id, span_id));
CREATE INDEX spans_span_id ON spans (span_id);
CREATE INDEX spans_parent_span_id ON spans (parent_span_id);
CREATE INDEX spans_start_time ON spans (start_time);
CREATE INDEX spans_name ON spans (name);
CREATE INDEX spans_expires_at ON spans (expires_at);
CREATE TABLE span_events (id INTEGER PRIMARY KEY, trace_id TEXT, span_id TEXT,
    timestamp TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT, message TEXT,
    value REAL, unit TEXT, attributes TEXT NOT NULL, expires_at INTEGER);
CREATE INDEX span_events_span ON span_events (trace_id, span_id);
CREATE INDEX span_events_expires_at ON span_events (expires_at);
CREATE TABLE metrics (id INTEGER PRIMARY KEY, name TEXT NOT NULL, timestamp TEXT NOT NULL,
    ts_nanos INTEGER NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL, labels TEXT NOT NULL,
    trace_id TEXT, span_id TEXT, expires_at INTEGER);
CREATE INDEX metrics_name_time ON metrics (name, ts_nanos);
CREATE INDEX metrics_expires_at ON metrics (expires_at);
CREATE TABLE datasets (dataset_id TEXT PRIMARY KEY, created_at TEXT NOT NULL,
    row_count INTEGER NOT NULL DEFAULT 0);
CREATE TABLE dataset_rows (dataset_id TEXT NOT NULL, row_index INTEGER NOT NULL,
    row TEXT NOT NULL, PRIMARY KEY (dataset_id, row_index)) WITHOUT ROWID;
PRAGMA user_version = 1;
"#;

const BASE: i64 = 1_795_514_400; // unix seconds, a whole hour

/// A query's answer: each series' labels (`name=value`) and its (bucket, value) points.
type Series = Vec<(Vec<String>, Vec<(i64, f64)>)>;

/// Every row of the version-1 tables, for comparing before and after. A span's expiry is left
/// out: since version 8 it is its trace's ([`SPAN_EXPIRY_NOT_TRACE`]).
fn dump(conn: &Connection) -> BTreeMap<&'static str, Vec<String>> {
    let mut out = BTreeMap::new();
    for (table, sql) in [
        (
            "traces",
            "SELECT json_array(trace_id, service_name, root_span_id, root_is_true_root, start_time, end_time, timestamp, expires_at) FROM traces ORDER BY trace_id",
        ),
        (
            "spans",
            "SELECT json_array(trace_id, span_id, parent_span_id, name, kind, start_time, end_time, duration_ms, status, status_message, attributes, links, service_name) FROM spans ORDER BY trace_id, span_id",
        ),
        (
            "span_events",
            "SELECT json_array(id, trace_id, span_id, timestamp, name, kind, severity, message, value, unit, attributes, expires_at) FROM span_events ORDER BY id",
        ),
        (
            "metrics",
            "SELECT json_array(id, name, timestamp, ts_nanos, value, unit, labels, trace_id, span_id, expires_at) FROM metrics ORDER BY id",
        ),
        (
            "dataset_rows",
            "SELECT json_array(dataset_id, row_index, row) FROM dataset_rows ORDER BY 1",
        ),
    ] {
        let rows: Vec<String> = conn
            .prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        out.insert(table, rows);
    }
    out
}

/// Spans whose expiry, as the `spans` view shows it, is not their trace's (spans are deleted
/// with their trace).
const SPAN_EXPIRY_NOT_TRACE: &str = "SELECT count(*) FROM spans s JOIN traces t USING (trace_id)
    WHERE s.expires_at IS NOT t.expires_at";

/// A version-1 file with two spans (one with keys that read like name ids, or their escapes,
/// once stored by version 7), an event, a dataset and `points` metric points over 4 hours.
fn version_1_file(path: &Path, points: i64) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(SCHEMA_V1).unwrap();
    conn.execute_batch(
        "INSERT INTO traces VALUES ('4bf92f3577b34da6a3ce929d0e0e4736', 'svc', '00f067aa0ba902b7', 1, '2026-11-24 10:00:00.000000000', '2026-11-24 10:00:02.000000000', '2026-11-24 10:00:00.000000000', NULL);
         INSERT INTO spans VALUES ('4bf92f3577b34da6a3ce929d0e0e4736', '00f067aa0ba902b7', NULL, 'chat', 'server', '2026-11-24 10:00:00.000000000', '2026-11-24 10:00:02.000000000', 2000.0, 'ok', NULL, '{\"model_id\":\"llama\"}', NULL, 'svc', NULL);
         INSERT INTO spans VALUES ('4bf92f3577b34da6a3ce929d0e0e4736', 'b7ad6b7169203331', '00f067aa0ba902b7', 'chat llama', 'client', '2026-11-24 10:00:00.100000000', '2026-11-24 10:00:01.600000000', 1500.0, 'error', 'upstream', '{\"12\":\"x\",\"a.b\":[1,2.5],\"r\":0.30000000000000004,\"~y\":true}', NULL, 'svc', 1900000000000000000);
         INSERT INTO span_events VALUES (1, '4bf92f3577b34da6a3ce929d0e0e4736', 'b7ad6b7169203331', '2026-11-24 10:00:00.300000000', 'log', 'log', 'warn', 'slow upstream', NULL, NULL, '{}', NULL);
         INSERT INTO datasets VALUES ('kept', '2026-11-24 10:00:00.000000000', 1);
         INSERT INTO dataset_rows VALUES ('kept', 0, '{\"span_id\":\"00f067aa0ba902b7\"}');",
    )
    .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut st = tx
            // The text time as a release wrote it; ids (hex) on some points.
            .prepare("INSERT INTO metrics (name, timestamp, ts_nanos, value, unit, labels, trace_id, span_id, expires_at) VALUES (?1, strftime('%Y-%m-%d %H:%M:%S', ?2 / 1000000000, 'unixepoch') || printf('.%09d', ?2 % 1000000000), ?2, ?3, 'tokens', ?4, ?6, ?7, ?5)")
            .unwrap();
        for i in 0..points {
            let ts = (BASE + (i * 7919) % (4 * 3600)) * 1_000_000_000 + (i % 1000) * 1_000_000;
            let name = if i % 3 == 0 {
                "prompt_tokens"
            } else {
                "total_tokens"
            };
            let labels = format!("{{\"model_id\":\"m{}\",\"provider_id\":\"p\"}}", i % 4);
            let expires = (i % 5 != 0).then_some(2_000_000_000_000_000_000i64 + i);
            let ids = (i % 7 == 0).then(|| (format!("{i:032x}"), format!("{:016x}", i + 1)));
            let (trace_id, span_id) = ids.unzip();
            st.execute(params![
                name,
                ts,
                (i % 97) as f64,
                labels,
                expires,
                trace_id,
                span_id
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn query(store: &Store, name: &str, body: serde_json::Value) -> Series {
    let req: QueryMetricsRequest = serde_json::from_value(body).unwrap();
    let q = MetricQuery::from_request(&req, Timestamp::now()).unwrap();
    store
        .reader()
        .query_metrics(name, &q)
        .unwrap()
        .into_iter()
        .map(|s| {
            (
                s.labels
                    .into_iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect(),
                s.values
                    .into_iter()
                    .map(|p| (p.timestamp, p.value))
                    .collect(),
            )
        })
        .collect()
}

/// The same query computed from the points with SQL on the file: what rollups must agree with.
fn from_points(
    path: &Path,
    name: &str,
    start: i64,
    end: i64,
    step: Option<i64>,
    model: Option<&str>,
) -> Series {
    let conn = Connection::open(path).unwrap();
    let mut st = conn
        .prepare("SELECT ts_nanos, value, labels FROM metrics WHERE name = ?1 AND ts_nanos >= ?2 AND ts_nanos <= ?3")
        .unwrap();
    let mut series: BTreeMap<Vec<String>, BTreeMap<i64, f64>> = BTreeMap::new();
    let rows = st
        .query_map(
            params![
                name,
                start * 1_000_000_000,
                end * 1_000_000_000 + 999_999_999
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, f64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .unwrap();
    for row in rows {
        let (ts, v, labels) = row.unwrap();
        let labels: BTreeMap<String, serde_json::Value> = serde_json::from_str(&labels).unwrap();
        let labels: Vec<String> = labels
            .into_iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .collect();
        if model.is_some_and(|m| !labels.contains(&format!("model_id={m}"))) {
            continue;
        }
        let bucket = match step {
            Some(s) => ts.div_euclid(1_000_000_000).div_euclid(s) * s,
            None => end,
        };
        *series
            .entry(labels)
            .or_default()
            .entry(bucket)
            .or_insert(0.0) += v;
    }
    series
        .into_iter()
        .map(|(l, b)| (l, b.into_iter().collect()))
        .collect()
}

fn assert_close(got: &Series, want: &Series, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: series");
    for ((gl, gv), (wl, wv)) in got.iter().zip(want) {
        assert_eq!(gl, wl, "{what}");
        assert_eq!(gv.len(), wv.len(), "{what} {gl:?}: buckets");
        for ((gt, g), (wt, w)) in gv.iter().zip(wv) {
            assert_eq!(gt, wt, "{what} {gl:?}");
            assert!((g - w).abs() < 1e-6, "{what} {gl:?} at {gt}: {g} != {w}");
        }
    }
}

/// Range queries of `total_tokens` over these windows (start, end, granularity, its seconds)
/// agree with the points.
fn ranges_agree(store: &Store, path: &Path, windows: &[(i64, i64, &str, Option<i64>)]) {
    for &(start, end, g, step) in windows {
        let got = query(
            store,
            "total_tokens",
            serde_json::json!({"start_time": start, "end_time": end, "granularity": g, "query_type": "range"}),
        );
        assert_close(
            &got,
            &from_points(path, "total_tokens", start, end, step, None),
            g,
        );
    }
}

#[test]
fn a_version_1_file_is_migrated_in_place_keeping_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    // More points than one migration batch holds, so the backfill takes several.
    version_1_file(&path, 230_000);
    let before = dump(&Connection::open(&path).unwrap());
    let conn = reopened(&path);
    assert_eq!(dump(&conn), before, "every version-1 row is kept as it was");
    assert_eq!(
        count(&conn, SPAN_EXPIRY_NOT_TRACE),
        0,
        "spans expire with their trace"
    );
    // Copied spans have their kind as a code, which the view shows as the name.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM span_rows WHERE kind IN ('2', '3')"
        ),
        2
    );
    let (points, rolled): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM metrics), (SELECT SUM(count) FROM metric_rollups)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(rolled, points, "every point is in exactly one rollup");
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM migration_progress"), 0);
    every_hour_sums_its_minutes(&conn, points);
    // A minute with a point that never expires never expires; the others at their latest point.
    let wrong: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM metric_rollups r JOIN metric_series s ON s.id = r.series
             WHERE r.expires_at IS NOT (
               SELECT CASE WHEN COUNT(m.expires_at) < COUNT(*) THEN NULL ELSE MAX(m.expires_at) END
               FROM metrics m WHERE m.name = s.name AND m.labels = s.labels
                 AND m.ts_nanos >= r.minute * 60000000000 AND m.ts_nanos < (r.minute + 1) * 60000000000)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(wrong, 0);
    drop(conn);

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    ranges_agree(
        &store,
        &path,
        &[
            (BASE + 17, BASE + 3 * 3600 + 41, "1h", Some(3600)),
            (BASE - 5, BASE + 4 * 3600, "5m", Some(300)),
            (BASE + 61, BASE + 119, "1m", Some(60)),
        ],
    );
    let got = query(
        &store,
        "prompt_tokens",
        serde_json::json!({"start_time": BASE + 30, "end_time": BASE + 7200 + 30, "query_type": "instant", "label_matchers": [{"name": "model_id", "value": "m1", "operator": "="}]}),
    );
    assert_close(
        &got,
        &from_points(
            &path,
            "prompt_tokens",
            BASE + 30,
            BASE + 7230,
            None,
            Some("m1"),
        ),
        "instant",
    );
    store.close().unwrap();
}

#[test]
fn points_written_now_roll_up_and_odd_windows_agree_with_the_points() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let records: Vec<Record> = (0..20_000i64)
        .map(|i| {
            Record::Metric(MetricPoint {
                name: "total_tokens".into(),
                timestamp: Timestamp::from_unix_nanos(
                    (BASE + (i * 104_729) % 7200) * 1_000_000_000 + i % 999,
                ),
                value: (i % 13) as f64,
                unit: "tokens".into(),
                labels: [(
                    "model_id".to_string(),
                    AttrValue::from(format!("m{}", i % 3)),
                )]
                .into_iter()
                .collect(),
                trace_id: None,
                span_id: None,
                expires_at: None,
            })
        })
        .collect();
    store.writer().write(records).unwrap();
    store.writer().flush().unwrap();
    ranges_agree(
        &store,
        &path,
        &[
            (BASE + 1, BASE + 7199, "10m", Some(600)),
            (BASE + 59, BASE + 60, "1m", Some(60)),
            (BASE + 30, BASE + 3600 + 30, "30s", Some(30)),
            // Whole hours from the hourly rollups, the rest from minutes and points.
            (BASE + 17, BASE + 7199, "1h", Some(3600)),
            (BASE - 3600, BASE + 3 * 3600, "2h", Some(7200)),
            (BASE + 3599, BASE + 7201, "1h", Some(3600)),
        ],
    );
    every_hour_sums_its_minutes(&Connection::open(&path).unwrap(), 20_000);
    let got = query(
        &store,
        "total_tokens",
        serde_json::json!({"start_time": BASE + 7, "end_time": BASE + 7000, "query_type": "instant", "label_matchers": [{"name": "model_id", "value": "m2", "operator": "="}]}),
    );
    assert_close(
        &got,
        &from_points(
            &path,
            "total_tokens",
            BASE + 7,
            BASE + 7000,
            None,
            Some("m2"),
        ),
        "instant",
    );
    store.close().unwrap();
}

#[test]
fn a_file_from_a_newer_version_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    version_1_file(&path, 10);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path, StoreOptions::default())
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("newer") && msg.contains(&format!("{}", SCHEMA_VERSION + 1)),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file is left as it was"
    );
    assert!(!dir.path().join("trace_store.db-wal").exists());
}

#[test]
fn retention_deletes_a_rollup_once_every_point_in_it_has_expired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let now = Timestamp::now().unix_nanos();
    let (past, future) = (now - 1_000_000_000, now + 3_600_000_000_000);
    let at =
        |minute: i64, s: i64| Timestamp::from_unix_nanos((BASE + minute * 60 + s) * 1_000_000_000);
    let p = |t: Timestamp, expires: i64| {
        Record::Metric(MetricPoint {
            name: "total_tokens".into(),
            timestamp: t,
            value: 1.0,
            unit: "tokens".into(),
            labels: Default::default(),
            trace_id: None,
            span_id: None,
            expires_at: Some(Timestamp::from_unix_nanos(expires)),
        })
    };
    // minute 0: all expired; minute 1: one expired, one not.
    store
        .writer()
        .write(vec![
            p(at(0, 1), past),
            p(at(0, 2), past),
            p(at(1, 1), past),
            p(at(1, 2), future),
        ])
        .unwrap();
    store.writer().flush().unwrap();
    store.writer().expire(Timestamp::now()).unwrap();
    let conn = Connection::open(&path).unwrap();
    let minutes: Vec<(i64, i64)> = conn
        .prepare("SELECT minute, count FROM metric_rollups ORDER BY minute")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        minutes,
        [(BASE / 60 + 1, 2)],
        "minute 0 is gone; minute 1 keeps its rollup"
    );
    // The hour of both minutes holds a point that has not expired: it stays, whole.
    let hours: Vec<(i64, i64)> = conn
        .prepare("SELECT hour, count FROM metric_rollups_hourly ORDER BY hour")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(hours, [(BASE / 3600, 4)]);
    store.writer().write(vec![p(at(120, 1), past)]).unwrap();
    store.writer().flush().unwrap();
    store.writer().expire(Timestamp::now()).unwrap();
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM metric_rollups_hourly"),
        1,
        "an hour whose points have all expired goes"
    );
    store.close().unwrap();
}

/// Adds `traces` traces of 10 spans to a version-1 file (each trace's row as that release
/// made it from its spans), a model out of 3 in every span's attributes.
/// Checks that the hourly rollups hold `points` points in all and that each hour holds what
/// its minutes do.
fn every_hour_sums_its_minutes(conn: &Connection, points: i64) {
    assert_eq!(
        count(conn, "SELECT SUM(count) FROM metric_rollups_hourly"),
        points,
        "every point is in exactly one hour"
    );
    let wrong = count(
        conn,
        "SELECT COUNT(*) FROM metric_rollups_hourly h WHERE NOT EXISTS (
             SELECT 1 FROM metric_rollups r WHERE r.series = h.series
               AND r.minute >= h.hour * 60 AND r.minute < h.hour * 60 + 60
             GROUP BY r.series
             HAVING abs(SUM(r.sum) - h.sum) < 1e-6 AND SUM(r.count) = h.count
               AND MIN(r.min) = h.min AND MAX(r.max) = h.max
               AND (CASE WHEN COUNT(r.expires_at) < COUNT(*) THEN NULL ELSE MAX(r.expires_at) END)
                   IS h.expires_at)",
    );
    assert_eq!(wrong, 0, "an hour differs from its minutes");
}

/// The one number `sql` answers.
fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Span rows after `above` with their attributes keyed by name again, as versions up to 6
/// stored them.
fn keyed_by_name(conn: &Connection, above: i64) {
    conn.execute(
        "UPDATE span_rows SET attributes = (
             SELECT json_group_object(n.name, span_rows.attributes -> ('$.\"' || j.key || '\"'))
             FROM json_each(span_rows.attributes) j JOIN attribute_names n ON n.id = j.key)
         WHERE id > ?1",
        [above],
    )
    .unwrap();
}

/// The file after a store opened (migrating it) and closed it, checked to be current.
fn reopened(path: &Path) -> Connection {
    Store::open(path, StoreOptions::default())
        .unwrap()
        .close()
        .unwrap();
    let conn = Connection::open(path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    conn
}

fn add_version_1_traces(path: &Path, traces: i64) {
    let conn = Connection::open(path).unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut span = tx
            .prepare("INSERT INTO spans VALUES (?1, ?2, ?3, ?4, 'internal', ?5, ?6, ?7, 'ok', NULL, ?8, NULL, 'svc', NULL)")
            .unwrap();
        let mut trace = tx
            .prepare("INSERT INTO traces VALUES (?1, 'svc', ?2, 1, ?3, ?4, ?3, NULL)")
            .unwrap();
        let time = |ms: i64| {
            Timestamp::from_unix_nanos((BASE + 86_400) * 1_000_000_000 + ms * 1_000_000).to_sql()
        };
        for t in 0..traces {
            let trace_id = format!("{:032x}", t + 1);
            let root = format!("{:016x}", t * 10 + 1);
            for j in 0..10 {
                let start = t * 100 + j;
                span.execute(params![
                    trace_id,
                    format!("{:016x}", t * 10 + j + 1),
                    (j > 0).then(|| root.clone()),
                    format!("step {j}"),
                    time(start),
                    time(start + 50 - j),
                    (50 - j) as f64,
                    format!("{{\"model_id\":\"m{}\",\"n\":{j}}}", t % 3),
                ])
                .unwrap();
            }
            trace
                .execute(params![trace_id, root, time(t * 100), time(t * 100 + 50)])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

#[test]
fn a_file_with_many_spans_is_copied_in_batches_and_its_index_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    version_1_file(&path, 10);
    // More spans than one copy batch (20,000) holds.
    add_version_1_traces(&path, 4_500);
    let before = dump(&Connection::open(&path).unwrap());
    let options = StoreOptions {
        indexed_attributes: vec!["model_id".into()],
        ..StoreOptions::default()
    };
    let store = Store::open(&path, options).unwrap();
    let r = store.reader();
    let req: tokentrace_model::query::QueryTracesRequest = serde_json::from_value(
        serde_json::json!({"attribute_filters": [{"key": "model_id", "op": "eq", "value": "m1"}], "limit": 10000}),
    )
    .unwrap();
    let q = req.validate().unwrap();
    assert_eq!(r.query_traces(&q).unwrap().len(), 1_500);
    let tree = r
        .get_span_tree(format!("{:016x}", 7 * 10 + 1).parse().unwrap(), None, None)
        .unwrap()
        .unwrap();
    assert_eq!(tree.len(), 10);
    store.close().unwrap();
    let conn = Connection::open(&path).unwrap();
    assert_eq!(dump(&conn), before, "every row is kept as it was");
    let left: i64 = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'v3_%') + (SELECT COUNT(*) FROM migration_steps)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the wide tables and the progress rows are gone");
}

#[test]
fn an_interrupted_migration_to_compact_metric_points_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    version_1_file(&path, 120_000);
    let conn = reopened(&path);
    let before = dump(&conn);
    // Back to where migration 6 stood after its first batch: the version-5 table renamed, the
    // points up to 50,000 copied and recorded, the view not yet there; span attributes keyed
    // by name, as version 5 stored them.
    keyed_by_name(&conn, 0);
    conn.execute_batch(
        "CREATE TABLE v5_metrics AS SELECT * FROM metrics;
         DROP VIEW metrics;
         DELETE FROM metric_points WHERE id > 50000;
         INSERT INTO migration_steps (name, done_up_to) VALUES ('v6 metrics', 50000);
         PRAGMA user_version = 5;",
    )
    .unwrap();
    drop(conn);
    let conn = reopened(&path);
    assert_eq!(dump(&conn), before, "every point once, as it was");
    let left = count(
        &conn,
        "SELECT (SELECT COUNT(*) FROM sqlite_master WHERE name = 'v5_metrics')
              + (SELECT COUNT(*) FROM migration_steps WHERE name = 'v6 metrics')",
    );
    assert_eq!(left, 0, "the old table and the progress row are gone");
}

#[test]
fn an_interrupted_migration_to_attribute_name_ids_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    version_1_file(&path, 10);
    // More spans than one batch of migration 7 (50,000) holds.
    add_version_1_traces(&path, 6_000);
    let conn = reopened(&path);
    let before = dump(&conn);
    // Back to where migration 7 stood after its first batch: the spans up to row 50,000 keyed
    // by name ids and recorded, the later ones keyed by name, as version 6 stored them.
    let later_keys = count(
        &conn,
        "SELECT count(*) FROM span_rows, json_each(span_rows.attributes) WHERE span_rows.id > 50000",
    );
    assert!(later_keys > 0);
    keyed_by_name(&conn, 50_000);
    conn.execute_batch(
        "INSERT INTO migration_steps (name, done_up_to) VALUES ('v7 attributes', 50000);
         PRAGMA user_version = 6;",
    )
    .unwrap();
    const NAMED_KEYS: &str = "SELECT count(*) FROM span_rows, json_each(span_rows.attributes) j WHERE j.key GLOB '*[^0-9]*'";
    let named = count(&conn, NAMED_KEYS);
    assert_eq!(named, later_keys, "the later spans' keys are names again");
    drop(conn);
    let conn = reopened(&path);
    assert_eq!(dump(&conn), before, "every span's attributes as they were");
    assert_eq!(count(&conn, NAMED_KEYS), 0, "every key an id");
    assert_eq!(
        count(&conn, "SELECT count(*) FROM migration_steps"),
        0,
        "no progress row left"
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM attribute_names"),
        6,
        "six names"
    );
}

/// Trace rows whose `last_start_ns` is not the latest start of their spans.
const WRONG_LAST_START: &str = "SELECT count(*) FROM trace_rows t WHERE t.start_ns IS NOT NULL
    AND t.last_start_ns IS NOT (SELECT MAX(s.start_ns) FROM span_rows s WHERE s.trace = t.id)";

/// Whether the file has an index of that name.
fn has_index(conn: &Connection, name: &str) -> bool {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'index' AND name = ?1",
        [name],
        |r| r.get(0),
    )
    .unwrap()
}

/// The traces (hex ids) with a span starting after `ns`, through the query API.
fn traces_starting_after(path: &Path, ns: i64) -> Vec<String> {
    let store = Store::open(path, StoreOptions::default()).unwrap();
    let req: tokentrace_model::query::QueryTracesRequest = serde_json::from_value(serde_json::json!({
        "attribute_filters": [{"key": "start_time", "op": "gt", "value": Timestamp::from_unix_nanos(ns).to_iso()}],
        "limit": 10000
    }))
    .unwrap();
    let mut ids: Vec<String> = store
        .reader()
        .query_traces(&req.validate().unwrap())
        .unwrap()
        .into_iter()
        .map(|t| t.trace_id.to_string())
        .collect();
    store.close().unwrap();
    ids.sort();
    ids
}

#[test]
fn a_version_7_file_gets_the_latest_span_start_of_every_trace_also_after_an_interruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    version_1_file(&path, 10);
    add_version_1_traces(&path, 3_000);
    let conn = reopened(&path);
    // Two long traces: a span of one moved two minutes later, an unfinished span of another
    // three minutes later; the latest span start of every other trace is its tenth span's.
    let newest: i64 = count(&conn, "SELECT MAX(start_ns) FROM span_rows");
    conn.execute_batch(&format!(
        "UPDATE span_rows SET start_ns = start_ns + 120000000000, end_ns = end_ns + 120000000000
             WHERE id = (SELECT MIN(id) FROM span_rows WHERE trace = 5) + 4;
         UPDATE span_rows SET start_ns = {newest} + 180000000000, end_ns = NULL
             WHERE id = (SELECT MIN(id) FROM span_rows WHERE trace = 2900) + 7;"
    ))
    .unwrap();
    // A span without a service name, in a trace with one.
    conn.execute_batch(
        "UPDATE span_rows SET service_name = '' WHERE id = (SELECT MIN(id) FROM span_rows WHERE trace = 7) + 2;",
    )
    .unwrap();
    let before = dump(&conn);
    let late: String = conn
        .query_row(
            "SELECT lower(hex(trace_id)) FROM trace_rows WHERE id = 2900",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // A version-7 file: no latest span starts, an index of every span's start, kinds by name,
    // every span's service name in its row (NULL: none).
    let as_version_7 = "UPDATE span_rows SET kind = 'internal' WHERE kind = '1';
         UPDATE span_rows SET service_name = CASE WHEN service_name = '' THEN NULL
             ELSE COALESCE(service_name, (SELECT t.service_name FROM trace_rows t WHERE t.id = span_rows.trace)) END;
         DROP INDEX trace_rows_long;
         ALTER TABLE trace_rows DROP COLUMN last_start_ns;
         CREATE INDEX span_rows_start ON span_rows (start_ns);
         PRAGMA user_version = 7;";
    conn.execute_batch(as_version_7).unwrap();
    drop(conn);
    let conn = reopened(&path);
    assert_eq!(
        count(&conn, WRONG_LAST_START),
        0,
        "every trace its latest span start"
    );
    assert!(has_index(&conn, "trace_rows_long") && !has_index(&conn, "span_rows_start"));
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM trace_rows WHERE last_start_ns - start_ns > 60000000000"
        ),
        2,
        "the two long traces"
    );
    assert_eq!(dump(&conn), before, "every row kept as it was");
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM spans WHERE service_name IS NULL"
        ),
        1,
        "the span without a service name still has none"
    );
    // Where migration 8 stands after a batch: the column there, the trace rows up to 1,500
    // given their latest span start and recorded, the later ones not yet.
    conn.execute_batch(
        "DROP INDEX trace_rows_long;
         CREATE INDEX span_rows_start ON span_rows (start_ns);
         UPDATE trace_rows SET last_start_ns = NULL WHERE id > 1500;
         INSERT INTO migration_steps (name, done_up_to) VALUES ('v8 span starts', 1500);
         PRAGMA user_version = 7;",
    )
    .unwrap();
    assert!(count(&conn, WRONG_LAST_START) > 1_000);
    drop(conn);
    let conn = reopened(&path);
    assert_eq!(count(&conn, WRONG_LAST_START), 0, "resumed and finished");
    assert!(has_index(&conn, "trace_rows_long") && !has_index(&conn, "span_rows_start"));
    assert_eq!(count(&conn, "SELECT count(*) FROM migration_steps"), 0);
    assert_eq!(dump(&conn), before, "every row kept as it was");
    drop(conn);
    // The late unfinished span is found by a time window after every other span, though its
    // trace started long before the window.
    assert_eq!(traces_starting_after(&path, newest), vec![late]);
}

#[test]
fn a_version_8_file_gets_hourly_rollups_of_every_series_also_after_an_interruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    // More series than one batch of migration 9 (256) holds, over five hours.
    let records: Vec<Record> = (0..6_000i64)
        .map(|i| {
            Record::Metric(MetricPoint {
                name: "total_tokens".into(),
                timestamp: Timestamp::from_unix_nanos(
                    (BASE + (i * 7_919) % 18_000) * 1_000_000_000,
                ),
                value: (i % 17) as f64,
                unit: "tokens".into(),
                labels: [(
                    "user.id".to_string(),
                    AttrValue::from(format!("u{}", i % 600)),
                )]
                .into_iter()
                .collect(),
                trace_id: None,
                span_id: None,
                expires_at: (i % 5 != 0).then(|| Timestamp::from_unix_nanos(i64::MAX - i)),
            })
        })
        .collect();
    store.writer().write(records).unwrap();
    store.writer().flush().unwrap();
    store.close().unwrap();
    let conn = Connection::open(&path).unwrap();
    let hourly = |conn: &Connection| -> Vec<(i64, i64, f64, i64, Option<i64>)> {
        conn.prepare(
            "SELECT series, hour, sum, count, expires_at FROM metric_rollups_hourly ORDER BY 1, 2",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let written = hourly(&conn);
    assert!(written.len() > 600, "{} hours", written.len());
    every_hour_sums_its_minutes(&conn, 6_000);
    // A version-8 file: no hourly rollups.
    conn.execute_batch("DROP TABLE metric_rollups_hourly; PRAGMA user_version = 8;")
        .unwrap();
    drop(conn);
    let conn = reopened(&path);
    assert_eq!(
        hourly(&conn),
        written,
        "the hours the writer wrote, from the minutes"
    );
    // Where migration 9 stood after its first batch: the series up to 256 done and recorded
    // (series 1 marked, to see that the batch done is not done again).
    conn.execute_batch(
        "DELETE FROM metric_rollups_hourly WHERE series > 256;
         UPDATE metric_rollups_hourly SET sum = -1 WHERE series = 1;
         INSERT INTO migration_steps (name, done_up_to) VALUES ('v9 hourly rollups', 256);
         PRAGMA user_version = 8;",
    )
    .unwrap();
    drop(conn);
    let conn = reopened(&path);
    let marked: Vec<_> = written
        .iter()
        .map(|&(series, hour, sum, n, expires)| {
            (
                series,
                hour,
                if series == 1 { -1.0 } else { sum },
                n,
                expires,
            )
        })
        .collect();
    assert_eq!(hourly(&conn), marked, "resumed after the series done");
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM migration_steps"), 0);
}

#[test]
fn migration_11_finds_the_hours_of_expiry_of_every_point_and_drops_the_expiry_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace_store.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let now = Timestamp::now().unix_nanos();
    const HOUR: i64 = 3_600_000_000_000;
    // 3,000 points, a third expired an hour ago, a third expiring in i seconds, a third never.
    let records = (0..3_000i64)
        .map(|i| {
            Record::Metric(MetricPoint {
                name: "total_tokens".into(),
                timestamp: Timestamp::from_unix_nanos((BASE + i) * 1_000_000_000),
                value: 1.0,
                unit: "tokens".into(),
                labels: Default::default(),
                trace_id: None,
                span_id: None,
                expires_at: match i % 3 {
                    0 => Some(Timestamp::from_unix_nanos(now - HOUR)),
                    1 => Some(Timestamp::from_unix_nanos(now + i * 1_000_000_000)),
                    _ => None,
                },
            })
        })
        .collect();
    store.writer().write(records).unwrap();
    store.writer().flush().unwrap();
    store.close().unwrap();
    // A version-10 file: expiry indexes, rollups with the expiry of their last point, no
    // ranges; its migration stopped after the first 1,000 points, their ranges written.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DELETE FROM metric_point_expiry WHERE first > 1000;
         UPDATE metric_point_expiry SET last = MIN(last, 1000);
         INSERT INTO migration_steps (name, done_up_to) VALUES ('v11 point expiry', 1000);
         CREATE INDEX metric_points_expires_at ON metric_points (expires_at);
         CREATE INDEX metric_rollups_expires_at ON metric_rollups (expires_at);
         CREATE INDEX metric_rollups_hourly_expires_at ON metric_rollups_hourly (expires_at);
         PRAGMA user_version = 10;",
    )
    .unwrap();
    drop(conn);
    let conn = reopened(&path);
    let outside = "SELECT COUNT(*) FROM metric_points p WHERE p.expires_at IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM metric_point_expiry e
            WHERE e.hour = p.expires_at / 3600000000000 AND p.id BETWEEN e.first AND e.last)";
    assert_eq!(count(&conn, outside), 0, "every point in its hour's range");
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name LIKE '%expires_at' AND tbl_name LIKE 'metric%'"
        ),
        0
    );
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM migration_steps"), 0);
    // Retention reads the ranges: the expired third goes, the rest stays.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let deleted = store.writer().expire(Timestamp::now()).unwrap();
    assert_eq!(deleted, 1_000);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM metric_points"), 2_000);
    store
        .writer()
        .expire(Timestamp::from_unix_nanos(now + 2 * HOUR))
        .unwrap();
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM metric_points"), 1_000);
    store.close().unwrap();
}
