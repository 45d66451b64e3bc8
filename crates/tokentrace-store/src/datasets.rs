//! Datasets: rows saved by `save_spans_to_dataset` (appended on the writer thread) and read back
//! by datasetio's `iterrows`.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};
use tokentrace_model::Timestamp;

use crate::rows::json;
use crate::{StoreError, StoreReader};

/// One row of a dataset.
pub type DatasetRow = Map<String, Value>;

pub(crate) fn append_rows(
    conn: &mut Connection,
    dataset_id: &str,
    project: &str,
    rows: Vec<Map<String, Value>>,
    expires_at: Option<i64>,
) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let project = crate::keys::project_id(&tx, project)?;
    let created = tx.execute(
        "INSERT OR IGNORE INTO datasets (dataset_id, created_at, project) VALUES (?1, ?2, ?3)",
        params![dataset_id, Timestamp::now().to_sql(), project],
    )? == 1;
    if !created {
        let owner: i64 = tx.query_row(
            "SELECT project FROM datasets WHERE dataset_id = ?1",
            [dataset_id],
            |r| r.get(0),
        )?;
        if owner != project {
            // Said without naming the other project.
            return Err(StoreError::BadQuery(format!(
                "the dataset id {dataset_id:?} is taken by another project's dataset: choose another dataset_id"
            )));
        }
    }
    if created {
        // Rows an expired dataset of the same id left while retention deleted it.
        tx.execute(
            "DELETE FROM dataset_rows WHERE dataset_id = ?1",
            [dataset_id],
        )?;
        tx.execute(
            "DELETE FROM dataset_expiry WHERE dataset_id = ?1",
            [dataset_id],
        )?;
    }
    match expires_at {
        Some(at) => tx.execute(
            "INSERT INTO dataset_expiry (dataset_id, expires_at) VALUES (?1, ?2)
             ON CONFLICT (dataset_id) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at)",
            params![dataset_id, at],
        )?,
        // Kept forever from now on.
        None => tx.execute("DELETE FROM dataset_expiry WHERE dataset_id = ?1", [dataset_id])?,
    };
    let start: i64 = tx.query_row(
        "SELECT row_count FROM datasets WHERE dataset_id = ?1",
        [dataset_id],
        |r| r.get(0),
    )?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO dataset_rows (dataset_id, row_index, row) VALUES (?1, ?2, ?3)",
        )?;
        for (i, row) in rows.iter().enumerate() {
            st.execute(params![dataset_id, start + i as i64, json(row)?])?;
        }
    }
    let count = start + rows.len() as i64;
    tx.execute(
        "UPDATE datasets SET row_count = ?2 WHERE dataset_id = ?1",
        params![dataset_id, count],
    )?;
    tx.commit()?;
    Ok(count as u64)
}

/// Retention of datasets, a step at a time: the first expired dataset disappears at once (its
/// `datasets` row), and up to `chunk` of its rows are deleted; its expiry goes with its last
/// rows. Returns the rows deleted.
pub(crate) fn expire_dataset(conn: &Connection, now: i64, chunk: i64) -> Result<u64, StoreError> {
    let Some(id): Option<String> = conn
        .prepare_cached(
            "SELECT dataset_id FROM dataset_expiry WHERE expires_at <= ?1 ORDER BY expires_at LIMIT 1",
        )?
        .query_row([now], |r| r.get(0))
        .optional()?
    else {
        return Ok(0);
    };
    conn.prepare_cached("DELETE FROM datasets WHERE dataset_id = ?1")?
        .execute([&id])?;
    let n = conn
        .prepare_cached(
            "DELETE FROM dataset_rows WHERE dataset_id = ?1 AND row_index IN
             (SELECT row_index FROM dataset_rows WHERE dataset_id = ?1 ORDER BY row_index LIMIT ?2)",
        )?
        .execute(params![id, chunk])? as i64;
    if n < chunk {
        conn.prepare_cached("DELETE FROM dataset_expiry WHERE dataset_id = ?1")?
            .execute([&id])?;
    }
    Ok(n as u64)
}

impl StoreReader {
    /// Rows of a dataset from `start_index`, at most `limit` (all when `None`), and whether more
    /// follow; `None` for an unknown dataset.
    pub fn iterrows(
        &self,
        dataset_id: &str,
        start_index: u64,
        limit: Option<u64>,
    ) -> Result<Option<(Vec<DatasetRow>, bool)>, StoreError> {
        let conn = self.conn()?;
        let mut params = vec![rusqlite::types::Value::Text(dataset_id.to_string())];
        params.extend(self.scope_param());
        let Some(count) = conn
            .prepare_cached(&format!(
                "SELECT row_count FROM datasets WHERE dataset_id = ?1{}",
                self.scope_sql("project", "?2")
            ))?
            .query_row(rusqlite::params_from_iter(params), |r| r.get::<_, i64>(0))
            .optional()?
        else {
            return Ok(None);
        };
        let start = i64::try_from(start_index).unwrap_or(i64::MAX);
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let answered = count.saturating_sub(start).max(0);
        let answered = if limit < 0 {
            answered
        } else {
            answered.min(limit)
        };
        if answered > self.max_answer as i64 {
            return Err(StoreError::TooLarge(format!(
                "dataset {dataset_id} has {answered} rows from start_index {start}, more than one answer holds ({}, max_answer_spans): ask for at most that many with limit and page with start_index",
                self.max_answer
            )));
        }
        let mut st = conn.prepare_cached(
            "SELECT row FROM dataset_rows WHERE dataset_id = ?1 AND row_index >= ?2 ORDER BY row_index LIMIT ?3",
        )?;
        let rows = st
            .query_map(params![dataset_id, start, limit], |r| r.get::<_, String>(0))?
            .map(|r| {
                serde_json::from_str(&r?)
                    .map_err(|e| StoreError::Corrupt(format!("stored dataset row: {e}")))
            })
            .collect::<Result<Vec<Map<String, Value>>, StoreError>>()?;
        let has_more = start.saturating_add(rows.len() as i64) < count;
        Ok(Some((rows, has_more)))
    }
}
