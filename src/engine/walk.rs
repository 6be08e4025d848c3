//! The walk: one pass over the tape, writing the clean message.

use super::compile::{CTest, Compiled, Target};
use super::detect::Found;
use super::explain::{Decision, Trace};
use super::hash::canonical;
use super::json::{self, unescape, Field, JsonError, Kind, Tok};
use super::{DeadLetterReason, Sanitizer};
use crate::rules::Literal;

/// Distinct key spellings remembered before the cache is emptied (bounds
/// memory against messages that invent keys).
const CACHE_LIMIT: usize = 16_384;

/// What is known about one key spelling under the current rules.
#[derive(Clone, Copy, Debug)]
struct KeyClass {
    key_id: u32,
    glob_mask: u64,
    /// Values rules (bits) whose `except_fields` name this key.
    except_values: u64,
    /// Values rules (bits) whose `within_fields` name this key.
    within_values: u64,
    hits_start: u32,
    hits_len: u32,
    /// The serial of the last object whose keys included this class:
    /// detects duplicate keys in O(1) within one pass over an object's keys.
    stamp: u64,
}

impl KeyClass {
    /// Whether no rule names this key: not a field rule's (no hits) nor a
    /// values rule's context (`except_fields`, `within_fields`).
    #[inline(always)]
    fn names_nothing(&self) -> bool {
        self.hits_len == 0 && (self.except_values | self.within_values) == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    pat: u16,
    pos: u16,
}

/// Per-thread buffers and caches (inside [`super::Scratch`]).
#[derive(Default)]
pub(crate) struct Work {
    sanitizer_id: u64,
    tape: Vec<Tok>,
    nest: json::Nesting,
    cache: super::keycache::KeyCache,
    classes: Vec<KeyClass>,
    hits: Vec<super::compile::Hit>,
    states: Vec<State>,
    done: Vec<u16>,
    active: Vec<u64>,
    serial: u64,
    pub counts: Vec<u64>,
    keybuf: String,
    /// The key classes of the objects being walked, outermost first: each
    /// object's keys, then the names it renamed keys to (for collisions).
    object_classes: Vec<u32>,
    /// A renamed key as written.
    renamed: String,
    strbuf: String,
    normbuf: String,
    strout: Vec<u8>,
    canon: Vec<u8>,
    found: Vec<Found>,
    /// Whether the last input was compact (no whitespace between tokens):
    /// then an untouched container's bytes are its clean output.
    compact: bool,
    /// Key spans of one object, for the duplicate check of a verbatim copy.
    keys: Vec<(u32, u32)>,
    /// Where the walk wrote what the delivery contract reads.
    pub placed: Placed,
    /// The tape index of the batch call being walked (whose members go to
    /// `placed.call_members`); `usize::MAX` outside a batch.
    call_root: usize,
    /// Where the last renamed key was written (its opening quote in the
    /// output): a member of the top-level object or a call whose key is
    /// there went out renamed.
    renamed_at: usize,
}

/// Where the walk wrote the members of the clean top-level object and,
/// for a batch, each call and its members: the delivery contract reads
/// these instead of tokenizing the output. Valid when `known`; members
/// are recorded only under rules with a contract (`destination`).
#[derive(Default)]
pub(crate) struct Placed {
    /// Each top-level member the contract reads ([`PlacedMember::read`]).
    pub members: Vec<PlacedMember>,
    /// Each call of the batch, in order.
    pub calls: Vec<PlacedCall>,
    /// The members of every call the contract reads, as `members` (each
    /// call names its run).
    pub call_members: Vec<PlacedMember>,
    pub known: bool,
}

/// One member of the top-level object or of a batch's call as the walk
/// wrote it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlacedMember {
    /// From its key's quote to the end of its value.
    pub start: u32,
    pub end: u32,
    /// Where its key's closing quote is, when the key went out as it came
    /// in and has no escape (its value then starts two bytes on, after
    /// `":`); 0 when the contract reads the key itself (renamed or
    /// escaped).
    pub key_end: u32,
    /// What the contract reads the member as, by its key (when `key_end`
    /// is known).
    pub field: Field,
}

impl PlacedMember {
    /// The member at `start..end` whose key `key` (between its quotes,
    /// escaped as in the input when `escaped`) was written as it came.
    fn written(start: u32, end: u32, key: &[u8], escaped: bool) -> PlacedMember {
        if escaped {
            return PlacedMember::unread(start, end);
        }
        PlacedMember {
            start,
            end,
            key_end: start + 1 + key.len() as u32,
            field: Field::of(key),
        }
    }

    /// Whether the contract reads anything of this member: its key
    /// (renamed or escaped) or the value of a field it checks. The others
    /// are not recorded.
    fn read(&self) -> bool {
        self.key_end == 0 || self.field != Field::Other
    }

    /// The member at `start..end` whose key the contract reads itself
    /// (renamed or escaped).
    fn unread(start: u32, end: u32) -> PlacedMember {
        PlacedMember {
            start,
            end,
            key_end: 0,
            field: Field::Other,
        }
    }
}

/// One call of a batch as the walk wrote it.
pub(crate) struct PlacedCall {
    /// From its opening brace to just past its closing one.
    pub start: u32,
    pub end: u32,
    /// Its members: `call_members[first..first + len]`.
    pub first: u32,
    pub len: u32,
}

impl Placed {
    /// Records a member of the top-level object (`top`) or of the call
    /// being walked, if the contract reads it.
    #[inline]
    fn place(&mut self, member: PlacedMember, top: bool) {
        if !member.read() {
            return;
        }
        if top {
            self.members.push(member);
        } else {
            self.call_members.push(member);
        }
    }

    fn clear(&mut self) {
        self.members.clear();
        self.calls.clear();
        self.call_members.clear();
        self.known = false;
    }
}

impl Work {
    fn reset_for(&mut self, s: &Compiled) {
        if self.sanitizer_id != s.id || self.cache.len() > CACHE_LIMIT {
            self.cache.clear();
            self.classes.clear();
            self.hits.clear();
            if self.sanitizer_id != s.id {
                self.counts.clear();
                self.counts.resize(s.rules.len(), 0);
                self.sanitizer_id = s.id;
            }
        }
    }
}

