//! Secret bytes (hash keys, passwords) that never show up in `Debug`,
//! `Display`, logs or errors.

use std::fmt;

/// Bytes that must not be printed. `Debug` shows `Secret([redacted])`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// Reads a secret file; one trailing newline (as editors and
    /// `kubectl create secret --from-file` leave) is not part of the secret.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let mut bytes = std::fs::read(path)?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Ok(Secret(bytes))
    }

    /// Reads a hash key file: as [`Secret::from_file`], and an empty key
    /// is an error. The message names the file, never the content.
    pub fn key_file(path: &std::path::Path) -> Result<Self, String> {
        let key = Self::from_file(path).map_err(|e| {
            format!(
                "cannot read the hash key file {}: {}",
                path.display(),
                e.kind()
            )
        })?;
        if key.is_empty() {
            return Err(format!("the hash key file {} is empty", path.display()));
        }
        Ok(key)
    }

    /// The secret's bytes, for the one place that uses them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: overwrite before the allocator reuses the memory;
        // black_box keeps the writes from being optimized away.
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// A hash key ring: several keys with ids, one of them active, read from
/// one YAML file (a mounted Secret):
///
/// ```yaml
/// active: "2026-11"
/// keys:
///   "2026-10": "the previous key"
///   "2026-11": "the current key"
/// ```
///
/// New digests use the active key; the others stay for what was built
/// with them (the suppression set) until it is rebuilt. Errors name the
/// file, line and column, never a key.
pub struct HashKeys {
    /// The active key's id.
    pub active: String,
    /// Every key, in file order.
    pub keys: Vec<(String, Secret)>,
}

impl fmt::Debug for HashKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashKeys")
            .field("active", &self.active)
            .field("ids", &self.ids())
            .finish()
    }
}

/// Key ids: short, printable, safe in a header and a log line.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
}

impl HashKeys {
    /// Reads and checks a key ring file; every problem at once.
    pub fn from_file(path: &std::path::Path) -> Result<HashKeys, String> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the hash key file {shown}: {}", e.kind()))?;
        Self::parse(&shown, &text)
    }

    /// Parses key ring text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<HashKeys, String> {
        use crate::rules::yaml;
        // The YAML parser's own message could quote the text: only the place.
        let root = yaml::load(file, text).map_err(|d| {
            format!(
                "{file}:{}:{}: the hash key file is not valid YAML",
                d.line, d.column
            )
        })?;
        let at = |node: &yaml::Node, msg: &str| {
            let (l, c) = yaml::pos(node);
            format!("{file}:{l}:{c}: {msg}")
        };
        let mut problems = Vec::new();
        let (mut active, mut keys) = (None, Vec::new());
        let Some(entries) = yaml::entries(&root) else {
            return Err(at(
                &root,
                "the hash key file must be a mapping with `active` and `keys`",
            ));
        };
        for (name, k, v) in entries {
            match name {
                "active" => match yaml::scalar_text(v) {
                    Some(id) => active = Some((id, v)),
                    None => problems.push(at(v, "`active` must be a key id")),
                },
                "keys" => match yaml::entries(v) {
                    Some(list) if !list.is_empty() => {
                        for (_, idn, keyn) in list {
                            let Some(id) = yaml::scalar_text(idn) else {
                                problems.push(at(idn, "a key id must be text"));
                                continue;
                            };
                            if !valid_id(&id) {
                                problems.push(at(idn, &format!("key id `{}` must be 1-64 letters, digits, `.`, `_`, `-` or `:`", id.escape_default())));
                                continue;
                            }
                            match yaml::scalar_text(keyn) {
                                Some(key) if !key.trim().is_empty() => {
                                    if keys.iter().any(|(i, _): &(String, Secret)| *i == id) {
                                        problems
                                            .push(at(idn, &format!("key id `{id}` appears twice")));
                                    }
                                    keys.push((id, Secret::new(key)));
                                }
                                _ => problems
                                    .push(at(keyn, &format!("key `{id}` is empty or not text"))),
                            }
                        }
                    }
                    _ => problems.push(at(v, "`keys` must map key ids to keys (at least one)")),
                },
                other => problems.push(at(
                    k,
                    &format!(
                        "unknown entry `{}`; the entries are `active` and `keys`",
                        other.escape_default()
                    ),
                )),
            }
        }
        let active = match active {
            None => {
                problems.push(at(
                    &root,
                    "`active` is missing: name the key id new digests use",
                ));
                String::new()
            }
            Some((id, node)) => {
                if !keys.is_empty() && !keys.iter().any(|(i, _)| *i == id) {
                    problems.push(at(
                        node,
                        &format!(
                            "`active` names `{}`, which is not in `keys`",
                            id.escape_default()
                        ),
                    ));
                }
                id
            }
        };
        if keys.is_empty() && !problems.iter().any(|p| p.contains("`keys`")) {
            problems.push(at(&root, "`keys` is missing: list the keys by id"));
        }
        if problems.is_empty() {
            Ok(HashKeys { active, keys })
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The active key.
    pub fn active_key(&self) -> &Secret {
        // `parse` checked that `active` is among `keys`.
        &self
            .keys
            .iter()
            .find(|(i, _)| *i == self.active)
            .expect("active key listed")
            .1
    }

    /// Every key id, in file order.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(i, _)| i.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn key_rings() {
        let k = HashKeys::parse("k.yaml", "active: b\nkeys:\n  a: one\n  b: two\n").unwrap();
        assert_eq!(k.active, "b");
        assert_eq!(k.active_key().expose(), b"two");
        assert_eq!(k.ids(), ["a", "b"]);
        assert!(!format!("{k:?}").contains("two"));
        let e = HashKeys::parse(
            "k.yaml",
            "active: c\nkeys:\n  a: secret-one\n  'b c': x\n  d: ''\n",
        )
        .unwrap_err();
        for needle in [
            "k.yaml:1:9: `active` names `c`",
            "k.yaml:4:3: key id `b c`",
            "k.yaml:5:6: key `d` is empty",
        ] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
        assert!(!e.contains("secret-one"), "{e}");
        let e = HashKeys::parse("k.yaml", "keys: {a: 'x\n").unwrap_err();
        assert!(e.starts_with("k.yaml:") && !e.contains("'x"), "{e}");
    }

    #[test]
    fn file_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "abc\r\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap().expose(), b"abc");
    }
}
