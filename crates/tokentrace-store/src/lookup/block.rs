//! The bytes of a block: a run's entries, in order, packed into one blob of `lookup_blocks`.
//!
//! An entry is its kind (a varint), its key (a tag byte, then a zigzag varint for an integer, 8
//! bytes for a real, a varint length and the bytes for a text or a blob) and its target (a
//! zigzag varint): 11 bytes for a span entry, where a row of its own took about 20. Lookups
//! read a block without decoding it into values ([`targets`]); merges decode it ([`decode`]).

use std::cmp::Ordering;

use rusqlite::types::Value as SqlValue;

use super::{Entry, cmp_value};
use crate::StoreError;

/// Bytes of entries after which a block is closed: a block and its row fit in one 4 KiB page.
pub(super) const BLOCK_BYTES: usize = 3_800;

const INTEGER: u8 = 0;
const REAL: u8 = 1;
const TEXT: u8 = 2;
const BLOB: u8 = 3;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends an entry's bytes.
pub(super) fn encode(out: &mut Vec<u8>, e: &Entry) {
    put_varint(out, zigzag(e.kind));
    match &e.key {
        SqlValue::Integer(i) => {
            out.push(INTEGER);
            put_varint(out, zigzag(*i));
        }
        SqlValue::Real(r) => {
            out.push(REAL);
            out.extend_from_slice(&r.to_le_bytes());
        }
        SqlValue::Text(t) => {
            out.push(TEXT);
            put_varint(out, t.len() as u64);
            out.extend_from_slice(t.as_bytes());
        }
        SqlValue::Blob(b) => {
            out.push(BLOB);
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        // Keys are never NULL (`Lookup::add_run` and merges only write stored values); an
        // empty blob keeps the block readable should one come.
        SqlValue::Null => {
            out.push(BLOB);
            put_varint(out, 0);
        }
    }
    put_varint(out, zigzag(e.target));
}

/// A key as it lies in a block, borrowed.
#[derive(Clone, Copy)]
enum Key<'a> {
    Integer(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl Key<'_> {
    fn to_value(self) -> Result<SqlValue, StoreError> {
        Ok(match self {
            Key::Integer(i) => SqlValue::Integer(i),
            Key::Real(r) => SqlValue::Real(r),
            Key::Text(t) => SqlValue::Text(
                String::from_utf8(t.to_vec()).map_err(|_| corrupt("a text key is not UTF-8"))?,
            ),
            Key::Blob(b) => SqlValue::Blob(b.to_vec()),
        })
    }

    /// SQLite's order (as [`cmp_value`]) against a value.
    fn cmp(self, v: &SqlValue) -> Ordering {
        match (self, v) {
            (Key::Integer(x), SqlValue::Integer(y)) => x.cmp(y),
            (Key::Text(x), SqlValue::Text(y)) => x.cmp(y.as_bytes()),
            (Key::Blob(x), SqlValue::Blob(y)) => x.cmp(y.as_slice()),
            (k, v) => match k.to_value() {
                Ok(k) => cmp_value(&k, v),
                // Not UTF-8 (never written): after every text, as if a blob.
                Err(_) => cmp_value(&SqlValue::Blob(Vec::new()), v),
            },
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("an index block of lookup_blocks: {what}"))
}

/// Reads entries from a block's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, StoreError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| corrupt("truncated"))?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(corrupt("a varint is too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.at.checked_add(n).ok_or_else(|| corrupt("truncated"))?;
        let b = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| corrupt("truncated"))?;
        self.at = end;
        Ok(b)
    }

    /// The next entry, or `None` at the end.
    fn next(&mut self) -> Result<Option<(i64, Key<'a>, i64)>, StoreError> {
        if self.at >= self.bytes.len() {
            return Ok(None);
        }
        let kind = unzigzag(self.varint()?);
        let tag = self.take(1)?[0];
        let key = match tag {
            INTEGER => Key::Integer(unzigzag(self.varint()?)),
            REAL => {
                let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| corrupt("truncated"))?;
                Key::Real(f64::from_le_bytes(b))
            }
            TEXT | BLOB => {
                let n = usize::try_from(self.varint()?).map_err(|_| corrupt("a length"))?;
                let b = self.take(n)?;
                if tag == TEXT {
                    Key::Text(b)
                } else {
                    Key::Blob(b)
                }
            }
            _ => return Err(corrupt("an unknown key type")),
        };
        let target = unzigzag(self.varint()?);
        Ok(Some((kind, key, target)))
    }
}

