//! The sanitizer engine: a compiled rule set applied to one message at a
//! time, synchronously, with no I/O.
//!
//! [`Sanitizer::compile`] turns a [`RuleFile`](crate::rules::RuleFile) into
//! an immutable value that any number of threads share; each thread keeps a
//! [`Scratch`] of reusable buffers and caches. [`Sanitizer::sanitize`] takes
//! the message bytes and either writes the clean JSON or returns the
//! [`DeadLetterReason`]: a message is never half-sanitized.
//!
//! How it is fast: the input is validated and tokenized once into a flat
//! tape of spans (no tree of allocations); key names are classified once per
//! distinct spelling (cached in the `Scratch`) against interned rule names;
//! paths run as a small automaton whose states advance key by key; untouched
//! scalars are copied byte for byte; detectors run only on strings that
//! survive, behind cheap prefilters.

pub(crate) mod compile;
mod contract;
pub(crate) mod detect;
mod explain;
pub(crate) mod hash;
mod identity;
pub(crate) mod json;
mod keycache;
mod swar;
mod walk;

pub use compile::{CompileError, KeySupply};
pub use contract::{Limit, Records, Violation};
pub use explain::{push_key, Decision, Explanation, NOT_SCANNED};
pub use identity::{Id, NamedBy, RefusedCall, Sanitized, SCAN_MAX_BYTES};

use crate::rules::{Destination, HeaderPolicy, MessageKeyAction};
use std::borrow::Cow;
use std::fmt;

/// Limits on what a message may be; beyond them it is a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted message value in bytes (default 1 MiB).
    pub max_bytes: usize,
    /// Deepest accepted nesting of objects and arrays (default 64).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 20,
            max_depth: 64,
        }
    }
}

/// Why a message cannot be sanitized. It goes to the dead-letter topic
/// with [`DeadLetterReason::code`] in its `sanitizer-error` header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterReason {
    /// The value is absent (a tombstone) or empty.
    #[error("the message has no value")]
    Empty,
    /// Larger than [`Limits::max_bytes`].
    #[error("the message is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not valid UTF-8.
    #[error("the message is not valid UTF-8 (at byte {offset})")]
    InvalidUtf8 {
        /// First bad byte.
        offset: usize,
    },
    /// Not valid JSON.
    #[error("the message is not valid JSON (at byte {offset})")]
    InvalidJson {
        /// Where parsing failed.
        offset: usize,
    },
    /// A number beyond the range of a double (`1e400`): no downstream
    /// parser reads it as written.
    #[error("the message has a number beyond the range of a double (at byte {offset})")]
    NumberOutOfRange {
        /// Where the number starts.
        offset: usize,
    },
    /// Nested deeper than [`Limits::max_depth`].
    #[error("the message is nested deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// Valid JSON, but not an object.
    #[error("the message is not a JSON object")]
    NotAnObject,
    /// `{"batch": ...}` whose `batch` is not an array.
    #[error("`batch` is not an array")]
    BatchNotArray,
    /// An element of `batch` is not an object.
    #[error("element {index} of `batch` is not an object")]
    BatchElementNotObject {
        /// Its position.
        index: usize,
    },
    /// An object has the same key twice (readers disagree on which wins).
    #[error("an object has the same key twice")]
    DuplicateKey,
    /// A hashed key's new name is already a key of the same object.
    #[error("a hashed field's new name is already used in the same object")]
    RenameCollision,
    /// The clean output breaks the destination's delivery contract
    /// (`destination` in the rule file): the destination would reject or
    /// silently discard it.
    #[error("the delivery contract is broken: {0}")]
    Contract(Violation),
}

impl DeadLetterReason {
    /// A stable, bounded code for headers, metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLarge { .. } => "too_large",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::InvalidJson { .. } => "invalid_json",
            Self::NumberOutOfRange { .. } => "number_out_of_range",
            Self::TooDeep { .. } => "too_deep",
            Self::NotAnObject => "not_an_object",
            Self::BatchNotArray => "batch_not_array",
            Self::BatchElementNotObject { .. } => "batch_element_not_object",
            Self::DuplicateKey => "duplicate_key",
            Self::RenameCollision => "rename_collision",
            Self::Contract(v) => v.limit.code(),
        }
    }

    /// Every code, for pre-registering metrics and for docs.
    pub const CODES: &'static [&'static str] = &[
        "empty",
        "too_large",
        "invalid_utf8",
        "invalid_json",
        "number_out_of_range",
        "too_deep",
        "not_an_object",
        "batch_not_array",
        "batch_element_not_object",
        "duplicate_key",
        "rename_collision",
        "contract.event_too_large",
        "contract.batch_too_large",
        "contract.missing_identity",
        "contract.unknown_type",
        "contract.missing_event_name",
        "contract.event_name_too_long",
        "contract.too_many_traits",
        "contract.trait_name_too_long",
        "contract.trait_value_too_large",
        "contract.id_too_long",
    ];
}

/// A compiled, immutable rule set. Cheap to share (`Arc`) across threads.
pub struct Sanitizer {
    pub(crate) c: compile::Compiled,
}

impl fmt::Debug for Sanitizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sanitizer")
            .field("name", &self.c.name)
            .field("content_hash", &self.c.content_hash)
            .field("rules", &self.c.rules.len())
            .finish_non_exhaustive()
    }
}

