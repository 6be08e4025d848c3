//! Privacy requests (GDPR erasure, CCPA deletion): the requests topic, the
//! suppression set every replica keeps, and the deletion commands.
//!
//! A request is one JSON record on a compacted topic keyed by the person:
//!
//! ```json
//! {"requestId": "r-1", "userId": "u-1", "anonymousId": "a-1",
//!  "action": "delete", "requestedAt": "2026-11-23T10:00:00Z"}
//! ```
//!
//! Every replica reads the whole topic outside the consumer group
//! ([`reader`]) into a [`Suppressions`] set of keyed digests (never the raw
//! ids) and does not consume events until it has read to the end. The
//! member of the consumer group that owns a request's partition dead-letters
//! bad requests and, for `delete`, produces the deletion commands
//! ([`commands`]) to the clean topic, keyed like the person's events.
//! `docs/privacy.md` documents the formats.

pub mod reader;

use crate::secret::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Erase: stop the person's events and have Customer.io suppress, then
    /// delete, the person.
    Delete,
    /// Stop the person's events here (nothing is sent to Customer.io).
    Suppress,
    /// Lift a `delete` or `suppress`: the person's events flow again.
    Unsuppress,
}

impl Action {
    /// The name in requests, metrics and the audit stream.
    pub fn name(self) -> &'static str {
        match self {
            Action::Delete => "delete",
            Action::Suppress => "suppress",
            Action::Unsuppress => "unsuppress",
        }
    }
}

/// One privacy request.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// `requestId`: the caller's id for the request (audited).
    pub request_id: String,
    /// `userId`.
    pub user_id: Option<String>,
    /// `anonymousId`.
    pub anonymous_id: Option<String>,
    /// `action`.
    pub action: Action,
    /// `requestedAt`, as given (audited, and the commands' timestamp).
    pub requested_at: Option<String>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ids are what this module protects: never printed.
        f.debug_struct("Request")
            .field("request_id", &self.request_id)
            .field("action", &self.action)
            .field("user_id", &self.user_id.as_ref().map(|_| "[redacted]"))
            .field(
                "anonymous_id",
                &self.anonymous_id.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Why a record of the requests topic is not a request. The message names
/// fields, never their values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON.
    #[error("the request is not JSON")]
    InvalidJson,
    /// Not an object.
    #[error("the request is not a JSON object")]
    NotAnObject,
    /// `requestId` absent, not text, blank or over 200 bytes.
    #[error("`requestId` is missing, not text, blank or longer than 200 bytes")]
    MissingRequestId,
    /// `action` absent or unknown.
    #[error("`action` is missing or not one of delete, suppress, unsuppress")]
    UnknownAction,
    /// Neither `userId` nor `anonymousId`.
    #[error("the request names no person: give `userId`, `anonymousId` or both")]
    MissingIdentifier,
    /// A field of the wrong type or size.
    #[error("`{0}` must be non-blank text of at most 1000 bytes")]
    InvalidField(&'static str),
    /// A field this format does not have (a misspelling would otherwise be
    /// ignored silently).
    #[error(
        "unknown field `{0}`; the fields are requestId, userId, anonymousId, action, requestedAt"
    )]
    UnknownField(String),
}

impl RequestError {
    /// The dead-letter reason code.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::InvalidJson => "privacy.invalid_json",
            RequestError::NotAnObject => "privacy.not_an_object",
            RequestError::MissingRequestId => "privacy.missing_request_id",
            RequestError::UnknownAction => "privacy.unknown_action",
            RequestError::MissingIdentifier => "privacy.missing_identifier",
            RequestError::InvalidField(_) => "privacy.invalid_field",
            RequestError::UnknownField(_) => "privacy.unknown_field",
        }
    }

    /// Every code, for metrics that start at zero.
    pub const CODES: [&'static str; 7] = [
        "privacy.invalid_json",
        "privacy.not_an_object",
        "privacy.missing_request_id",
        "privacy.unknown_action",
        "privacy.missing_identifier",
        "privacy.invalid_field",
        "privacy.unknown_field",
    ];
}

const FIELDS: [&str; 5] = [
    "requestId",
    "userId",
    "anonymousId",
    "action",
    "requestedAt",
];

