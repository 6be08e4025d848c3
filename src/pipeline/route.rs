//! Routing: one consumed message, the rules and the suppression set in;
//! the records to produce (clean, split, dead letter, deletion commands) or
//! none out. Pure and synchronous: no broker, no clock, no metrics, so
//! every outcome is unit-tested here; the lane produces what it returns.

use crate::deadletter::{Sealer, KEY_ID_HEADER, SCHEME, SCHEME_HEADER};
use crate::engine::{Id, NamedBy, Sanitized, Sanitizer, Scratch};
use crate::kafka::{clean_headers, dead_letter_headers, DeadLetterOrigin, Lineage};
use crate::privacy::Request;
use rdkafka::message::{BorrowedHeaders, Headers, OwnedHeaders};
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
    /// Calls of a batch refused on their own: dead letters beside the
    /// clean records (same key).
    pub dead_calls: Vec<DeadCall>,
    /// For [`Outcome::Suppressed`]: where the person was found.
    pub suppressed_by: Option<NamedBy>,
}

/// A dead letter's value, key and headers.
type DeadLetterRecord<'a> = (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>, OwnedHeaders);

/// A call of a batch refused on its own, as a dead letter.
pub struct DeadCall {
    /// The envelope with only this call.
    pub payload: Vec<u8>,
    /// Dead-letter headers.
    pub headers: OwnedHeaders,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// Why.
    pub dead_letter: DeadLetter,
}

impl Routed<'_> {
    fn suppressed(by: NamedBy) -> Self {
        let mut r = Routed::nothing(Outcome::Suppressed);
        r.suppressed_by = Some(by);
        r
    }

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
            dead_calls: Vec::new(),
            suppressed_by: None,
        }
    }

    /// Bytes this output holds in the producer until acknowledged.
    pub fn bytes(&self) -> usize {
        let key = self.key.as_ref().map_or(0, |k| k.len());
        let dead: usize = self.dead_calls.iter().map(|d| d.payload.len() + key).sum();
        self.payloads.iter().map(|p| p.len() + key).sum::<usize>() + dead
    }

    /// Records this output produces.
    pub fn records(&self) -> usize {
        self.payloads.len() + self.dead_calls.len()
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
    seal: Option<Arc<Sealer>>,
}

impl Router {
    /// Prepares routing with `sanitizer`; dead letters are sealed with
    /// `seal` (`None`: `dead_letters.encrypt: false`).
    pub fn new(sanitizer: Arc<Sanitizer>, seal: Option<Arc<Sealer>>) -> Router {
        let lineage = lineage(&sanitizer).headers(&[]);
        Router {
            sanitizer,
            lineage,
            seal,
        }
    }

    /// The rules this router applies.
    pub fn sanitizer(&self) -> &Arc<Sanitizer> {
        &self.sanitizer
    }

