//! Terminal output: colour (only on a terminal, never with `NO_COLOR`), the terminal's width,
//! and tables printed aligned, as JSON or as CSV.

use std::io::{IsTerminal, Write};

use serde_json::Value;
use tokentrace_pipeline::sinks::console::tree::{self, printable, truncate};
pub use tokentrace_pipeline::sinks::console::tree::{BOLD, DIM, RED, YELLOW};

/// What standard output is.
#[derive(Clone, Copy, Debug)]
pub struct Term {
    /// Whether to colour.
    pub color: bool,
    /// Columns to fit in.
    pub width: usize,
}

impl Term {
    /// Standard output: colour and the terminal's width on a terminal without `NO_COLOR`;
    /// elsewhere no colour and `COLUMNS` (or 160) columns.
    pub fn stdout() -> Self {
        let tty = std::io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let size = if tty {
            rustix::termios::tcgetwinsize(std::io::stdout())
                .ok()
                .map(|w| w.ws_col as usize)
                .filter(|&w| w > 0)
        } else {
            None
        };
        let columns = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
        Self {
            color: tty && !no_color,
            width: size.or(columns).unwrap_or(160).max(40),
        }
    }

    /// `text` in `code`, when colouring.
    pub fn paint(&self, code: &str, text: &str) -> String {
        tree::paint(self.color && !code.is_empty(), code, text)
    }
}

/// A time as tables show it: local, `MM-DD HH:MM:SS`.
pub fn local_time(t: tokentrace_model::Timestamp) -> String {
    let local = t.to_datetime().with_timezone(&chrono::Local);
    local.format("%m-%d %H:%M:%S").to_string()
}

/// Writes a line to stdout; a closed pipe (`| head`) ends the program quietly.
pub fn line(s: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{s}").is_err() {
        std::process::exit(0);
    }
}

/// A cell: its text, a colour, whether it aligns right.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    /// Text.
    pub text: String,
    /// ANSI code or "".
    pub code: &'static str,
    /// Right-aligned (numbers).
    pub right: bool,
}

impl Cell {
    /// Plain, left-aligned.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Default::default()
        }
    }
    /// Right-aligned.
    pub fn num(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            right: true,
            ..Default::default()
        }
    }
    /// With a colour.
    pub fn paint(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}

/// A table: headers, rows, and which columns may be cut to fit the width (widest first), each
/// with the width it keeps until every other column is cut down to it.
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<Cell>>,
    /// Columns that may be shortened, with the width each keeps as long as it can.
    pub flexible: Vec<(usize, usize)>,
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

impl Table {
    /// The aligned lines, fitting `term.width`.
    pub fn render(&self, term: &Term) -> Vec<String> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| chars(h)).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(chars(&c.text));
            }
        }
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * n.saturating_sub(1);
        // First down to each column's own minimum, then all down to 8.
        for floor in [None, Some(8)] {
            while total(&widths) > term.width {
                let Some(&(widest, _)) = self
                    .flexible
                    .iter()
                    .filter(|&&(i, min)| widths[i] > floor.unwrap_or(min).max(8))
                    .max_by_key(|&&(i, _)| widths[i])
                else {
                    break;
                };
                widths[widest] -= 1;
            }
        }
        let fit = |text: &str, w: usize| truncate(text, w);
        let mut out = Vec::with_capacity(self.rows.len() + 1);
        let header: Vec<String> = self
            .headers
            .iter()
            .zip(&widths)
            .map(|(h, w)| format!("{h:<w$}"))
            .collect();
        out.push(term.paint(BOLD, header.join("  ").trim_end()));
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, &w)| {
                    let t = fit(&printable(&c.text), w);
                    let padded = if c.right {
                        format!("{t:>w$}")
                    } else {
                        format!("{t:<w$}")
                    };
                    term.paint(c.code, &padded)
                })
                .collect();
            out.push(cells.join("  ").trim_end().to_string());
        }
        out
    }

    /// Prints the table to stdout: as CSV, or aligned to the terminal.
    pub fn print(&self, csv: bool) {
        let lines = if csv {
            self.csv()
        } else {
            self.render(&Term::stdout())
        };
        lines.iter().for_each(|l| line(l));
    }

    /// CSV lines (RFC 4180): a header row, then the rows.
    pub fn csv(&self) -> Vec<String> {
        let mut out = vec![
            self.headers
                .iter()
                .map(|h| csv_field(h))
                .collect::<Vec<_>>()
                .join(","),
        ];
        for row in &self.rows {
            out.push(
                row.iter()
                    .map(|c| csv_field(&c.text))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        out
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A JSON value as a table cell: strings bare, null empty, the rest as JSON.
pub fn json_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints `v` as pretty JSON.
pub fn print_json(v: &impl serde::Serialize) -> Result<(), super::CliError> {
    line(&serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn tables_shrink_flexible_columns_to_the_width() {
        let t = Table {
            headers: vec!["NAME".into(), "N".into()],
            rows: vec![vec![Cell::new("x".repeat(100)), Cell::num("7")]],
            flexible: vec![(0, 8)],
        };
        let lines = t.render(&Term {
            color: false,
            width: 40,
        });
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:?}");
        assert!(
            lines[1].ends_with('7') && lines[1].contains('…'),
            "{lines:?}"
        );
    }
}
