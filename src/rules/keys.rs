//! How a rule's key names are compared with the keys an event carries.
//!
//! The governance team writes `phone_number`; apps send `phoneNumber`,
//! `PHONE_NUMBER` or `Phone-Number`. [`KeyMatch::Normalized`] (the default)
//! maps all of these to one canonical spelling before any comparison, so a
//! rule cannot be bypassed by a change of case or separator.

use std::borrow::Cow;

/// The file-wide rule for comparing key names (`keys.match`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyMatch {
    /// Byte-for-byte equality.
    Exact,
    /// Equality after lowercasing.
    CaseInsensitive,
    /// Split into words at `_`, `-`, space and case changes, lowercase, join
    /// with `_` (snake_case): `phoneNumber`, `Phone-Number`, `PHONE_NUMBER`
    /// and `phone_number` are one name; `IPAddress` is `ip_address`.
    #[default]
    Normalized,
}

impl KeyMatch {
    /// The spellings accepted in a rule file.
    pub const NAMES: &'static [&'static str] = &["exact", "case-insensitive", "normalized"];

    /// Parses the rule-file spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "exact" => Some(Self::Exact),
            "case-insensitive" => Some(Self::CaseInsensitive),
            "normalized" => Some(Self::Normalized),
            _ => None,
        }
    }

    /// The canonical form of `key` under this mode.
    pub fn canonical<'a>(self, key: &'a str) -> Cow<'a, str> {
        match self {
            Self::Exact => Cow::Borrowed(key),
            Self::CaseInsensitive => {
                if key.chars().any(char::is_uppercase) {
                    Cow::Owned(key.to_lowercase())
                } else {
                    Cow::Borrowed(key)
                }
            }
            Self::Normalized => {
                let mut out = String::with_capacity(key.len() + 4);
                normalize_into(key, &mut out);
                if out == key {
                    Cow::Borrowed(key)
                } else {
                    Cow::Owned(out)
                }
            }
        }
    }
}

/// Writes the snake_case form of `key` into `out` (cleared first).
///
/// Word boundaries: the separators `_`, `-` and space; a lowercase letter or
/// digit followed by an uppercase letter (`phoneNumber`); and the last
/// capital of a run of capitals that is followed by a lowercase letter
/// (`IPAddress` -> `ip_address`). Empty words are skipped, so `__a--b` is
/// `a_b`.
pub fn normalize_into(key: &str, out: &mut String) {
    out.clear();
    let chars: Vec<char> = key.chars().collect();
    let mut word_open = false;
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' || c == '-' || c == ' ' {
            word_open = false;
            continue;
        }
        if c.is_uppercase() && word_open && i > 0 {
            let prev = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_uppercase() && next_is_lower)
            {
                word_open = false;
            }
        }
        if !word_open {
            if !out.is_empty() {
                out.push('_');
            }
            word_open = true;
        }
        out.extend(c.to_lowercase());
    }
}

/// A `*`/`?` glob over canonical key names (`*phone*`, `*_ip`, `billing_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    text: String,
}

impl Glob {
    /// Whether `name` (a rule-file entry) is a glob rather than a plain name.
    pub fn is_glob(name: &str) -> bool {
        name.contains(['*', '?'])
    }

    /// A glob over canonical names; the pattern's literal parts are
    /// canonicalized word by word, so `*PhoneNumber*` equals `*phone_number*`.
    pub fn new(pattern: &str, mode: KeyMatch) -> Self {
        // Canonicalize the literal runs between wildcards, keeping the
        // wildcards themselves: a `*` next to a separator keeps that separator.
        let mut text = String::new();
        let mut literal = String::new();
        let flush = |literal: &mut String, text: &mut String| {
            if literal.is_empty() {
                return;
            }
            let lead = literal.starts_with(['_', '-', ' ']);
            let trail = literal.ends_with(['_', '-', ' ']) && literal.len() > 1;
            let canon = mode.canonical(literal).into_owned();
            if lead && mode == KeyMatch::Normalized {
                text.push('_');
            }
            text.push_str(&canon);
            if trail && mode == KeyMatch::Normalized {
                text.push('_');
            }
            literal.clear();
        };
        for c in pattern.chars() {
            if c == '*' || c == '?' {
                flush(&mut literal, &mut text);
                text.push(c);
            } else {
                literal.push(c);
            }
        }
        flush(&mut literal, &mut text);
        Glob {
            pattern: text.chars().collect(),
            text,
        }
    }

    /// The canonical pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the canonical key `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        // Classic two-pointer wildcard match with backtracking to the last `*`.
        let (p, n) = (&self.pattern, &name);
        let (mut pi, mut ni) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
                pi += 1;
                ni += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ni));
                pi += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        while pi < p.len() && p[pi] == '*' {
            pi += 1;
        }
        pi == p.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        let mut out = String::new();
        normalize_into(s, &mut out);
        out
    }

    #[test]
    fn normalized_spellings_meet() {
        for s in [
            "phone_number",
            "phoneNumber",
            "PhoneNumber",
            "PHONE_NUMBER",
            "Phone-Number",
            "phone number",
            "phone__number",
        ] {
            assert_eq!(norm(s), "phone_number", "{s}");
        }
        assert_eq!(norm("IPAddress"), "ip_address");
        assert_eq!(norm("ip"), "ip");
        assert_eq!(norm("SSN"), "ssn");
        assert_eq!(norm("userID"), "user_id");
        assert_eq!(norm("address2"), "address2");
        assert_eq!(norm("ipV4"), "ip_v4");
        assert_eq!(norm(""), "");
        assert_eq!(norm("__"), "");
    }

    #[test]
    fn modes() {
        assert_eq!(KeyMatch::Exact.canonical("Phone"), "Phone");
        assert_eq!(KeyMatch::CaseInsensitive.canonical("PhoneNo"), "phoneno");
        assert_eq!(KeyMatch::Normalized.canonical("PhoneNo"), "phone_no");
    }

    #[test]
    fn globs() {
        let g = Glob::new("*_ip", KeyMatch::Normalized);
        assert!(g.matches("client_ip"));
        assert!(!g.matches("zip"));
        assert!(!g.matches("ip"));
        let g = Glob::new("*phone*", KeyMatch::Normalized);
        assert!(g.matches("phone"));
        assert!(g.matches("contact_phone_number"));
        assert!(!g.matches("phon"));
        let g = Glob::new("billing_*", KeyMatch::Normalized);
        assert!(g.matches("billing_address"));
        assert!(!g.matches("billing"));
        let g = Glob::new("*PhoneNumber*", KeyMatch::Normalized);
        assert_eq!(g.as_str(), "*phone_number*");
        assert!(Glob::new("a?c", KeyMatch::Exact).matches("abc"));
        assert!(Glob::new("*a*b*", KeyMatch::Exact).matches("xxaxxbxx"));
        assert!(!Glob::new("*a*b", KeyMatch::Exact).matches("xxaxxbxx"));
    }
}
