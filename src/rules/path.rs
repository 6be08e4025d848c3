//! The path syntax of `paths`, `scope` and `when`.
//!
//! `a.b.c` names a location from the event root (or from a rule's `scope`);
//! `*` is any one key, `**` any number of levels (none included), `[*]`
//! every element of an array; a key with a dot or bracket in it is quoted:
//! `traits."dot.name"`. A segment with `*` or `?` inside a name
//! (`billing_*`) is a glob over canonical key names.

use super::keys::{Glob, KeyMatch};
use std::fmt;

/// One step of a [`Path`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A key, in canonical form under the file's [`KeyMatch`].
    Key(String),
    /// A key matching a glob.
    Glob(Glob),
    /// `*`: any one key.
    AnyKey,
    /// `**`: any number of levels, including none.
    AnyDepth,
    /// `[*]`: every element of an array.
    AnyIndex,
}

/// A parsed path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// The steps, first from the root.
    pub segments: Vec<Segment>,
    /// The text as written in the rule file, for messages and `explain`.
    pub text: String,
}

impl Path {
    /// Whether the path names one location: no wildcard of any kind.
    pub fn is_concrete(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Key(_)))
    }

    /// `self` followed by `tail` (a rule's `scope` joined to its `paths`).
    pub fn join(&self, tail: &Path) -> Path {
        let mut segments = self.segments.clone();
        segments.extend(tail.segments.iter().cloned());
        Path {
            segments,
            text: format!("{}.{}", self.text, tail.text),
        }
    }

    /// Parses `text`; keys are canonicalized under `mode`.
    pub fn parse(text: &str, mode: KeyMatch) -> Result<Path, String> {
        let mut segments = Vec::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        let mut expect_key = true;
        if text.trim().is_empty() {
            return Err("the path is empty".into());
        }
        while i < bytes.len() {
            match bytes[i] {
                b'[' => {
                    if !text[i..].starts_with("[*]") {
                        return Err(format!(
                            "`[` at character {} must start `[*]` (every element of an array); \
                             specific indexes are not supported",
                            i + 1
                        ));
                    }
                    if segments.is_empty() {
                        return Err("a path starts at the event root, which is an object: \
                                    it cannot start with `[*]`"
                            .into());
                    }
                    segments.push(Segment::AnyIndex);
                    i += 3;
                    expect_key = false;
                }
                b'.' => {
                    if expect_key {
                        return Err(format!(
                            "empty key at character {} (two dots in a row, or a leading dot)",
                            i + 1
                        ));
                    }
                    i += 1;
                    expect_key = true;
                    if i == bytes.len() {
                        return Err("the path ends with a dot".into());
                    }
                }
                b'"' => {
                    if !expect_key {
                        return Err(format!(
                            "a quoted key at character {} must follow a dot",
                            i + 1
                        ));
                    }
                    let mut key = String::new();
                    let mut j = i + 1;
                    let mut closed = false;
                    let chars: Vec<(usize, char)> = text[j..].char_indices().collect();
                    let mut k = 0;
                    while k < chars.len() {
                        let (off, c) = chars[k];
                        if c == '\\' && k + 1 < chars.len() {
                            key.push(chars[k + 1].1);
                            k += 2;
                            continue;
                        }
                        if c == '"' {
                            j = j + off + 1;
                            closed = true;
                            break;
                        }
                        key.push(c);
                        k += 1;
                    }
                    if !closed {
                        return Err(format!(
                            "the quoted key that starts at character {} is not closed with `\"`",
                            i + 1
                        ));
                    }
                    segments.push(Segment::Key(mode.canonical(&key).into_owned()));
                    i = j;
                    expect_key = false;
                }
                _ => {
                    if !expect_key {
                        return Err(format!(
                            "expected `.` or `[*]` at character {}, found `{}`",
                            i + 1,
                            &text[i..].chars().next().unwrap_or(' ')
                        ));
                    }
                    let end = text[i..]
                        .find(['.', '[', '"'])
                        .map_or(text.len(), |n| i + n);
                    let raw = &text[i..end];
                    let seg = match raw {
                        "*" => Segment::AnyKey,
                        "**" => Segment::AnyDepth,
                        _ if Glob::is_glob(raw) => {
                            if raw.contains("**") {
                                return Err(format!(
                                    "`{raw}`: `**` must be a whole segment (any number of levels)"
                                ));
                            }
                            Segment::Glob(Glob::new(raw, mode))
                        }
                        _ => {
                            let canon = mode.canonical(raw);
                            if canon.is_empty() {
                                return Err(format!(
                                    "`{raw}` is not a key name (it is only separators)"
                                ));
                            }
                            Segment::Key(canon.into_owned())
                        }
                    };
                    segments.push(seg);
                    i = end;
                    expect_key = false;
                }
            }
        }
        Ok(Path {
            segments,
            text: text.to_string(),
        })
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Segment::*;

    fn p(s: &str) -> Vec<Segment> {
        Path::parse(s, KeyMatch::Normalized).unwrap().segments
    }

    #[test]
    fn parses_the_syntax() {
        assert_eq!(p("a.b"), vec![Key("a".into()), Key("b".into())]);
        assert_eq!(
            p("products[*].sku"),
            vec![Key("products".into()), AnyIndex, Key("sku".into())]
        );
        assert_eq!(p("**.ssn"), vec![AnyDepth, Key("ssn".into())]);
        assert_eq!(p("a.*.b"), vec![Key("a".into()), AnyKey, Key("b".into())]);
        assert_eq!(
            p(r#"traits."dot.name""#),
            vec![Key("traits".into()), Key("dot.name".into())]
        );
        assert_eq!(p("traits.phoneNumber"), p("traits.phone_number"));
        assert_eq!(p("m[*][*]"), vec![Key("m".into()), AnyIndex, AnyIndex]);
        assert!(matches!(p("billing_*")[0], Glob(_)));
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "", "a..b", ".a", "a.", "a[0]", "[*].a", "a\"b\"", "\"open", "a.b**",
        ] {
            assert!(Path::parse(bad, KeyMatch::Normalized).is_err(), "{bad}");
        }
    }
}
