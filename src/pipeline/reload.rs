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

/// Loads, compiles and holds the current [`Sanitizer`].
pub struct RuleSource {
    file: PathBuf,
    key_file: Option<PathBuf>,
    limits: Limits,
    current: ArcSwap<Sanitizer>,
    /// SHA-256 of the rule file and key file contents last compiled (or
    /// rejected): never logged, only compared.
    fingerprint: std::sync::Mutex<[u8; 32]>,
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

fn fingerprint(file: &Path, key_file: Option<&Path>) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(std::fs::read(file).unwrap_or_default());
    if let Some(k) = key_file {
        h.update([0xff]);
        h.update(std::fs::read(k).unwrap_or_default());
    }
    h.finalize().into()
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
        let fp = fingerprint(file, key_file);
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
            fingerprint: std::sync::Mutex::new(fp),
        })
    }

    /// The rules in use now.
    pub fn current(&self) -> Arc<Sanitizer> {
        self.current.load_full()
    }

    /// Recompiles if the files changed. Returns whether rules were swapped.
    pub fn check(&self, telemetry: &Telemetry) -> bool {
        let fp = fingerprint(&self.file, self.key_file.as_deref());
        {
            let mut last = self.fingerprint.lock().unwrap_or_else(|e| e.into_inner());
            if *last == fp {
                return false;
            }
            *last = fp;
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
