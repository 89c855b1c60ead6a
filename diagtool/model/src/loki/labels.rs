//! Loki's label-string syntax, `{name="value", ...}`, both ways, and the label-set rules Loki
//! enforces on a push: names match `[a-zA-Z_][a-zA-Z0-9_]*` and appear once, empty values are
//! dropped, and at least one label remains. Values are escaped as Go string literals, which is
//! what Loki's parser reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Why a label string or label set is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelsError {
    /// The set has no label (after dropping empty values, as Loki does).
    #[error("at least one label pair is required per stream")]
    Empty,
    /// A name does not match `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error(
        "invalid label name {0:?}: use letters, digits and underscores, not starting with a digit"
    )]
    InvalidName(String),
    /// A name appears twice.
    #[error("duplicate label name {0:?}")]
    Duplicate(String),
    /// The label string does not follow `{name="value", ...}`.
    #[error("syntax error at byte {at}: {expected}")]
    Syntax {
        /// Byte offset in the label string.
        at: usize,
        /// What the parser expected there.
        expected: &'static str,
    },
}

/// Whether `name` is a valid Loki (Prometheus) label name.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Writes labels in Loki's label-string syntax, `{a="b", c="d"}`, escaping values as Go string
/// literals (what Loki's parser reads back).
///
/// # Examples
/// ```
/// use diagtool_model::loki::wire::format_labels;
/// assert_eq!(format_labels([("job", "app"), ("path", "C:\\x \"y\"")]),
///            r#"{job="app", path="C:\\x \"y\""}"#);
/// ```
pub fn format_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::with_capacity(64);
    write_labels(&mut out, labels);
    out
}

/// Like [`format_labels`], appending to `out` (to reuse a buffer).
pub fn write_labels<'a>(out: &mut String, labels: impl IntoIterator<Item = (&'a str, &'a str)>) {
    out.push('{');
    for (i, (name, value)) in labels.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() && (c as u32) < 0x80 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// Parses a label string such as `{job="app", path="a\"b"}` into a validated label set.
///
/// Accepts what Loki's selector parser accepts for a push: optional spaces, a trailing comma, Go
/// escapes in double-quoted values. Labels with empty values are dropped (Loki treats them as
/// absent); an empty set, an invalid or duplicate name is an error.
///
/// # Examples
/// ```
/// use diagtool_model::loki::wire::parse_labels;
/// let labels = parse_labels(r#"{job="app", line="a\tb\"c"}"#).unwrap();
/// assert_eq!(labels["line"], "a\tb\"c");
/// assert!(parse_labels("{}").is_err());
/// ```
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, LabelsError> {
    let mut p = LabelParser {
        s: text.as_bytes(),
        text,
        at: 0,
    };
    let mut labels = BTreeMap::new();
    p.skip_ws();
    p.expect(b'{', "'{'")?;
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let name = p.name()?;
        p.skip_ws();
        p.expect(b'=', "'=' after a label name")?;
        p.skip_ws();
        let value = p.quoted()?;
        if labels.contains_key(name) {
            return Err(LabelsError::Duplicate(name.to_owned()));
        }
        labels.insert(name.to_owned(), value);
        p.skip_ws();
        if p.eat(b',') {
            continue;
        }
        p.expect(b'}', "',' or '}'")?;
        break;
    }
    p.skip_ws();
    if p.at != p.s.len() {
        return Err(p.syntax("end of the label string"));
    }
    finish_labels(labels)
}

/// Drops empty values and refuses an empty set: the rules shared by both body formats.
pub(super) fn finish_labels(
    mut labels: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, LabelsError> {
    labels.retain(|_, v| !v.is_empty());
    if labels.is_empty() {
        return Err(LabelsError::Empty);
    }
    Ok(labels)
}

struct LabelParser<'a> {
    s: &'a [u8],
    text: &'a str,
    at: usize,
}

impl<'a> LabelParser<'a> {
    fn syntax(&self, expected: &'static str) -> LabelsError {
        LabelsError::Syntax {
            at: self.at,
            expected,
        }
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.at).is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.at) == Some(&b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8, expected: &'static str) -> Result<(), LabelsError> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(self.syntax(expected))
        }
    }

    fn name(&mut self) -> Result<&'a str, LabelsError> {
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            self.at += 1;
        }
        if start == self.at {
            return Err(self.syntax("a label name"));
        }
        let name = &self.text[start..self.at];
        if !is_valid_label_name(name) {
            return Err(LabelsError::InvalidName(name.to_owned()));
        }
        Ok(name)
    }

    fn quoted(&mut self) -> Result<String, LabelsError> {
        self.expect(b'"', "'\"' opening a label value")?;
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote or backslash in one go; both are ASCII, so the
            // slice boundaries are char boundaries.
            let rest = &self.s[self.at..];
            let run = rest
                .iter()
                .position(|b| *b == b'"' || *b == b'\\')
                .ok_or_else(|| self.syntax("'\"' closing the label value"))?;
            out.push_str(&self.text[self.at..self.at + run]);
            self.at += run;
            if self.eat(b'"') {
                return Ok(out);
            }
            self.at += 1; // the backslash
            let esc = *self
                .s
                .get(self.at)
                .ok_or_else(|| self.syntax("an escape sequence"))?;
            self.at += 1;
            let simple = match esc {
                b'\\' => Some('\\'),
                b'"' => Some('"'),
                b'\'' => Some('\''),
                b'n' => Some('\n'),
                b'r' => Some('\r'),
                b't' => Some('\t'),
                b'a' => Some('\x07'),
                b'b' => Some('\x08'),
                b'f' => Some('\x0c'),
                b'v' => Some('\x0b'),
                _ => None,
            };
            if let Some(c) = simple {
                out.push(c);
                continue;
            }
            let digits = match esc {
                b'x' => 2,
                b'u' => 4,
                b'U' => 8,
                _ => return Err(self.syntax("a valid escape (\\\\ \\\" \\n \\t \\xHH \\uHHHH)")),
            };
            let hex = self
                .text
                .get(self.at..self.at + digits)
                .ok_or_else(|| self.syntax("hex digits of an escape"))?;
            let code =
                u32::from_str_radix(hex, 16).map_err(|_| self.syntax("hex digits of an escape"))?;
            let c = char::from_u32(code)
                .filter(|_| esc != b'x' || code < 0x80)
                .ok_or_else(|| self.syntax("an escape naming a valid character"))?;
            self.at += digits;
            out.push(c);
        }
    }
}