/// Inherited down the tree.
#[derive(Clone, Copy, Debug, Default)]
struct Inherit {
    /// Exempt from value detectors (`keep`).
    kept: bool,
    /// Values rules (bits) in scope.
    values: u64,
    /// Values rules (bits) whose `within_fields` name a key here or above.
    context: u64,
    /// Allow groups whose filter applies to this location's children.
    filtering: u64,
    /// Allow groups satisfied here and below.
    free: u64,
}

#[derive(Clone, Copy, Debug)]
enum Act {
    Pass,
    Drop(u16),
    AllowDrop(u8),
    Hash(u16),
    Redact(u16),
}

enum StrAct {
    Plain,
    Drop(u16),
    Hash(u16),
    Rewritten,
}

pub(crate) fn run<T: Trace>(
    s: &Sanitizer,
    input: &[u8],
    w: &mut Work,
    out: &mut Vec<u8>,
    trace: &mut T,
) -> Result<(), DeadLetterReason> {
    out.clear();
    w.placed.clear();
    w.object_classes.clear();
    w.call_root = usize::MAX;
    w.renamed_at = usize::MAX;
    let c = &s.c;
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(DeadLetterReason::Empty);
    }
    if input.len() > c.limits.max_bytes {
        return Err(DeadLetterReason::TooLarge {
            size: input.len(),
            limit: c.limits.max_bytes,
        });
    }
    // SIMD validation for the common (valid) case; std finds the offset
    // of the first bad byte for the dead letter's reason.
    let src = match simdutf8::basic::from_utf8(input) {
        Ok(s) => s,
        Err(_) => {
            let offset = std::str::from_utf8(input)
                .err()
                .map_or(0, |e| e.valid_up_to());
            return Err(DeadLetterReason::InvalidUtf8 { offset });
        }
    };
    w.reset_for(c);
    let mut tape = std::mem::take(&mut w.tape);
    // A container is copied whole only when no rule names keys wherever
    // they are ([`Walker::untouched`]); otherwise the walk visits every
    // object and checks its keys itself.
    let marks = if c.names_anywhere {
        json::Marks::None
    } else {
        json::Marks::Repeats
    };
    let result = match json::tokenize(input, c.limits.max_depth, marks, &mut tape, &mut w.nest) {
        Err(JsonError::Syntax(offset)) => Err(DeadLetterReason::InvalidJson { offset }),
        Err(JsonError::NumberOutOfRange(offset)) => {
            Err(DeadLetterReason::NumberOutOfRange { offset })
        }
        Err(JsonError::TooDeep) => Err(DeadLetterReason::TooDeep {
            limit: c.limits.max_depth,
        }),
        Ok(_) if tape[0].kind != Kind::Object => Err(DeadLetterReason::NotAnObject),
        Ok(compact) => {
            w.compact = compact;
            out.reserve(input.len());
            let mut walker = Walker {
                c,
                src,
                tape: &tape,
                w: &mut *w,
                out: &mut *out,
                trace,
                path: String::new(),
                active_values: 0,
            };
            walker.document()
        }
    };
    w.tape = tape;
    w.states.clear();
    if result.is_err() {
        out.clear();
    }
    result
}

struct Walker<'a, T: Trace> {
    c: &'a Compiled,
    src: &'a str,
    tape: &'a [Tok],
    w: &'a mut Work,
    out: &'a mut Vec<u8>,
    trace: &'a mut T,
    /// Location of the current node (only maintained when tracing).
    path: String,
    /// Values rules whose `when` holds for the current event.
    active_values: u64,
}

#[inline(always)]
fn better(cand: (u8, u16), best: Option<(u8, u16)>) -> bool {
    match best {
        None => true,
        Some((s, r)) => cand.0 > s || (cand.0 == s && cand.1 < r),
    }
}

