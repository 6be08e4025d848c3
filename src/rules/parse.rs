//! YAML text -> [`RuleFile`], collecting every problem with its position.

use super::yaml::{
    self, entries, is_null, items, kind, scalar_str, scalar_text, suggest, Node, Reporter,
};
use super::*;
use saphyr::{Scalar, YamlData};
use std::collections::HashMap;

const TOP_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "keys",
    "hash",
    "message",
    "destination",
    "rules",
];
const KEYS_KEYS: &[&str] = &["match"];
const HASH_KEYS: &[&str] = &[
    "algorithm",
    "key",
    "encoding",
    "truncate",
    "rename",
    "normalize",
];
const MESSAGE_KEYS: &[&str] = &["key", "headers"];
const DESTINATION_KEYS: &[&str] = &[
    "profile",
    "max_call_bytes",
    "max_batch_bytes",
    "require_identity",
    "types",
    "max_event_name_bytes",
    "max_traits",
    "max_trait_name_bytes",
    "max_trait_value_bytes",
    "max_id_chars",
];
const RULE_KEYS: &[&str] = &[
    "id",
    "description",
    "action",
    "fields",
    "paths",
    "values",
    "except_fields",
    "within_fields",
    "scope",
    "when",
    "normalize",
    "rename",
    "truncate",
    "encoding",
    "replacement",
];
const ACTIONS: &[&str] = &["drop", "hash", "redact", "allow", "keep"];

/// Every key the language knows, by section: the JSON Schema printed by
/// `schema` is tested against these so the two cannot drift apart.
pub const KNOWN_KEYS: &[(&str, &[&str])] = &[
    ("", TOP_KEYS),
    ("keys", KEYS_KEYS),
    ("hash", HASH_KEYS),
    ("message", MESSAGE_KEYS),
    ("destination", DESTINATION_KEYS),
    ("rules", RULE_KEYS),
];

pub(super) fn parse(file: &str, text: &str) -> Result<(RuleFile, Diagnostics), Diagnostics> {
    let root = yaml::load(file, text).map_err(|d| Diagnostics(vec![d]))?;
    let mut r = Reporter::new(file);
    let mut out = RuleFile {
        file: file.to_string(),
        content_hash: content_hash(text.as_bytes()),
        name: String::new(),
        description: None,
        keys: KeyMatch::default(),
        hash: HashSettings::default(),
        message: MessageSettings::default(),
        destination: None,
        rules: Vec::new(),
    };
    let Some(top) = entries(&root) else {
        r.error(
            &root,
            None,
            format!(
                "a rule file is a mapping with `version`, `name` and `rules`, but this file holds {}",
                kind(&root)
            ),
        );
        return Err(finish(r));
    };
    let get = |name: &str| top.iter().find(|(k, _, _)| *k == name).map(|(_, _, v)| *v);
    unknown_keys(&mut r, &top, TOP_KEYS, None, "at the top of a rule file");

    match get("version") {
        None => r.error(
            &root,
            None,
            "`version` is missing: add `version: 1` at the top",
        ),
        Some(v) => match &v.data {
            YamlData::Value(Scalar::Integer(1)) => {}
            _ => r.error(
                v,
                None,
                format!(
                    "`version` must be 1 (the only version of the rule language), not `{}`",
                    scalar_text(v).unwrap_or_else(|| kind(v).into())
                ),
            ),
        },
    }
    match get("name") {
        None => r.error(&root, None, "`name` is missing: add `name: <rule-set-name>`; it shows up in metrics and lineage headers"),
        Some(v) => match scalar_str(v) {
            Some(n) if !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
                out.name = n.to_string()
            }
            _ => r.error(v, None, "`name` must be text of letters, digits, `-`, `_` or `.` (it becomes a metric label)"),
        },
    }
    if let Some(v) = get("description") {
        out.description = string(&mut r, v, None, "description");
    }
    if let Some(v) = get("keys") {
        if let Some(e) = mapping(&mut r, v, None, "keys") {
            unknown_keys(&mut r, &e, KEYS_KEYS, None, "in `keys`");
            if let Some((_, _, m)) = e.iter().find(|(k, _, _)| *k == "match") {
                match scalar_str(m).and_then(KeyMatch::from_name) {
                    Some(mode) => out.keys = mode,
                    None => r.error(
                        m,
                        None,
                        format!("`keys.match` must be one of {}", list(KeyMatch::NAMES)),
                    ),
                }
            }
        }
    }
    if let Some(v) = get("hash") {
        parse_hash(&mut r, v, &mut out.hash);
    }
    if let Some(v) = get("message") {
        parse_message(&mut r, v, &mut out.message);
    }
    if let Some(v) = get("destination") {
        out.destination = parse_destination(&mut r, v);
    }
    match get("rules") {
        None => r.error(
            &root,
            None,
            "`rules` is missing: add a list of rules (it may be empty: `rules: []`)",
        ),
        Some(v) => match items(v) {
            None if is_null(v) => {}
            None => r.error(
                v,
                None,
                format!("`rules` must be a list of rules, not {}", kind(v)),
            ),
            Some(list) => {
                let mut seen: HashMap<String, usize> = HashMap::new();
                for node in list {
                    let id = entries(node).and_then(|e| {
                        e.iter()
                            .find(|(k, _, _)| *k == "id")
                            .and_then(|(_, _, v)| scalar_text(v))
                    });
                    if let Some(id) = id {
                        if let Some(first) = seen.get(&id) {
                            r.error(
                                node,
                                Some(&id),
                                format!("the id `{id}` is already used by the rule on line {first}; every rule needs its own id"),
                            );
                        } else {
                            seen.insert(id, yaml::pos(node).0);
                        }
                    }
                    if let Some(rule) = parse_rule(&mut r, node, out.keys) {
                        out.rules.push(rule);
                    }
                }
            }
        },
    }
    check_rules(&mut r, &out, &root);
    if r.has_errors() {
        return Err(finish(r));
    }
    Ok((out, finish(r)))
}

