//! Trace keys: the integer (`trace_rows.id`) that stands for a trace id in every row. A trace
//! gets its key the first time the writer sees its id, from a span or from an event; spans and
//! events then refer to the key, so their indexes grow at the right edge like the keys do.

use std::collections::{HashMap, VecDeque};

use rusqlite::Connection;

use crate::StoreError;
use crate::lookup::Lookup;

/// Trace ids remembered with their keys; older ones are looked up in the sorted runs.
const REMEMBERED: usize = 65_536;

/// The keys of recently seen traces, so that a trace's later spans cost no lookup.
#[derive(Default)]
pub(crate) struct TraceKeys {
    keys: HashMap<[u8; 16], i64>,
    order: VecDeque<[u8; 16]>,
}

impl TraceKeys {
    /// The key of a trace already in the store, if it is.
    pub(crate) fn known(
        &mut self,
        conn: &Connection,
        lookup: &Lookup,
        trace_id: &[u8; 16],
    ) -> Result<Option<i64>, StoreError> {
        if let Some(&key) = self.keys.get(trace_id) {
            return Ok(Some(key));
        }
        let key = lookup.trace_key(conn, trace_id)?;
        if let Some(key) = key {
            self.remember(*trace_id, key);
        }
        Ok(key)
    }

    /// Remembers a trace's key.
    pub(crate) fn remember(&mut self, trace_id: [u8; 16], key: i64) {
        if self.keys.insert(trace_id, key).is_none() {
            self.order.push_back(trace_id);
            if self.order.len() > REMEMBERED
                && let Some(old) = self.order.pop_front()
            {
                self.keys.remove(&old);
            }
        }
    }

    /// Forgets every key (after a failed transaction, whose new keys were rolled back).
    pub(crate) fn forget(&mut self) {
        self.keys.clear();
        self.order.clear();
    }
}
