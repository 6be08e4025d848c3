//! [`RuleFile`] -> the engine's compiled tables.

use super::detect::Detector;
use super::hash::Hasher;
use super::{Limits, Sanitizer};
use crate::rules::{
    Action, ConditionTest, FieldName, HashAlgorithm, HeaderPolicy, KeyMatch, KeySource, Literal,
    MessageKeyAction, Path, RuleFile, Segment,
};
use crate::secret::Secret;
use regex::Regex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the HMAC key comes from when compiling.
#[derive(Clone, Copy, Debug)]
pub enum KeySupply<'a> {
    /// Read it from the source the rule file names (`env:` or `file:`).
    FromSource,
    /// Use this key (rule tests, `--hash-key-file`).
    Fixed(&'a Secret),
    /// A fixed, public placeholder key: for `check`, and for `explain` or
    /// `sanitize` dry runs where the real key is not at hand. Digests made
    /// with it are not the production ones.
    Placeholder,
}

/// The public placeholder key of [`KeySupply::Placeholder`].
pub const PLACEHOLDER_KEY: &[u8] = b"event-sanitizer-placeholder-key";

/// Why a parsed rule file could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The hash key could not be read. The message never holds the key.
    #[error("cannot read the hash key from {source_name}: {reason}")]
    KeyUnavailable {
        /// Where it was looked for.
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// A limit of the compiled form was exceeded.
    #[error("{0}")]
    TooMany(String),
    /// A regular expression failed to compile.
    #[error("rule {rule}: {message}")]
    Regex {
        /// The rule.
        rule: String,
        /// The error.
        message: String,
    },
}

/// A rule in compiled form.
#[derive(Debug)]
pub(crate) struct CRule {
    pub id: String,
    pub action_name: &'static str,
    pub strength: u8,
    pub is_keep: bool,
    pub hasher: usize,
    /// Output key template around the input key, JSON-escaped; `None`
    /// means `{key}` alone (the name is kept).
    pub rename: Option<(Vec<u8>, Vec<u8>, bool)>,
    /// Replacement text split at `{detector}`.
    pub replacement: Vec<String>,
    pub when: Vec<CCond>,
    /// Values rules: detector indices, and this rule's bit.
    pub detectors: Vec<u16>,
    pub values_bit: Option<u8>,
    /// Values rules whose detectors all look only at long digit runs: the
    /// shortest such run ([`super::detect::may_run`]); 0 otherwise.
    pub digit_gate: u8,
}

#[derive(Debug)]
pub(crate) struct CCond {
    pub path: Vec<u32>,
    pub test: CTest,
}

#[derive(Debug)]
pub(crate) enum CTest {
    OneOf(Vec<Literal>),
    Regex(Regex),
    Exists(bool),
}

/// A match of a field rule on a key name: strongest first in each list.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hit {
    pub rule: u16,
    pub strength: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CSeg {
    Key(u32),
    Glob(u8),
    AnyKey,
    AnyDepth,
    AnyIndex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The rule's own structural action at the matched location.
    Select,
    /// The values rule with this bit applies below the location.
    ValuesScope(u8),
    /// The location is the scope of allow group `g`.
    AllowScope(u8),
    /// The location is selected by allow group `g`.
    AllowPath(u8),
}

#[derive(Debug)]
pub(crate) struct CPattern {
    pub segs: Vec<CSeg>,
    pub rule: u16,
    pub target: Target,
}

#[derive(Debug)]
pub(crate) struct CGroup {
    pub scope: String,
    pub rules: Vec<u16>,
    pub root: bool,
}

