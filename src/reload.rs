//! The rules in use, swapped atomically when the rule file (or the key
//! file) changes. Kubernetes updates a mounted ConfigMap by swapping a
//! symlink, so the files' *contents* are compared, not their mtimes. A
//! change that does not compile is rejected with its errors logged and
//! counted, and the running rules stay.

use crate::config::KeyFile;
use crate::engine::compile::resolve_key;
use crate::engine::{KeySupply, Limits, Sanitizer};
use crate::metrics::Telemetry;
use crate::rules::RuleFile;
use crate::secret::{HashKeys, Secret};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files watched by content: [`Watched::changed`] says whether their bytes
/// differ from the last look. The fingerprint (SHA-256 of the contents) is
/// only compared, never logged: the files can hold keys.
pub(crate) struct Watched {
    files: Vec<PathBuf>,
    last: std::sync::Mutex<[u8; 32]>,
}

impl Watched {
    /// Starts watching `files`, taking their current contents as seen.
    pub(crate) fn new(files: Vec<PathBuf>) -> Watched {
        let last = std::sync::Mutex::new(Self::fingerprint(&files));
        Watched { files, last }
    }

    fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for f in files {
            h.update(std::fs::read(f).unwrap_or_default());
            h.update([0xff]);
        }
        h.finalize().into()
    }

    /// Whether the contents changed since the last call (or `new`).
    pub(crate) fn changed(&self) -> bool {
        let fp = Self::fingerprint(&self.files);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == fp {
            return false;
        }
        *last = fp;
        true
    }
}

/// Runs `check` (blocking file reads) every `every` until `stop` changes.
pub(crate) fn every(
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    check: impl Fn() + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let check = Arc::new(check);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = stop.changed() => break }
            let c = check.clone();
            let _ = tokio::task::spawn_blocking(move || c()).await;
        }
    })
}

/// The key new digests are made with, and its id.
#[derive(Clone)]
pub struct ActiveKey {
    /// The key's id (`default` for a single key).
    pub id: String,
    /// The key.
    pub key: Secret,
}

/// Loads, compiles and holds the current [`Sanitizer`].
pub struct RuleSource {
    file: PathBuf,
    keys: KeyFile,
    limits: Limits,
    current: ArcSwap<Sanitizer>,
    active: ArcSwap<Option<ActiveKey>>,
    /// SHA-256 of each key by id, as last loaded: a ring whose key changes
    /// value under the same id is refused. Only compared, never shown.
    fingerprints: std::sync::Mutex<Vec<(String, [u8; 32])>>,
    /// The rule file and key file, as last compiled (or rejected).
    watched: Watched,
}

/// Why rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The rule file has errors.
    #[error("{0}")]
    Rules(String),
    /// The key or a limit is wrong.
    #[error("{0}")]
    Compile(String),
}

struct Loaded {
    sanitizer: Sanitizer,
    active: Option<ActiveKey>,
    fingerprints: Vec<(String, [u8; 32])>,
}

fn fingerprint(key: &Secret) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.expose()).into()
}

fn compile(file: &Path, keys: &KeyFile, limits: Limits) -> Result<Loaded, LoadError> {
    let (rules, warnings) =
        RuleFile::load(file).map_err(|d| LoadError::Rules(d.to_string().trim_end().to_string()))?;
    for w in warnings.warnings() {
        tracing::warn!(target: "event_sanitizer::audit", warning = %w, "rule file warning");
    }
    let (active, fingerprints) = match keys {
        KeyFile::Single(k) => {
            let key = Secret::key_file(k).map_err(LoadError::Compile)?;
            let fp = vec![("default".to_string(), fingerprint(&key))];
            (
                Some(ActiveKey {
                    id: "default".into(),
                    key,
                }),
                fp,
            )
        }
        KeyFile::Ring(k) => {
            let ring = HashKeys::from_file(k).map_err(LoadError::Compile)?;
            let fp = ring
                .keys
                .iter()
                .map(|(i, k)| (i.clone(), fingerprint(k)))
                .collect();
            let key = ring.active_key().clone();
            (
                Some(ActiveKey {
                    id: ring.active.clone(),
                    key,
                }),
                fp,
            )
        }
        // A key the rules name but do not need may be absent: compiling
        // from the source reports it when it is needed.
        KeyFile::FromRules => match rules.hash.key.as_ref().map(resolve_key) {
            Some(Ok(key)) => {
                let fp = vec![("default".to_string(), fingerprint(&key))];
                (
                    Some(ActiveKey {
                        id: "default".into(),
                        key,
                    }),
                    fp,
                )
            }
            _ => (None, Vec::new()),
        },
    };
    let supply = match &active {
        Some(a) => KeySupply::Fixed(&a.key),
        None => KeySupply::FromSource,
    };
    let sanitizer = Sanitizer::compile(&rules, supply, limits)
        .map_err(|e| LoadError::Compile(e.to_string()))?
        .with_key_id(active.as_ref().map_or("none", |a| a.id.as_str()));
    Ok(Loaded {
        sanitizer,
        active,
        fingerprints,
    })
}

