//! # event-sanitizer
//!
//! A stream processor that stands between raw user-event topics and the
//! Customer.io forwarder: every event is parsed, checked and rewritten by
//! rules the data governance team writes in YAML, so that only the minimum
//! data Customer.io needs leaves, with the rest dropped, hashed or redacted.
//! It fails closed: a message that cannot be fully sanitized is never
//! produced clean; it becomes a dead letter with a reason.
//!
//! ## Layout
//!
//! - [`rules`]: the rule language. YAML text becomes a typed [`rules::RuleFile`],
//!   with every problem reported at once as `file:line:column`.
//! - [`engine`]: the compiled [`engine::Sanitizer`] and its pure, synchronous
//!   `sanitize` (bytes in; clean bytes or a [`engine::DeadLetterReason`] out)
//!   and `explain`.
//! - [`testing`]: the governance team's rule tests (`event-sanitizer test`).
//! - [`cli`]: the commands (`check`, `test`, `explain`, `sanitize`, `schema`);
//!   `src/main.rs` only calls [`cli::main`].
//! - [`secret`]: secret bytes that never print.
//! - [`config`], [`metrics`]: at the bottom of the service half, importing
//!   nothing above them: typed configuration, validated once, and one place
//!   that logs and counts each thing that happens.
//! - [`reload`]: the rules in use, recompiled and swapped when their files
//!   change.
//! - [`kafka`]: what every Kafka client shares: properties with the
//!   transport check, log and error callbacks, lineage and dead-letter
//!   headers, SASL credentials replaced in place.
//! - [`pipeline`]: the Kafka service (`run`): pure routing, delivery lanes,
//!   at-least-once and exactly-once delivery behind one interface.
//! - [`webhooks`]: Customer.io's signed reporting webhooks, verified,
//!   sanitized and produced by the same service.
//! - [`privacy`]: deletion and suppression requests: the requests topic
//!   read as a table by every replica, the suppression set of keyed
//!   digests, and the deletion commands (`docs/privacy.md`).
//!
//! ## Example
//!
//! ```
//! use event_sanitizer::engine::{KeySupply, Limits, Sanitizer, Scratch};
//! use event_sanitizer::rules::RuleFile;
//!
//! let text = "version: 1\nname: demo\nhash: { algorithm: sha256, truncate: 16 }\nrules:\n  - id: never-send\n    action: drop\n    fields: [ssn]\n  - id: hash-contact\n    action: hash\n    fields: [phone]\n";
//! let (file, _warnings) = RuleFile::parse("demo.yaml", text).unwrap();
//! let sanitizer = Sanitizer::compile(&file, KeySupply::FromSource, Limits::default()).unwrap();
//! let mut scratch = Scratch::default();
//! let mut out = Vec::new();
//! sanitizer
//!     .sanitize(br#"{"userId":"u1","traits":{"SSN":"123-45-6789","phone":"555"}}"#, &mut scratch, &mut out)
//!     .unwrap();
//! assert_eq!(out, br#"{"userId":"u1","traits":{"phone_hash":"91a73fd806ab2c00"}}"#);
//! ```

#![deny(missing_docs)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod engine;
pub mod inventory;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod privacy;
pub mod reload;
pub mod rules;
pub mod secret;
pub mod shadow;
pub mod testing;
pub mod webhooks;