fn finish(r: Reporter) -> Diagnostics {
    let mut d = Diagnostics(r.diags);
    d.sort();
    d
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_keys(
    r: &mut Reporter,
    e: &[(&str, &Node, &Node)],
    known: &[&str],
    rule: Option<&str>,
    place: &str,
) {
    for (k, key_node, _) in e {
        if !known.contains(k) {
            r.error(
                key_node,
                rule,
                format!(
                    "unknown key `{k}` {place}{}; the keys here are {}",
                    suggest(k, known),
                    list(known)
                ),
            );
        }
    }
}

fn mapping<'n, 'a>(
    r: &mut Reporter,
    v: &'n Node<'a>,
    rule: Option<&str>,
    what: &str,
) -> Option<Vec<(&'n str, &'n Node<'a>, &'n Node<'a>)>> {
    let e = entries(v);
    if e.is_none() {
        r.error(
            v,
            rule,
            format!("`{what}` must be a mapping (key: value), not {}", kind(v)),
        );
    }
    e
}

fn string(r: &mut Reporter, v: &Node, rule: Option<&str>, what: &str) -> Option<String> {
    match scalar_str(v) {
        Some(s) => Some(s.to_string()),
        None => {
            r.error(v, rule, format!("`{what}` must be text, not {}", kind(v)));
            None
        }
    }
}

/// A string or a list of strings (`fields: ssn` is read as `fields: [ssn]`).
fn strings<'n, 'a>(
    r: &mut Reporter,
    v: &'n Node<'a>,
    rule: Option<&str>,
    what: &str,
) -> Vec<(String, &'n Node<'a>)> {
    if let Some(s) = scalar_str(v) {
        return vec![(s.to_string(), v)];
    }
    match items(v) {
        Some(list) => {
            let mut out = Vec::new();
            for item in list {
                match scalar_text(item) {
                    Some(s)
                        if matches!(
                            item.data,
                            YamlData::Value(Scalar::String(_)) | YamlData::Representation(..)
                        ) =>
                    {
                        out.push((s, item))
                    }
                    _ => r.error(
                        item,
                        rule,
                        format!("each entry of `{what}` must be text, not {}", kind(item)),
                    ),
                }
            }
            out
        }
        None => {
            r.error(
                v,
                rule,
                format!("`{what}` must be text or a list of text, not {}", kind(v)),
            );
            Vec::new()
        }
    }
}

fn parse_encoding(r: &mut Reporter, v: &Node, rule: Option<&str>) -> Option<Encoding> {
    match scalar_str(v) {
        Some("hex") => Some(Encoding::Hex),
        Some("base64url") => Some(Encoding::Base64Url),
        _ => {
            r.error(v, rule, "`encoding` must be `hex` or `base64url`");
            None
        }
    }
}

fn parse_truncate(r: &mut Reporter, v: &Node, rule: Option<&str>) -> Option<usize> {
    match &v.data {
        YamlData::Value(Scalar::Integer(n)) if (1..=64).contains(n) => Some(*n as usize),
        _ => {
            r.error(v, rule, "`truncate` must be a whole number of characters from 1 to 64 (leave it out to keep the whole digest)");
            None
        }
    }
}

fn parse_rename(r: &mut Reporter, v: &Node, rule: Option<&str>) -> Option<String> {
    let s = string(r, v, rule, "rename")?;
    if s.is_empty() {
        r.error(
            v,
            rule,
            "`rename` cannot be empty; use \"{key}\" to keep the key's name",
        );
        return None;
    }
    let stripped = s.replace("{key}", "");
    if stripped.contains(['{', '}']) {
        r.error(
            v,
            rule,
            format!("`rename: {s}`: the only placeholder is `{{key}}` (the input key's name)"),
        );
        return None;
    }
    Some(s)
}

fn parse_normalize(r: &mut Reporter, v: &Node, rule: Option<&str>) -> Vec<Normalize> {
    strings(r, v, rule, "normalize")
        .into_iter()
        .filter_map(|(s, node)| match s.as_str() {
            "trim" => Some(Normalize::Trim),
            "lowercase" => Some(Normalize::Lowercase),
            "digits" => Some(Normalize::Digits),
            "remove-whitespace" => Some(Normalize::RemoveWhitespace),
            other => {
                r.error(
                    node,
                    rule,
                    format!(
                        "unknown normalize step `{other}`{}; the steps are {}",
                        suggest(other, Normalize::NAMES),
                        list(Normalize::NAMES)
                    ),
                );
                None
            }
        })
        .collect()
}

fn parse_hash(r: &mut Reporter, v: &Node, out: &mut HashSettings) {
    let Some(e) = mapping(r, v, None, "hash") else {
        return;
    };
    unknown_keys(r, &e, HASH_KEYS, None, "in `hash`");
    for (k, _, val) in &e {
        match *k {
            "algorithm" => match scalar_str(val) {
                Some("hmac-sha256") => out.algorithm = HashAlgorithm::HmacSha256,
                Some("sha256") => out.algorithm = HashAlgorithm::Sha256,
                _ => r.error(val, None, "`hash.algorithm` must be `hmac-sha256` (keyed, the default) or `sha256` (unkeyed)"),
            },
            "key" => out.key = parse_key_source(r, val),
            "encoding" => {
                if let Some(enc) = parse_encoding(r, val, None) {
                    out.encoding = enc
                }
            }
            "truncate" => out.truncate = parse_truncate(r, val, None),
            "rename" => {
                if let Some(s) = parse_rename(r, val, None) {
                    out.rename = s
                }
            }
            "normalize" => out.normalize = parse_normalize(r, val, None),
            _ => {}
        }
    }
    if out.algorithm == HashAlgorithm::Sha256 {
        let why = "`algorithm: sha256` is unkeyed: anyone can recover a phone number, IP address or \
                   zip code from its digest by hashing every candidate; prefer `hmac-sha256` with a key";
        r.warn(v, None, why);
        if out.key.is_some() {
            r.warn(v, None, "`hash.key` is ignored with `algorithm: sha256`");
        }
    }
}

fn parse_key_source(r: &mut Reporter, v: &Node) -> Option<KeySource> {
    const HINT: &str = "`hash.key` names where the key comes from, never the key itself: \
                        `{ env: SANITIZER_HASH_KEY }` or `{ file: /var/run/secrets/hash-key }`";
    let Some(e) = entries(v) else {
        r.error(v, None, HINT);
        return None;
    };
    if e.len() != 1 {
        r.error(v, None, HINT);
        return None;
    }
    let (k, key_node, val) = e[0];
    let Some(s) = scalar_str(val).filter(|s| !s.is_empty()) else {
        r.error(val, None, HINT);
        return None;
    };
    match k {
        "env" => Some(KeySource::Env(s.to_string())),
        "file" => Some(KeySource::File(s.into())),
        _ => {
            r.error(key_node, None, format!("unknown key source `{k}`; {HINT}"));
            None
        }
    }
}

fn parse_message(r: &mut Reporter, v: &Node, out: &mut MessageSettings) {
    let Some(e) = mapping(r, v, None, "message") else {
        return;
    };
    unknown_keys(r, &e, MESSAGE_KEYS, None, "in `message`");
    for (k, _, val) in &e {
        match *k {
            "key" => match scalar_str(val) {
                Some("keep") => out.key = MessageKeyAction::Keep,
                Some("hash") => out.key = MessageKeyAction::Hash,
                Some("drop") => out.key = MessageKeyAction::Drop,
                _ => r.error(val, None, "`message.key` must be `keep`, `hash` or `drop`"),
            },
            "headers" => {
                let Some(h) = mapping(r, val, None, "message.headers") else {
                    continue;
                };
                if h.len() != 1 || !matches!(h[0].0, "drop" | "allow") {
                    r.error(val, None, "`message.headers` takes exactly one of `{ drop: [names] }` or `{ allow: [names] }`");
                    continue;
                }
                let names: Vec<String> = strings(r, h[0].2, None, "message.headers")
                    .into_iter()
                    .map(|(s, _)| s.to_ascii_lowercase())
                    .collect();
                out.headers = if h[0].0 == "drop" {
                    HeaderPolicy::Drop(names)
                } else {
                    HeaderPolicy::Allow(names)
                };
            }
            _ => {}
        }
    }
}

fn parse_destination(r: &mut Reporter, v: &Node) -> Option<Destination> {
    let e = mapping(r, v, None, "destination")?;
    unknown_keys(r, &e, DESTINATION_KEYS, None, "in `destination`");
    let get = |name: &str| e.iter().find(|(k, _, _)| *k == name).map(|(_, _, v)| *v);
    let mut d = match get("profile") {
        None => Destination::customerio(),
        Some(p) => match scalar_str(p).and_then(Destination::profile) {
            Some(d) => d,
            None => {
                r.error(
                    p,
                    None,
                    format!(
                        "`destination.profile` must be one of {}",
                        list(Destination::PROFILES)
                    ),
                );
                // Go on with the defaults, to report every other problem too.
                Destination::customerio()
            }
        },
    };
    for (k, _, val) in &e {
        let limit = |r: &mut Reporter| match &val.data {
            YamlData::Value(Scalar::Integer(n)) if *n >= 1 => Some(Some(*n as usize)),
            _ if scalar_str(val) == Some("off") => Some(None),
            _ => {
                r.error(
                    val,
                    None,
                    format!("`destination.{k}` must be a whole number above 0, or `off`"),
                );
                None
            }
        };
        let slot = match *k {
            "max_call_bytes" => &mut d.max_call_bytes,
            "max_batch_bytes" => &mut d.max_batch_bytes,
            "max_event_name_bytes" => &mut d.max_event_name_bytes,
            "max_traits" => &mut d.max_traits,
            "max_trait_name_bytes" => &mut d.max_trait_name_bytes,
            "max_trait_value_bytes" => &mut d.max_trait_value_bytes,
            "max_id_chars" => &mut d.max_id_chars,
            "require_identity" => {
                match &val.data {
                    YamlData::Value(Scalar::Boolean(b)) => d.require_identity = *b,
                    _ => r.error(
                        val,
                        None,
                        "`destination.require_identity` must be `true` or `false`",
                    ),
                }
                continue;
            }
            "types" => {
                if scalar_str(val) == Some("off") {
                    d.types = None;
                } else {
                    let names: Vec<String> = strings(r, val, None, "destination.types")
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect();
                    if names.is_empty() {
                        r.error(val, None, "`destination.types` lists the accepted values of `type` (or is `off`); an empty list would reject everything");
                    }
                    d.types = Some(names);
                }
                continue;
            }
            _ => continue,
        };
        if let Some(l) = limit(r) {
            *slot = l;
        }
    }
    if let (Some(call), Some(batch)) = (d.max_call_bytes, d.max_batch_bytes) {
        if batch < call {
            r.error(
                get("max_batch_bytes").unwrap_or(v),
                None,
                format!("`destination.max_batch_bytes` ({batch}) is below `max_call_bytes` ({call}): a batch of one call could not be sent"),
            );
        }
    }
    Some(d)
}

fn parse_rule(r: &mut Reporter, node: &Node, mode: KeyMatch) -> Option<Rule> {
    let Some(e) = entries(node) else {
        r.error(
            node,
            None,
            format!(
                "each rule must be a mapping with `id` and `action`, not {}",
                kind(node)
            ),
        );
        return None;
    };
    let (line, column) = yaml::pos(node);
    let get = |name: &str| e.iter().find(|(k, _, _)| *k == name).map(|(_, _, v)| *v);
    let id = match get("id") {
        None => {
            r.error(node, None, "this rule has no `id`: add `id: <a-short-name>` (lowercase letters, digits and `-`)");
            format!("<rule on line {line}>")
        }
        Some(v) => match scalar_text(v) {
            Some(s)
                if !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
            {
                s
            }
            other => {
                let shown = other.unwrap_or_else(|| kind(v).into());
                r.error(v, None, format!("rule id `{shown}` must use only lowercase letters, digits and `-` (for example `hash-contact`)"));
                shown
            }
        },
    };
    let rid = Some(id.as_str());
    unknown_keys(r, &e, RULE_KEYS, rid, "in a rule");
    let description = get("description").and_then(|v| string(r, v, rid, "description"));

    let action_name = match get("action") {
        None => {
            r.error(
                node,
                rid,
                format!("`action` is missing: add one of {}", list(ACTIONS)),
            );
            None
        }
        Some(v) => match scalar_str(v) {
            Some(a) if ACTIONS.contains(&a) => Some(a.to_string()),
            other => {
                let shown = other.map(str::to_string).unwrap_or_else(|| kind(v).into());
                r.error(
                    v,
                    rid,
                    format!(
                        "unknown action `{shown}`{}; the actions are {}",
                        suggest(&shown, ACTIONS),
                        list(ACTIONS)
                    ),
                );
                None
            }
        },
    };

    // Options that belong to one action only.
    let hash_only = ["normalize", "rename", "truncate", "encoding"];
    for (k, key_node, _) in &e {
        if hash_only.contains(k) && action_name.as_deref().is_some_and(|a| a != "hash") {
            r.error(
                key_node,
                rid,
                format!(
                    "`{k}` is a hash option, but this rule's action is `{}`",
                    action_name.as_deref().unwrap_or("")
                ),
            );
        }
        if *k == "replacement" && action_name.as_deref().is_some_and(|a| a != "redact") {
            r.error(
                key_node,
                rid,
                format!(
                    "`replacement` belongs to `action: redact`, but this rule's action is `{}`",
                    action_name.as_deref().unwrap_or("")
                ),
            );
        }
    }

    let names = |r: &mut Reporter, what: &str| {
        get(what)
            .map(|v| parse_field_names(r, v, rid, what, mode))
            .unwrap_or_default()
    };
    let fields = names(r, "fields");
    let except_fields = names(r, "except_fields");
    let within_fields = names(r, "within_fields");
    for what in ["except_fields", "within_fields"] {
        if let (Some(n), None) = (get(what), get("values")) {
            r.error(
                n,
                rid,
                format!("`{what}` says where `values` detectors read; this rule has no `values`"),
            );
        }
    }
    let paths = get("paths")
        .map(|v| parse_paths(r, v, rid, "paths", mode))
        .unwrap_or_default();
    let scope = get("scope")
        .map(|v| parse_paths(r, v, rid, "scope", mode))
        .unwrap_or_default();
    let values = get("values")
        .map(|v| parse_values(r, v, rid))
        .unwrap_or_default();
    let when = get("when")
        .map(|v| parse_when(r, v, rid, mode))
        .unwrap_or_default();

    let has_structural = get("fields").is_some() || get("paths").is_some();
    if get("fields").is_none() && get("paths").is_none() && get("values").is_none() {
        r.error(
            node,
            rid,
            "this rule selects nothing: add `fields`, `paths` or `values`",
        );
    }

    let action = match action_name.as_deref() {
        Some("drop") => Some(Action::Drop),
        Some("hash") => {
            let normalize = get("normalize").map(|v| parse_normalize(r, v, rid));
            let rename = get("rename").and_then(|v| parse_rename(r, v, rid));
            let truncate = get("truncate").and_then(|v| parse_truncate(r, v, rid));
            let encoding = get("encoding").and_then(|v| parse_encoding(r, v, rid));
            Some(Action::Hash(HashOverrides {
                normalize,
                rename,
                truncate,
                encoding,
            }))
        }
        Some("redact") => {
            let default = if has_structural {
                "[REDACTED]"
            } else {
                "[REDACTED:{detector}]"
            };
            let replacement = get("replacement")
                .and_then(|v| string(r, v, rid, "replacement"))
                .unwrap_or_else(|| default.to_string());
            Some(Action::Redact { replacement })
        }
        Some("allow") => Some(Action::Allow),
        Some("keep") => Some(Action::Keep),
        _ => None,
    };
    if let (Some(a), Some(v)) = (&action, get("values")) {
        if matches!(a, Action::Allow | Action::Keep) {
            r.error(v, rid, format!("`values` detectors find text to remove; they work with `drop`, `hash` or `redact`, not `{}`", a.name()));
        }
        if has_structural {
            r.error(v, rid, "a rule selects by `values` or by `fields`/`paths`, not both: split it into two rules (use `scope` to limit where detectors run)");
        }
    }
    Some(Rule {
        id,
        description,
        line,
        column,
        action: action?,
        fields,
        paths,
        values,
        except_fields,
        within_fields,
        scope,
        when,
    })
}

/// Key names (`fields`, `except_fields`, `within_fields`): names in
/// canonical form, or globs with one `*`.
fn parse_field_names(
    r: &mut Reporter,
    v: &Node,
    rid: Option<&str>,
    what: &str,
    mode: KeyMatch,
) -> Vec<FieldName> {
    strings(r, v, rid, what)
                .into_iter()
                .filter_map(|(s, n)| {
                    if Glob::is_glob(&s) {
                        if s.contains("**") {
                            r.error(n, rid, format!("`{s}`: field globs use a single `*`; for any depth use `paths: [\"**.name\"]`"));
                            return None;
                        }
                        return Some(FieldName::Glob(Glob::new(&s, mode)));
                    }
                    let canon = mode.canonical(&s);
                    if canon.is_empty() {
                        r.error(n, rid, format!("`{s}` is not a key name"));
                        return None;
                    }
                    if s.contains(['.', '[']) {
                        r.warn(n, rid, format!("`{s}` in `{what}` matches a key spelled exactly so; to name a location use `paths: [{s}]`"));
                    }
                    Some(FieldName::Name(canon.into_owned()))
                })
                .collect()
}

fn parse_paths(
    r: &mut Reporter,
    v: &Node,
    rule: Option<&str>,
    what: &str,
    mode: KeyMatch,
) -> Vec<Path> {
    strings(r, v, rule, what)
        .into_iter()
        .filter_map(|(s, n)| match Path::parse(&s, mode) {
            Ok(p) => Some(p),
            Err(e) => {
                r.error(
                    n,
                    rule,
                    format!("`{what}` entry `{s}` is not a valid path: {e}"),
                );
                None
            }
        })
        .collect()
}

fn parse_values(r: &mut Reporter, v: &Node, rule: Option<&str>) -> Vec<DetectorSpec> {
    let list: Vec<&Node> = match items(v) {
        Some(l) => l.iter().collect(),
        None => vec![v],
    };
    let names: Vec<&str> = Builtin::ALL.iter().map(|(n, _)| *n).collect();
    let mut out = Vec::new();
    for item in list {
        if let Some(name) = scalar_str(item) {
            match Builtin::ALL.iter().find(|(n, _)| *n == name) {
                Some((_, b)) => out.push(DetectorSpec::Builtin(*b)),
                None => r.error(
                    item,
                    rule,
                    format!(
                        "unknown detector `{name}`{}; the built-in detectors are {}, or write a custom one as `{{ name: my-detector, regex: \"...\" }}`",
                        suggest(name, &names),
                        list_names(&names)
                    ),
                ),
            }
            continue;
        }
        let Some(e) = entries(item) else {
            r.error(
                item,
                rule,
                format!(
                    "each detector is a built-in name or `{{ name, regex }}`, not {}",
                    kind(item)
                ),
            );
            continue;
        };
        unknown_keys(r, &e, &["name", "regex"], rule, "in a custom detector");
        let name = e
            .iter()
            .find(|(k, _, _)| *k == "name")
            .and_then(|(_, _, v)| scalar_str(v));
        let regex = e.iter().find(|(k, _, _)| *k == "regex").map(|(_, _, v)| *v);
        match (name, regex) {
            (Some(name), Some(rx)) => {
                let Some(pattern) = scalar_str(rx) else {
                    r.error(rx, rule, "`regex` must be text");
                    continue;
                };
                if names.contains(&name) {
                    r.error(
                        item,
                        rule,
                        format!("a custom detector cannot take the built-in name `{name}`"),
                    );
                    continue;
                }
                match regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                {
                    Ok(_) => out.push(DetectorSpec::Custom {
                        name: name.to_string(),
                        regex: pattern.to_string(),
                    }),
                    Err(e) => r.error(
                        rx,
                        rule,
                        format!(
                            "the regex of detector `{name}` is invalid: {}",
                            one_line(&e.to_string())
                        ),
                    ),
                }
            }
            _ => r.error(
                item,
                rule,
                "a custom detector needs both `name` and `regex`",
            ),
        }
    }
    out
}

fn list_names(names: &[&str]) -> String {
    list(names)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_when(r: &mut Reporter, v: &Node, rule: Option<&str>, mode: KeyMatch) -> Vec<Condition> {
    let Some(e) = mapping(r, v, rule, "when") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, key_node, val) in e {
        let path = match Path::parse(k, mode) {
            Ok(p) if p.is_concrete() => p,
            Ok(_) => {
                r.error(
                    key_node,
                    rule,
                    format!("`when` path `{k}` must name one location: no `*`, `**` or `[*]`"),
                );
                continue;
            }
            Err(err) => {
                r.error(
                    key_node,
                    rule,
                    format!("`when` path `{k}` is not a valid path: {err}"),
                );
                continue;
            }
        };
        let test = if let Some(inner) = entries(val) {
            if inner.len() != 1 {
                r.error(val, rule, "a `when` test is a value, a list of values, `{ regex: ... }` or `{ exists: true|false }`");
                continue;
            }
            let (op, _, arg) = inner[0];
            match op {
                "regex" => match scalar_str(arg) {
                    Some(p) => match regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
                        Ok(_) => ConditionTest::Regex(p.to_string()),
                        Err(err) => {
                            r.error(
                                arg,
                                rule,
                                format!(
                                    "invalid regex in `when.{k}`: {}",
                                    one_line(&err.to_string())
                                ),
                            );
                            continue;
                        }
                    },
                    None => {
                        r.error(arg, rule, "`regex` must be text");
                        continue;
                    }
                },
                "exists" => match &arg.data {
                    YamlData::Value(Scalar::Boolean(b)) => ConditionTest::Exists(*b),
                    _ => {
                        r.error(arg, rule, "`exists` must be true or false");
                        continue;
                    }
                },
                other => {
                    r.error(val, rule, format!("unknown `when` test `{other}`; use a value, a list of values, `regex` or `exists`"));
                    continue;
                }
            }
        } else if let Some(list) = items(val) {
            let lits: Vec<Literal> = list.iter().filter_map(|n| literal(r, n, rule)).collect();
            ConditionTest::OneOf(lits)
        } else {
            match literal(r, val, rule) {
                Some(l) => ConditionTest::OneOf(vec![l]),
                None => continue,
            }
        };
        out.push(Condition { path, test });
    }
    out
}

