//! What the writer keeps for metric rollups: series ids by name and labels, and a batch's sums
//! per series and minute before their upserts.

use std::collections::HashMap;

use rusqlite::params;

use crate::StoreError;

pub(crate) const UPSERT_SERIES: &str =
    "INSERT INTO metric_series (name, unit, labels) VALUES (?1, ?2, ?3)
ON CONFLICT (name, labels) DO UPDATE SET name = excluded.name
RETURNING id";

/// The upsert of one bucket of one series into a rollup table: `$table` keyed by (series,
/// `$bucket`), adding a batch's sums to what is there. Rollups written since version 11 have
/// no expiry (NULL): they go when the last point in them does (`crate::expiry`).
macro_rules! upsert_rollup {
    ($table:literal, $bucket:literal) => {
        concat!(
            "INSERT INTO ",
            $table,
            " (series, ",
            $bucket,
            ", sum, count, min, max)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (series, ",
            $bucket,
            ") DO UPDATE SET
    sum = sum + excluded.sum, count = count + excluded.count,
    min = MIN(min, excluded.min), max = MAX(max, excluded.max)"
        )
    };
}

/// A minute of a series (`metric_rollups`).
pub(crate) const UPSERT_ROLLUP: &str = upsert_rollup!("metric_rollups", "minute");

/// An hour of a series (`metric_rollups_hourly`).
pub(crate) const UPSERT_HOURLY_ROLLUP: &str = upsert_rollup!("metric_rollups_hourly", "hour");

/// Series ids by name and labels (as stored), kept across transactions so that a point costs
/// a lookup here rather than a statement. Forget them when a transaction fails: ids it created
/// were rolled back.
#[derive(Default)]
pub(crate) struct SeriesIds {
    /// name → labels → id: looked up by `&str`, so a known series costs no allocation.
    ids: HashMap<String, HashMap<String, i64>>,
    len: usize,
}

/// Series ids remembered at most; beyond, the map starts again (the table has them all).
const MAX_REMEMBERED_SERIES: usize = 65_536;

impl SeriesIds {
    pub(crate) fn get(
        &mut self,
        tx: &rusqlite::Connection,
        name: &str,
        unit: &str,
        labels: &str,
    ) -> Result<i64, StoreError> {
        if let Some(id) = self
            .ids
            .get(name)
            .and_then(|by_labels| by_labels.get(labels))
        {
            return Ok(*id);
        }
        let id: i64 = tx
            .prepare_cached(UPSERT_SERIES)?
            .query_row(params![name, unit, labels], |r| r.get(0))?;
        if self.len >= MAX_REMEMBERED_SERIES {
            self.forget();
        }
        self.ids
            .entry(name.to_string())
            .or_default()
            .insert(labels.to_string(), id);
        self.len += 1;
        Ok(id)
    }

    pub(crate) fn forget(&mut self) {
        self.ids.clear();
        self.len = 0;
    }
}

/// One minute (or hour) of one series, summed over a batch before its upsert.
#[derive(Clone, Copy)]
pub(crate) struct Rollup {
    pub(crate) sum: f64,
    pub(crate) count: i64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

/// The minute (unix minutes) a point at `ts_nanos` rolls up into.
pub(crate) fn minute_of(ts_nanos: i64) -> i64 {
    ts_nanos.div_euclid(60_000_000_000)
}

impl Rollup {
    /// Adds the points `other` sums up.
    pub(crate) fn add(&mut self, other: &Rollup) {
        self.sum += other.sum;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// Upserts a batch's buckets with `sql` ([`UPSERT_ROLLUP`] or [`UPSERT_HOURLY_ROLLUP`]).
pub(crate) fn upsert_all(
    tx: &rusqlite::Connection,
    sql: &str,
    buckets: impl IntoIterator<Item = ((i64, i64), Rollup)>,
) -> Result<(), StoreError> {
    let mut st = tx.prepare_cached(sql)?;
    for ((series, bucket), r) in buckets {
        st.execute(params![series, bucket, r.sum, r.count, r.min, r.max])?;
    }
    Ok(())
}

/// The hour (unix hours) a minute (unix minutes) rolls up into.
pub(crate) fn hour_of(minute: i64) -> i64 {
    minute.div_euclid(60)
}
