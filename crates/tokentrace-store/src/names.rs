//! Attribute names as small integers in span rows (schema version 7). A span's attributes are
//! stored as a JSON object keyed by the id of each name in `attribute_names`
//! (`{"3":"chat","7":"user-42"}`), not by the name itself: most of a span's bytes were its
//! key names, the same ten names in every row. The `spans` view puts the names back, so SQL on
//! the file reads the attributes as before.
//!
//! The writer gives a name its id the first time it stores it, in the transaction of the span.
//! At most [`MAX_ATTRIBUTE_NAMES`] names get one, and none longer than [`MAX_NAME_BYTES`]: past that
//! (a sender inventing keys) a name is stored as itself. A stored key is then read as:
//! decimal digits, an id; starting with `~`, the name after it (a name that is all digits or
//! starts with `~` is stored so); anything else, the name itself. Keys stored by version 6 and
//! earlier read the same way, which is what migration 7 relies on while it converts them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokentrace_model::Attributes;

use crate::StoreError;

/// Names given an id at most; later new names are stored as themselves.
pub const MAX_ATTRIBUTE_NAMES: usize = 16_384;

/// Longest name given an id, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 256;

/// Whether a key is written like an id: decimal digits only.
fn digits(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit())
}

/// A stored key that is an id: its value.
fn id_of(stored: &str) -> Option<i64> {
    digits(stored).then(|| stored.parse().ok()).flatten()
}

/// A name stored as itself: prefixed with `~` when it could be read as an id or as a prefixed
/// name.
fn inline(name: &str) -> Cow<'_, str> {
    if digits(name) || name.starts_with('~') {
        Cow::Owned(format!("~{name}"))
    } else {
        Cow::Borrowed(name)
    }
}

/// A span's attributes as a row carries them to the writer: each name with its value's JSON,
/// by name, in one buffer (a row waits in bounded queues, counted by its bytes: one string and
/// eight bytes an attribute, not two strings each). The writer puts in the ids
/// ([`NameIds::encode`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SpanAttributes {
    /// Names and values one after the other (`name`, then the value's JSON, for each), ordered
    /// by name; `ends` has the end of each name and of its value.
    Named { text: String, ends: Vec<(u32, u32)> },
    /// A stored JSON object, kept as it is (a migration copying rows of an older version).
    Stored(String),
}

impl SpanAttributes {
    /// Names (in order) with their values' JSON.
    fn from_pairs<'a, V: serde::Serialize + 'a>(
        pairs: impl Iterator<Item = (&'a str, &'a V)>,
    ) -> Result<Self, StoreError> {
        let mut text = Vec::new();
        let mut ends = Vec::new();
        let at = |text: &Vec<u8>| {
            u32::try_from(text.len())
                .map_err(|_| StoreError::Corrupt("span attributes over 4 GiB".into()))
        };
        for (name, value) in pairs {
            text.extend_from_slice(name.as_bytes());
            let name_end = at(&text)?;
            serde_json::to_writer(&mut text, value)
                .map_err(|e| StoreError::Corrupt(format!("cannot encode JSON: {e}")))?;
            ends.push((name_end, at(&text)?));
        }
        let text = String::from_utf8(text)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode JSON: {e}")))?;
        Ok(SpanAttributes::Named { text, ends })
    }

