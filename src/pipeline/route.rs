//! Routing: one consumed message, the rules and the suppression set in;
//! the records to produce (clean, split, dead letter, deletion commands) or
//! none out. Pure and synchronous: no broker, no clock, no metrics, so
//! every outcome is unit-tested here; the lane produces what it returns.

use crate::engine::{DeadLetterReason, Identity, Sanitized, Sanitizer, Scratch};
use crate::kafka::{clean_headers, dead_letter_headers, DeadLetterOrigin, Lineage};
use crate::privacy::Request;
use rdkafka::message::{BorrowedHeaders, OwnedHeaders};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::sync::Arc;

/// A consumed message, as routing sees it.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    /// Input topic.
    pub topic: &'a str,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// The message key.
    pub key: Option<&'a [u8]>,
    /// The value (`None`: a tombstone).
    pub payload: Option<&'a [u8]>,
    /// The message headers.
    pub headers: Option<&'a BorrowedHeaders>,
}

/// What became of a consumed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Clean record(s) on the clean topic.
    Clean,
    /// The original on the dead-letter topic.
    DeadLetter,
    /// Nothing produced: every call is about a suppressed person.
    Suppressed,
    /// Deletion commands on the clean topic (a `delete` request).
    Commands,
    /// Nothing to produce (a request that only changes the set, a tombstone
    /// on the requests topic).
    NoOutput,
}

/// Which output topic records go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// `kafka.clean_topic`.
    Clean,
    /// `kafka.dead_letter_topic`.
    DeadLetter,
}

/// Why a message is a dead letter: a bounded code and a sentence about it
/// (never data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// `sanitizer-error`.
    pub code: &'static str,
    /// `sanitizer-error-detail`.
    pub detail: String,
}

/// What the audit stream records when deletion commands are acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletionAudit {
    /// The request's id.
    pub request_id: String,
    /// The keyed digest of the person.
    pub person_digest: String,
    /// The id of the key that digest was made with.
    pub key_id: String,
}

/// The output of one message: what to produce, where, and why.
pub struct Routed<'a> {
    /// What became of the message.
    pub outcome: Outcome,
    /// Where the records go.
    pub topic: Topic,
    /// The record values, in order: one, several when a batch was split to
    /// fit (or for deletion commands), or none.
    pub payloads: SmallVec<[Cow<'a, [u8]>; 1]>,
    /// The record key (the same for every record of the message).
    pub key: Option<Cow<'a, [u8]>>,
    /// The record headers (copied onto every record of the message).
    pub headers: Option<OwnedHeaders>,
    /// For a dead letter: why.
    pub dead_letter: Option<DeadLetter>,
    /// Calls of a batch left out because their person is suppressed.
    pub suppressed_calls: usize,
    /// For deletion commands: what to audit once they are acknowledged.
    pub deletion: Option<DeletionAudit>,
}

impl Routed<'_> {
    fn nothing(outcome: Outcome) -> Self {
        Routed {
            outcome,
            topic: Topic::Clean,
            payloads: SmallVec::new(),
            key: None,
            headers: None,
            dead_letter: None,
            suppressed_calls: 0,
            deletion: None,
        }
    }

    /// Bytes this output holds in the producer until acknowledged.
    pub fn bytes(&self) -> usize {
        let key = self.key.as_ref().map_or(0, |k| k.len());
        self.payloads.iter().map(|p| p.len() + key).sum()
    }
}

/// What a record of the privacy-requests topic is.
pub enum RequestRecord<'a> {
    /// A valid request: applied by the reader, then
    /// [`Router::request_applied`].
    Apply(Request),
    /// Not a request: produce this instead.
    Instead(Routed<'a>),
}

/// The rules in use, with the lineage headers prepared once for them.
pub struct Router {
    sanitizer: Arc<Sanitizer>,
    lineage: OwnedHeaders,
}

impl Router {
    /// Prepares routing with `sanitizer`.
    pub fn new(sanitizer: Arc<Sanitizer>) -> Router {
        let lineage = lineage(&sanitizer).headers(&[]);
        Router { sanitizer, lineage }
    }

    /// The rules this router applies.
    pub fn sanitizer(&self) -> &Arc<Sanitizer> {
        &self.sanitizer
    }