impl<T: Trace> Walker<'_, T> {
    fn raw(&self, t: Tok) -> &str {
        &self.src[t.start as usize..t.end as usize]
    }

    #[inline]
    fn active(&self, rule: u16) -> bool {
        !self.c.has_when || (self.w.active[(rule >> 6) as usize] >> (rule & 63)) & 1 == 1
    }

    /// The class of the key token `k` ([`Self::classify`] of its text):
    /// a plain key is looked up by its bytes, with no `str` slicing.
    #[inline(always)]
    fn classify_key(&mut self, k: Tok) -> u32 {
        if !k.escaped {
            let raw = &self.src.as_bytes()[k.start as usize..k.end as usize];
            if let Some(c) = self.w.cache.get(raw) {
                return c;
            }
        }
        self.classify(&self.src[k.start as usize..k.end as usize], k.escaped)
    }

    /// The class of a key spelling, computing it on first sight.
    #[inline]
    fn classify(&mut self, raw: &str, escaped: bool) -> u32 {
        if !escaped {
            if let Some(c) = self.w.cache.get(raw.as_bytes()) {
                return c;
            }
            return self.classify_slow(raw);
        }
        let mut buf = std::mem::take(&mut self.w.keybuf);
        unescape(raw, &mut buf);
        let c = match self.w.cache.get(buf.as_bytes()) {
            Some(c) => c,
            None => self.classify_slow(&buf),
        };
        self.w.keybuf = buf;
        c
    }

    #[cold]
    fn classify_slow(&mut self, key: &str) -> u32 {
        let c = self.c;
        let canon = c.mode.canonical(key);
        let key_id = c.key_ids.get(canon.as_ref()).copied().unwrap_or(u32::MAX);
        let mut glob_mask = 0u64;
        for (i, g) in c.path_globs.iter().enumerate() {
            if g.matches(&canon) {
                glob_mask |= 1 << i;
            }
        }
        let (mut except_values, mut within_values) = (0u64, 0u64);
        for (f, bit, within) in &c.values_keys {
            if f.matches(&canon) {
                *(if *within {
                    &mut within_values
                } else {
                    &mut except_values
                }) |= 1 << bit;
            }
        }
        let start = self.w.hits.len();
        if key_id != u32::MAX {
            self.w
                .hits
                .extend_from_slice(&c.field_hits[key_id as usize]);
        }
        for (g, hit) in &c.field_globs {
            if g.matches(&canon) {
                self.w.hits.push(*hit);
            }
        }
        self.w.hits[start..].sort_by(|a, b| b.strength.cmp(&a.strength).then(a.rule.cmp(&b.rule)));
        let idx = self.w.classes.len() as u32;
        self.w.classes.push(KeyClass {
            key_id,
            glob_mask,
            except_values,
            within_values,
            hits_start: start as u32,
            hits_len: (self.w.hits.len() - start) as u32,
            stamp: 0,
        });
        self.w.cache.insert(key.as_bytes(), idx);
        idx
    }

    fn document(&mut self) -> Result<(), DeadLetterReason> {
        let batch = self.find_batch(0);
        self.event(0, batch)
    }

    /// The tape index of the root's `batch` key, if this is an envelope.
    fn find_batch(&mut self, root: usize) -> Option<usize> {
        let end = self.tape[root].next as usize;
        let mut i = root + 1;
        while i < end {
            let k = self.tape[i];
            let is_batch = if k.escaped {
                let mut s = String::new();
                unescape(self.raw(k), &mut s);
                s == "batch"
            } else {
                self.raw(k) == "batch"
            };
            if is_batch {
                return Some(i);
            }
            i = self.tape[i + 1].next as usize;
        }
        None
    }

    fn event(&mut self, root: usize, batch: Option<usize>) -> Result<(), DeadLetterReason> {
        self.compute_active(root);
        let lo = self.w.states.len();
        for p in 0..self.c.patterns.len() {
            if self.active(self.c.patterns[p].rule) {
                self.push_state(lo, p as u16, 0);
            }
        }
        self.w.done.clear();
        let hi = self.w.states.len();
        let mut root_groups = 0u64;
        for (g, group) in self.c.groups.iter().enumerate() {
            if group.root && group.rules.iter().any(|&r| self.active(r)) {
                root_groups |= 1 << g;
            }
        }
        if T::ON {
            self.mark_reached(root_groups);
        }
        let inh = Inherit {
            kept: false,
            values: self.c.values_global,
            context: 0,
            filtering: root_groups,
            free: 0,
        };
        let r = if batch.is_none() && self.untouched(lo, hi, &inh) {
            let at = self.out.len() as u32;
            let r = self.verbatim(root);
            if let (Some(top), true) = (self.placing(root), r.is_ok()) {
                // Copied as it came: the members are where the input has
                // them, moved to where the copy starts.
                let base = self.tape[root].start;
                for (k, v) in json::members(self.tape, root) {
                    let (key, val) = (self.tape[k], self.tape[v]);
                    let end = val.end + u32::from(val.kind == Kind::String);
                    let raw = &self.src.as_bytes()[key.start as usize..key.end as usize];
                    let member = PlacedMember::written(
                        key.start - 1 - base + at,
                        end - base + at,
                        raw,
                        key.escaped,
                    );
                    self.w.placed.place(member, top);
                }
            }
            r
        } else {
            self.object(root, lo, hi, &inh, batch)
        };
        if root == 0 {
            self.w.placed.known = r.is_ok();
        }
        self.w.states.truncate(lo);
        r
    }

    fn compute_active(&mut self, root: usize) {
        let c = self.c;
        if !c.has_when {
            self.active_values = if c.values_rules.len() == 64 {
                u64::MAX
            } else {
                (1u64 << c.values_rules.len()) - 1
            };
            return;
        }
        self.w.active.clear();
        self.w.active.resize(c.rules.len().div_ceil(64), 0);
        let mut values = 0u64;
        for (i, r) in c.rules.iter().enumerate() {
            let holds = r
                .when
                .iter()
                .all(|cond| self.condition(root, &cond.path, &cond.test));
            if holds {
                self.w.active[i >> 6] |= 1 << (i & 63);
                if let Some(bit) = r.values_bit {
                    values |= 1 << bit;
                }
            } else if T::ON {
                let at = self.path.clone();
                self.trace.skipped(&at, &r.id);
            }
        }
        self.active_values = values;
    }

    fn condition(&mut self, root: usize, path: &[u32], test: &CTest) -> bool {
        let mut cur = Some(root);
        for &key_id in path {
            cur = cur.and_then(|node| self.member(node, key_id));
        }
        let Some(node) = cur else {
            return matches!(test, CTest::Exists(false));
        };
        let t = self.tape[node];
        // The string's text: its bytes as they are unless escaped.
        let src = self.src;
        let text = move || {
            let raw = &src[t.start as usize..t.end as usize];
            if t.escaped {
                let mut s = String::new();
                unescape(raw, &mut s);
                std::borrow::Cow::Owned(s)
            } else {
                std::borrow::Cow::Borrowed(raw)
            }
        };
        match test {
            CTest::Exists(e) => *e,
            CTest::Regex(re) => t.kind == Kind::String && re.is_match(&text()),
            CTest::OneOf(lits) => lits.iter().any(|lit| match (lit, t.kind) {
                (Literal::Null, Kind::Null) => true,
                (Literal::Bool(true), Kind::True) | (Literal::Bool(false), Kind::False) => true,
                (Literal::Number(n), Kind::Number) => {
                    self.raw(t).parse::<f64>().is_ok_and(|v| v == *n)
                }
                (Literal::String(s), Kind::String) => *s == text(),
                _ => false,
            }),
        }
    }

    /// The value of the first member of object `node` whose key has `key_id`.
    fn member(&mut self, node: usize, key_id: u32) -> Option<usize> {
        if self.tape[node].kind != Kind::Object {
            return None;
        }
        let end = self.tape[node].next as usize;
        let mut i = node + 1;
        while i < end {
            let k = self.tape[i];
            let class = self.classify_key(k);
            if self.w.classes[class as usize].key_id == key_id {
                return Some(i + 1);
            }
            i = self.tape[i + 1].next as usize;
        }
        None
    }

    /// Adds a state for a child whose states start at `lo`, following `**`
    /// (which may match no level) and recording completed patterns.
    fn push_state(&mut self, lo: usize, pat: u16, pos: u16) {
        let segs = &self.c.patterns[pat as usize].segs;
        if pos as usize == segs.len() {
            self.w.done.push(pat);
            return;
        }
        let st = State { pat, pos };
        if self.w.states[lo..].contains(&st) {
            return;
        }
        self.w.states.push(st);
        if segs[pos as usize] == super::compile::CSeg::AnyDepth {
            self.push_state(lo, pat, pos + 1);
        }
    }

    /// States of an object member with key class `class`.
    #[inline]
    fn step_key(&mut self, lo: usize, hi: usize, class: u32) {
        use super::compile::CSeg;
        let clo = self.w.states.len();
        self.w.done.clear();
        if lo == hi {
            return;
        }
        let kc = self.w.classes[class as usize];
        for i in lo..hi {
            let st = self.w.states[i];
            match self.c.patterns[st.pat as usize].segs[st.pos as usize] {
                CSeg::Key(id) if id == kc.key_id => self.push_state(clo, st.pat, st.pos + 1),
                CSeg::Glob(g) if (kc.glob_mask >> g) & 1 == 1 => {
                    self.push_state(clo, st.pat, st.pos + 1)
                }
                CSeg::AnyKey => self.push_state(clo, st.pat, st.pos + 1),
                CSeg::AnyDepth => self.push_state(clo, st.pat, st.pos),
                _ => {}
            }
        }
    }

    /// States of an array element: `[*]` advances, `**` stays, and key
    /// steps wait for the element's keys (arrays are walked through).
    #[inline]
    fn step_index(&mut self, lo: usize, hi: usize) {
        use super::compile::CSeg;
        let clo = self.w.states.len();
        self.w.done.clear();
        for i in lo..hi {
            let st = self.w.states[i];
            match self.c.patterns[st.pat as usize].segs[st.pos as usize] {
                CSeg::AnyIndex => self.push_state(clo, st.pat, st.pos + 1),
                _ => self.push_state(clo, st.pat, st.pos),
            }
        }
    }

    /// The structural decision for a location whose states are
    /// `states[clo..chi]` and completions `done`.
    #[inline(always)]
    fn decide(
        &mut self,
        class: Option<u32>,
        inh: &mut Inherit,
        clo: usize,
        chi: usize,
        container: bool,
    ) -> Act {
        let c = self.c;
        if let Some(class) = class {
            // Key names as context for values rules (`except_fields`,
            // `within_fields`): they hold here and below.
            let kc = &self.w.classes[class as usize];
            let (except, within) = (kc.except_values, kc.within_values);
            let stopped = inh.values & except & self.active_values;
            inh.values &= !except;
            inh.context |= within;
            if T::ON && stopped != 0 {
                let mut bits = stopped;
                while bits != 0 {
                    let rule = c.values_rules[bits.trailing_zeros() as usize];
                    bits &= bits - 1;
                    let note = "`except_fields` names this key: the rule's detectors read nothing here or below";
                    self.record(None, super::explain::NOT_SCANNED, rule, Some(note.into()));
                }
            }
        }
        // The common case: nothing names this location.
        if self.w.done.is_empty()
            && inh.filtering == 0
            && class.is_none_or(|k| self.w.classes[k as usize].hits_len == 0)
        {
            inh.filtering = 0;
            return Act::Pass;
        }
        self.decide_named(class, inh, clo, chi, container)
    }

    /// [`Self::decide`] where a rule's pattern names the location or
    /// filtering is under way: out of line, so the common case stays in
    /// the walk's loop.
    #[inline(never)]
    fn decide_named(
        &mut self,
        class: Option<u32>,
        child: &mut Inherit,
        clo: usize,
        chi: usize,
        container: bool,
    ) -> Act {
        let c = self.c;
        let mut best: Option<(u8, u16)> = None;
        if let Some(class) = class {
            let kc = self.w.classes[class as usize];
            for h in &self.w.hits[kc.hits_start as usize..(kc.hits_start + kc.hits_len) as usize] {
                if self.active(h.rule) {
                    best = Some((h.strength, h.rule));
                    break;
                }
            }
        }
        let (need, kept) = (child.filtering, child.kept);
        let (mut selected, mut entered) = (0u64, 0u64);
        for &p in &self.w.done {
            let pat = &c.patterns[p as usize];
            match pat.target {
                Target::Select => {
                    let cand = (c.rules[pat.rule as usize].strength, pat.rule);
                    if better(cand, best) {
                        best = Some(cand);
                    }
                }
                Target::ValuesScope(b) => child.values |= 1 << b,
                Target::AllowScope(g) => entered |= 1 << g,
                Target::AllowPath(g) => selected |= 1 << g,
            }
        }
        let mut allow_drop = None;
        child.filtering = 0;
        if need != 0 {
            let sel = need & selected;
            child.free |= sel;
            let rest = need & !sel;
            if rest != 0 {
                let mut partial = 0u64;
                for st in &self.w.states[clo..chi] {
                    if let Target::AllowPath(g) = c.patterns[st.pat as usize].target {
                        partial |= 1 << g;
                    }
                }
                let missing = rest & !partial;
                let unreached = if container { missing } else { rest };
                if unreached != 0 {
                    allow_drop = Some(unreached.trailing_zeros() as u8);
                }
                child.filtering = rest & partial;
            }
        }
        child.filtering |= entered & !child.free & !need;
        if T::ON && entered != 0 {
            self.mark_reached(entered);
        }
        match best {
            Some((3, r)) => Act::Drop(r),
            _ if allow_drop.is_some() => Act::AllowDrop(allow_drop.unwrap_or(0)),
            Some((2, r)) => Act::Hash(r),
            Some((1, r)) => Act::Redact(r),
            Some((_, r)) => {
                if c.rules[r as usize].is_keep {
                    if T::ON && !kept {
                        self.record(None, "keep", r, None);
                    }
                    child.kept = true;
                    self.w.counts[r as usize] += 1;
                }
                Act::Pass
            }
            None => Act::Pass,
        }
    }

    fn mark_reached(&mut self, groups: u64) {
        for (g, group) in self.c.groups.iter().enumerate() {
            if (groups >> g) & 1 == 1 {
                for &r in &group.rules {
                    if self.active(r) {
                        self.trace.reached(&self.c.rules[r as usize].id);
                    }
                }
            }
        }
    }

    fn record(
        &mut self,
        output: Option<String>,
        action: &'static str,
        rule: u16,
        note: Option<String>,
    ) {
        let d = Decision {
            location: self.path.clone(),
            output,
            action,
            rule: self.c.rules[rule as usize].id.clone(),
            note,
        };
        self.trace.decision(d);
    }

    fn push_path_key(&mut self, k: Tok) {
        let raw = &self.src[k.start as usize..k.end as usize];
        let mut key = String::new();
        if k.escaped {
            unescape(raw, &mut key);
        } else {
            key.push_str(raw);
        }
        super::explain::push_key(&mut self.path, &key);
    }

    #[inline]
    fn sep(&mut self, first: &mut bool) {
        if !*first {
            self.out.push(b',');
        }
        *first = false;
    }

    #[inline]
    fn write_key(&mut self, raw: &[u8]) {
        self.out.push(b'"');
        self.out.extend_from_slice(raw);
        self.out.extend_from_slice(b"\":");
    }

    /// Writes the renamed key of a hashed member of the object whose
    /// classes start at `keys` in `object_classes`; detects collisions.
    fn write_renamed(
        &mut self,
        raw: &[u8],
        rule: u16,
        keys: usize,
    ) -> Result<Option<String>, DeadLetterReason> {
        let Some((before, after, has_key)) = &self.c.rules[rule as usize].rename else {
            self.write_key(raw);
            return Ok(None);
        };
        let start = self.out.len();
        self.w.renamed_at = start;
        self.out.push(b'"');
        self.out.extend_from_slice(before);
        if *has_key {
            self.out.extend_from_slice(raw);
        }
        self.out.extend_from_slice(after);
        let written = &self.out[start + 1..];
        // The new key's class: a plain spelling seen before is found by its
        // bytes; any other is decoded and classified as text.
        let cached = if json::has_backslash(written) {
            None
        } else {
            self.w.cache.get(written)
        };
        let mut name = std::mem::take(&mut self.w.renamed);
        name.clear();
        if cached.is_none() || T::ON {
            name.push_str(
                std::str::from_utf8(written).expect("a rename's parts and keys are text"),
            );
        }
        self.out.extend_from_slice(b"\":");
        // A collision: the object has a key of the same class, or renamed
        // another to one (its classes from `keys` on).
        let class = match cached {
            Some(class) => class,
            None => self.classify(&name, name.contains('\\')),
        };
        let collision = self.w.object_classes[keys..].contains(&class);
        if !collision {
            self.w.object_classes.push(class);
        }
        let path = (T::ON && !collision).then(|| {
            let mut decoded = String::new();
            unescape(&name, &mut decoded);
            match self.path.rfind('.') {
                Some(dot) => format!("{}.{decoded}", &self.path[..dot]),
                None => decoded,
            }
        });
        self.w.renamed = name;
        if collision {
            return Err(DeadLetterReason::RenameCollision);
        }
        Ok(path)
    }

    /// Whether the object at tape index `idx` records where its members
    /// went, for a delivery contract to read: `Some(true)` for the
    /// top-level object, `Some(false)` for a batch's call, `None` for any
    /// other object or under rules without a contract.
    #[inline]
    fn placing(&self, idx: usize) -> Option<bool> {
        let top = idx == 0;
        (self.c.destination.is_some() && (top || idx == self.w.call_root)).then_some(top)
    }

    fn object(
        &mut self,
        idx: usize,
        lo: usize,
        hi: usize,
        inh: &Inherit,
        batch: Option<usize>,
    ) -> Result<(), DeadLetterReason> {
        let end = self.tape[idx].next as usize;
        // Every key classified and checked for duplicates before any member
        // is written: a nested object's check reuses the class stamps.
        self.w.serial += 1;
        let serial = self.w.serial;
        let keys = self.w.object_classes.len();
        let mut i = idx + 1;
        while i < end {
            let k = self.tape[i];
            let class = self.classify_key(k);
            self.first_in_object(class, serial)?;
            self.w.object_classes.push(class);
            i = self.tape[i + 1].next as usize;
        }
        self.out.push(b'{');
        let mut first = true;
        let mut n = keys;
        let mut i = idx + 1;
        let placing = self.placing(idx);
        // No path state at this object and no allow filter open: the
        // decision for a member then depends on its key's class alone.
        let plain_here = lo == hi && inh.filtering == 0;
        while i < end {
            let before = self.out.len();
            let k = self.tape[i];
            let vi = i + 1;
            let t = self.tape[vi];
            let next = t.next as usize;
            let raw = &self.src.as_bytes()[k.start as usize..k.end as usize];
            let class = self.w.object_classes[n];
            n += 1;
            let plen = self.path.len();
            if T::ON {
                self.push_path_key(k);
            }
            if Some(i) == batch {
                self.batch(vi, &mut first)?;
            } else if plain_here && self.w.classes[class as usize].names_nothing() {
                // No path goes on here, no allow filter is open, and no
                // rule names this key: what `decide` would find without
                // looking (the members keep this object's inheritance).
                self.w.done.clear();
                let at = self.w.states.len();
                self.member_out(vi, (raw, keys), Act::Pass, inh, at, at, &mut first)?;
            } else {
                let clo = self.w.states.len();
                self.step_key(lo, hi, class);
                let chi = self.w.states.len();
                let container = matches!(t.kind, Kind::Object | Kind::Array);
                let mut child = *inh;
                let act = self.decide(Some(class), &mut child, clo, chi, container);
                self.member_out(vi, (raw, keys), act, &child, clo, chi, &mut first)?;
                self.w.states.truncate(clo);
            }
            if T::ON {
                self.path.truncate(plen);
            }
            if let (Some(top), true) = (placing, self.out.len() > before) {
                let start = before + usize::from(self.out[before] == b',');
                let (start, end) = (start as u32, self.out.len() as u32);
                // A renamed key is read by the contract.
                let member = if self.w.renamed_at == start as usize {
                    PlacedMember::unread(start, end)
                } else {
                    PlacedMember::written(start, end, raw, k.escaped)
                };
                self.w.placed.place(member, top);
            }
            i = next;
        }
        self.out.push(b'}');
        self.w.object_classes.truncate(keys);
        Ok(())
    }

    /// Writes the member whose value is at `vi` as decided. The common
    /// case, in line: a number, literal, or string that no values rule
    /// reads or whose gate passes it, passed as it came.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn member_out(
        &mut self,
        vi: usize,
        key: (&[u8], usize),
        act: Act,
        child: &Inherit,
        clo: usize,
        chi: usize,
        first: &mut bool,
    ) -> Result<(), DeadLetterReason> {
        let t = self.tape[vi];
        let plain = matches!(act, Act::Pass)
            && match t.kind {
                Kind::Object | Kind::Array => false,
                Kind::String => self.unread(child) || self.gated_out(t, self.reading(child)),
                _ => true,
            };
        if plain {
            self.copy(Some(key), t, first);
            Ok(())
        } else {
            self.emit(vi, Some(key), act, child, clo, chi, first)
        }
    }

    fn batch(&mut self, vi: usize, first: &mut bool) -> Result<(), DeadLetterReason> {
        let t = self.tape[vi];
        if t.kind != Kind::Array {
            return Err(DeadLetterReason::BatchNotArray);
        }
        self.sep(first);
        self.out.extend_from_slice(b"\"batch\":[");
        let saved_active = self.w.active.clone();
        let saved_values = self.active_values;
        let mut i = vi + 1;
        let mut n = 0;
        while i < t.next as usize {
            if self.tape[i].kind != Kind::Object {
                return Err(DeadLetterReason::BatchElementNotObject { index: n });
            }
            if n > 0 {
                self.out.push(b',');
            }
            let plen = self.path.len();
            if T::ON {
                self.path.push_str(&format!("[{n}]"));
            }
            let start = self.out.len() as u32;
            let first = self.w.placed.call_members.len() as u32;
            self.w.call_root = i;
            self.event(i, None)?;
            self.w.placed.calls.push(PlacedCall {
                start,
                end: self.out.len() as u32,
                first,
                len: self.w.placed.call_members.len() as u32 - first,
            });
            self.path.truncate(plen);
            i = self.tape[i].next as usize;
            n += 1;
        }
        self.w.call_root = usize::MAX;
        self.out.push(b']');
        self.w.active = saved_active;
        self.active_values = saved_values;
        Ok(())
    }

    fn array(
        &mut self,
        idx: usize,
        lo: usize,
        hi: usize,
        inh: &Inherit,
    ) -> Result<(), DeadLetterReason> {
        let end = self.tape[idx].next as usize;
        self.out.push(b'[');
        let mut first = true;
        let mut i = idx + 1;
        let mut n = 0usize;
        while i < end {
            let next = self.tape[i].next as usize;
            let plen = self.path.len();
            if T::ON {
                self.path.push_str(&format!("[{n}]"));
            }
            let clo = self.w.states.len();
            self.step_index(lo, hi);
            let chi = self.w.states.len();
            let container = matches!(self.tape[i].kind, Kind::Object | Kind::Array);
            let mut child = *inh;
            let act = self.decide(None, &mut child, clo, chi, container);
            self.emit(i, None, act, &child, clo, chi, &mut first)?;
            self.w.states.truncate(clo);
            if T::ON {
                self.path.truncate(plen);
            }
            i = next;
            n += 1;
        }
        self.out.push(b']');
        Ok(())
    }

    /// Writes one member (with its key) or array element, as decided.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        vi: usize,
        key: Option<(&[u8], usize)>,
        act: Act,
        child: &Inherit,
        clo: usize,
        chi: usize,
        first: &mut bool,
    ) -> Result<(), DeadLetterReason> {
        match act {
            Act::Drop(r) => {
                self.w.counts[r as usize] += 1;
                if T::ON {
                    self.record(None, "drop", r, None);
                }
            }
            Act::AllowDrop(g) => {
                let group = &self.c.groups[g as usize];
                let rule = group
                    .rules
                    .iter()
                    .copied()
                    .find(|&r| self.active(r))
                    .unwrap_or(group.rules[0]);
                self.w.counts[rule as usize] += 1;
                if T::ON {
                    let scope = if group.scope.is_empty() {
                        "the event".to_string()
                    } else {
                        format!("`{}`", group.scope)
                    };
                    self.record(
                        None,
                        "drop (not allowed)",
                        rule,
                        Some(format!("no allow rule selects it inside {scope}")),
                    );
                }
            }
            Act::Hash(r) => self.hash_member(vi, key, r, first, None)?,
            Act::Redact(r) => {
                self.sep(first);
                if let Some((raw, _)) = key {
                    self.write_key(raw);
                }
                let rule = &self.c.rules[r as usize];
                self.out.push(b'"');
                let text = rule.replacement.join(&rule.id);
                json::escape_into(&text, self.out);
                self.out.push(b'"');
                self.w.counts[r as usize] += 1;
                if T::ON {
                    self.record(None, "redact", r, Some("whole value".into()));
                }
            }
            Act::Pass => {
                let t = self.tape[vi];
                match t.kind {
                    Kind::Object | Kind::Array if self.untouched(clo, chi, child) => {
                        self.sep(first);
                        if let Some((raw, _)) = key {
                            self.write_key(raw);
                        }
                        self.verbatim(vi)?;
                    }
                    Kind::Object => {
                        self.sep(first);
                        if let Some((raw, _)) = key {
                            self.write_key(raw);
                        }
                        self.object(vi, clo, chi, child, None)?;
                    }
                    Kind::Array => {
                        self.sep(first);
                        if let Some((raw, _)) = key {
                            self.write_key(raw);
                        }
                        self.array(vi, clo, chi, child)?;
                    }
                    Kind::String if !self.unread(child) => {
                        match self.scan(t, self.reading(child)) {
                            StrAct::Plain => self.copy(key, t, first),
                            StrAct::Drop(r) => {
                                self.w.counts[r as usize] += 1;
                                if T::ON {
                                    let note = self.found_note();
                                    self.record(None, "drop", r, Some(note));
                                }
                            }
                            StrAct::Hash(r) => {
                                let note = T::ON.then(|| self.found_note());
                                self.hash_member(vi, key, r, first, note)?;
                            }
                            StrAct::Rewritten => {
                                self.sep(first);
                                if let Some((raw, _)) = key {
                                    self.write_key(raw);
                                }
                                self.out.push(b'"');
                                self.out.extend_from_slice(&self.w.strout);
                                self.out.push(b'"');
                            }
                        }
                    }
                    _ => self.copy(key, t, first),
                }
            }
        }
        Ok(())
    }

    /// The values rules (bits) that read a string here: in scope, active
    /// for this event, and, for rules with `within_fields`, under one.
    #[inline]
    fn reading(&self, inh: &Inherit) -> u64 {
        inh.values & self.active_values & (!self.c.values_within | inh.context)
    }

    /// Whether no values rule reads a string here: kept, or none reading.
    #[inline]
    fn unread(&self, inh: &Inherit) -> bool {
        inh.kept || self.reading(inh) == 0
    }

    /// Whether nothing can act anywhere inside a container whose states
    /// are `states[clo..chi]`: no path goes on below it, no allow filter is
    /// open, no values rule scans its strings, and no rule names keys
    /// wherever they are. Only then, and for compact input, is the
    /// container copied whole ([`Walker::verbatim`]).
    #[inline]
    fn untouched(&self, clo: usize, chi: usize, inh: &Inherit) -> bool {
        self.w.compact
            && !self.c.names_anywhere
            && clo == chi
            && inh.filtering == 0
            && (inh.kept || inh.values & self.active_values == 0)
    }

    /// Copies the container at `idx` as it came, after checking that no
    /// object inside it has the same key twice (a duplicate is a dead
    /// letter whether or not a rule looks at it). Only the objects the
    /// tokenizer marked as `may_repeat` are checked key by key (it found no
    /// two keys of the others equal), and none when the container is not
    /// marked.
    fn verbatim(&mut self, idx: usize) -> Result<(), DeadLetterReason> {
        let t = self.tape[idx];
        if t.may_repeat {
            for j in idx..t.next as usize {
                let k = self.tape[j];
                if k.kind == Kind::Object && k.may_repeat {
                    self.unique_keys(j)?;
                }
            }
        }
        self.out
            .extend_from_slice(&self.src.as_bytes()[t.start as usize..t.end as usize]);
        Ok(())
    }

    /// Checks the keys of the object at `idx` for duplicates: objects of
    /// up to 64 plain keys by the tokenizer's fingerprint of each
    /// ([`json::key_print`]) hashed to one of 64 bits, comparing bytes only
    /// where a bit is hit twice; others through the key classes (which
    /// decode escapes), as the walk does.
    fn unique_keys(&mut self, idx: usize) -> Result<(), DeadLetterReason> {
        const HASHED: usize = 64;
        let end = self.tape[idx].next as usize;
        let mut keys = std::mem::take(&mut self.w.keys);
        keys.clear();
        let mut plain = true;
        let mut i = idx + 1;
        while i < end {
            let k = self.tape[i];
            plain &= !k.escaped;
            keys.push((k.start, k.end));
            i = self.tape[i + 1].next as usize;
        }
        let b = self.src.as_bytes();
        let text = |&(s, e): &(u32, u32)| &b[s as usize..e as usize];
        let duplicate = if plain && keys.len() <= HASHED {
            let mut seen = 0u64;
            let mut prints = [0u64; HASHED];
            let mut dup = false;
            for (n, k) in keys.iter().enumerate() {
                let t = text(k);
                let print = json::key_print(b, k.0 as usize, k.1 as usize);
                let bit = 1u64 << (print >> 58);
                if seen & bit != 0
                    && prints[..n]
                        .iter()
                        .zip(&keys)
                        .any(|(&p, other)| p == print && text(other) == t)
                {
                    dup = true;
                    break;
                }
                seen |= bit;
                prints[n] = print;
            }
            dup
        } else {
            self.w.serial += 1;
            let serial = self.w.serial;
            let mut i = idx + 1;
            let mut seen = Ok(());
            while i < end && seen.is_ok() {
                let k = self.tape[i];
                let class = self.classify_key(k);
                seen = self.first_in_object(class, serial);
                i = self.tape[i + 1].next as usize;
            }
            seen.is_err()
        };
        self.w.keys = keys;
        if duplicate {
            return Err(DeadLetterReason::DuplicateKey);
        }
        Ok(())
    }

    /// Marks key class `class` as seen in the object numbered `serial`;
    /// a second sighting is a duplicate key. Sound only within one pass
    /// over an object's keys (a nested object takes a new serial).
    #[inline]
    fn first_in_object(&mut self, class: u32, serial: u64) -> Result<(), DeadLetterReason> {
        let stamp = &mut self.w.classes[class as usize].stamp;
        if *stamp == serial {
            return Err(DeadLetterReason::DuplicateKey);
        }
        *stamp = serial;
        Ok(())
    }

    #[inline(always)]
    fn copy(&mut self, key: Option<(&[u8], usize)>, t: Tok, first: &mut bool) {
        self.sep(first);
        let b = self.src.as_bytes();
        // The value's bytes, with a string's quotes.
        let quoted = usize::from(t.kind == Kind::String);
        let (vs, ve) = (t.start as usize - quoted, t.end as usize + quoted);
        if let Some((raw, _)) = key {
            // A key read from the input is a slice of it: at `ks`, between
            // its quotes. When its value follows its `":` directly (compact
            // input), `"key":value` is one span of the input, copied once.
            let ks = (raw.as_ptr() as usize).wrapping_sub(b.as_ptr() as usize);
            if ks >= 1 && ks + raw.len() <= b.len() && ks + raw.len() + 2 == vs {
                self.out.extend_from_slice(&b[ks - 1..ve]);
                return;
            }
            self.write_key(raw);
        }
        self.out.extend_from_slice(&b[vs..ve]);
    }

    fn found_note(&self) -> String {
        let mut names: Vec<&str> = self
            .w
            .found
            .iter()
            .map(|f| self.c.detectors[f.detector as usize].name.as_str())
            .collect();
        names.dedup();
        format!("detector {} matched", names.join(", "))
    }

    fn hash_member(
        &mut self,
        vi: usize,
        key: Option<(&[u8], usize)>,
        r: u16,
        first: &mut bool,
        note: Option<String>,
    ) -> Result<(), DeadLetterReason> {
        self.sep(first);
        let output = match key {
            Some((raw, keys)) => self.write_renamed(raw, r, keys)?,
            None => None,
        };
        let t = self.tape[vi];
        let hasher = &self.c.hashers[self.c.rules[r as usize].hasher];
        match t.kind {
            Kind::Null => self.out.extend_from_slice(b"null"),
            Kind::String => {
                let raw = &self.src[t.start as usize..t.end as usize];
                let mut decoded = std::mem::take(&mut self.w.strbuf);
                let mut norm = std::mem::take(&mut self.w.normbuf);
                let text: &str = if t.escaped {
                    unescape(raw, &mut decoded);
                    &decoded
                } else {
                    raw
                };
                let text = hasher.normalized(text, &mut norm);
                self.out.push(b'"');
                hasher.write(text.as_bytes(), self.out);
                self.out.push(b'"');
                self.w.strbuf = decoded;
                self.w.normbuf = norm;
            }
            Kind::Object | Kind::Array => {
                let mut canon = std::mem::take(&mut self.w.canon);
                canon.clear();
                canonical(self.src, self.tape, vi, &mut canon);
                self.out.push(b'"');
                hasher.write(&canon, self.out);
                self.out.push(b'"');
                self.w.canon = canon;
            }
            _ => {
                self.out.push(b'"');
                hasher.write(
                    &self.src.as_bytes()[t.start as usize..t.end as usize],
                    self.out,
                );
                self.out.push(b'"');
            }
        }
        self.w.counts[r as usize] += 1;
        if T::ON {
            let note = note.or_else(|| {
                matches!(t.kind, Kind::Object | Kind::Array)
                    .then(|| "canonical JSON of the whole value".to_string())
            });
            self.record(output, "hash", r, note);
        }
        Ok(())
    }

    /// Whether the string `t` is passed as it came by the values rules
    /// `mask` without running a detector. Most strings are plainly no card
    /// and no SSN: when every rule reading here looks only for those, a
    /// string without a long digit run is passed at once.
    #[inline]
    fn gated_out(&self, t: Tok, mask: u64) -> bool {
        if t.escaped {
            return false;
        }
        let c = self.c;
        let mut gate = u8::MAX;
        let mut bits = mask;
        while bits != 0 {
            let rule = &c.rules[c.values_rules[bits.trailing_zeros() as usize] as usize];
            gate = gate.min(rule.digit_gate);
            bits &= bits - 1;
        }
        gate != 0
            && !super::detect::may_run(self.src.as_bytes(), t.start as usize, t.end as usize, gate)
    }

    /// Runs the in-scope detectors over a string; on redaction the new
    /// content (escaped) is left in `w.strout`.
    fn scan(&mut self, t: Tok, mask: u64) -> StrAct {
        let c = self.c;
        if self.gated_out(t, mask) {
            return StrAct::Plain;
        }
        let raw = &self.src[t.start as usize..t.end as usize];
        let mut decoded = std::mem::take(&mut self.w.strbuf);
        let s: &str = if t.escaped {
            unescape(raw, &mut decoded);
            &decoded
        } else {
            raw
        };
        self.w.found.clear();
        let mut stats = super::detect::Stats::default();
        let mut ran = 0u64;
        let mut bits = mask;
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            let rule = &c.rules[c.values_rules[bit as usize] as usize];
            for &d in &rule.detectors {
                if (ran >> d) & 1 == 0 {
                    ran |= 1 << d;
                    c.detectors[d as usize].find(s, &mut stats, d, &mut self.w.found);
                }
            }
        }
        if self.w.found.is_empty() {
            self.w.strbuf = decoded;
            return StrAct::Plain;
        }
        // The strongest rule with a match decides; redactions merge.
        let mut best: Option<(u8, u16)> = None;
        let mut bits = mask;
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            let ri = c.values_rules[bit as usize];
            let rule = &c.rules[ri as usize];
            if self
                .w
                .found
                .iter()
                .any(|f| rule.detectors.contains(&f.detector))
                && better((rule.strength, ri), best)
            {
                best = Some((rule.strength, ri));
            }
        }
        let act = match best {
            Some((3, r)) => StrAct::Drop(r),
            Some((2, r)) => StrAct::Hash(r),
            _ => {
                self.redact_into(s, mask);
                StrAct::Rewritten
            }
        };
        self.w.strbuf = decoded;
        act
    }

    fn redact_into(&mut self, s: &str, mask: u64) {
        let c = self.c;
        let found = &mut self.w.found;
        found.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let out = &mut self.w.strout;
        out.clear();
        let mut at = 0usize;
        let mut notes: Vec<(u16, &str)> = Vec::new();
        for f in found.iter() {
            if f.start < at {
                continue;
            }
            // The first redact rule (file order) in scope that has this detector.
            let mut bits = mask;
            let mut rule = None;
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                let ri = c.values_rules[bit as usize];
                if c.rules[ri as usize].strength == 1
                    && c.rules[ri as usize].detectors.contains(&f.detector)
                {
                    rule = Some(ri);
                    break;
                }
            }
            let Some(ri) = rule else { continue };
            json::escape_into(&s[at..f.start], out);
            let name = c.detectors[f.detector as usize].name.as_str();
            json::escape_into(&c.rules[ri as usize].replacement.join(name), out);
            at = f.end;
            self.w.counts[ri as usize] += 1;
            if T::ON {
                notes.push((ri, name));
            }
        }
        json::escape_into(&s[at..], out);
        for (ri, name) in notes {
            self.record(None, "redact", ri, Some(format!("detector {name} matched")));
        }
    }
}