/// Parses one request.
pub fn parse(payload: &[u8]) -> Result<Request, RequestError> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| RequestError::InvalidJson)?;
    let obj = v.as_object().ok_or(RequestError::NotAnObject)?;
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        // Field names are printed; a name longer than a field name is cut.
        return Err(RequestError::UnknownField(k.chars().take(40).collect()));
    }
    let text = |name: &'static str| -> Result<Option<String>, RequestError> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() && s.len() <= 1000 => {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(RequestError::InvalidField(name)),
        }
    };
    let request_id = match obj.get("requestId") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() && s.len() <= 200 => s.clone(),
        _ => return Err(RequestError::MissingRequestId),
    };
    let action = match obj.get("action").and_then(|a| a.as_str()) {
        Some("delete") => Action::Delete,
        Some("suppress") => Action::Suppress,
        Some("unsuppress") => Action::Unsuppress,
        _ => return Err(RequestError::UnknownAction),
    };
    let user_id = text("userId")?;
    let anonymous_id = text("anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(RequestError::MissingIdentifier);
    }
    Ok(Request {
        request_id,
        user_id,
        anonymous_id,
        action,
        requested_at: text("requestedAt")?,
    })
}

/// A keyed digest of one identifier (truncated HMAC-SHA256, 128 bits).
pub type Digest = [u8; 16];

/// Which identifier a digest is of: the same text as `userId` and as
/// `anonymousId` are different people.
#[derive(Clone, Copy)]
enum Kind {
    User = b'u' as isize,
    Anonymous = b'a' as isize,
}

/// One suppression set: digests made with one key.
pub(crate) struct Table {
    key_id: String,
    mac: Hmac<Sha256>,
    set: HashSet<Digest>,
}

impl Table {
    pub(crate) fn new(key_id: &str, key: &Secret) -> Table {
        Table {
            key_id: key_id.to_string(),
            // HMAC takes keys of any length.
            mac: Hmac::<Sha256>::new_from_slice(key.expose()).expect("any key length"),
            set: HashSet::new(),
        }
    }

    fn digest(&self, kind: Kind, id: &str) -> Digest {
        let mut m = self.mac.clone();
        m.update(&[kind as u8, b':']);
        m.update(id.as_bytes());
        let full = m.finalize().into_bytes();
        let mut d = [0u8; 16];
        d.copy_from_slice(&full[..16]);
        d
    }

    /// The digest that names the request's person in the audit stream:
    /// of `userId`, else `anonymousId`, in hex.
    fn person(&self, r: &Request) -> String {
        let d = match (&r.user_id, &r.anonymous_id) {
            (Some(u), _) => self.digest(Kind::User, u),
            (None, Some(a)) => self.digest(Kind::Anonymous, a),
            (None, None) => [0; 16],
        };
        hex::encode(d)
    }

    /// Applies a request; returns [`Table::person`].
    pub(crate) fn apply(&mut self, r: &Request) -> String {
        let ids = [
            r.user_id.as_deref().map(|u| self.digest(Kind::User, u)),
            r.anonymous_id
                .as_deref()
                .map(|a| self.digest(Kind::Anonymous, a)),
        ];
        for d in ids.iter().flatten() {
            match r.action {
                Action::Delete | Action::Suppress => {
                    self.set.insert(*d);
                }
                Action::Unsuppress => {
                    self.set.remove(d);
                }
            }
        }
        self.person(r)
    }

    fn contains(&self, user_id: Option<&str>, anonymous_id: Option<&str>) -> bool {
        user_id.is_some_and(|u| self.set.contains(&self.digest(Kind::User, u)))
            || anonymous_id.is_some_and(|a| self.set.contains(&self.digest(Kind::Anonymous, a)))
    }

    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    pub(crate) fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// The suppression set of this replica: keyed digests of the `userId`s and
/// `anonymousId`s whose events must not be produced. Read by every worker,
/// written by the [`reader`]. It keeps the key it was built with, so a
/// rotation of the rules' key does not invalidate it; it is rebuilt with
/// the new key from the topic and swapped in whole.
pub struct Suppressions {
    table: RwLock<Table>,
    /// Identifiers in the set: lookups skip hashing when it is 0.
    len: AtomicUsize,
}

impl Suppressions {
    /// An empty set whose digests use `key`.
    pub fn new(key_id: &str, key: &Secret) -> Suppressions {
        Suppressions {
            table: RwLock::new(Table::new(key_id, key)),
            len: AtomicUsize::new(0),
        }
    }

    /// Whether a call with these identifiers is about a suppressed person.
    pub fn contains(&self, user_id: Option<&str>, anonymous_id: Option<&str>) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(user_id, anonymous_id)
    }

    /// Whether this one identifier is suppressed (for
    /// [`crate::engine::Sanitizer::judge`]).
    pub fn holds(&self, id: crate::engine::Id<'_>) -> bool {
        match id {
            crate::engine::Id::User(u) => self.contains(Some(u), None),
            crate::engine::Id::Anonymous(a) => self.contains(None, Some(a)),
        }
    }

