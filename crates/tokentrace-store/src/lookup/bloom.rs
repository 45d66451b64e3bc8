//! Bloom filters of the trace ids of each run, for the writer's lookups of new traces.

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, params};

use super::KIND_TRACE;
use crate::StoreError;

/// The two hashes a Bloom filter derives its bit positions from.
pub(super) fn hashes(key: &[u8]) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    let a = h.finish();
    (a, a.rotate_left(32) | 1)
}

/// A set of trace ids with false positives (about 1%) and no false negatives: which runs may
/// hold an id, so that the writer's lookup of a new trace (always a miss) costs no seek.
pub(super) struct Bloom {
    bits: Vec<u64>,
}

const BLOOM_HASHES: u64 = 7;

impl Bloom {
    pub(super) fn with_capacity(n: u64) -> Self {
        let words = (n.max(64) * 10).div_ceil(64) as usize;
        Self {
            bits: vec![0; words],
        }
    }

    pub(super) fn insert(&mut self, key: &[u8]) {
        let m = self.bits.len() as u64 * 64;
        let (a, b) = hashes(key);
        for i in 0..BLOOM_HASHES {
            let bit = a.wrapping_add(i.wrapping_mul(b)) % m;
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    pub(super) fn may_hold(&self, (a, b): (u64, u64)) -> bool {
        let m = self.bits.len() as u64 * 64;
        (0..BLOOM_HASHES).all(|i| {
            let bit = a.wrapping_add(i.wrapping_mul(b)) % m;
            self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }
}

/// The Bloom filter of a run's trace ids, read from the file: the blocks that hold trace
/// entries, read in place.
pub(super) fn run_bloom(conn: &Connection, run: i64, traces: i64) -> Result<Bloom, StoreError> {
    let mut bloom = Bloom::with_capacity(traces.max(0) as u64);
    let mut st = conn.prepare_cached(&super::blocks_sql(super::Op::Any, true))?;
    let mut rows = st.query(params![KIND_TRACE, SqlValue::Null, run])?;
    while let Some(r) = rows.next()? {
        if let ValueRef::Blob(b) = r.get_ref(0)? {
            super::block::blob_keys(b, KIND_TRACE, |k| bloom.insert(k))?;
        }
    }
    Ok(bloom)
}