    /// The attributes of a span, each value as JSON.
    pub(crate) fn of(attributes: &Attributes) -> Result<Self, StoreError> {
        Self::from_pairs(attributes.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// A JSON object keyed by names (a span row of version 6 or earlier), each value kept as
    /// the JSON it is.
    pub(crate) fn parse(stored: &str) -> Result<Self, StoreError> {
        let object: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_str(stored)
                .map_err(|e| StoreError::Corrupt(format!("stored attributes: {e}")))?;
        Self::from_pairs(object.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Each name with its value's JSON.
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let (text, ends): (&str, &[(u32, u32)]) = match self {
            SpanAttributes::Named { text, ends } => (text, ends),
            SpanAttributes::Stored(_) => ("", &[]),
        };
        let mut start = 0;
        ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let pair = (
                text.get(start..name_end).unwrap_or_default(),
                text.get(name_end..value_end).unwrap_or_default(),
            );
            start = value_end;
            pair
        })
    }

    /// Bytes it holds.
    pub(crate) fn len(&self) -> u64 {
        match self {
            SpanAttributes::Named { text, ends } => (text.len() + 8 * ends.len()) as u64,
            SpanAttributes::Stored(s) => s.len() as u64,
        }
    }
}

/// The id `name` has in the file, if it has one.
fn id_of_name(conn: &Connection, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM attribute_names WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

/// The key a name is stored under, given its id if it has one.
fn key_of(name: &str, id: Option<i64>) -> String {
    match id {
        Some(id) => id.to_string(),
        None => inline(name).into_owned(),
    }
}

/// The JSON path of a stored key (`json_extract(attributes, path)`).
fn path_of(key: &str) -> String {
    format!("$.\"{key}\"")
}

/// The JSON path of attribute `name` in the spans of the file `conn` reads.
pub(crate) fn path(conn: &Connection, name: &str) -> Result<String, StoreError> {
    Ok(path_of(&key_of(name, id_of_name(conn, name)?)))
}

/// The writer's ids of names: every row of `attribute_names` (at most [`MAX_ATTRIBUTE_NAMES`]).
pub(crate) struct NameIds {
    ids: HashMap<String, i64>,
}

impl NameIds {
    /// The names and ids stored in the file.
    pub(crate) fn load(conn: &Connection) -> Result<Self, StoreError> {
        let ids = conn
            .prepare("SELECT name, id FROM attribute_names")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(Self { ids })
    }

    /// The id of `name`, given one in `tx` when it has none and there is room.
    fn id(&mut self, tx: &Connection, name: &str) -> Result<Option<i64>, StoreError> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(Some(id));
        }
        if self.ids.len() >= MAX_ATTRIBUTE_NAMES || name.len() > MAX_NAME_BYTES {
            return Ok(None);
        }
        let id: i64 = tx
            .prepare_cached("INSERT INTO attribute_names (name) VALUES (?1) RETURNING id")?
            .query_row([name], |r| r.get(0))?;
        self.ids.insert(name.to_string(), id);
        Ok(Some(id))
    }

    /// The stored form of a span's attributes; new names get their ids in `tx`.
    pub(crate) fn encode(
        &mut self,
        tx: &Connection,
        attributes: &SpanAttributes,
    ) -> Result<String, StoreError> {
        let text_len = match attributes {
            SpanAttributes::Stored(s) => return Ok(s.clone()),
            SpanAttributes::Named { text, .. } => text.len(),
        };
        let mut out = String::with_capacity(2 + text_len);
        out.push('{');
        for (i, (name, value)) in attributes.pairs().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match self.id(tx, name)? {
                Some(id) => {
                    let _ = write!(out, "\"{id}\"");
                }
                None => out.push_str(&crate::rows::json(&inline(name))?),
            }
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
        Ok(out)
    }
}

/// The readers' names of ids, filled from `attribute_names` as ids are met. Names never
/// change once given, so what it holds stays true; it holds at most the table's
/// [`MAX_ATTRIBUTE_NAMES`] rows.
pub(crate) struct Names {
    path: PathBuf,
    by_id: RwLock<HashMap<i64, Arc<str>>>,
    by_name: RwLock<HashMap<Arc<str>, i64>>,
    /// Its own read connection, for the names it does not hold yet: a span a reader has read
    /// was committed with (or after) the names it uses, so a later read sees them.
    conn: Mutex<Option<Connection>>,
}