    /// Applies a request; returns (audit digest, key id, set size).
    pub(crate) fn apply(&self, r: &Request) -> (String, String, usize) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        let d = t.apply(r);
        self.len.store(t.len(), Ordering::Release);
        (d, t.key_id.clone(), t.len())
    }

    /// The digest that names this request's person in the audit stream.
    pub fn audit_digest(&self, r: &Request) -> (String, String) {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        (t.person(r), t.key_id.clone())
    }

    /// Replaces the whole set (a rebuild with a new key).
    pub(crate) fn replace(&self, table: Table) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        self.len.store(table.len(), Ordering::Release);
        *t = table;
    }

    /// Identifiers in the set.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of the key the set's digests are made with.
    pub fn key_id(&self) -> String {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .key_id
            .clone()
    }
}

/// The deletion commands for a `delete` request, in the order the
/// forwarder must act: `User Suppressed` (Customer.io deletes the profile
/// and blocks re-adding it), then `User Deleted`. Semantic track events, so
/// the forwarder needs no custom logic; they go through the rules like any
/// event, so the person's identifiers come out exactly as in their events.
pub fn commands(r: &Request) -> [Vec<u8>; 2] {
    let make = |event: &str, suffix: &str| {
        let mut v = serde_json::json!({
            "type": "track",
            "event": event,
            "messageId": format!("privacy-{}-{suffix}", r.request_id),
            "properties": { "requestId": r.request_id, "action": r.action.name() },
            "context": { "library": { "name": "event-sanitizer", "version": env!("CARGO_PKG_VERSION") } },
        });
        if let Some(u) = &r.user_id {
            v["userId"] = u.clone().into();
        }
        if let Some(a) = &r.anonymous_id {
            v["anonymousId"] = a.clone().into();
        }
        if let Some(t) = &r.requested_at {
            v["timestamp"] = t.clone().into();
        }
        serde_json::to_vec(&v).expect("a JSON value serializes")
    };
    [
        make("User Suppressed", "suppressed"),
        make("User Deleted", "deleted"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_errors_never_show_values() {
        let r = parse(br#"{"requestId":"r1","userId":"u-secret","action":"delete","requestedAt":"2026-11-23T10:00:00Z"}"#).unwrap();
        assert_eq!(r.action, Action::Delete);
        assert!(!format!("{r:?}").contains("u-secret"));
        for (input, code) in [
            (&b"nope"[..], "privacy.invalid_json"),
            (b"[1]", "privacy.not_an_object"),
            (
                br#"{"userId":"u","action":"delete"}"#,
                "privacy.missing_request_id",
            ),
            (
                br#"{"requestId":"r","userId":"u","action":"erase"}"#,
                "privacy.unknown_action",
            ),
            (
                br#"{"requestId":"r","action":"delete"}"#,
                "privacy.missing_identifier",
            ),
            (
                br#"{"requestId":"r","userId":42,"action":"delete"}"#,
                "privacy.invalid_field",
            ),
            (
                br#"{"requestId":"r","userid":"u-secret","action":"delete"}"#,
                "privacy.unknown_field",
            ),
        ] {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code(), code, "{}", String::from_utf8_lossy(input));
            assert!(RequestError::CODES.contains(&e.code()));
            assert!(!e.to_string().contains("u-secret"), "{e}");
        }
    }

    #[test]
    fn suppress_unsuppress_and_namespaces() {
        let s = Suppressions::new("k1", &Secret::new("key"));
        assert!(!s.contains(Some("u1"), None));
        let req = |action: &str| {
            parse(
                format!(
                    r#"{{"requestId":"r","userId":"u1","anonymousId":"a1","action":"{action}"}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        s.apply(&req("suppress"));
        assert_eq!(s.len(), 2);
        assert!(s.contains(Some("u1"), None));
        assert!(s.contains(None, Some("a1")));
        assert!(s.contains(Some("other"), Some("a1")));
        assert!(
            !s.contains(Some("a1"), None),
            "a userId equal to someone's anonymousId is someone else"
        );
        s.apply(&req("unsuppress"));
        assert!(!s.contains(Some("u1"), Some("a1")));
        assert!(s.is_empty());
    }

    #[test]
    fn commands_suppress_then_delete() {
        let r = parse(br#"{"requestId":"r9","userId":"u1","action":"delete","requestedAt":"2026-11-23T10:00:00Z"}"#).unwrap();
        let [a, b] = commands(&r);
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_slice(&a).unwrap(),
            serde_json::from_slice(&b).unwrap(),
        );
        assert_eq!(a["event"], "User Suppressed");
        assert_eq!(b["event"], "User Deleted");
        assert_eq!(b["userId"], "u1");
        assert_eq!(b["messageId"], "privacy-r9-deleted");
        assert_eq!(b["timestamp"], "2026-11-23T10:00:00Z");
        assert!(b.get("anonymousId").is_none());
    }
}
