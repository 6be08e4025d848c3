//! A thin reader over saphyr's position-marked YAML tree, shared by the
//! rule-file and rule-test parsers: every accessor reports a problem with
//! its line and column instead of stopping at the first one.

use super::diagnostic::{Diagnostic, Severity};
use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// A YAML node with its position.
pub(crate) type Node<'a> = MarkedYaml<'a>;

/// Collects problems for one file.
pub(crate) struct Reporter {
    pub file: String,
    pub diags: Vec<Diagnostic>,
}

impl Reporter {
    pub fn new(file: &str) -> Self {
        Reporter {
            file: file.to_string(),
            diags: Vec::new(),
        }
    }

    pub fn at(&mut self, node: &Node, rule: Option<&str>, sev: Severity, message: String) {
        let (line, column) = pos(node);
        self.at_pos(line, column, rule, sev, message);
    }

    pub fn at_pos(
        &mut self,
        line: usize,
        column: usize,
        rule: Option<&str>,
        severity: Severity,
        message: String,
    ) {
        self.diags.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line,
            column,
            rule: rule.map(str::to_string),
            message,
        });
    }

    pub fn error(&mut self, node: &Node, rule: Option<&str>, message: impl Into<String>) {
        self.at(node, rule, Severity::Error, message.into());
    }

    pub fn warn(&mut self, node: &Node, rule: Option<&str>, message: impl Into<String>) {
        self.at(node, rule, Severity::Warning, message.into());
    }

    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }
}

/// 1-based line and column of a node.
pub(crate) fn pos(node: &Node) -> (usize, usize) {
    (node.span.start.line().max(1), node.span.start.col() + 1)
}

/// Parses one YAML document, or returns the syntax error as a diagnostic.
pub(crate) fn load<'a>(file: &str, text: &'a str) -> Result<Node<'a>, Diagnostic> {
    match MarkedYaml::load_from_str(text) {
        Ok(mut docs) => {
            if docs.len() > 1 {
                return Err(Diagnostic {
                    severity: Severity::Error,
                    file: file.into(),
                    line: docs[1].span.start.line(),
                    column: 1,
                    rule: None,
                    message: "the file holds more than one YAML document (`---`); \
                              put one document in each file"
                        .into(),
                });
            }
            Ok(docs.pop().unwrap_or_else(|| MarkedYaml::value_from_str("")))
        }
        Err(e) => Err(Diagnostic {
            severity: Severity::Error,
            file: file.into(),
            line: e.marker().line().max(1),
            column: e.marker().col() + 1,
            rule: None,
            message: format!("this is not valid YAML: {}", e.info()),
        }),
    }
}

/// What a node holds, with plain names for messages.
pub(crate) fn kind(node: &Node) -> &'static str {
    match &node.data {
        YamlData::Value(Scalar::Null) => "nothing (null)",
        YamlData::Value(Scalar::Boolean(_)) => "true/false",
        YamlData::Value(Scalar::Integer(_)) => "a number",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "text",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping (key: value)",
        _ => "something else",
    }
}

/// The entries of a mapping, in file order, with string keys.
pub(crate) fn entries<'n, 'a>(
    node: &'n Node<'a>,
) -> Option<Vec<(&'n str, &'n Node<'a>, &'n Node<'a>)>> {
    match &node.data {
        YamlData::Mapping(map) => Some(
            map.iter()
                .map(|(k, v)| (scalar_str(k).unwrap_or(""), k, v))
                .collect(),
        ),
        _ => None,
    }
}

/// The items of a sequence.
pub(crate) fn items<'n, 'a>(node: &'n Node<'a>) -> Option<&'n [Node<'a>]> {
    match &node.data {
        YamlData::Sequence(seq) => Some(seq.as_slice()),
        _ => None,
    }
}

/// A string scalar's text.
pub(crate) fn scalar_str<'n>(node: &'n Node) -> Option<&'n str> {
    match &node.data {
        YamlData::Value(Scalar::String(s)) => Some(s),
        YamlData::Representation(s, _, _) => Some(s),
        _ => None,
    }
}

/// A scalar's text, whatever its type (`version: 1` reads as "1").
pub(crate) fn scalar_text(node: &Node) -> Option<String> {
    match &node.data {
        YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
        YamlData::Value(Scalar::Integer(i)) => Some(i.to_string()),
        YamlData::Value(Scalar::FloatingPoint(f)) => Some(f.to_string()),
        YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
        YamlData::Representation(s, _, _) => Some(s.to_string()),
        _ => None,
    }
}

/// Whether the node is a null (or an empty value: `key:`).
pub(crate) fn is_null(node: &Node) -> bool {
    matches!(node.data, YamlData::Value(Scalar::Null))
}

/// Writes a YAML node as JSON text, keeping mapping order.
pub(crate) fn to_json(node: &Node, out: &mut String) -> Result<(), (usize, usize, String)> {
    match &node.data {
        YamlData::Value(Scalar::Null) => out.push_str("null"),
        YamlData::Value(Scalar::Boolean(b)) => out.push_str(if *b { "true" } else { "false" }),
        YamlData::Value(Scalar::Integer(i)) => out.push_str(&i.to_string()),
        YamlData::Value(Scalar::FloatingPoint(f)) => {
            let f: f64 = **f;
            if !f.is_finite() {
                let (l, c) = pos(node);
                return Err((l, c, "JSON has no NaN or infinity".into()));
            }
            out.push_str(&serde_json::Number::from_f64(f).map_or("0".into(), |n| n.to_string()));
        }
        YamlData::Value(Scalar::String(s)) | YamlData::Representation(s, _, _) => {
            out.push_str(&serde_json::to_string(s.as_ref()).unwrap_or_default())
        }
        YamlData::Sequence(seq) => {
            out.push('[');
            for (i, item) in seq.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                to_json(item, out)?;
            }
            out.push(']');
        }
        YamlData::Mapping(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let Some(key) = scalar_text(k) else {
                    let (l, c) = pos(k);
                    return Err((l, c, "a JSON object key must be text".into()));
                };
                out.push_str(&serde_json::to_string(&key).unwrap_or_default());
                out.push(':');
                to_json(v, out)?;
            }
            out.push('}');
        }
        _ => {
            let (l, c) = pos(node);
            return Err((l, c, "tags and aliases cannot be turned into JSON".into()));
        }
    }
    Ok(())
}

/// The closest of `known` to `word`, for "did you mean" hints.
pub(crate) fn suggest(word: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (strsim::levenshtein(word, k), *k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 2 || (d <= 3 && word.len() > 6) => format!(" (did you mean `{k}`?)"),
        _ => String::new(),
    }
}
