//! Slurm's compressed host lists: `gpu[01-03,07],login1` → gpu01 gpu02 gpu03 gpu07 login1.

use crate::{Error, Result};

/// Expands a Slurm node list (comma-separated names, each with bracketed ranges that keep their
/// zero padding, possibly several per name).
pub fn expand_hostlist(list: &str) -> Result<Vec<String>> {
    let bad = |why: &str| Error::BadHostlist(list.to_string(), why.to_string());
    let mut out = Vec::new();
    for item in split_top(list).map_err(|w| bad(&w))? {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        expand_item(item, &mut out).map_err(|w| bad(&w))?;
    }
    Ok(out)
}

/// Splits at commas outside brackets.
fn split_top(s: &str) -> std::result::Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("unbalanced or nested brackets".into());
        }
    }
    if depth != 0 {
        return Err("unbalanced brackets".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn expand_item(item: &str, out: &mut Vec<String>) -> std::result::Result<(), String> {
    let Some(open) = item.find('[') else {
        out.push(item.to_string());
        return Ok(());
    };
    let close = item[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or("unbalanced brackets")?;
    let (prefix, ranges, rest) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
    let mut tails = Vec::new();
    expand_item(rest, &mut tails)?;
    if tails.is_empty() {
        tails.push(String::new());
    }
    for range in ranges.split(',') {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let width = lo.len();
        let (a, b): (u64, u64) = (
            lo.parse()
                .map_err(|_| format!("`{range}` is not a range"))?,
            hi.parse()
                .map_err(|_| format!("`{range}` is not a range"))?,
        );
        if a > b || b - a > 100_000 {
            return Err(format!(
                "`{range}` is not an ascending range of at most 100000 hosts"
            ));
        }
        for n in a..=b {
            for t in &tails {
                out.push(format!("{prefix}{n:0width$}{t}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_keep_padding_and_names_pass_through() {
        assert_eq!(
            expand_hostlist("gpu[01-03,07],login1").unwrap(),
            ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
        );
        assert_eq!(
            expand_hostlist("r[1-2]-n[8-9]").unwrap(),
            ["r1-n8", "r1-n9", "r2-n8", "r2-n9"]
        );
        assert_eq!(expand_hostlist("a[9-10]x").unwrap(), ["a9x", "a10x"]);
        assert_eq!(expand_hostlist("single").unwrap(), ["single"]);
        for bad in ["a[1-2", "a[3-1]", "a[x]", "a[[1]]"] {
            let e = expand_hostlist(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("node list `{bad}`")), "{e}");
        }
    }
}
