//! The rule language: what the data governance team writes, parsed into
//! typed values with every problem reported at once.
//!
//! [`RuleFile::parse`] turns YAML text into a [`RuleFile`] or a list of
//! [`Diagnostic`]s; [`crate::engine::Sanitizer::compile`] turns a `RuleFile`
//! into the fast, immutable form the engine runs. The language is
//! documented for its users in `docs/rules.md`.

pub mod diagnostic;
pub mod keys;
mod parse;
pub use parse::KNOWN_KEYS;
pub mod path;
pub(crate) mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use keys::{Glob, KeyMatch};
pub use path::{Path, Segment};

use std::path::PathBuf;

/// A parsed rule file.
#[derive(Clone, Debug)]
pub struct RuleFile {
    /// The file as the user named it (for messages).
    pub file: String,
    /// First 12 hex characters of the SHA-256 of the file's bytes: goes out
    /// in lineage headers and the rule-set metric, so a digest can be traced
    /// to the exact rules that made it.
    pub content_hash: String,
    /// `name`: shows up in metrics, lineage headers and logs.
    pub name: String,
    /// `description`.
    pub description: Option<String>,
    /// `keys.match`.
    pub keys: KeyMatch,
    /// `hash`: defaults for every hash action.
    pub hash: HashSettings,
    /// `message`: Kafka key and headers.
    pub message: MessageSettings,
    /// `destination`: what the receiving system accepts, checked on the
    /// clean output. `None`: nothing is checked.
    pub destination: Option<Destination>,
    /// `rules`, in file order.
    pub rules: Vec<Rule>,
}

/// The `hash` section.
#[derive(Clone, Debug)]
pub struct HashSettings {
    /// `algorithm`.
    pub algorithm: HashAlgorithm,
    /// `key`: where the HMAC key comes from; never the key itself.
    pub key: Option<KeySource>,
    /// `encoding` of the digest.
    pub encoding: Encoding,
    /// `truncate`: encoded characters kept; `None` keeps all.
    pub truncate: Option<usize>,
    /// `rename`: output key template; `{key}` is the input key.
    pub rename: String,
    /// `normalize`: string clean-up applied before hashing.
    pub normalize: Vec<Normalize>,
}

impl Default for HashSettings {
    fn default() -> Self {
        HashSettings {
            algorithm: HashAlgorithm::HmacSha256,
            key: None,
            encoding: Encoding::Hex,
            truncate: None,
            rename: "{key}_hash".into(),
            normalize: Vec::new(),
        }
    }
}

/// Digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// Keyed: digests cannot be reversed without the key.
    HmacSha256,
    /// Unkeyed, as in the Customer.io security checklist: phone numbers and
    /// IP addresses can be recovered by trying every candidate.
    Sha256,
}

/// Where the HMAC key is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable's value.
    Env(String),
    /// A file's contents (one trailing newline is ignored).
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env(name) => write!(f, "environment variable {name}"),
            KeySource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// Digest text encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Lowercase hexadecimal (64 characters for SHA-256).
    Hex,
    /// URL-safe base64 without padding (43 characters).
    Base64Url,
}

impl Encoding {
    /// Length of a full SHA-256 digest in this encoding.
    pub fn full_len(self) -> usize {
        match self {
            Encoding::Hex => 64,
            Encoding::Base64Url => 43,
        }
    }
}

/// A clean-up step applied to a string before it is hashed, so that equal
/// values written differently produce the same digest and still join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalize {
    /// Remove leading and trailing white space.
    Trim,
    /// Lowercase.
    Lowercase,
    /// Keep only the digits 0-9 (phone numbers: `+1 (555) 010-9999` and
    /// `15550109999` meet).
    Digits,
    /// Remove all white space.
    RemoveWhitespace,
}

impl Normalize {
    /// Names accepted in a rule file.
    pub const NAMES: &'static [&'static str] =
        &["trim", "lowercase", "digits", "remove-whitespace"];
}

/// The `destination` section: the delivery contract. Every limit is checked
/// on what would actually be produced (after drops, hashes and redactions);
/// a message that breaks one is a dead letter, never a clean record that
/// the destination would silently discard. `None` turns a limit off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// `profile`: where the defaults came from.
    pub profile: String,
    /// `max_call_bytes`: one serialized call (a message, or one element of
    /// a batch).
    pub max_call_bytes: Option<usize>,
    /// `max_batch_bytes`: one serialized batch record; a larger batch is
    /// split into several records, each call intact and in order.
    pub max_batch_bytes: Option<usize>,
    /// `require_identity`: every call has a non-empty `userId` or
    /// `anonymousId` (an identify call may have a `traits.email` instead).
    pub require_identity: bool,
    /// `types`: the accepted values of `type`.
    pub types: Option<Vec<String>>,
    /// `max_event_name_bytes`: a track call's `event` (also: not blank).
    pub max_event_name_bytes: Option<usize>,
    /// `max_traits`: attributes of one identify call.
    pub max_traits: Option<usize>,
    /// `max_trait_name_bytes`: one identify attribute's name.
    pub max_trait_name_bytes: Option<usize>,
    /// `max_trait_value_bytes`: one identify attribute's value (a string's
    /// bytes; other values as serialized JSON).
    pub max_trait_value_bytes: Option<usize>,
    /// `max_id_chars`: characters of `userId`.
    pub max_id_chars: Option<usize>,
}

