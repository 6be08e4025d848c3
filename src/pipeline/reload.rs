//! The rules in use, swapped atomically when the rule file (or the key
//! file) changes. Kubernetes updates a mounted ConfigMap by swapping a
//! symlink, so the files' *contents* are compared, not their mtimes. A
//! change that does not compile is rejected with its errors logged and
//! counted, and the running rules stay.

use crate::engine::{KeySupply, Limits, Sanitizer};
use crate::metrics::Telemetry;
use crate::rules::RuleFile;
use crate::secret::Secret;
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

/// Loads, compiles and holds the current [`Sanitizer`].
pub struct RuleSource {
    file: PathBuf,
    key_file: Option<PathBuf>,
    limits: Limits,
    current: ArcSwap<Sanitizer>,
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

fn compile(file: &Path, key_file: Option<&Path>, limits: Limits) -> Result<Sanitizer, LoadError> {
    let (rules, warnings) =
        RuleFile::load(file).map_err(|d| LoadError::Rules(d.to_string().trim_end().to_string()))?;
    for w in warnings.warnings() {
        tracing::warn!(target: "event_sanitizer::audit", warning = %w, "rule file warning");
    }
    let key;
    let supply = match key_file {
        Some(k) => {
            key = Secret::key_file(k).map_err(LoadError::Compile)?;
            KeySupply::Fixed(&key)
        }
        None => KeySupply::FromSource,
    };
    Sanitizer::compile(&rules, supply, limits).map_err(|e| LoadError::Compile(e.to_string()))
}

impl RuleSource {
    /// Loads the rules for startup: any problem is fatal.
    pub fn load(
        file: &Path,
        key_file: Option<&Path>,
        limits: Limits,
        telemetry: &Telemetry,
    ) -> Result<RuleSource, LoadError> {
        let watched = Watched::new(
            std::iter::once(file)
                .chain(key_file)
                .map(Path::to_path_buf)
                .collect(),
        );
        let s = compile(file, key_file, limits)?;
        telemetry.rule_set_loaded(
            s.name(),
            s.content_hash(),
            &file.display().to_string(),
            false,
        );
        Ok(RuleSource {
            file: file.to_path_buf(),
            key_file: key_file.map(Path::to_path_buf),
            limits,
            current: ArcSwap::from_pointee(s),
            watched,
        })
    }

    /// The rules in use now.
    pub fn current(&self) -> Arc<Sanitizer> {
        self.current.load_full()
    }

    /// Recompiles if the files changed. Returns whether rules were swapped.
    pub fn check(&self, telemetry: &Telemetry) -> bool {
        if !self.watched.changed() {
            return false;
        }
        let shown = self.file.display().to_string();
        match compile(&self.file, self.key_file.as_deref(), self.limits) {
            Ok(s) => {
                telemetry.rule_set_loaded(s.name(), s.content_hash(), &shown, true);
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
