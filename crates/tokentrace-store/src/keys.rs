//! Trace keys: the integer (`trace_rows.id`) that stands for a trace id in every row. A trace
//! gets its key the first time the writer sees its id, from a span or from an event; spans and
//! events then refer to the key, so their indexes grow at the right edge like the keys do.
//! A trace id is a trace of one project: the same id in two projects has two keys.

use std::collections::HashMap;

use rusqlite::Connection;
use tokentrace_model::RecentKeys;

use crate::StoreError;
use crate::lookup::Lookup;

/// Trace ids remembered with their keys; older ones are looked up in the sorted runs.
const REMEMBERED: usize = 65_536;

/// The keys of recently seen traces, so that a trace's later spans cost no lookup.
pub(crate) struct TraceKeys {
    keys: RecentKeys<([u8; 16], i64), i64>,
}

impl Default for TraceKeys {
    fn default() -> Self {
        Self {
            keys: RecentKeys::new(REMEMBERED, u64::MAX, |_| 0),
        }
    }
}

impl TraceKeys {
    /// The key of a trace of `project` already in the store, if it is.
    pub(crate) fn known(
        &mut self,
        conn: &Connection,
        lookup: &Lookup,
        trace_id: &[u8; 16],
        project: i64,
    ) -> Result<Option<i64>, StoreError> {
        if let Some(&key) = self.keys.get(&(*trace_id, project)) {
            return Ok(Some(key));
        }
        let key = lookup.trace_key(conn, trace_id, project)?;
        if let Some(key) = key {
            self.remember(*trace_id, project, key);
        }
        Ok(key)
    }

    /// Remembers a trace's key.
    pub(crate) fn remember(&mut self, trace_id: [u8; 16], project: i64, key: i64) {
        self.keys.insert((trace_id, project), key);
    }

    /// Forgets every key (after a failed transaction, whose new keys were rolled back).
    pub(crate) fn forget(&mut self) {
        self.keys.clear();
    }
}

/// Project names seen by the writer, with their ids in `projects` (0 is `default`).
#[derive(Default)]
pub(crate) struct ProjectIds {
    ids: HashMap<String, i64>,
}

/// The id of the project `name` in `projects`, added when new.
pub(crate) fn project_id(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    conn.prepare_cached("INSERT INTO projects (name) VALUES (?1) ON CONFLICT (name) DO NOTHING")?
        .execute([name])?;
    Ok(conn
        .prepare_cached("SELECT id FROM projects WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?)
}

/// Project names remembered at most (names come from the config, tokens' claims and admins).
const PROJECTS_REMEMBERED: usize = 4_096;

impl ProjectIds {
    /// The id of a project (`None`: `default`), added to `projects` when new.
    pub(crate) fn get(&mut self, conn: &Connection, name: Option<&str>) -> Result<i64, StoreError> {
        let Some(name) = name else {
            return Ok(0);
        };
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let id = project_id(conn, name)?;
        if self.ids.len() < PROJECTS_REMEMBERED {
            self.ids.insert(name.to_string(), id);
        }
        Ok(id)
    }

    /// Forgets every id (after a failed transaction, whose new projects were rolled back).
    pub(crate) fn forget(&mut self) {
        self.ids.clear();
    }
}