/// Every entry of a block, in order.
pub(super) fn decode(bytes: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let mut r = Reader { bytes, at: 0 };
    let mut out = Vec::with_capacity(bytes.len() / 10);
    while let Some((kind, key, target)) = r.next()? {
        out.push(Entry {
            kind,
            key: key.to_value()?,
            target,
        });
    }
    Ok(out)
}

/// How a key is compared in a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Gt,
    Lt,
    /// Every key of the kind.
    Any,
}

/// Appends to `out` the targets of the block's entries of `kind` whose key compares with `op`
/// to `key`, reading the bytes in place; stops past the entries that can match.
pub(super) fn targets(
    bytes: &[u8],
    kind: i64,
    op: Op,
    key: &SqlValue,
    out: &mut Vec<i64>,
) -> Result<(), StoreError> {
    let mut r = Reader { bytes, at: 0 };
    while let Some((k, v, target)) = r.next()? {
        match k.cmp(&kind) {
            Ordering::Less => continue,
            Ordering::Greater => break,
            Ordering::Equal => {}
        }
        let c = v.cmp(key);
        let hit = match op {
            Op::Eq => c == Ordering::Equal,
            Op::Gt => c == Ordering::Greater,
            Op::Lt => c == Ordering::Less,
            Op::Any => true,
        };
        if hit {
            out.push(target);
        } else if (op == Op::Eq || op == Op::Lt) && c != Ordering::Less {
            break;
        }
    }
    Ok(())
}

/// The trace ids (keys of `kind`) in a block, for a run's Bloom filter.
pub(super) fn blob_keys(
    bytes: &[u8],
    kind: i64,
    mut each: impl FnMut(&[u8]),
) -> Result<(), StoreError> {
    let mut r = Reader { bytes, at: 0 };
    while let Some((k, v, _)) = r.next()? {
        if k == kind
            && let Key::Blob(b) = v
        {
            each(b);
        } else if k > kind {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn entries_come_back_as_written_and_lookups_find_what_a_scan_finds() {
        let mut entries = vec![
            Entry {
                kind: 0,
                key: SqlValue::Blob(vec![1, 2, 3, 4]),
                target: 7,
            },
            Entry {
                kind: 0,
                key: SqlValue::Blob(vec![1, 2, 3, 4]),
                target: 1 << 40,
            },
            Entry {
                kind: 1,
                key: SqlValue::Blob(vec![9; 16]),
                target: 3,
            },
            Entry {
                kind: 17,
                key: SqlValue::Integer(-5),
                target: 2,
            },
            Entry {
                kind: 17,
                key: SqlValue::Real(2.5),
                target: 4,
            },
            Entry {
                kind: 17,
                key: SqlValue::Integer(300),
                target: 5,
            },
            Entry {
                kind: 17,
                key: SqlValue::Text("é".into()),
                target: 6,
            },
            Entry {
                kind: 17,
                key: SqlValue::Blob(vec![0xff; 4]),
                target: -1,
            },
        ];
        entries.sort_by(super::super::cmp_entry);
        let mut bytes = Vec::new();
        for e in &entries {
            encode(&mut bytes, e);
        }
        assert_eq!(decode(&bytes).unwrap(), entries);
        let probes = [
            SqlValue::Integer(-5),
            SqlValue::Integer(3),
            SqlValue::Real(2.5),
            SqlValue::Text("é".into()),
            SqlValue::Blob(vec![1, 2, 3, 4]),
        ];
        for kind in [0, 1, 17] {
            for key in &probes {
                for op in [Op::Eq, Op::Gt, Op::Lt, Op::Any] {
                    let mut found = Vec::new();
                    targets(&bytes, kind, op, key, &mut found).unwrap();
                    let want: Vec<i64> = entries
                        .iter()
                        .filter(|e| e.kind == kind)
                        .filter(|e| {
                            let c = cmp_value(&e.key, key);
                            match op {
                                Op::Eq => c == Ordering::Equal,
                                Op::Gt => c == Ordering::Greater,
                                Op::Lt => c == Ordering::Less,
                                Op::Any => true,
                            }
                        })
                        .map(|e| e.target)
                        .collect();
                    assert_eq!(found, want, "{kind} {op:?} {key:?}");
                }
            }
        }
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let mut bytes = Vec::new();
        encode(
            &mut bytes,
            &Entry {
                kind: 0,
                key: SqlValue::Blob(vec![1, 2, 3, 4]),
                target: 9,
            },
        );
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[0, 9]).is_err());
        assert!(decode(&[0xff; 12]).is_err());
    }
}
