//! Read-only SQL on the store (`tokentrace sql`, `POST /v1/tokentrace/sql`): one statement on a
//! read-only connection, under an authorizer that admits reading and nothing else (no writes,
//! no `ATTACH` of other files, no `PRAGMA`), within the query budget and the answer limit.

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use serde_json::Value;
use tokentrace_model::query::SqlAnswer;

use crate::{StoreError, StoreReader};

/// Longest statement accepted.
pub const MAX_SQL_LEN: usize = 100_000;

fn admit(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Select
        | AuthAction::Read { .. }
        | AuthAction::Function { .. }
        | AuthAction::Recursive => Authorization::Allow,
        _ => Authorization::Deny,
    }
}

fn json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => b
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into(),
    }
}

fn refused(msg: impl Into<String>) -> StoreError {
    StoreError::BadQuery(msg.into())
}

impl StoreReader {
    /// Runs one read-only statement; at most the answer limit of rows (`truncated` says when
    /// more were left out). Writes, several statements, `ATTACH` and `PRAGMA` are refused with
    /// [`StoreError::BadQuery`], as are statements SQLite cannot prepare.
    pub fn read_sql(&self, sql: &str) -> Result<SqlAnswer, StoreError> {
        if sql.len() > MAX_SQL_LEN {
            return Err(refused(format!(
                "the statement is longer than {MAX_SQL_LEN} bytes"
            )));
        }
        let mut lease = self.conn()?;
        lease.conn_mut().authorizer(Some(admit))?;
        let answer = run(&lease, sql, self.max_answer);
        lease
            .conn_mut()
            .authorizer(None::<fn(AuthContext<'_>) -> Authorization>)?;
        answer
    }
}

/// The statement's first keyword, lowercase, after spaces, comments and brackets.
fn first_word(sql: &str) -> String {
    let mut rest = sql.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r
                .split_once('\n')
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r
                .split_once("*/")
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if let Some(r) = rest.strip_prefix('(') {
            rest = r.trim_start();
        } else {
            break;
        }
    }
    rest.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Statements that change the file or the connection, refused before SQLite sees them.
const WRITES: &[&str] = &[
    "insert",
    "update",
    "delete",
    "replace",
    "create",
    "drop",
    "alter",
    "attach",
    "detach",
    "pragma",
    "vacuum",
    "reindex",
    "analyze",
    "begin",
    "commit",
    "end",
    "rollback",
    "savepoint",
    "release",
];

const READ_ONLY: &str = "only reading is allowed: SELECT (or WITH … SELECT, VALUES, EXPLAIN) on the store's tables and views; writes, ATTACH and PRAGMA are refused";

fn run(conn: &rusqlite::Connection, sql: &str, max_rows: usize) -> Result<SqlAnswer, StoreError> {
    let word = first_word(sql);
    if word.is_empty() && sql.trim().is_empty() {
        return Err(refused(
            "give one SQL statement, e.g. SELECT COUNT(*) FROM spans",
        ));
    }
    if WRITES.contains(&word.as_str()) {
        return Err(refused(format!(
            "{READ_ONLY} ({} refused)",
            word.to_ascii_uppercase()
        )));
    }
    let mut st = match conn.prepare(sql) {
        Ok(st) => st,
        Err(rusqlite::Error::MultipleStatement) => {
            return Err(refused("give one SQL statement at a time"));
        }
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::AuthorizationForStatementDenied =>
        {
            return Err(refused(READ_ONLY));
        }
        Err(rusqlite::Error::SqlInputError { msg, offset, .. }) => {
            return Err(refused(format!(
                "{msg} (at byte {offset} of the statement)"
            )));
        }
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) => return Err(refused(msg)),
        Err(e) => return Err(e.into()),
    };
    if !st.readonly() {
        return Err(refused(READ_ONLY));
    }
    let columns: Vec<String> = st.column_names().map(str::to_string).collect();
    let n = columns.len();
    let mut rows = Vec::new();
    let mut truncated = false;
    // Errors while stepping (a function refused at run time, a bad argument) are the caller's;
    // an interruption stays one.
    let step = |e: rusqlite::Error| match e {
        rusqlite::Error::SqliteFailure(f, msg)
            if f.code != rusqlite::ErrorCode::OperationInterrupted =>
        {
            refused(msg.unwrap_or_else(|| f.to_string()))
        }
        e => e.into(),
    };
    let mut q = st.query([]).map_err(step)?;
    while let Some(r) = q.next().map_err(step)? {
        if rows.len() == max_rows {
            truncated = true;
            break;
        }
        rows.push(
            (0..n)
                .map(|i| r.get_ref(i).map(json))
                .collect::<Result<_, _>>()?,
        );
    }
    Ok(SqlAnswer {
        columns,
        rows,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::first_word;

    #[test]
    fn the_first_keyword_skips_comments_and_brackets() {
        assert_eq!(first_word("  -- note\n/* c */ (SELECT 1)"), "select");
        assert_eq!(first_word("delete from spans"), "delete");
        assert_eq!(first_word(""), "");
    }
}