fn literal(r: &mut Reporter, v: &Node, rule: Option<&str>) -> Option<Literal> {
    Some(match &v.data {
        YamlData::Value(Scalar::Null) => Literal::Null,
        YamlData::Value(Scalar::Boolean(b)) => Literal::Bool(*b),
        YamlData::Value(Scalar::Integer(i)) => Literal::Number(*i as f64),
        YamlData::Value(Scalar::FloatingPoint(f)) => Literal::Number(**f),
        YamlData::Value(Scalar::String(s)) | YamlData::Representation(s, _, _) => {
            Literal::String(s.to_string())
        }
        _ => {
            r.error(
                v,
                rule,
                format!(
                    "a `when` value must be text, a number, true/false or null, not {}",
                    kind(v)
                ),
            );
            return None;
        }
    })
}

/// The fields of a Segment-spec event (the common fields and each call's
/// own), and of its `context`; below `traits`, `properties`,
/// `integrations` and `context`'s objects anything may occur.
const SEGMENT_FIELDS: &[&str] = &[
    "type",
    "messageId",
    "timestamp",
    "sentAt",
    "receivedAt",
    "originalTimestamp",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "event",
    "name",
    "category",
    "properties",
    "traits",
    "context",
    "integrations",
    "channel",
    "version",
    "batch",
    "writeKey",
    "projectId",
];
const SEGMENT_CONTEXT_FIELDS: &[&str] = &[
    "active",
    "app",
    "campaign",
    "device",
    "ip",
    "library",
    "locale",
    "location",
    "network",
    "os",
    "page",
    "referrer",
    "screen",
    "groupId",
    "timezone",
    "traits",
    "userAgent",
    "userAgentData",
    "channel",
    "instance_id",
    "protocols",
    "personas",
];