impl Destination {
    /// Profile names accepted in a rule file.
    pub const PROFILES: &'static [&'static str] = &["customerio", "none"];

    /// Customer.io Data Pipelines and Journeys, from their documentation
    /// (sources in docs/rules.md, "The delivery contract").
    pub fn customerio() -> Destination {
        Destination {
            profile: "customerio".into(),
            max_call_bytes: Some(32 * 1024),
            max_batch_bytes: Some(500_000),
            require_identity: true,
            types: Some(
                ["identify", "track", "page", "screen", "group", "alias"]
                    .map(String::from)
                    .to_vec(),
            ),
            max_event_name_bytes: Some(100),
            max_traits: Some(300),
            max_trait_name_bytes: Some(150),
            max_trait_value_bytes: Some(1000),
            max_id_chars: Some(150),
        }
    }

    /// Every check off: start from nothing and turn on what you need.
    pub fn none() -> Destination {
        Destination {
            profile: "none".into(),
            max_call_bytes: None,
            max_batch_bytes: None,
            require_identity: false,
            types: None,
            max_event_name_bytes: None,
            max_traits: None,
            max_trait_name_bytes: None,
            max_trait_value_bytes: None,
            max_id_chars: None,
        }
    }

    /// A profile by name.
    pub fn profile(name: &str) -> Option<Destination> {
        match name {
            "customerio" => Some(Self::customerio()),
            "none" => Some(Self::none()),
            _ => None,
        }
    }
}

/// The `message` section: Kafka-level data, which can carry PII too.
#[derive(Clone, Debug, Default)]
pub struct MessageSettings {
    /// What happens to the Kafka message key.
    pub key: MessageKeyAction,
    /// Which headers go out.
    pub headers: HeaderPolicy,
}

/// `message.key`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MessageKeyAction {
    /// Pass the key through (a user id key keeps one user's events in order).
    #[default]
    Keep,
    /// Replace it by its digest (same key, same partition: order is kept).
    Hash,
    /// Remove it (records are spread over partitions: per-user order is lost).
    Drop,
}

/// `message.headers`. Header names compare case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderPolicy {
    /// Every header except these.
    Drop(Vec<String>),
    /// Only these headers.
    Allow(Vec<String>),
}

impl Default for HeaderPolicy {
    fn default() -> Self {
        HeaderPolicy::Drop(Vec::new())
    }
}

/// One rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `id`: unique, `[a-z0-9-]+`; named in metrics and `explain`.
    pub id: String,
    /// `description`.
    pub description: Option<String>,
    /// Position of the rule in its file.
    pub line: usize,
    /// Column of the rule in its file.
    pub column: usize,
    /// `action` with its options.
    pub action: Action,
    /// `fields`: key names matched at any depth.
    pub fields: Vec<FieldName>,
    /// `paths`: locations from the event root (or from `scope`).
    pub paths: Vec<Path>,
    /// `values`: detectors run over string contents.
    pub values: Vec<DetectorSpec>,
    /// `except_fields` (with `values`): key names whose values, and
    /// everything below them, the detectors do not read (ids, timestamps).
    pub except_fields: Vec<FieldName>,
    /// `within_fields` (with `values`): the detectors read only values
    /// under these key names (key names as context: a bare nine-digit run
    /// is an SSN under `ssn`, not anywhere).
    pub within_fields: Vec<FieldName>,
    /// `scope`: where the rule applies; empty means the whole event.
    pub scope: Vec<Path>,
    /// `when`: conditions on the event, all of which must hold.
    pub when: Vec<Condition>,
}

/// What a rule does to what it selects.
#[derive(Clone, Debug)]
pub enum Action {
    /// Remove the key and its value (or the array element).
    Drop,
    /// Replace the value by its digest and rename the key.
    Hash(HashOverrides),
    /// Replace matches (for `values`) or the whole value (for `fields`/`paths`).
    Redact {
        /// Replacement text; `{detector}` names the detector that matched.
        replacement: String,
    },
    /// Inside the scope, drop every location no `allow` rule selects.
    Allow,
    /// Exempt from value detectors; never overrides `drop` or `hash`.
    Keep,
}

impl Action {
    /// The action's name as written in rule files and shown by `explain`.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Hash(_) => "hash",
            Action::Redact { .. } => "redact",
            Action::Allow => "allow",
            Action::Keep => "keep",
        }
    }

    /// Precedence on one location: drop > hash > redact > keep/allow.
    pub fn strength(&self) -> u8 {
        match self {
            Action::Drop => 3,
            Action::Hash(_) => 2,
            Action::Redact { .. } => 1,
            Action::Allow | Action::Keep => 0,
        }
    }
}

