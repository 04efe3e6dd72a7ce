//! A tiny YAML emitter for the cloud-config, written so the text means the same to PyYAML
//! (YAML 1.1, what cloud-init parses with) as to any YAML 1.2 reader.
//!
//! serde_yaml and its forks write `on`, `no`, `0644` and friends unquoted, which PyYAML turns
//! into booleans and octal integers (DESIGN.md, cloud-init). Here every string is quoted:
//! double quotes with JSON-compatible escapes, or a literal block (`|`, `|-`, `|+`) for
//! multi-line text when that is provably safe. Only integers and booleans are left plain.

use std::fmt::Write as _;

/// A YAML value: maps keep their key order, so the document reads in the order it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Map(Vec<(String, Value)>),
    Seq(Vec<Value>),
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Value {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// A sequence of strings.
    pub fn strs<I, S>(items: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Value::Seq(items.into_iter().map(|s| Value::Str(s.into())).collect())
    }

    /// A map from `(key, value)` pairs, in order.
    pub fn map<I, K>(entries: I) -> Value
    where
        I: IntoIterator<Item = (K, Value)>,
        K: Into<String>,
    {
        Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The same tree as JSON, to compare with what a YAML parser made of [`to_yaml`]'s text.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
            Value::Seq(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json).collect())
            }
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Bool(b) => serde_json::Value::Bool(*b),
        }
    }

    /// Looks up `key` in a map (first match); `None` for other values.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The block-style YAML text of `value`, ending with a newline. No `---` marker, so a
/// `#cloud-config` line can go in front.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Map(entries) if !entries.is_empty() => emit_map(&mut out, entries, 0, false),
        Value::Seq(items) if !items.is_empty() => emit_seq(&mut out, items, 0, false),
        scalar => {
            emit_inline_or_block(&mut out, scalar, 0);
        }
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Writes the entries of a non-empty map, each line at `indent` spaces. With `after_dash`,
/// the first entry goes on the current line, right after a sequence item's "- ".
fn emit_map(out: &mut String, entries: &[(String, Value)], indent: usize, after_dash: bool) {
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 || !after_dash {
            push_indent(out, indent);
        }
        out.push_str(&key_text(key));
        out.push(':');
        emit_value_after_indicator(out, value, indent);
    }
}

/// Writes the items of a non-empty sequence, each "- " at `indent` spaces (`after_dash`:
/// as for [`emit_map`]).
fn emit_seq(out: &mut String, items: &[Value], indent: usize, after_dash: bool) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !after_dash {
            push_indent(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Map(entries) if !entries.is_empty() => emit_map(out, entries, indent + 2, true),
            Value::Seq(inner) if !inner.is_empty() => emit_seq(out, inner, indent + 2, true),
            scalar => emit_inline_or_block(out, scalar, indent + 2),
        }
    }
}

/// After `key:` — a nested collection goes on the next lines, a scalar after one space.
fn emit_value_after_indicator(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Map(entries) if !entries.is_empty() => {
            out.push('\n');
            emit_map(out, entries, indent + 2, false);
        }
        Value::Seq(items) if !items.is_empty() => {
            out.push('\n');
            emit_seq(out, items, indent + 2, false);
        }
        scalar => {
            out.push(' ');
            emit_inline_or_block(out, scalar, indent + 2);
        }
    }
}