pub(crate) struct Compiled {
    pub id: u64,
    pub name: String,
    pub content_hash: String,
    pub file: String,
    pub mode: KeyMatch,
    pub limits: Limits,
    pub rules: Vec<CRule>,
    pub key_ids: HashMap<String, u32>,
    /// Unscoped field rules by key id.
    pub field_hits: Vec<Vec<Hit>>,
    /// Unscoped glob field rules.
    pub field_globs: Vec<(crate::rules::Glob, Hit)>,
    /// Whether any key, at any depth, can be named by a rule (an unscoped
    /// field rule exists). When not, a subtree that no path reaches and no
    /// values rule scans is copied whole.
    pub names_anywhere: bool,
    /// Globs used in path segments (bit index in a key's glob mask).
    pub path_globs: Vec<crate::rules::Glob>,
    pub patterns: Vec<CPattern>,
    pub groups: Vec<CGroup>,
    /// Values rules (rule indices) by bit.
    pub values_rules: Vec<u16>,
    /// Values rules without scope.
    pub values_global: u64,
    /// Key names that stop (`except_fields`) or allow (`within_fields`)
    /// a values rule's detectors below them: (name, rule bit, within).
    pub values_keys: Vec<(FieldName, u8, bool)>,
    /// Values rules that read only under their `within_fields`.
    pub values_within: u64,
    pub detectors: Vec<Detector>,
    pub hashers: Vec<Hasher>,
    /// The file-level hasher (message keys).
    pub file_hasher: usize,
    pub has_when: bool,
    pub message_key: MessageKeyAction,
    pub headers: HeaderPolicy,
    pub destination: Option<crate::rules::Destination>,
    /// The id of the hash key compiled in (`Sanitizer::key_id`).
    pub key_id: String,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn resolve_key(source: &KeySource) -> Result<Secret, CompileError> {
    let fail = |reason: String| CompileError::KeyUnavailable {
        source_name: source.to_string(),
        reason,
    };
    let key = match source {
        KeySource::Env(name) => match std::env::var_os(name) {
            Some(v) => Secret::new(v.into_encoded_bytes()),
            None => return Err(fail("it is not set".into())),
        },
        KeySource::File(path) => Secret::from_file(path).map_err(|e| fail(e.kind().to_string()))?,
    };
    if key.is_empty() {
        return Err(fail("it is empty".into()));
    }
    Ok(key)
}

impl Sanitizer {
    /// Compiles a parsed rule file.
    pub fn compile(
        file: &RuleFile,
        keys: KeySupply,
        limits: Limits,
    ) -> Result<Sanitizer, CompileError> {
        let uses_key = file.hash.algorithm == HashAlgorithm::HmacSha256
            && (file
                .rules
                .iter()
                .any(|r| matches!(r.action, Action::Hash(_)))
                || file.message.key == MessageKeyAction::Hash);
        let placeholder = Secret::new(PLACEHOLDER_KEY);
        let key: Option<Secret> = match keys {
            KeySupply::Fixed(k) => Some(k.clone()),
            KeySupply::Placeholder => Some(placeholder),
            KeySupply::FromSource if uses_key => match &file.hash.key {
                Some(src) => Some(resolve_key(src)?),
                None => {
                    return Err(CompileError::KeyUnavailable {
                        source_name: "the rule file".into(),
                        reason: "`hash.key` names no key source".into(),
                    })
                }
            },
            KeySupply::FromSource => None,
        };
        let mut b = Builder {
            c: Compiled::empty(file, limits),
            key,
        };
        b.build(file)?;
        Ok(Sanitizer { c: b.c })
    }
}

impl Compiled {
    fn empty(file: &RuleFile, limits: Limits) -> Compiled {
        Compiled {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: file.name.clone(),
            content_hash: file.content_hash.clone(),
            file: file.file.clone(),
            mode: file.keys,
            limits,
            rules: Vec::new(),
            key_ids: HashMap::new(),
            field_hits: Vec::new(),
            field_globs: Vec::new(),
            names_anywhere: false,
            path_globs: Vec::new(),
            patterns: Vec::new(),
            groups: Vec::new(),
            values_rules: Vec::new(),
            values_global: 0,
            values_keys: Vec::new(),
            values_within: 0,
            detectors: Vec::new(),
            hashers: Vec::new(),
            file_hasher: 0,
            has_when: false,
            message_key: file.message.key,
            headers: file.message.headers.clone(),
            key_id: "default".into(),
            destination: file.destination.clone(),
        }
    }
}

struct Builder {
    c: Compiled,
    key: Option<Secret>,
}

fn escape(s: &str) -> Vec<u8> {
    let mut v = Vec::new();
    super::json::escape_into(s, &mut v);
    v
}

impl Builder {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.c.key_ids.get(name) {
            return id;
        }
        let id = self.c.key_ids.len() as u32;
        self.c.key_ids.insert(name.to_string(), id);
        self.c.field_hits.push(Vec::new());
        id
    }

    fn glob(&mut self, g: &crate::rules::Glob) -> Result<u8, CompileError> {
        if let Some(i) = self.c.path_globs.iter().position(|x| x == g) {
            return Ok(i as u8);
        }
        if self.c.path_globs.len() >= 64 {
            return Err(CompileError::TooMany(
                "more than 64 different globs in paths and scoped fields".into(),
            ));
        }
        self.c.path_globs.push(g.clone());
        Ok((self.c.path_globs.len() - 1) as u8)
    }

