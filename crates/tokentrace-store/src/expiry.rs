//! Retention of metric points and their rollups without an index of expiries (version 11).
//!
//! Points are rows of a rowid table whose ids grow with arrival, and a point's expiry is its
//! arrival plus a time to live: the points that expire in one hour lie in a range of ids.
//! `metric_point_expiry` keeps, per hour of expiry, the smallest and largest id of a point
//! expiring in it (one upsert per hour a batch touches), and retention reads each due hour's
//! range for the points that have expired. Points sent with other times to live widen the
//! ranges they fall in, never hide a point: every point with an expiry lies in its hour's
//! range. An hour wholly past whose range holds no expired point any more has no point left
//! and its row goes.
//!
//! A rollup (a series' minute or hour) goes when the last point in it does: the points
//! retention deletes name their series and time, and a minute or hour of those series in which
//! no point is left is deleted with them. So rollups need no expiry of their own either.

use std::collections::BTreeSet;

use rusqlite::{Connection, params};

use crate::StoreError;
use crate::rollups::{hour_of, minute_of};

/// Nanoseconds in an hour.
const HOUR_NS: i64 = 3_600_000_000_000;
/// Nanoseconds in a minute.
const MINUTE_NS: i64 = 60_000_000_000;

/// The hour (unix hours) an expiry (unix nanoseconds) falls in.
pub(crate) fn expiry_hour(expires_at: i64) -> i64 {
    expires_at.div_euclid(HOUR_NS)
}

/// Records that the points with ids `first..=last` include some that expire in `hour`.
pub(crate) const UPSERT_RANGE: &str =
    "INSERT INTO metric_point_expiry (hour, first, last) VALUES (?1, ?2, ?3)
ON CONFLICT (hour) DO UPDATE SET first = MIN(first, excluded.first), last = MAX(last, excluded.last)";

/// Deletes up to `chunk` expired points (by the ranges of the hours due at `now`), then the
/// rollups in which none of their series' points is left; returns the rows deleted and
/// whether every due range was read to its end (none holds an expired point any more).
pub(crate) fn expire_points(
    tx: &Connection,
    now: i64,
    chunk: i64,
) -> Result<(u64, bool), StoreError> {
    let now_hour = expiry_hour(now);
    let ranges: Vec<(i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT hour, first, last FROM metric_point_expiry WHERE hour <= ?1 ORDER BY hour",
        )?
        .query_map([now_hour], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut deleted = 0i64;
    let mut gone: BTreeSet<(i64, i64)> = BTreeSet::new();
    let mut done = true;
    for (hour, first, last) in ranges {
        let want = chunk - deleted;
        if want <= 0 {
            done = false;
            break;
        }
        let points: Vec<(i64, i64)> = tx
            .prepare_cached(
                "DELETE FROM metric_points WHERE rowid IN (SELECT rowid FROM metric_points
                     WHERE rowid >= ?1 AND rowid <= ?2 AND expires_at <= ?3 LIMIT ?4)
                 RETURNING series, ts_ns",
            )?
            .query_map(params![first, last, now, want], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        deleted += points.len() as i64;
        gone.extend(points.iter().map(|&(series, ts)| (series, minute_of(ts))));
        if (points.len() as i64) < want {
            // Every point of an hour wholly past has expired: none of them is left.
            if hour < now_hour {
                tx.prepare_cached("DELETE FROM metric_point_expiry WHERE hour = ?1")?
                    .execute([hour])?;
            }
        } else {
            done = false;
            break;
        }
    }
    let rollups = delete_empty_rollups(tx, &gone)?;
    Ok((deleted as u64 + rollups, done))
}

/// Deletes the rollups of these (series, minute) pairs, and of their hours, that no point is
/// left in; returns how many.
fn delete_empty_rollups(
    tx: &Connection,
    minutes: &BTreeSet<(i64, i64)>,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    let mut any = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM metric_points WHERE series = ?1 AND ts_ns >= ?2 AND ts_ns < ?3)",
    )?;
    let mut minute_rollup =
        tx.prepare_cached("DELETE FROM metric_rollups WHERE series = ?1 AND minute = ?2")?;
    let mut hour_rollup =
        tx.prepare_cached("DELETE FROM metric_rollups_hourly WHERE series = ?1 AND hour = ?2")?;
    let mut hours = BTreeSet::new();
    for &(series, minute) in minutes {
        let start = minute.saturating_mul(MINUTE_NS);
        let left: bool = any.query_row(
            params![series, start, start.saturating_add(MINUTE_NS)],
            |r| r.get(0),
        )?;
        if !left {
            deleted += minute_rollup.execute(params![series, minute])? as u64;
            hours.insert((series, hour_of(minute)));
        }
    }
    for (series, hour) in hours {
        let start = hour.saturating_mul(HOUR_NS);
        let left: bool = any
            .query_row(params![series, start, start.saturating_add(HOUR_NS)], |r| {
                r.get(0)
            })?;
        if !left {
            deleted += hour_rollup.execute(params![series, hour])? as u64;
        }
    }
    Ok(deleted)
}
