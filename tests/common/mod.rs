//! Helpers shared by the integration tests.
#![allow(dead_code)]

use event_sanitizer::engine::{KeySupply, Limits, Sanitizer, Scratch};
use event_sanitizer::rules::RuleFile;
use event_sanitizer::secret::Secret;
use std::path::PathBuf;

/// The Customer.io security checklist's NEVER_SEND fields.
pub const NEVER_SEND: &[&str] = &[
    "ssn",
    "social_security",
    "tax_id",
    "credit_card",
    "card_number",
    "cvv",
    "password",
    "password_hash",
    "bank_account",
    "routing_number",
];
/// The checklist's HASH_FIELDS.
pub const HASH_FIELDS: &[&str] = &[
    "phone",
    "phone_number",
    "ip_address",
    "ip",
    "address",
    "street_address",
];

/// The crate root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles rule text with a fixed test key.
pub fn compile(text: &str) -> Sanitizer {
    compile_with(text, Limits::default())
}

pub fn compile_with(text: &str, limits: Limits) -> Sanitizer {
    let (file, _) =
        RuleFile::parse("test.yaml", text).unwrap_or_else(|d| panic!("rules do not parse:\n{d}"));
    let key = Secret::new("test-key");
    Sanitizer::compile(&file, KeySupply::Fixed(&key), limits).expect("compiles")
}

/// The default rule set, with a fixed test key.
pub fn default_rules() -> Sanitizer {
    let text = std::fs::read_to_string(root().join("rules/customerio.yaml")).unwrap();
    compile(&text)
}

/// The default rules without their delivery contract, for tests about the
/// rules alone that feed arbitrary objects rather than Customer.io calls.
pub fn default_rules_without_contract() -> Sanitizer {
    let text = std::fs::read_to_string(root().join("rules/customerio.yaml")).unwrap();
    let on = "  profile: customerio\n";
    assert!(text.contains(on), "the default rules' destination moved");
    compile(&text.replace(on, "  profile: none\n"))
}

/// Sanitizes one value: clean text, or the dead-letter code.
pub fn run(s: &Sanitizer, input: &str) -> Result<String, &'static str> {
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    s.sanitize(input.as_bytes(), &mut scratch, &mut out)
        .map(|_| String::from_utf8(out).expect("output is UTF-8"))
        .map_err(|r| r.code())
}

/// The sum of `name`'s samples whose labels include `labels`, read from
/// the Prometheus text exposition.
pub fn metric(
    telemetry: &event_sanitizer::metrics::Telemetry,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    metric_in(&telemetry.render(), name, labels).unwrap_or(0.0)
}

/// Polls `cond` every 100 ms until it holds; panics with `what` after 60 s.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The sum of `name`'s samples whose labels include `labels` in `text`
/// (the Prometheus exposition format); `None` when it has none.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let values: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The value of metric `name` (summed over its series) on the service
/// at `port`, scraped from its `/metrics`.
pub fn scraped(port: u16, name: &str) -> Option<f64> {
    metric_in(&http::get(port, "/metrics")?.1, name, &[])
}

/// HMAC-SHA256 hex with the test key, computed independently of the engine.
pub fn hmac_hex(value: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"test-key").unwrap();
    m.update(value.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// The path of the built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_event-sanitizer"))
}

pub mod http;
pub mod kafka;
pub mod real;

/// A running service binary, killed when dropped if it is still running:
/// a test that fails midway leaves no process behind to load the machine
/// for the tests after it.
pub struct Service(std::process::Child);

impl std::ops::Deref for Service {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Service {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl From<std::process::Child> for Service {
    fn from(c: std::process::Child) -> Service {
        Service(c)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the real binary with `run -c cfg`, its log appended to `log`.
pub fn start_service(cfg: &std::path::Path, log: &std::path::Path) -> Service {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Service(
        std::process::Command::new(bin())
            .args(["run", "-c"])
            .arg(cfg)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A finished command's stdout and stderr, as text.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Sends `sig` (`-KILL`, `-TERM`, `-STOP`...) to `child`.
pub fn signal(child: &std::process::Child, sig: &str) {
    assert!(std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

/// Writes the default rules and a key file into `dir`.
pub fn rules_and_key(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let rules = dir.join("rules.yaml");
    std::fs::copy(root().join("rules/customerio.yaml"), &rules).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, "test-key\n").unwrap();
    (rules, key)
}