    fn segs(&mut self, path: &Path) -> Result<Vec<CSeg>, CompileError> {
        path.segments
            .iter()
            .map(|s| {
                Ok(match s {
                    Segment::Key(k) => CSeg::Key(self.intern(k)),
                    Segment::Glob(g) => CSeg::Glob(self.glob(g)?),
                    Segment::AnyKey => CSeg::AnyKey,
                    Segment::AnyDepth => CSeg::AnyDepth,
                    Segment::AnyIndex => CSeg::AnyIndex,
                })
            })
            .collect()
    }

    fn field_seg(&mut self, f: &FieldName) -> Result<CSeg, CompileError> {
        Ok(match f {
            FieldName::Name(n) => CSeg::Key(self.intern(n)),
            FieldName::Glob(g) => CSeg::Glob(self.glob(g)?),
        })
    }

    fn add_pattern(&mut self, segs: Vec<CSeg>, rule: u16, target: Target) {
        self.c.patterns.push(CPattern { segs, rule, target });
    }

    /// Patterns for `paths` and `fields` of a rule, under its scopes.
    fn selector_patterns(
        &mut self,
        r: &crate::rules::Rule,
        idx: u16,
        target: Target,
        fields_as_patterns: bool,
    ) -> Result<(), CompileError> {
        let scopes: Vec<Vec<CSeg>> = if r.scope.is_empty() {
            vec![Vec::new()]
        } else {
            r.scope
                .iter()
                .map(|s| self.segs(s))
                .collect::<Result<_, _>>()?
        };
        for scope in &scopes {
            for p in &r.paths {
                let mut segs = scope.clone();
                segs.extend(self.segs(p)?);
                self.add_pattern(segs, idx, target);
            }
            if fields_as_patterns {
                for f in &r.fields {
                    let mut segs = scope.clone();
                    segs.push(CSeg::AnyDepth);
                    segs.push(self.field_seg(f)?);
                    self.add_pattern(segs, idx, target);
                }
            }
        }
        Ok(())
    }

    fn hasher(&mut self, file: &RuleFile, o: Option<&crate::rules::HashOverrides>) -> usize {
        let h = &file.hash;
        let hasher = Hasher::new(
            h.algorithm,
            self.key.as_ref(),
            o.and_then(|o| o.encoding).unwrap_or(h.encoding),
            o.and_then(|o| o.truncate).or(h.truncate),
            o.and_then(|o| o.normalize.clone())
                .unwrap_or_else(|| h.normalize.clone()),
        );
        self.c.hashers.push(hasher);
        self.c.hashers.len() - 1
    }