    /// An event: sanitized to clean records, a dead letter, or nothing
    /// when `suppressed` says its person must not be processed.
    pub fn event<'a>(
        &self,
        m: &Input<'a>,
        suppressed: Option<&dyn Fn(&Identity) -> bool>,
        scratch: &mut Scratch,
        out: &'a mut Vec<u8>,
    ) -> Routed<'a> {
        let s = &*self.sanitizer;
        let result = match (m.payload, suppressed) {
            (None, _) => Err(DeadLetterReason::Empty),
            (Some(p), Some(is_suppressed)) => {
                s.sanitize_unless(p, scratch, out, &mut |id: &Identity| is_suppressed(id))
            }
            (Some(p), None) => s.sanitize(p, scratch, out).map(|records| Sanitized::Clean {
                records,
                suppressed_calls: 0,
            }),
        };
        match result {
            Ok(Sanitized::Suppressed) => Routed::nothing(Outcome::Suppressed),
            Ok(Sanitized::Clean {
                records,
                suppressed_calls,
            }) => {
                let out: &'a [u8] = out;
                Routed {
                    outcome: Outcome::Clean,
                    topic: Topic::Clean,
                    payloads: records.slices(out).into_iter().map(Cow::Borrowed).collect(),
                    key: s.message_key(m.key),
                    headers: Some(clean_headers(
                        m.headers,
                        |h| s.keep_header(h),
                        &self.lineage,
                    )),
                    dead_letter: None,
                    suppressed_calls,
                    deletion: None,
                }
            }
            Err(reason) => self.dead_letter(m, reason.code(), reason.to_string()),
        }
    }

    /// `m` itself on the dead-letter topic, with why and where from.
    pub fn dead_letter<'a>(&self, m: &Input<'a>, code: &'static str, detail: String) -> Routed<'a> {
        let origin = DeadLetterOrigin {
            code,
            detail: &detail,
            topic: m.topic,
            partition: m.partition,
            offset: m.offset,
        };
        let headers = dead_letter_headers(m.headers, &origin, &lineage(&self.sanitizer));
        Routed {
            outcome: Outcome::DeadLetter,
            topic: Topic::DeadLetter,
            payloads: smallvec::smallvec![Cow::Borrowed(m.payload.unwrap_or_default())],
            key: m.key.map(Cow::Borrowed),
            headers: Some(headers),
            dead_letter: Some(DeadLetter { code, detail }),
            suppressed_calls: 0,
            deletion: None,
        }
    }

    /// A record of the privacy-requests topic: the request to apply, or
    /// what to produce instead (a dead letter for a bad one, nothing for a
    /// tombstone).
    pub fn request<'a>(&self, m: &Input<'a>) -> RequestRecord<'a> {
        let Some(payload) = m.payload else {
            return RequestRecord::Instead(Routed::nothing(Outcome::NoOutput));
        };
        match crate::privacy::parse(payload) {
            Ok(r) => RequestRecord::Apply(r),
            Err(e) => RequestRecord::Instead(self.dead_letter(m, e.code(), e.to_string())),
        }
    }

    /// What the owner of a request produces once its own set holds it: a
    /// `delete` becomes its deletion commands, keyed like the person's
    /// events; any other action needs no output.
    pub fn request_applied<'a>(
        &self,
        m: &Input<'a>,
        r: &Request,
        audit: DeletionAudit,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Routed<'a> {
        if r.action != crate::privacy::Action::Delete {
            return Routed::nothing(Outcome::NoOutput);
        }
        let s = &*self.sanitizer;
        let mut payloads = SmallVec::new();
        for command in crate::privacy::commands(r) {
            match s.sanitize(&command, scratch, out) {
                Ok(records) => payloads.extend(records.iter(out).map(|r| Cow::Owned(r.to_vec()))),
                Err(reason) => {
                    return self.dead_letter(
                        m,
                        reason.code(),
                        format!("the deletion command cannot be produced: {reason}"),
                    )
                }
            }
        }
        // The request's key (the topic is keyed by person), else the
        // person's id, through `message.key`.
        let raw_key = m.key.map(<[u8]>::to_vec).or_else(|| {
            r.user_id
                .as_ref()
                .or(r.anonymous_id.as_ref())
                .map(|i| i.as_bytes().to_vec())
        });
        let key = s
            .message_key(raw_key.as_deref())
            .map(|k| Cow::Owned(k.into_owned()));
        let headers = lineage(s).headers(&[
            ("sanitizer-privacy-request", &r.request_id),
            ("sanitizer-privacy-action", r.action.name()),
        ]);
        Routed {
            outcome: Outcome::Commands,
            topic: Topic::Clean,
            payloads,
            key,
            headers: Some(headers),
            dead_letter: None,
            suppressed_calls: 0,
            deletion: Some(audit),
        }
    }
}