impl RuleSource {
    /// Loads the rules for startup: any problem is fatal.
    pub fn load(
        file: &Path,
        keys: KeyFile,
        limits: Limits,
        telemetry: &Telemetry,
    ) -> Result<RuleSource, LoadError> {
        let watched = Watched::new(
            std::iter::once(file)
                .chain(keys.path())
                .map(Path::to_path_buf)
                .collect(),
        );
        let l = compile(file, &keys, limits)?;
        let s = l.sanitizer;
        telemetry.rule_set_loaded(
            s.name(),
            s.content_hash(),
            &file.display().to_string(),
            s.key_id(),
            false,
        );
        Ok(RuleSource {
            file: file.to_path_buf(),
            keys,
            limits,
            current: ArcSwap::from_pointee(s),
            active: ArcSwap::from_pointee(l.active),
            fingerprints: std::sync::Mutex::new(l.fingerprints),
            watched,
        })
    }

    /// The rules in use now.
    pub fn current(&self) -> Arc<Sanitizer> {
        self.current.load_full()
    }

    /// Whether `s` is the rule set in use (cheaper than [`RuleSource::current`]).
    pub fn is_current(&self, s: &Arc<Sanitizer>) -> bool {
        Arc::ptr_eq(&self.current.load(), s)
    }

    /// The key the rules in use hash with, if any.
    pub fn active_key(&self) -> Option<ActiveKey> {
        (*self.active.load_full()).clone()
    }

    /// Recompiles if the files changed. Returns whether rules were swapped.
    pub fn check(&self, telemetry: &Telemetry) -> bool {
        if !self.watched.changed() {
            return false;
        }
        let shown = self.file.display().to_string();
        let loaded = compile(&self.file, &self.keys, self.limits).and_then(|l| {
            let mut old = self.fingerprints.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(self.keys, KeyFile::Ring(_)) {
                for (id, fp) in &l.fingerprints {
                    if old.iter().any(|(i, f)| i == id && f != fp) {
                        return Err(LoadError::Compile(format!("hash key `{id}` has a different value than before: give a changed key a new id (digests made under one id must stay comparable)")));
                    }
                }
            }
            *old = l.fingerprints.clone();
            Ok(l)
        });
        match loaded {
            Ok(l) => {
                let s = l.sanitizer;
                let before = self.current.load();
                if before.key_id() != s.key_id() {
                    let ids: Vec<&str> = l.fingerprints.iter().map(|(i, _)| i.as_str()).collect();
                    telemetry.hash_key_rotated(before.key_id(), s.key_id(), &ids);
                }
                telemetry.rule_set_loaded(s.name(), s.content_hash(), &shown, s.key_id(), true);
                self.active.store(Arc::new(l.active));
                self.current.store(Arc::new(s));
                true
            }
            Err(e) => {
                telemetry.reload_failed(&shown, &e.to_string());
                false
            }
        }
    }
}

/// A candidate rule file run beside the rules in use (`rules.shadow_file`):
/// compiled with the same keys, so digests agree where the rules do;
/// reloaded like them, a change that does not compile keeping the
/// candidate in use. Its output is never produced.
pub struct ShadowSource {
    file: PathBuf,
    keys: KeyFile,
    limits: Limits,
    current: ArcSwap<Sanitizer>,
    watched: Watched,
}

impl ShadowSource {
    /// Compiles the candidate; an error stops startup.
    pub fn load(
        file: &Path,
        keys: KeyFile,
        limits: Limits,
        telemetry: &Telemetry,
    ) -> Result<ShadowSource, LoadError> {
        let watched = Watched::new(
            std::iter::once(file)
                .chain(keys.path())
                .map(Path::to_path_buf)
                .collect(),
        );
        let s = compile(file, &keys, limits)?.sanitizer;
        telemetry.shadow_loaded(s.name(), s.content_hash(), &file.display().to_string());
        Ok(ShadowSource {
            file: file.to_path_buf(),
            keys,
            limits,
            current: ArcSwap::from_pointee(s),
            watched,
        })
    }

    /// The candidate in use.
    pub fn current(&self) -> Arc<Sanitizer> {
        self.current.load_full()
    }

    /// Recompiles if the files changed.
    pub fn check(&self, telemetry: &Telemetry) {
        if !self.watched.changed() {
            return;
        }
        let shown = self.file.display().to_string();
        match compile(&self.file, &self.keys, self.limits) {
            Ok(l) => {
                let s = l.sanitizer;
                telemetry.shadow_loaded(s.name(), s.content_hash(), &shown);
                self.current.store(Arc::new(s));
            }
            Err(e) => telemetry.shadow_rejected(&shown, &e.to_string()),
        }
    }
}