/// Writes a scalar (or an empty collection) that starts on the current line; a literal
/// block's content lines go at `block_indent` spaces. Always ends the line.
fn emit_inline_or_block(out: &mut String, value: &Value, block_indent: usize) {
    match value {
        Value::Map(_) => out.push_str("{}"),
        Value::Seq(_) => out.push_str("[]"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Str(s) => {
            if let Some(indicator) = literal_block_indicator(s) {
                emit_literal_block(out, s, indicator, block_indent.max(2));
                return;
            }
            out.push_str(&double_quoted(s));
        }
    }
    out.push('\n');
}

fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// `key` as written before the colon: plain when that can only mean the same string,
/// double-quoted otherwise.
pub fn key_text(key: &str) -> String {
    if is_plain_safe_key(key) {
        key.to_string()
    } else {
        double_quoted(key)
    }
}

/// Letters, digits, `_` and `-`, starting with a letter or `_`, and not a word YAML 1.1
/// reads as a boolean or null (`on`, `No`, `y`, `null`, ...). Such a plain scalar cannot
/// resolve to an int, float, timestamp, merge key or value key in YAML 1.1 or 1.2.
fn is_plain_safe_key(key: &str) -> bool {
    const WORDS: [&str; 9] = ["y", "yes", "n", "no", "true", "false", "on", "off", "null"];
    let mut chars = key.chars();
    let starts_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    starts_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !WORDS.contains(&key.to_ascii_lowercase().as_str())
}

/// `s` in double quotes with JSON-compatible escapes (`\"`, `\\`, `\n`, `\t`, `\uXXXX`...),
/// which YAML's double-quoted style reads the same way. Escaped besides `"` and `\`:
/// C0 controls, DEL, C1 controls (including NEL, a line break in YAML 1.1), the line and
/// paragraph separators, the byte-order mark and the non-characters U+FFFE/U+FFFF —
/// everything PyYAML refuses raw or would fold. Other text stays as UTF-8.
pub fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if needs_escape(c) => {
                // Every character that needs escaping is in the BMP, so one \uXXXX is
                // enough (no surrogate pairs, which PyYAML would not join).
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn needs_escape(c: char) -> bool {
    let n = u32::from(c);
    n < 0x20
        || (0x7f..=0x9f).contains(&n)
        || matches!(n, 0x2028 | 0x2029 | 0xfeff | 0xfffe | 0xffff)
}

/// The literal-block indicator for `s` (`|`, `|-` or `|+`) when a literal block reads back
/// as exactly `s`; `None` means "use double quotes".
///
/// Safe means: `s` has a line break and some text; it does not start with a space or a line
/// break (the block's indentation is detected from its first line); no tabs, no carriage
/// returns and nothing [`double_quoted`] would escape (no control characters, no YAML 1.1
/// line breaks such as NEL); and no line ends with a space (lines of only spaces and
/// trailing spaces interact with indentation and chomping).
pub fn literal_block_indicator(s: &str) -> Option<&'static str> {
    if !s.contains('\n') || s.starts_with([' ', '\n']) {
        return None;
    }
    if s.chars()
        .any(|c| c != '\n' && (c == '\t' || needs_escape(c)))
    {
        return None;
    }
    if s.split('\n').any(|line| line.ends_with(' ')) {
        return None;
    }
    let body = s.trim_end_matches('\n');
    if body.is_empty() {
        return None;
    }
    Some(match s.len() - body.len() {
        0 => "|-",
        1 => "|",
        _ => "|+",
    })
}

fn emit_literal_block(out: &mut String, s: &str, indicator: &str, indent: usize) {
    out.push_str(indicator);
    out.push('\n');
    let body = s.trim_end_matches('\n');
    for line in body.split('\n') {
        if !line.is_empty() {
            push_indent(out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
    // `|+` keeps the trailing line breaks beyond the one that ends the last line.
    let extra = (s.len() - body.len()).saturating_sub(1);
    out.extend(std::iter::repeat_n('\n', extra));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nasty_scalars_are_double_quoted() {
        for s in [
            "on",
            "no",
            "yes",
            "off",
            "y",
            "n",
            "Y",
            "N",
            "ON",
            "True",
            "0644",
            "0o644",
            "1e3",
            "1_000",
            "0x1f",
            "1:20",
            "~",
            "null",
            "",
            "*x",
            "!x",
            "&a",
            "a: b",
            "#c",
            "- x",
            "---",
            "...",
            "<<",
            "=",
            ".inf",
            "2001-12-14",
            "@x",
            "`x",
            "%YAML",
            "[a]",
            "{a}",
            "a #b",
            " lead",
            "trail ",
        ] {
            assert_eq!(double_quoted(s), format!("\"{s}\""), "{s:?}");
            assert_eq!(
                to_yaml(&Value::map([("k", Value::str(s))])),
                format!("k: \"{s}\"\n")
            );
        }
    }

    #[test]
    fn escapes_are_json_compatible() {
        let s = "q\" b\\ t\t r\r nul\u{0} del\u{7f} nel\u{85} ls\u{2028} bom\u{feff} é 😀";
        let quoted = double_quoted(s);
        assert_eq!(
            quoted,
            "\"q\\\" b\\\\ t\\t r\\r nul\\u0000 del\\u007f nel\\u0085 ls\\u2028 bom\\ufeff é 😀\""
        );
        // A JSON parser reads the same string back.
        let back: String = serde_json::from_str(&quoted).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn plain_keys_only_when_safe() {
        assert_eq!(key_text("write_files"), "write_files");
        assert_eq!(key_text("package-update"), "package-update");
        for k in [
            "on", "No", "y", "null", "123", "1e3", "<<", "=", "-a", "a b", "", "é",
        ] {
            assert_eq!(key_text(k), double_quoted(k), "{k:?}");
        }
    }

    #[test]
    fn chomping_indicators() {
        assert_eq!(literal_block_indicator("a\nb"), Some("|-"));
        assert_eq!(literal_block_indicator("a\nb\n"), Some("|"));
        assert_eq!(literal_block_indicator("a\nb\n\n"), Some("|+"));
        assert_eq!(literal_block_indicator("a\n"), Some("|"));
        let v = Value::map([
            ("strip", Value::str("x\n  y")),
            ("clip", Value::str("x\n\ny\n")),
            ("keep", Value::str("x\ny\n\n\n")),
            ("after", Value::Int(1)),
        ]);
        assert_eq!(
            to_yaml(&v),
            "strip: |-\n  x\n    y\nclip: |\n  x\n\n  y\nkeep: |+\n  x\n  y\n\n\nafter: 1\n"
        );
    }

    #[test]
    fn unsafe_multiline_falls_back_to_quotes() {
        for s in [
            " indented first\nline\n",
            "\nleading break\n",
            "tab\there\n",
            "cr\r\nlf\n",
            "trailing space \nx\n",
            "x\n   \ny\n",
            "nel\u{85}x\n",
            "\n\n",
            "x\u{7}\n",
            "no break",
        ] {
            assert_eq!(literal_block_indicator(s), None, "{s:?}");
            assert_eq!(
                to_yaml(&Value::map([("k", Value::str(s))])),
                format!("k: {}\n", double_quoted(s))
            );
        }
    }

    #[test]
    fn nested_layout() {
        let v = Value::map([
            ("list", Value::strs(["a", "b"])),
            (
                "items",
                Value::Seq(vec![
                    Value::str("default"),
                    Value::map([("name", Value::str("r")), ("system", Value::Bool(true))]),
                    Value::Seq(vec![Value::str("x"), Value::Int(-3)]),
                    Value::Seq(vec![]),
                    Value::Map(vec![]),
                ]),
            ),
            ("empty", Value::Seq(vec![])),
            ("text", Value::str("l1\nl2\n")),
            (
                "deep",
                Value::Seq(vec![Value::map([("content", Value::str("a\nb\n"))])]),
            ),
        ]);
        let expected = "\
list:
  - \"a\"
  - \"b\"
items:
  - \"default\"
  - name: \"r\"
    system: true
  - - \"x\"
    - -3
  - []
  - {}
empty: []
text: |
  l1
  l2
deep:
  - content: |
      a
      b
";
        assert_eq!(to_yaml(&v), expected);
    }

    #[test]
    fn parses_back_with_a_yaml_reader() {
        // serde_yaml_ng (YAML 1.2) must read the same tree; PyYAML is checked in tests/.
        let v = Value::map([
            ("on", Value::str("off")),
            ("perm", Value::str("0644")),
            ("t", Value::str("a\n b\n\n")),
            ("n", Value::Int(420)),
            ("b", Value::Bool(false)),
            ("s", Value::strs(["~", "", "*x", "é\u{85}"])),
        ]);
        let parsed: serde_json::Value = serde_yaml_ng::from_str(&to_yaml(&v)).unwrap();
        assert_eq!(parsed, v.to_json());
    }
}