impl Names {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            by_id: RwLock::default(),
            by_name: RwLock::default(),
            conn: Mutex::new(None),
        }
    }

    /// Runs `f` on the names' connection, opened when first needed.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| StoreError::Corrupt("attribute names: lock poisoned".into()))?;
        if guard.is_none() {
            let conn = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_secs(10))?;
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_ref() else {
            return Err(StoreError::Corrupt("attribute names: no connection".into()));
        };
        f(conn)
    }

    fn remember(&self, id: i64, name: &str) -> Arc<str> {
        let name: Arc<str> = Arc::from(name);
        if let Ok(mut by_id) = self.by_id.write() {
            by_id.insert(id, name.clone());
        }
        if let Ok(mut by_name) = self.by_name.write() {
            by_name.insert(name.clone(), id);
        }
        name
    }

    /// The name of an id.
    fn name(&self, id: i64) -> Result<Arc<str>, StoreError> {
        if let Some(name) = self.by_id.read().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(name);
        }
        let name: Option<String> = self.with_conn(|conn| {
            Ok(conn
                .prepare_cached("SELECT name FROM attribute_names WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?)
        })?;
        match name {
            Some(name) => Ok(self.remember(id, &name)),
            None => Err(StoreError::Corrupt(format!(
                "stored attributes: attribute name {id} is not in attribute_names"
            ))),
        }
    }

    /// The key a name is stored under: its id, or itself when it has none.
    fn stored_key(&self, name: &str) -> Result<String, StoreError> {
        let mut id = self.by_name.read().ok().and_then(|m| m.get(name).copied());
        if id.is_none() {
            id = self.with_conn(|conn| id_of_name(conn, name))?;
            if let Some(id) = id {
                self.remember(id, name);
            }
        }
        Ok(key_of(name, id))
    }

    /// The JSON path of an attribute in a stored span (`json_extract(attributes, path)`).
    pub(crate) fn path(&self, name: &str) -> Result<String, StoreError> {
        Ok(path_of(&self.stored_key(name)?))
    }

    /// `sql` (a constant of the store's own) with the name in every `'$."name"'` literal
    /// replaced by the key it is stored under.
    pub(crate) fn resolve(&self, sql: &str) -> Result<String, StoreError> {
        const OPEN: &str = "'$.\"";
        const CLOSE: &str = "\"'";
        let mut out = String::with_capacity(sql.len());
        let mut rest = sql;
        while let Some(at) = rest.find(OPEN) {
            let after = &rest[at + OPEN.len()..];
            let Some(end) = after.find(CLOSE) else {
                break;
            };
            out.push_str(&rest[..at + OPEN.len()]);
            let key = self.stored_key(&after[..end])?;
            out.push_str(&key.replace('\'', "''").replace('"', "\\\""));
            out.push_str(CLOSE);
            rest = &after[end + CLOSE.len()..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The attributes of a stored span.
    pub(crate) fn decode(&self, stored: &str) -> Result<Attributes, StoreError> {
        let keyed = crate::reader::attributes(stored)?;
        keyed
            .into_iter()
            .map(|(mut key, v)| {
                match id_of(&key) {
                    Some(id) => key = self.name(id)?.to_string(),
                    None if key.starts_with('~') => {
                        key.remove(0);
                    }
                    None => {}
                }
                Ok((key, v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_look_like_ids_or_escapes_are_stored_escaped_and_read_back() {
        for name in ["12", "0", "~x", "~12", "~"] {
            let stored = inline(name);
            assert!(id_of(&stored).is_none(), "{name:?} stored as {stored:?}");
            assert_eq!(stored.strip_prefix('~'), Some(name));
        }
        for name in ["user.id", "1x", "x1", "", "-1", " 1"] {
            assert_eq!(inline(name), name);
            assert!(id_of(name).is_none());
        }
        assert_eq!(id_of("17"), Some(17));
    }

    #[test]
    fn names_and_values_come_back_from_the_one_buffer_in_order() {
        let attrs: Attributes = serde_json::from_str(r#"{"b":[1,"x"],"a.b":"v","":null}"#).unwrap();
        let named = SpanAttributes::of(&attrs).unwrap();
        let pairs: Vec<(&str, &str)> = named.pairs().collect();
        assert_eq!(pairs, [("", "null"), ("a.b", "\"v\""), ("b", "[1,\"x\"]")]);
        let again = SpanAttributes::parse(r#"{"b":[1,"x"],"a.b":"v","":null}"#).unwrap();
        assert_eq!(again, named);
    }
}
