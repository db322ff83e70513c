//! Reading a TOML document into any schema, with `--set a.b=value` overrides applied to the
//! document *before* deserialisation, so that overrides pass the same checks as the file. Errors
//! name the file, line and column, or the `--set` key that introduced the bad value.

use std::path::Path;

use super::ConfigError;

/// Parses a `--set` value as TOML (number, bool, string, inline table, array), falling back to a bare
/// string.
fn parse_value(raw: &str) -> toml_edit::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml_edit::DocumentMut>() {
        Ok(d) => d["v"].as_value().cloned().unwrap_or_else(|| raw.into()),
        Err(_) => raw.into(),
    }
}

/// Applies `a.b.c=value` to the document.
fn apply_override(doc: &mut toml_edit::DocumentMut, arg: &str) -> Result<(), ConfigError> {
    let bad = |reason: &str| ConfigError::BadOverride {
        arg: arg.to_string(),
        reason: reason.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected key=value"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key segment"));
    }
    // `a.b` of `a.b.c=v` must be a table: name the first segment that is not, and what it is.
    let not_table = |depth: usize, item: &toml_edit::Item| {
        let what = match item {
            toml_edit::Item::Value(v) => format!("{} `{}`", v.type_name(), v.to_string().trim()),
            other => other.type_name().to_string(),
        };
        bad(&format!(
            "`{}` is {what}, not a table that could hold `{}`",
            parts[..depth].join("."),
            parts[depth]
        ))
    };
    let mut item = doc.as_item_mut();
    for (depth, part) in parts[..parts.len() - 1].iter().enumerate() {
        if item.as_table_like().is_none() {
            return Err(not_table(depth, item));
        }
        let table = item.as_table_like_mut().expect("checked above");
        if table.get(part).is_none() {
            table.insert(part, toml_edit::Item::Table(toml_edit::Table::new()));
        }
        item = table.get_mut(part).expect("just inserted");
    }
    if item.as_table_like().is_none() {
        return Err(not_table(parts.len() - 1, item));
    }
    let table = item.as_table_like_mut().expect("checked above");
    table.insert(
        parts[parts.len() - 1],
        toml_edit::Item::Value(parse_value(raw.trim())),
    );
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before.len() - i)
        .unwrap_or(before.len() + 1);
    (line, col)
}

/// The line of `key` (a dotted path) in the TOML `text`; when the key is absent (its default
/// applies), the line of its nearest ancestor present (the section), if any.
pub(super) fn key_line(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut line = None;
    for part in key.split('.') {
        let Some((k, next)) = item.as_table_like().and_then(|t| t.get_key_value(part)) else {
            break;
        };
        if let Some(span) = k.span() {
            line = Some(line_col(text, span.start).0);
        }
        item = next;
    }
    line
}

/// Where the problem `key: message` found by validation lies: the `--set` that gave the key, else
/// `file:line`, else the file.
pub(super) fn locate(text: &str, file: &str, overrides: &[String], problem: &str) -> String {
    let key = problem.split_once(": ").map_or("", |(k, _)| k);
    if let Some(k) = blamed_override(key, overrides) {
        return format!("--set {k}");
    }
    match key_line(text, key) {
        Some(line) => format!("{file}:{line}"),
        None => file.to_string(),
    }
}

/// The key of the `--set` that gave the value at `path`: the key itself, else its nearest
/// ancestor, else (a table replaced whole) the last one given below it.
pub(super) fn blamed_override(path: &str, overrides: &[String]) -> Option<String> {
    let keys: Vec<&str> = overrides
        .iter()
        .filter_map(|o| o.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let exact = keys.iter().rev().find(|k| **k == path);
    let ancestor = || {
        keys.iter()
            .filter(|k| path.starts_with(&format!("{k}.")))
            .max_by_key(|k| k.len())
    };
    let below = || {
        keys.iter()
            .rev()
            .find(|k| k.starts_with(&format!("{path}.")))
    };
    exact
        .or_else(ancestor)
        .or_else(below)
        .map(|k| k.to_string())
}

/// Deserialises `T` from TOML text with overrides applied; `origin` names the file in errors.
pub fn parse_with_overrides<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &Path,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let file = origin.display().to_string();
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::Invalid {
            location: format!("{file}:{line}:{col}"),
            message: format!("invalid TOML: {}", e.message()),
        }
    })?;
    for o in overrides {
        apply_override(&mut doc, o)?;
    }
    let edited = doc.to_string();
    let de = toml::Deserializer::new(&edited);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let overridden = blamed_override(&path, overrides);
        let location = match (overridden, inner.span()) {
            (Some(k), _) => format!("--set {k}"),
            (None, Some(span)) => {
                let (line, col) = line_col(&edited, span.start);
                format!("{file}:{line}:{col}")
            }
            (None, None) => file.clone(),
        };
        let key = if path == "." {
            String::new()
        } else {
            format!("key `{path}`: ")
        };
        ConfigError::Invalid {
            location,
            message: format!("{key}{}", inner.message().trim()),
        }
    })
}