    fn build(&mut self, file: &RuleFile) -> Result<(), CompileError> {
        self.c.file_hasher = self.hasher(file, None);
        if file.rules.len() > u16::MAX as usize {
            return Err(CompileError::TooMany("too many rules".into()));
        }
        let mut detector_names: HashMap<String, u16> = HashMap::new();
        for (i, r) in file.rules.iter().enumerate() {
            let idx = i as u16;
            let mut cr = CRule {
                id: r.id.clone(),
                action_name: r.action.name(),
                strength: r.action.strength(),
                is_keep: matches!(r.action, Action::Keep),
                hasher: self.c.file_hasher,
                rename: None,
                replacement: Vec::new(),
                when: Vec::new(),
                detectors: Vec::new(),
                values_bit: None,
                digit_gate: 0,
            };
            for cond in &r.when {
                let path = cond.path.segments.iter().map(|s| match s {
                    Segment::Key(k) => self.intern(k),
                    _ => u32::MAX,
                });
                let path = path.collect();
                let test = match &cond.test {
                    ConditionTest::OneOf(v) => CTest::OneOf(v.clone()),
                    ConditionTest::Exists(b) => CTest::Exists(*b),
                    ConditionTest::Regex(p) => {
                        CTest::Regex(Regex::new(p).map_err(|e| CompileError::Regex {
                            rule: r.id.clone(),
                            message: e.to_string(),
                        })?)
                    }
                };
                cr.when.push(CCond { path, test });
            }
            self.c.has_when |= !cr.when.is_empty();
            match &r.action {
                Action::Hash(o) => {
                    cr.hasher = self.hasher(file, Some(o));
                    let template = o.rename.as_deref().unwrap_or(&file.hash.rename);
                    if template != "{key}" {
                        cr.rename = Some(match template.split_once("{key}") {
                            Some((a, b)) => (escape(a), escape(b), true),
                            None => (escape(template), Vec::new(), false),
                        });
                    }
                }
                Action::Redact { replacement } => {
                    cr.replacement = replacement
                        .split("{detector}")
                        .map(str::to_string)
                        .collect();
                }
                _ => {}
            }
            if !r.values.is_empty() {
                if self.c.values_rules.len() >= 64 {
                    return Err(CompileError::TooMany(
                        "more than 64 rules with `values`".into(),
                    ));
                }
                let bit = self.c.values_rules.len() as u8;
                self.c.values_rules.push(idx);
                cr.values_bit = Some(bit);
                for spec in &r.values {
                    let key = format!("{spec:?}");
                    let d = match detector_names.get(&key) {
                        Some(&d) => d,
                        None => {
                            let det = Detector::compile(spec).map_err(|e| CompileError::Regex {
                                rule: r.id.clone(),
                                message: e.to_string(),
                            })?;
                            self.c.detectors.push(det);
                            let d = (self.c.detectors.len() - 1) as u16;
                            detector_names.insert(key, d);
                            d
                        }
                    };
                    if self.c.detectors.len() > 64 {
                        return Err(CompileError::TooMany(
                            "more than 64 different detectors".into(),
                        ));
                    }
                    cr.detectors.push(d);
                }
                cr.digit_gate = cr
                    .detectors
                    .iter()
                    .map(|&d| self.c.detectors[d as usize].digit_gate())
                    .try_fold(u8::MAX, |g, d| Some(g.min(d?)))
                    .unwrap_or(0);
                for f in &r.except_fields {
                    self.c.values_keys.push((f.clone(), bit, false));
                }
                for f in &r.within_fields {
                    self.c.values_keys.push((f.clone(), bit, true));
                }
                if !r.within_fields.is_empty() {
                    self.c.values_within |= 1 << bit;
                }
                if r.scope.is_empty() {
                    self.c.values_global |= 1 << bit;
                } else {
                    for s in &r.scope {
                        let segs = self.segs(s)?;
                        self.add_pattern(segs, idx, Target::ValuesScope(bit));
                    }
                }
            }
            match &r.action {
                Action::Allow => {
                    let scope = r
                        .scope
                        .iter()
                        .map(|p| p.text.as_str())
                        .collect::<Vec<_>>()
                        .join(",");
                    let g = match self.c.groups.iter().position(|g| g.scope == scope) {
                        Some(g) => g,
                        None => {
                            if self.c.groups.len() >= 64 {
                                return Err(CompileError::TooMany(
                                    "more than 64 different `allow` scopes".into(),
                                ));
                            }
                            self.c.groups.push(CGroup {
                                scope: scope.clone(),
                                rules: Vec::new(),
                                root: r.scope.is_empty(),
                            });
                            self.c.groups.len() - 1
                        }
                    };
                    self.c.groups[g].rules.push(idx);
                    let g8 = g as u8;
                    for s in &r.scope {
                        let segs = self.segs(s)?;
                        self.add_pattern(segs, idx, Target::AllowScope(g8));
                    }
                    self.selector_patterns(r, idx, Target::AllowPath(g8), true)?;
                }
                _ if r.values.is_empty() => {
                    // Unscoped fields go to the key table; everything else
                    // runs as patterns.
                    let scoped = !r.scope.is_empty();
                    self.selector_patterns(r, idx, Target::Select, scoped)?;
                    if !scoped {
                        let hit = Hit {
                            rule: idx,
                            strength: cr.strength,
                        };
                        for f in &r.fields {
                            match f {
                                FieldName::Name(n) => {
                                    let id = self.intern(n) as usize;
                                    self.c.field_hits[id].push(hit);
                                }
                                FieldName::Glob(g) => self.c.field_globs.push((g.clone(), hit)),
                            }
                        }
                    }
                }
                _ => {}
            }
            self.c.rules.push(cr);
        }
        for hits in &mut self.c.field_hits {
            hits.sort_by(|a, b| b.strength.cmp(&a.strength).then(a.rule.cmp(&b.rule)));
        }
        self.c.names_anywhere =
            !self.c.field_globs.is_empty() || self.c.field_hits.iter().any(|h| !h.is_empty());
        Ok(())
    }
}
