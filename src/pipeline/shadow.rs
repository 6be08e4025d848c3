//! Shadow rules on live events (`rules.shadow_file`): every event is
//! copied to a thread of its own that runs the rules in use and the
//! candidate and compares them ([`crate::shadow::compare`]); the candidate's
//! output is never produced. When the thread is behind, the event is
//! skipped and counted (`result="skipped"`). Differences are counted by
//! kind and rule, and the latest differing events are kept, as sanitized
//! differences (paths, kinds, rules, values only as produced), for
//! `GET /shadow`.

use crate::metrics::Telemetry;
use crate::reload::{RuleSource, ShadowSource};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};

/// Events waiting for the shadow thread at most.
const QUEUE: usize = 1024;
/// Differing events kept for `/shadow`.
const SAMPLES: usize = 20;

/// Where an event came from, and what the rules in use made of it.
struct Origin {
    topic: String,
    partition: i32,
    offset: i64,
    current: Made,
}

/// What the lane produced for the event, when it is one clean record or
/// a dead letter; otherwise (a split batch, calls refused on their own)
/// the shadow thread runs the rules in use itself.
pub enum Made {
    /// One clean record.
    Output(Vec<u8>),
    /// A dead letter with this reason code.
    DeadLetter(String),
    /// Anything else.
    Other,
}

/// What `/shadow` shows.
#[derive(Default)]
pub struct State {
    compared: u64,
    different: u64,
    samples: VecDeque<Value>,
}

/// Where lanes offer events.
pub struct Feed {
    tx: SyncSender<(Origin, Vec<u8>)>,
    telemetry: Arc<Telemetry>,
    /// The candidate, reloaded with the rules.
    pub source: Arc<ShadowSource>,
    /// For `/shadow`.
    pub state: Arc<Mutex<State>>,
}

impl Feed {
    /// Starts the shadow thread.
    pub fn start(
        source: Arc<ShadowSource>,
        rules: Arc<RuleSource>,
        telemetry: Arc<Telemetry>,
    ) -> Feed {
        let (tx, rx) = sync_channel::<(Origin, Vec<u8>)>(QUEUE);
        let state = Arc::new(Mutex::new(State::default()));
        let (st, src, t) = (state.clone(), source.clone(), telemetry.clone());
        let spawned = std::thread::Builder::new()
            .name("shadow".into())
            .spawn(move || {
                let mut scratch = crate::engine::Scratch::default();
                let mut attributed = crate::shadow::Attribution::default();
                while let Ok((origin, payload)) = rx.recv() {
                    let in_use = rules.current();
                    let current = match &origin.current {
                        Made::Output(o) => crate::shadow::Current::Output(o),
                        Made::DeadLetter(c) => crate::shadow::Current::DeadLetter(c),
                        Made::Other => crate::shadow::Current::Run(&in_use),
                    };
                    let d = crate::shadow::compare(
                        current,
                        &src.current(),
                        &payload,
                        &mut scratch,
                        &mut attributed,
                    );
                    let labels: Vec<(&str, &str)> = d
                        .iter()
                        .map(|x| (x.kind.name(), x.rule.as_deref().unwrap_or("")))
                        .collect();
                    t.shadow.compared(&labels);
                    let Ok(mut s) = st.lock() else { continue };
                    s.compared += 1;
                    if !d.is_empty() {
                        s.different += 1;
                        if s.samples.len() == SAMPLES {
                            s.samples.pop_front();
                        }
                        s.samples.push_back(json!({
                            "topic": origin.topic,
                            "partition": origin.partition,
                            "offset": origin.offset,
                            "differences": d,
                        }));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the shadow thread; no event is compared");
        }
        Feed {
            tx,
            telemetry,
            source,
            state,
        }
    }

    /// Offers one event and what the lane made of it (copied; skipped and
    /// counted when the thread is behind).
    pub fn offer(&self, topic: &str, partition: i32, offset: i64, payload: &[u8], current: Made) {
        let origin = Origin {
            topic: topic.to_string(),
            partition,
            offset,
            current,
        };
        if self.tx.try_send((origin, payload.to_vec())).is_err() {
            self.telemetry.shadow.skipped();
        }
    }

    /// The document `GET /shadow` answers.
    pub fn to_json(&self) -> Value {
        let s = self.source.current();
        let state = self.state.lock();
        let (compared, different, samples) = match &state {
            Ok(st) => (
                st.compared,
                st.different,
                st.samples.iter().cloned().collect::<Vec<_>>(),
            ),
            Err(_) => (0, 0, Vec::new()),
        };
        json!({
            "rule_set": s.name(),
            "hash": s.content_hash(),
            "compared": compared,
            "different": different,
            "latest_differences": samples,
        })
    }
}
