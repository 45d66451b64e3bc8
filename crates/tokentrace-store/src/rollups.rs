//! What the writer keeps for metric rollups: series ids by name and labels, and a batch's sums
//! per series and minute before their upserts.

use std::collections::HashMap;

use rusqlite::params;

use crate::StoreError;

pub(crate) const UPSERT_SERIES: &str =
    "INSERT INTO metric_series (name, unit, labels) VALUES (?1, ?2, ?3)
ON CONFLICT (name, labels) DO UPDATE SET name = excluded.name
RETURNING id";

pub(crate) const UPSERT_ROLLUP: &str =
    "INSERT INTO metric_rollups (series, minute, sum, count, min, max, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (series, minute) DO UPDATE SET
    sum = sum + excluded.sum, count = count + excluded.count,
    min = MIN(min, excluded.min), max = MAX(max, excluded.max),
    expires_at = CASE WHEN expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
                      ELSE MAX(expires_at, excluded.expires_at) END";

/// Series ids by name and labels (as stored), kept across transactions so that a point costs
/// a lookup here rather than a statement. Forget them when a transaction fails: ids it created
/// were rolled back.
#[derive(Default)]
pub(crate) struct SeriesIds(HashMap<(String, String), i64>);

/// Series ids remembered at most; beyond, the map starts again (the table has them all).
const MAX_REMEMBERED_SERIES: usize = 65_536;

impl SeriesIds {
    pub(crate) fn get(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        name: &str,
        unit: &str,
        labels: &str,
    ) -> Result<i64, StoreError> {
        if let Some(id) = self.0.get(&(name.to_string(), labels.to_string())) {
            return Ok(*id);
        }
        let id: i64 = tx
            .prepare_cached(UPSERT_SERIES)?
            .query_row(params![name, unit, labels], |r| r.get(0))?;
        if self.0.len() >= MAX_REMEMBERED_SERIES {
            self.0.clear();
        }
        self.0.insert((name.to_string(), labels.to_string()), id);
        Ok(id)
    }

    pub(crate) fn forget(&mut self) {
        self.0.clear();
    }
}

/// One minute of one series, summed over a batch before its upsert.
pub(crate) struct Rollup {
    pub(crate) sum: f64,
    pub(crate) count: i64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    /// `None` when some point never expires.
    pub(crate) expires_at: Option<i64>,
}

/// The minute (unix minutes) a point at `ts_nanos` rolls up into.
pub(crate) fn minute_of(ts_nanos: i64) -> i64 {
    ts_nanos.div_euclid(60_000_000_000)
}