#[cfg(test)]
mod tests {
    use slimflow_schedules::Anneal;

    use super::super::test_support::{parse, MINIMAL};
    use super::*;

    #[test]
    fn unknown_key_is_reported_with_line_and_path() {
        let text = MINIMAL.replace(
            "batch_size = 8\n\n[pairs]",
            "batch_size = 8\nbatchsize = 3\n\n[pairs]",
        );
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.starts_with("cfg.toml:15:"), "{err}");
        assert!(err.contains("batchsize"), "{err}");
    }

    #[test]
    fn mistyped_value_names_the_key() {
        let text = MINIMAL.replace(
            "steps = 10\nbatch_size = 8\n\n[pairs]",
            "steps = \"ten\"\nbatch_size = 8\n\n[pairs]",
        );
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            err.contains("cfg.toml:13:") && err.contains("train.steps"),
            "{err}"
        );
    }

    #[test]
    fn malformed_toml_is_reported_with_its_line() {
        let text = MINIMAL.replace("seed = 1", "seed = = 1");
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("cfg.toml:3:") && err.contains("invalid TOML"),
            "{err}"
        );
    }

    #[test]
    fn overrides_edit_the_tree_and_are_checked() {
        let c = parse(
            MINIMAL,
            &[
                "train.optim.lr=0.01",
                "reflow.anneal={ kind = \"linear\" }",
                "reflow.anneal_steps=50",
                "name=other",
            ],
        )
        .unwrap();
        assert_eq!(c.train.optim.lr, 0.01);
        assert_eq!(c.reflow.anneal, Anneal::Linear {});
        assert_eq!(c.name, "other");
        let err = parse(MINIMAL, &["train.optim.lrr=0.01"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--set train.optim.lrr") && err.contains("lrr"),
            "{err}"
        );
        let err = parse(MINIMAL, &["train.steps=abc"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--set train.steps"), "{err}");
        assert!(parse(MINIMAL, &["novalue"]).is_err());
    }

    #[test]
    fn the_override_that_gave_the_bad_value_is_blamed() {
        let err = parse(MINIMAL, &["train.steps=10", "train=5"])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--set train: "), "{err}");
        // A key below a value set earlier names that value, not a vague parent.
        let err = parse(MINIMAL, &["train=5", "train.steps=3"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--set train.steps=3")
                && err.contains("`train` is integer `5`, not a table"),
            "{err}"
        );
        let err = parse(MINIMAL, &["name.x.y=3"]).unwrap_err().to_string();
        assert!(err.contains("`name` is string"), "{err}");
        let sets = [
            "train.optim={ lr = 1.0 }".to_string(),
            "train.optim.lr=\"x\"".into(),
        ];
        assert_eq!(
            blamed_override("train.optim.lr", &sets).as_deref(),
            Some("train.optim.lr")
        );
        assert_eq!(
            blamed_override("train.optim.eps", &sets).as_deref(),
            Some("train.optim")
        );
        assert_eq!(blamed_override("eval", &sets), None);
    }

    #[test]
    fn any_schema_can_be_read() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Small {
            a: u32,
        }
        let o = ["a=7".to_string()];
        let s: Small = parse_with_overrides("a = 1", Path::new("s.toml"), &o).unwrap();
        assert_eq!(s.a, 7);
        let err = parse_with_overrides::<Small>("b = 1", Path::new("s.toml"), &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("s.toml:1:1: "), "{err}");
    }
}
