//! `${env.*}` and `${data_dir}` placeholders in the strings of a parsed run config.

use serde_json::Value;

use crate::default_data_dir;

/// Replaces `${env.NAME}`, `${env.NAME:=default}`, `${env.NAME:+value}` and `${data_dir}` in
/// one string. `${env.NAME}` requires NAME to be set; `:=` applies when NAME is unset or empty;
/// `:+` gives the value when NAME is set and not empty, else nothing.
pub fn substitute_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = matching_brace(after).ok_or_else(|| format!("unterminated `${{` in {text:?}"))?;
        out.push_str(&expand(&after[..end], env)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Index of the `}` closing a `${` whose body starts `s`, allowing nested `${...}`.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn expand(body: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if body == "data_dir" {
        return Ok(default_data_dir().display().to_string());
    }
    let Some(spec) = body.strip_prefix("env.") else {
        return Err(format!(
            "unknown placeholder `${{{body}}}`; use ${{env.NAME}}, ${{env.NAME:=default}} or ${{env.NAME:+value}}"
        ));
    };
    let (name, op, arg) = match spec.find(":=").or_else(|| spec.find(":+")) {
        Some(i) => (&spec[..i], &spec[i..i + 2], &spec[i + 2..]),
        None => (spec, "", ""),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid environment variable name {name:?} in `${{{body}}}`"
        ));
    }
    let value = env(name).filter(|v| !v.is_empty());
    match (op, value) {
        ("", Some(v)) => Ok(v),
        ("", None) => Err(format!(
            "`${{env.{name}}}` requires the environment variable {name} to be set"
        )),
        (":=", Some(v)) => Ok(v),
        (":=", None) => substitute_env(arg, env),
        (_, Some(_)) => substitute_env(arg, env),
        (_, None) => Ok(String::new()),
    }
}

/// Substitutes placeholders in every string of the parsed YAML (never in its structure, so a
/// variable's value cannot inject keys). Errors carry the key path.
pub(crate) fn substitute_tree(
    v: &mut Value,
    path: String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match v {
        Value::String(s) if s.contains("${") => {
            *s = substitute_env(s, env).map_err(|m| (path, m))?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_tree(item, format!("{path}[{i}]"), env)?;
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                substitute_tree(item, p, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}