fn lineage(s: &Sanitizer) -> Lineage<'_> {
    Lineage {
        rules: s.name(),
        hash: s.content_hash(),
        key_id: s.key_id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{KeySupply, Limits};
    use crate::rules::RuleFile;
    use rdkafka::message::{Header, Headers};

    const RULES: &str = "version: 1\nname: t\nhash: { algorithm: sha256, truncate: 16 }\nrules:\n  - id: never-send\n    action: drop\n    fields: [ssn]\n  - id: hash-contact\n    action: hash\n    fields: [phone]\ndestination:\n  profile: customerio\n  max_batch_bytes: 400\n  max_call_bytes: 300\n";

    fn router(limits: Limits) -> Router {
        let (file, _) = RuleFile::parse("t.yaml", RULES).unwrap();
        Router::new(Arc::new(
            Sanitizer::compile(&file, KeySupply::FromSource, limits).unwrap(),
        ))
    }

    fn input<'a>(payload: Option<&'a [u8]>, headers: Option<&'a BorrowedHeaders>) -> Input<'a> {
        Input {
            topic: "raw",
            partition: 3,
            offset: 42,
            key: Some(b"user-1"),
            payload,
            headers,
        }
    }

    fn header<'h>(h: &'h OwnedHeaders, name: &str) -> Option<&'h str> {
        h.iter()
            .find(|x| x.key == name)
            .and_then(|x| std::str::from_utf8(x.value?).ok())
    }

    #[test]
    fn clean_keeps_foreign_headers_drops_spoofed_ones_and_adds_lineage() {
        let r = router(Limits::default());
        let hs = OwnedHeaders::new()
            .insert(Header {
                key: "trace-id",
                value: Some("t-1"),
            })
            .insert(Header {
                key: "Sanitizer-Rules",
                value: Some("forged"),
            });
        let (mut scratch, mut out) = (Scratch::default(), Vec::new());
        let payload = br#"{"type":"identify","userId":"u1","traits":{"ssn":"1","phone":"555"}}"#;
        let routed = r.event(
            &input(Some(payload), Some(hs.as_borrowed())),
            None,
            &mut scratch,
            &mut out,
        );
        assert_eq!(routed.outcome, Outcome::Clean);
        assert_eq!(routed.topic, Topic::Clean);
        assert_eq!(routed.payloads.len(), 1);
        assert_eq!(
            &*routed.payloads[0],
            br#"{"type":"identify","userId":"u1","traits":{"phone_hash":"91a73fd806ab2c00"}}"#
        );
        assert_eq!(routed.key.as_deref(), Some(&b"user-1"[..]));
        let h = routed.headers.as_ref().unwrap();
        assert_eq!(header(h, "trace-id"), Some("t-1"));
        assert_eq!(
            header(h, "sanitizer-rules"),
            Some("t"),
            "lineage, not the forged value"
        );
        assert!(h.iter().all(|x| x.key != "Sanitizer-Rules"));
        assert_eq!(header(h, "sanitizer-key-id"), Some("default"));
        assert!(routed.dead_letter.is_none());
        assert!(routed.bytes() > 0);
    }

    #[test]
    fn a_batch_over_the_record_limit_is_split_in_order() {
        let r = router(Limits::default());
        let call = |i: usize| {
            format!(
                r#"{{"type":"track","userId":"u{i}","event":"E","properties":{{"n":"{}"}}}}"#,
                "x".repeat(80)
            )
        };
        let calls: Vec<String> = (0..6).map(call).collect();
        let payload = format!(r#"{{"batch":[{}]}}"#, calls.join(","));
        let (mut scratch, mut out) = (Scratch::default(), Vec::new());
        let routed = r.event(
            &input(Some(payload.as_bytes()), None),
            None,
            &mut scratch,
            &mut out,
        );
        assert_eq!(routed.outcome, Outcome::Clean);
        assert!(routed.payloads.len() > 1, "split into several records");
        let mut users = Vec::new();
        for p in &routed.payloads {
            assert!(p.len() <= 400);
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            users.extend(
                v["batch"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["userId"].as_str().unwrap().to_string()),
            );
        }
        assert_eq!(users, (0..6).map(|i| format!("u{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn each_refusal_is_a_dead_letter_with_its_reason_and_origin() {
        let r = router(Limits {
            max_bytes: 200,
            max_depth: 4,
        });
        let hs = OwnedHeaders::new().insert(Header {
            key: "trace-id",
            value: Some("t-9"),
        });
        let deep =
            br#"{"type":"track","userId":"u","event":"E","properties":{"a":{"b":{"c":{"d":1}}}}}"#;
        let big = format!(
            r#"{{"type":"track","userId":"u","event":"E","properties":{{"p":"{}"}}}}"#,
            "x".repeat(300)
        );
        let cases: Vec<(Option<&[u8]>, &str)> = vec![
            (None, "empty"),
            (Some(b"{not json"), "invalid_json"),
            (Some(b"[1,2]"), "not_an_object"),
            (Some(b"\xff\xfe"), "invalid_utf8"),
            (Some(deep), "too_deep"),
            (Some(big.as_bytes()), "too_large"),
            (
                Some(br#"{"type":"track","userId":"a","userId":"b","event":"E"}"#),
                "duplicate_key",
            ),
            (
                Some(br#"{"type":"track","event":"E"}"#),
                "contract.missing_identity",
            ),
        ];
        for (payload, code) in cases {
            let (mut scratch, mut out) = (Scratch::default(), Vec::new());
            let routed = r.event(
                &input(payload, Some(hs.as_borrowed())),
                None,
                &mut scratch,
                &mut out,
            );
            assert_eq!(routed.outcome, Outcome::DeadLetter, "{code}");
            assert_eq!(routed.topic, Topic::DeadLetter);
            assert_eq!(routed.dead_letter.as_ref().unwrap().code, code);
            assert_eq!(
                &*routed.payloads[0],
                payload.unwrap_or_default(),
                "the original, byte for byte"
            );
            assert_eq!(
                routed.key.as_deref(),
                Some(&b"user-1"[..]),
                "the original key"
            );
            let h = routed.headers.as_ref().unwrap();
            assert_eq!(header(h, "sanitizer-error"), Some(code));
            assert_eq!(header(h, "sanitizer-source-topic"), Some("raw"));
            assert_eq!(header(h, "sanitizer-source-partition"), Some("3"));
            assert_eq!(header(h, "sanitizer-source-offset"), Some("42"));
            assert_eq!(header(h, "trace-id"), Some("t-9"));
        }
    }

    #[test]
    fn suppressed_people_produce_nothing_and_leave_batches() {
        let r = router(Limits::default());
        let is = |id: &Identity| id.user_id.as_deref() == Some("gone");
        let (mut scratch, mut out) = (Scratch::default(), Vec::new());
        let one = br#"{"type":"track","userId":"gone","event":"E"}"#;
        let routed = r.event(&input(Some(one), None), Some(&is), &mut scratch, &mut out);
        assert_eq!(routed.outcome, Outcome::Suppressed);
        assert!(routed.payloads.is_empty());
        let batch = br#"{"batch":[{"type":"track","userId":"gone","event":"E"},{"type":"track","userId":"kept","event":"E"}]}"#;
        let mut out = Vec::new();
        let routed = r.event(&input(Some(batch), None), Some(&is), &mut scratch, &mut out);
        assert_eq!(routed.outcome, Outcome::Clean);
        assert_eq!(routed.suppressed_calls, 1);
        let v: serde_json::Value = serde_json::from_slice(&routed.payloads[0]).unwrap();
        assert_eq!(v["batch"].as_array().unwrap().len(), 1);
        assert_eq!(v["batch"][0]["userId"], "kept");
    }

    #[test]
    fn requests_become_commands_dead_letters_or_nothing() {
        let r = router(Limits::default());
        let audit = DeletionAudit {
            request_id: "r-1".into(),
            person_digest: "d".into(),
            key_id: "k".into(),
        };
        // A bad request: a dead letter with its code.
        let bad = input(Some(br#"{"requestId":"r-1","action":"delete"}"#), None);
        let RequestRecord::Instead(routed) = r.request(&bad) else {
            panic!("refused")
        };
        assert_eq!(routed.outcome, Outcome::DeadLetter);
        assert_eq!(
            routed.dead_letter.unwrap().code,
            "privacy.missing_identifier"
        );
        // A tombstone: nothing.
        assert!(matches!(
            r.request(&input(None, None)),
            RequestRecord::Instead(Routed {
                outcome: Outcome::NoOutput,
                ..
            })
        ));
        // A delete: two commands in order, keyed like the person's events.
        let del = input(
            Some(br#"{"requestId":"r-1","userId":"u-1","action":"delete"}"#),
            None,
        );
        let RequestRecord::Apply(req) = r.request(&del) else {
            panic!("a valid delete")
        };
        let (mut scratch, mut out) = (Scratch::default(), Vec::new());
        let routed = r.request_applied(&del, &req, audit.clone(), &mut scratch, &mut out);
        assert_eq!(routed.outcome, Outcome::Commands);
        let events: Vec<String> = routed
            .payloads
            .iter()
            .map(|p| {
                serde_json::from_slice::<serde_json::Value>(p).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(events, ["User Suppressed", "User Deleted"]);
        assert_eq!(routed.key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(
            header(routed.headers.as_ref().unwrap(), "sanitizer-privacy-action"),
            Some("delete")
        );
        assert_eq!(routed.deletion, Some(audit.clone()));
        // A suppress: nothing to produce.
        let sup = input(
            Some(br#"{"requestId":"r-2","userId":"u-1","action":"suppress"}"#),
            None,
        );
        let RequestRecord::Apply(req) = r.request(&sup) else {
            panic!("a valid suppress")
        };
        let routed = r.request_applied(&sup, &req, audit, &mut scratch, &mut out);
        assert_eq!(routed.outcome, Outcome::NoOutput);
        assert!(routed.payloads.is_empty());
    }
}