/// When `path` names a field no Segment event has (at the top, or in
/// `context`), the warning, with the closest real field.
fn unknown_segment_field(path: &Path, mode: KeyMatch) -> Option<String> {
    let key = |i: usize| match path.segments.get(i) {
        Some(Segment::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    let canonical = |name: &str| match Path::parse(name, mode).ok()?.segments.first() {
        Some(Segment::Key(k)) => Some(k.clone()),
        _ => None,
    };
    let (known, at) = match (key(0), key(1)) {
        (Some(first), Some(_)) if Some(first.to_string()) == canonical("context") => {
            (SEGMENT_CONTEXT_FIELDS, 1)
        }
        _ => (SEGMENT_FIELDS, 0),
    };
    let written = key(at)?;
    if known
        .iter()
        .any(|f| canonical(f).as_deref() == Some(written))
    {
        return None;
    }
    // The hint compares the path as written with the real names.
    let prefix = if at == 1 { "context." } else { "" };
    let written_text = path
        .text
        .split('.')
        .take(at + 1)
        .collect::<Vec<_>>()
        .join(".");
    let names: Vec<String> = known.iter().map(|f| format!("{prefix}{f}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let closest = suggest(&written_text, &names);
    Some(format!(
        "`when` tests `{}`, which no Segment event has{closest}: the condition never holds, so this rule never applies",
        path.text
    ))
}

/// Checks across rules: key sources, shadowing, `when` on unknown fields.
fn check_rules(r: &mut Reporter, file: &RuleFile, root: &Node) {
    let hashes = file
        .rules
        .iter()
        .any(|x| matches!(x.action, Action::Hash(_)))
        || file.message.key == MessageKeyAction::Hash;
    if hashes && file.hash.algorithm == HashAlgorithm::HmacSha256 && file.hash.key.is_none() {
        let first = file
            .rules
            .iter()
            .find(|x| matches!(x.action, Action::Hash(_)));
        let msg = "hashing with `hmac-sha256` needs a key source: add `hash: { key: { env: SANITIZER_HASH_KEY } }` \
                   (or `{ file: /path/to/key }`) at the top of the file";
        match first {
            Some(rule) => r.at_pos(
                rule.line,
                rule.column,
                Some(&rule.id),
                Severity::Error,
                msg.into(),
            ),
            None => r.error(root, None, msg),
        }
    }
    // A `when` on a field a Segment event does not have never holds: a
    // typo that silently turns a `drop` off. Only where the file says its
    // input is Segment-spec events (a `destination`).
    if file.destination.is_some() {
        for rule in &file.rules {
            for c in &rule.when {
                if let Some(msg) = unknown_segment_field(&c.path, file.keys) {
                    r.at_pos(
                        rule.line,
                        rule.column,
                        Some(&rule.id),
                        Severity::Warning,
                        msg,
                    );
                }
            }
        }
    }
    // A fixed `rename` (no `{key}`) gives every field the rule hashes the
    // same name: an event with two of them in one object would be a
    // `rename_collision` dead letter every time.
    for rule in &file.rules {
        let Action::Hash(o) = &rule.action else {
            continue;
        };
        let rename = o.rename.as_deref().unwrap_or(&file.hash.rename);
        let many = rule.fields.len() + rule.paths.len() > 1
            || rule.fields.iter().any(|f| matches!(f, FieldName::Glob(_)))
            || rule.paths.iter().any(|p| !p.is_concrete());
        if !rename.contains("{key}") && many {
            r.at_pos(
                rule.line,
                rule.column,
                Some(&rule.id),
                Severity::Error,
                format!(
                    "`rename: {rename}` gives every field this rule hashes the same name: an event with two of them in one object would be a dead letter (rename_collision); put `{{key}}` in the name (`{{key}}_hash`) or write one rule per field"
                ),
            );
        }
    }
    // A rule is shadowed when a stronger rule without `when` or `scope`
    // names every one of its fields and it has no paths or values.
    for (i, rule) in file.rules.iter().enumerate() {
        if rule.fields.is_empty() || !rule.paths.is_empty() || !rule.values.is_empty() {
            continue;
        }
        for (j, other) in file.rules.iter().enumerate() {
            if i == j || !other.when.is_empty() || !other.scope.is_empty() {
                continue;
            }
            let stronger = other.action.strength() > rule.action.strength()
                || (other.action.strength() == rule.action.strength()
                    && j < i
                    && other.action.strength() > 0);
            if !stronger {
                continue;
            }
            let covers = |f: &FieldName| {
                other.fields.iter().any(|o| match (o, f) {
                    (FieldName::Name(a), FieldName::Name(b)) => a == b,
                    (FieldName::Glob(g), FieldName::Name(b)) => g.matches(b),
                    (FieldName::Glob(a), FieldName::Glob(b)) => a == b,
                    _ => false,
                })
            };
            if rule.fields.iter().all(covers) {
                r.at_pos(
                    rule.line,
                    rule.column,
                    Some(&rule.id),
                    Severity::Warning,
                    format!(
                        "this rule never takes effect: rule `{}` ({} on line {}) already applies to every field it names",
                        other.id,
                        other.action.name(),
                        other.line
                    ),
                );
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match RuleFile::parse("r.yaml", text) {
            Ok((_, d)) => panic!("expected errors, got warnings {d:?}"),
            Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_fixed_rename_shared_by_several_fields_is_an_error() {
        let text = |fields: &str, rename: &str| {
            format!(
                "version: 1\nname: t\nhash: {{ key: {{ env: K }} }}\nrules:\n  - id: h\n    action: hash\n    fields: {fields}\n    rename: \"{rename}\"\n"
            )
        };
        let errs = errors(&text("[phone, mobile]", "contact_hash"));
        assert!(
            errs.iter().any(|e| e
                .contains("r.yaml:5:5: error: rule h: `rename: contact_hash` gives every field")),
            "{errs:#?}"
        );
        assert!(!errors(&text("[\"phone*\"]", "contact_hash")).is_empty());
        // One field, or a name per field: fine.
        for (fields, rename) in [("[phone]", "contact_hash"), ("[phone, mobile]", "{key}_h")] {
            assert!(
                RuleFile::parse("r.yaml", &text(fields, rename)).is_ok(),
                "{fields} {rename}"
            );
        }
    }

    #[test]
    fn a_when_on_a_field_no_segment_event_has_is_a_warning_naming_the_likely_one() {
        let text = |when: &str, destination: bool| {
            format!(
                "version: 1\nname: t\n{}keys: {{ match: normalized }}\nrules:\n  - id: drop-notes\n    action: drop\n    fields: [notes]\n    when: {when}\n",
                if destination { "destination: { max_traits: 300 }\n" } else { "" }
            )
        };
        let warnings = |t: String| -> Vec<String> {
            let (_, d) = RuleFile::parse("r.yaml", &t).expect("parses");
            d.warnings().map(|w| w.to_string()).collect()
        };
        let w = warnings(text("{ evnt: Appointment Booked }", true));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].contains("rule drop-notes: `when` tests `evnt`, which no Segment event has (did you mean `event`?)"),
            "{w:#?}"
        );
        let w = warnings(text("{ context.locle: en-US }", true));
        assert!(w[0].contains("(did you mean `context.locale`?)"), "{w:#?}");
        // Real fields, any spelling the file's key matching accepts, and
        // anything below traits/properties: no warning.
        for ok in [
            "{ event: Appointment Booked }",
            "{ Event: x, user_id: u, context.app.name: shop, traits.anything: 1 }",
        ] {
            assert!(warnings(text(ok, true)).is_empty(), "{ok}");
        }
        // Without a destination the input need not be a Segment event.
        assert!(warnings(text("{ evnt: x }", false)).is_empty());
    }

    #[test]
    fn reports_every_problem_at_once() {
        let errs = errors(
            "version: 1\nname: t\nrules:\n  - id: a\n    acton: drop\n    fields: [x]\n  - id: a\n    action: explode\n    fields: [y]\n",
        );
        assert!(
            errs.iter().any(|e| e.starts_with(
                "r.yaml:5:5: error: rule a: unknown key `acton` in a rule (did you mean `action`?)"
            )),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("r.yaml:8:13: error: rule a: unknown action `explode`")),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("r.yaml:7:5: error: rule a: the id `a` is already used")),
            "{errs:#?}"
        );
        assert!(errs.len() >= 4, "{errs:#?}");
    }

    #[test]
    fn parses_a_full_file() {
        let text = r#"
version: 1
name: t
keys: { match: exact }
hash: { key: { env: K }, truncate: 16, encoding: base64url, rename: "h_{key}" }
message: { key: hash, headers: { allow: [Trace-Id] } }
rules:
  - id: d
    action: drop
    fields: [ssn, "*card*"]
  - id: h
    action: hash
    paths: [traits.phone]
    normalize: [trim, digits]
  - id: r
    action: redact
    values: [credit_card, { name: emp, regex: "EMP-\\d{6}" }]
    scope: properties.notes
    when: { type: [track, page], event: { regex: "^Order" }, userId: { exists: true } }
"#;
        let (f, warnings) = RuleFile::parse("t.yaml", text).unwrap();
        assert!(warnings.0.is_empty(), "{warnings}");
        assert_eq!(f.keys, KeyMatch::Exact);
        assert_eq!(f.hash.truncate, Some(16));
        assert_eq!(f.message.key, MessageKeyAction::Hash);
        assert_eq!(
            f.message.headers,
            HeaderPolicy::Allow(vec!["trace-id".into()])
        );
        assert_eq!(f.rules.len(), 3);
        assert_eq!(f.rules[2].when.len(), 3);
        assert_eq!(f.rules[2].values.len(), 2);
        assert!(
            matches!(&f.rules[2].action, Action::Redact { replacement } if replacement == "[REDACTED:{detector}]")
        );
    }
}