/// Per-thread reusable state: buffers and the key-name cache. Create one per
/// worker with [`Scratch::default`]; it adapts itself when the sanitizer
/// it is used with changes (after a reload).
#[derive(Default)]
pub struct Scratch {
    pub(crate) w: walk::Work,
    pub(crate) contract: contract::ContractWork,
}

impl Scratch {
    /// Takes the per-rule action counts accumulated since the last call:
    /// `(rule index, count)` for every rule that acted. Use
    /// [`Sanitizer::rule_id`] and [`Sanitizer::rule_action`] to name them.
    pub fn drain_rule_counts(&mut self, mut f: impl FnMut(usize, u64)) {
        for (i, c) in self.w.counts.iter_mut().enumerate() {
            if *c > 0 {
                f(i, *c);
                *c = 0;
            }
        }
    }
}

impl Sanitizer {
    /// The rule set's `name`.
    pub fn name(&self) -> &str {
        &self.c.name
    }

    /// Short content hash of the rule file.
    pub fn content_hash(&self) -> &str {
        &self.c.content_hash
    }

    /// The rule file as named when loaded.
    pub fn file(&self) -> &str {
        &self.c.file
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.c.rules.len()
    }

    /// The id of rule `i`.
    pub fn rule_id(&self, i: usize) -> &str {
        &self.c.rules[i].id
    }

    /// The action name of rule `i`.
    pub fn rule_action(&self, i: usize) -> &'static str {
        self.c.rules[i].action_name
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.c.limits
    }

    /// The id of the hash key this rule set was compiled with (the
    /// `sanitizer-key-id` header of every clean record): `default` for a
    /// single key, the key's id from a key ring otherwise.
    pub fn key_id(&self) -> &str {
        &self.c.key_id
    }

    /// Names the hash key this rule set was compiled with.
    pub fn with_key_id(mut self, id: &str) -> Sanitizer {
        self.c.key_id = id.to_string();
        self
    }

    /// The delivery contract checked on every output, if any.
    pub fn destination(&self) -> Option<&Destination> {
        self.c.destination.as_ref()
    }

    /// Sanitizes one message value into `out` (cleared first), then checks
    /// it against the delivery contract. On success `out` holds the clean
    /// records that [`Records::iter`] separates (one, unless a batch was
    /// split to fit). On error `out` holds nothing usable and the message
    /// is a dead letter.
    pub fn sanitize(
        &self,
        input: &[u8],
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Result<Records, DeadLetterReason> {
        walk::run(self, input, &mut scratch.w, out, &mut explain::NoTrace)?;
        let placed = scratch.w.placed.known.then_some(&scratch.w.placed);
        self.contract(out, placed, &mut scratch.contract)
    }

    /// Checks the delivery contract on `out`; `placed` is where the walk
    /// wrote what the contract reads, when it knows.
    pub(crate) fn contract(
        &self,
        out: &mut Vec<u8>,
        placed: Option<&walk::Placed>,
        w: &mut contract::ContractWork,
    ) -> Result<Records, DeadLetterReason> {
        let Some(d) = &self.c.destination else {
            return Ok(Records::default());
        };
        contract::check(d, out, placed, w).inspect_err(|_| out.clear())
    }

    /// Sanitizes one value and says what was done where.
    pub fn explain(&self, input: &[u8]) -> Explanation {
        let mut trace = explain::Recorder::default();
        let mut w = walk::Work::default();
        let mut out = Vec::new();
        let result = walk::run(self, input, &mut w, &mut out, &mut trace).and_then(|()| {
            let placed = w.placed.known.then_some(&w.placed);
            self.contract(&mut out, placed, &mut Default::default())
        });
        let (output, records) = match result {
            Ok(records) => (Ok(out), records),
            Err(e) => (Err(e), Records::default()),
        };
        Explanation {
            output,
            records,
            decisions: trace.decisions,
            skipped: trace.skipped,
            reached: trace.reached,
        }
    }

    /// The Kafka message key as it goes out (`message.key`).
    pub fn message_key<'k>(&self, key: Option<&'k [u8]>) -> Option<Cow<'k, [u8]>> {
        let key = key?;
        match self.c.message_key {
            MessageKeyAction::Keep => Some(Cow::Borrowed(key)),
            MessageKeyAction::Drop => None,
            MessageKeyAction::Hash => {
                let mut out = Vec::with_capacity(64);
                self.c.hashers[self.c.file_hasher].write(key, &mut out);
                Some(Cow::Owned(out))
            }
        }
    }

    /// The digest of `value` with the rule file's `hash` settings (key,
    /// algorithm, encoding, truncation): the same digest a `hash` rule with
    /// the file defaults gives a string field, so the two join.
    pub fn digest(&self, value: &str) -> Vec<u8> {
        let h = &self.c.hashers[self.c.file_hasher];
        let mut buf = String::new();
        let mut out = Vec::with_capacity(64);
        h.write(h.normalized(value, &mut buf).as_bytes(), &mut out);
        out
    }

    /// Whether a Kafka header with this name goes out (`message.headers`).
    pub fn keep_header(&self, name: &str) -> bool {
        let listed = |names: &[String]| names.iter().any(|n| n.eq_ignore_ascii_case(name));
        match &self.c.headers {
            HeaderPolicy::Drop(names) => !listed(names),
            HeaderPolicy::Allow(names) => listed(names),
        }
    }
}