/// Per-rule hash options; unset ones come from the file's `hash` section.
#[derive(Clone, Debug, Default)]
pub struct HashOverrides {
    /// `normalize` on the rule.
    pub normalize: Option<Vec<Normalize>>,
    /// `rename` on the rule.
    pub rename: Option<String>,
    /// `truncate` on the rule.
    pub truncate: Option<usize>,
    /// `encoding` on the rule.
    pub encoding: Option<Encoding>,
}

/// An entry of `fields`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldName {
    /// A name in canonical form.
    Name(String),
    /// A glob over canonical names.
    Glob(Glob),
}

impl FieldName {
    /// The canonical text.
    pub fn as_str(&self) -> &str {
        match self {
            FieldName::Name(n) => n,
            FieldName::Glob(g) => g.as_str(),
        }
    }

    /// Whether it names the key whose canonical form is `canonical`.
    pub fn matches(&self, canonical: &str) -> bool {
        match self {
            FieldName::Name(n) => n == canonical,
            FieldName::Glob(g) => g.matches(canonical),
        }
    }
}

/// A built-in value detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// 13 to 19 digits, optionally in groups split by single spaces or
    /// dashes, that pass the Luhn check.
    CreditCard,
    /// `AAA-GG-SSSS` (dashes or spaces) with valid area, group and serial.
    UsSsn,
    /// An email address.
    Email,
    /// E.164 (`+4930...`) and common national forms with separators.
    Phone,
    /// A dotted-quad IPv4 address.
    Ipv4,
    /// An IPv6 address.
    Ipv6,
    /// An IBAN that passes the mod-97 check.
    Iban,
    /// A JSON Web Token (`eyJ...` header and payload).
    Jwt,
}

impl Builtin {
    /// All built-ins with their rule-file names.
    pub const ALL: &'static [(&'static str, Builtin)] = &[
        ("credit_card", Builtin::CreditCard),
        ("us_ssn", Builtin::UsSsn),
        ("email", Builtin::Email),
        ("phone", Builtin::Phone),
        ("ipv4", Builtin::Ipv4),
        ("ipv6", Builtin::Ipv6),
        ("iban", Builtin::Iban),
        ("jwt", Builtin::Jwt),
    ];

    /// The rule-file name.
    pub fn name(self) -> &'static str {
        Builtin::ALL
            .iter()
            .find(|(_, b)| *b == self)
            .map_or("?", |(n, _)| n)
    }
}

/// An entry of `values`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetectorSpec {
    /// A built-in detector.
    Builtin(Builtin),
    /// `{ name, regex }`: a regular expression (linear-time, no look-around).
    Custom {
        /// Shown in replacements and `explain`.
        name: String,
        /// The pattern.
        regex: String,
    },
}

impl DetectorSpec {
    /// The detector's name.
    pub fn name(&self) -> &str {
        match self {
            DetectorSpec::Builtin(b) => b.name(),
            DetectorSpec::Custom { name, .. } => name,
        }
    }
}

/// One entry of `when`.
#[derive(Clone, Debug)]
pub struct Condition {
    /// A concrete path from the event root.
    pub path: Path,
    /// What must hold of the value there.
    pub test: ConditionTest,
}

/// What a [`Condition`] asks of a value.
#[derive(Clone, Debug)]
pub enum ConditionTest {
    /// Equal to one of these.
    OneOf(Vec<Literal>),
    /// A string matching this regular expression.
    Regex(String),
    /// Present (`true`) or absent (`false`).
    Exists(bool),
}

/// A scalar in a `when` condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// `null`.
    Null,
    /// `true`/`false`.
    Bool(bool),
    /// A number, compared numerically.
    Number(f64),
    /// Text, compared exactly.
    String(String),
}

impl RuleFile {
    /// Reads and parses a rule file.
    pub fn load(path: &std::path::Path) -> Result<(RuleFile, Diagnostics), Diagnostics> {
        let (shown, text) = diagnostic::read_source(path, "rule file")?;
        Self::parse(&shown, &text)
    }

    /// Parses rule-file text; `file` names it in messages. On success the
    /// warnings come along; on failure every problem found is returned.
    pub fn parse(file: &str, text: &str) -> Result<(RuleFile, Diagnostics), Diagnostics> {
        parse::parse(file, text)
    }

    /// The rule with this id.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

/// The default rule set (`rules/customerio.yaml`), built into the binary:
/// the demo runs on it, and the clean-topic audit takes its never-send and
/// hashed key names as what must never appear raw, whatever rules run.
pub const DEFAULT_RULES: &str = include_str!("../../rules/customerio.yaml");

/// A short content hash: the first 12 hex characters of SHA-256.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    hex::encode(&digest[..6])
}