    /// An event: sanitized to clean records (and dead letters for calls of
    /// a batch refused on their own), a dead letter, or nothing when
    /// `suppressed` says its person must not be processed.
    pub fn event<'a>(
        &self,
        m: &Input<'a>,
        suppressed: Option<&dyn Fn(Id<'_>) -> bool>,
        scratch: &mut Scratch,
        out: &'a mut Vec<u8>,
    ) -> Routed<'a> {
        let s = &*self.sanitizer;
        // A tombstone is an empty value: named by its key only, else `empty`.
        let payload = m.payload.unwrap_or_default();
        match s.judge(payload, m.key, scratch, out, suppressed) {
            Ok(Sanitized::Suppressed(by)) => Routed::suppressed(by),
            Ok(Sanitized::Clean {
                records,
                suppressed_calls,
                refused_calls,
            }) => {
                let dead_calls = refused_calls
                    .into_iter()
                    .map(|c| {
                        let detail = format!("call {} of the batch: {}", c.index, c.reason);
                        let code = c.reason.code();
                        let (payload, key, headers) =
                            self.dead_letter_record(m, code, &detail, Cow::Owned(c.payload));
                        DeadCall {
                            payload: payload.into_owned(),
                            key: key.map(Cow::into_owned),
                            headers,
                            dead_letter: DeadLetter { code, detail },
                        }
                    })
                    .collect();
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
                    dead_calls,
                    suppressed_by: None,
                }
            }
            Ok(Sanitized::RefusedRest {
                reason,
                rest,
                suppressed_calls,
            }) => {
                let mut routed =
                    self.dead_letter_with(m, reason.code(), reason.to_string(), Cow::Owned(rest));
                routed.suppressed_calls = suppressed_calls;
                routed
            }
            Err(reason) => self.dead_letter(m, reason.code(), reason.to_string()),
        }
    }

    /// A dead letter's value, key and headers: `payload` and the input's
    /// key and header values sealed (when dead letters are encrypted),
    /// then why, where from, and which rules refused it.
    fn dead_letter_record<'a>(
        &self,
        m: &Input<'a>,
        code: &'static str,
        detail: &str,
        payload: Cow<'a, [u8]>,
    ) -> DeadLetterRecord<'a> {
        let origin = DeadLetterOrigin {
            code,
            detail,
            topic: m.topic,
            partition: m.partition,
            offset: m.offset,
        };
        let lineage = lineage(&self.sanitizer);
        let Some(seal) = &self.seal else {
            let headers = dead_letter_headers(m.headers, &origin, &lineage);
            return (payload, m.key.map(Cow::Borrowed), headers);
        };
        let input = m
            .headers
            .into_iter()
            .flat_map(|hs| hs.iter())
            .map(|h| (h.key, h.value));
        let sealed = seal.seal(&payload, m.key, input);
        let mut headers = OwnedHeaders::new_with_capacity(sealed.headers.len() + 9);
        for (name, value) in &sealed.headers {
            headers = headers.insert(rdkafka::message::Header {
                key: name,
                value: value.as_deref(),
            });
        }
        for h in dead_letter_headers(None, &origin, &lineage).iter() {
            headers = headers.insert(h);
        }
        headers = headers
            .insert(rdkafka::message::Header {
                key: SCHEME_HEADER,
                value: Some(SCHEME),
            })
            .insert(rdkafka::message::Header {
                key: KEY_ID_HEADER,
                value: Some(&sealed.key_id),
            });
        (
            Cow::Owned(sealed.payload),
            sealed.key.map(Cow::Owned),
            headers,
        )
    }

    /// `m` itself on the dead-letter topic, with why and where from.
    pub fn dead_letter<'a>(&self, m: &Input<'a>, code: &'static str, detail: String) -> Routed<'a> {
        let payload = Cow::Borrowed(m.payload.unwrap_or_default());
        self.dead_letter_with(m, code, detail, payload)
    }

    /// `payload` (`m`, or what of it may be kept) on the dead-letter topic.
    fn dead_letter_with<'a>(
        &self,
        m: &Input<'a>,
        code: &'static str,
        detail: String,
        payload: Cow<'a, [u8]>,
    ) -> Routed<'a> {
        let (payload, key, headers) = self.dead_letter_record(m, code, &detail, payload);
        Routed {
            outcome: Outcome::DeadLetter,
            topic: Topic::DeadLetter,
            payloads: smallvec::smallvec![payload],
            key,
            headers: Some(headers),
            dead_letter: Some(DeadLetter { code, detail }),
            suppressed_calls: 0,
            deletion: None,
            dead_calls: Vec::new(),
            suppressed_by: None,
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
            dead_calls: Vec::new(),
            suppressed_by: None,
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
        Router::new(
            Arc::new(Sanitizer::compile(&file, KeySupply::FromSource, limits).unwrap()),
            None,
        )
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
        let is = |id: Id<'_>| id == Id::User("gone");
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
    fn a_suppressed_person_leaves_by_no_exit() {
        let r = router(Limits {
            max_bytes: 2000,
            max_depth: 8,
        });
        let is = |id: Id<'_>| matches!(id, Id::User("gone") | Id::Anonymous("anon-gone"));
        let deep = format!(
            r#"{{"type":"track","userId":"gone","event":"E","properties":{{"a":{}1{}}}}}"#,
            "[".repeat(20),
            "]".repeat(20)
        );
        let big = format!(
            r#"{{"type":"track","anonymousId":"anon-gone","event":"E","properties":{{"p":"{}"}}}}"#,
            "x".repeat(3000)
        );
        let cases: Vec<(String, Option<&[u8]>, NamedBy)> = vec![
            (deep, Some(b"k"), NamedBy::Call),
            (big, Some(b"k"), NamedBy::Call),
            (
                r#"{"type":"track","userId":"kept","userId":"gone","event":"E"}"#.into(),
                Some(b"k"),
                NamedBy::Call,
            ),
            (
                r#"{"userId":"gone","batch":[{"type":"track","userId":"kept","event":"E"}]}"#
                    .into(),
                Some(b"k"),
                NamedBy::Envelope,
            ),
            (
                r#"{"type":"alias","userId":"new","previousId":"anon-gone"}"#.into(),
                Some(b"k"),
                NamedBy::Call,
            ),
            ("not json at all".into(), Some(b"gone"), NamedBy::MessageKey),
            (
                r#"{"type":"track","userId":"gone","event":"E","cut"#.into(),
                Some(b"k"),
                NamedBy::Call,
            ),
            (
                r#"{"batch":[{"type":"track","userId":"gone","event":"E"},{"#.into(),
                Some(b"k"),
                NamedBy::BatchCalls,
            ),
        ];
        for (payload, key, by) in cases {
            let (mut scratch, mut out) = (Scratch::default(), Vec::new());
            let mut m = input(Some(payload.as_bytes()), None);
            m.key = key;
            let routed = r.event(&m, Some(&is), &mut scratch, &mut out);
            assert_eq!(routed.outcome, Outcome::Suppressed, "{payload}");
            assert_eq!(routed.suppressed_by, Some(by), "{payload}");
            assert_eq!(routed.records(), 0);
            // Without a suppression set the same message is a dead letter
            // (or clean): the set is what keeps it in.
            drop(routed);
            let routed = r.event(&m, None, &mut scratch, &mut out);
            assert_ne!(routed.outcome, Outcome::Suppressed);
        }
        // A tombstone keyed by the person.
        let (mut scratch, mut out) = (Scratch::default(), Vec::new());
        let mut m = input(None, None);
        m.key = Some(b"gone");
        let routed = r.event(&m, Some(&is), &mut scratch, &mut out);
        assert_eq!(routed.suppressed_by, Some(NamedBy::MessageKey));
    }

    #[test]
    fn a_batch_is_judged_call_by_call_with_the_suppressed_calls_removed_first() {
        let r = router(Limits::default());
        let is = |id: Id<'_>| id == Id::User("gone");
        let good = |u: &str| format!(r#"{{"type":"track","userId":"{u}","event":"E"}}"#);
        let bad = r#"{"type":"track","event":"E","properties":{"note":"no identity"}}"#;
        let batch = format!(
            r#"{{"sentAt":"t","batch":[{},{},{bad},{}]}}"#,
            good("gone"),
            good("kept-1"),
            good("kept-2")
        );
        let (mut scratch, mut out) = (Scratch::default(), Vec::new());
        let routed = r.event(
            &input(Some(batch.as_bytes()), None),
            Some(&is),
            &mut scratch,
            &mut out,
        );
        assert_eq!(routed.outcome, Outcome::Clean);
        assert_eq!(routed.suppressed_calls, 1);
        let v: serde_json::Value = serde_json::from_slice(&routed.payloads[0]).unwrap();
        let users: Vec<&str> = v["batch"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["userId"].as_str().unwrap())
            .collect();
        assert_eq!(users, ["kept-1", "kept-2"], "the good calls, in order");
        assert_eq!(v["sentAt"], "t", "the envelope is kept");
        assert_eq!(routed.dead_calls.len(), 1);
        let d = &routed.dead_calls[0];
        assert_eq!(d.dead_letter.code, "contract.missing_identity");
        assert!(
            d.dead_letter.detail.starts_with("call 2 of the batch"),
            "{}",
            d.dead_letter.detail
        );
        assert_eq!(
            d.payload,
            format!(r#"{{"sentAt":"t","batch":[{bad}]}}"#).as_bytes(),
            "only that call, in its envelope"
        );
        assert!(!String::from_utf8_lossy(&d.payload).contains("gone"));
        assert_eq!(
            header(&d.headers, "sanitizer-error"),
            Some("contract.missing_identity")
        );
        assert_eq!(d.key.as_deref(), Some(&b"user-1"[..]), "the original key");
        // Without suppression: the same per-call judgment.
        drop(routed);
        let routed = r.event(
            &input(Some(batch.as_bytes()), None),
            None,
            &mut scratch,
            &mut out,
        );
        assert_eq!(routed.outcome, Outcome::Clean);
        assert_eq!(routed.dead_calls.len(), 1);
        assert!(routed.dead_calls[0]
            .dead_letter
            .detail
            .starts_with("call 2 "));
        // Only bad calls left: the rest, never the original, is the dead letter.
        let only_bad = format!(r#"{{"batch":[{},{bad}]}}"#, good("gone"));
        drop(routed);
        let routed = r.event(
            &input(Some(only_bad.as_bytes()), None),
            Some(&is),
            &mut scratch,
            &mut out,
        );
        assert_eq!(routed.outcome, Outcome::DeadLetter);
        assert_eq!(routed.suppressed_calls, 1);
        assert_eq!(
            &*routed.payloads[0],
            format!(r#"{{"batch":[{bad}]}}"#).as_bytes()
        );
        // Unreadable as a whole: one dead letter, as before.
        drop(routed);
        let routed = r.event(
            &input(Some(b"{\"batch\":[1,"), None),
            None,
            &mut scratch,
            &mut out,
        );
        assert_eq!(routed.dead_letter.unwrap().code, "invalid_json");
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
