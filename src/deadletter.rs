//! Dead letters protected at rest: the dead-letter topic holds the raw
//! messages this stage refused, the largest store of raw PII it writes, so
//! their payloads, keys and header values are sealed with an authenticated
//! cipher (XChaCha20-Poly1305, a random 192-bit nonce per value) under a
//! key ring of their own. The key id travels in a header; a rotation (a new
//! `active` in the ring file) takes effect without a restart, and older
//! records still open by their key id. `replay` opens them.
//!
//! A sealed value is `nonce || ciphertext || tag`. The associated data
//! binds it to its key id and to what it is (payload, key, or the header's
//! name), so values cannot be swapped between places. Each key in the ring
//! is text (`openssl rand -base64 32`, at least 32 bytes); the cipher key
//! is HMAC-SHA256 of a fixed label under it.

use crate::secret::{HashKeys, Secret};
use arc_swap::ArcSwap;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `sanitizer-encryption`: the scheme of a sealed dead letter.
pub const SCHEME_HEADER: &str = "sanitizer-encryption";
/// `sanitizer-encryption-key-id`: the id of the key it is sealed with.
pub const KEY_ID_HEADER: &str = "sanitizer-encryption-key-id";
/// The scheme's name in [`SCHEME_HEADER`].
pub const SCHEME: &str = "xchacha20poly1305-v1";

const NONCE: usize = 24;
const MIN_KEY_BYTES: usize = 32;

/// What a sealed value is, bound into its associated data.
#[derive(Clone, Copy, Debug)]
pub enum Part<'a> {
    /// The message value.
    Payload,
    /// The message key.
    Key,
    /// The value of the header with this name.
    Header(&'a str),
}

impl Part<'_> {
    fn aad(&self, key_id: &str) -> Vec<u8> {
        let what = match self {
            Part::Payload => "payload".to_string(),
            Part::Key => "key".to_string(),
            Part::Header(name) => format!("header:{name}"),
        };
        format!("event-sanitizer dead letter v1\0{key_id}\0{what}").into_bytes()
    }
}

/// Why a sealed value does not open. Never shows a value or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The key id is not in the ring.
    #[error(
        "dead-letter key `{0}` is not in the key ring (was it removed before its records expired?)"
    )]
    UnknownKey(String),
    /// The value was altered, is cut off, or belongs elsewhere.
    #[error("a sealed value does not authenticate (altered, cut off, or under another key)")]
    Forged,
}

struct Ring {
    active: String,
    ciphers: Vec<(String, XChaCha20Poly1305)>,
    /// SHA-256 of each key, to refuse a ring that changes a key under the
    /// same id (records sealed with it would no longer open).
    fingerprints: Vec<(String, [u8; 32])>,
}

fn cipher(key: &Secret) -> XChaCha20Poly1305 {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("any key length");
    m.update(b"event-sanitizer dead-letter cipher key v1");
    XChaCha20Poly1305::new(&m.finalize().into_bytes())
}

fn fingerprint(key: &Secret) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(key.expose()).into()
}

impl Ring {
    fn load(path: &Path) -> Result<Ring, String> {
        let keys = HashKeys::from_file(path)
            .map_err(|e| e.replace("the hash key file", "the dead-letter key file"))?;
        let short: Vec<&str> = keys
            .keys
            .iter()
            .filter(|(_, k)| k.expose().len() < MIN_KEY_BYTES)
            .map(|(id, _)| id.as_str())
            .collect();
        if !short.is_empty() {
            return Err(format!(
                "{}: dead-letter key(s) {} are shorter than {MIN_KEY_BYTES} bytes (make one with `openssl rand -base64 32`)",
                path.display(),
                short.join(", ")
            ));
        }
        Ok(Ring {
            active: keys.active.clone(),
            ciphers: keys
                .keys
                .iter()
                .map(|(id, k)| (id.clone(), cipher(k)))
                .collect(),
            fingerprints: keys
                .keys
                .iter()
                .map(|(id, k)| (id.clone(), fingerprint(k)))
                .collect(),
        })
    }

    fn get(&self, id: &str) -> Option<&XChaCha20Poly1305> {
        self.ciphers.iter().find(|(i, _)| i == id).map(|(_, c)| c)
    }
}

/// The dead-letter key ring in use, reloaded from its file.
pub struct Sealer {
    file: PathBuf,
    ring: ArcSwap<Ring>,
    watched: crate::reload::Watched,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("file", &self.file)
            .field("active", &self.active_key_id())
            .finish_non_exhaustive()
    }
}

/// One sealed dead letter's parts.
pub struct Sealed {
    /// The key id ([`KEY_ID_HEADER`]).
    pub key_id: String,
    /// The sealed payload.
    pub payload: Vec<u8>,
    /// The sealed key.
    pub key: Option<Vec<u8>>,
    /// The headers, values sealed (names kept).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Sealer {
    /// Reads the key ring file (the hash key ring's format: `active` and
    /// `keys`); every problem at once, never a key.
    pub fn load(file: &Path) -> Result<Sealer, String> {
        Ok(Sealer {
            file: file.to_path_buf(),
            ring: ArcSwap::from_pointee(Ring::load(file)?),
            watched: crate::reload::Watched::new(vec![file.to_path_buf()]),
        })
    }

    /// The ring `dead_letters` asks for: `None` when encryption is off.
    pub fn from_config(cfg: &crate::config::DeadLettersConfig) -> Result<Option<Sealer>, String> {
        match (&cfg.keys_file, cfg.encrypt) {
            (Some(f), true) => Sealer::load(f)
                .map(Some)
                .map_err(|e| format!("`dead_letters.keys_file`: {e}")),
            _ => Ok(None),
        }
    }

    /// Re-reads the file when it changed ([`Sealer::reload`]), audited.
    pub fn check(&self, telemetry: &crate::metrics::Telemetry) {
        if !self.watched.changed() {
            return;
        }
        match self.reload() {
            Ok(Some(id)) => telemetry.dead_letter_key_rotated(&id),
            Ok(None) => {}
            Err(e) => telemetry.dead_letter_keys_rejected(&e),
        }
    }

    /// Re-reads the file: `Ok(Some(id))` when the active key changed. A
    /// ring that drops a key or changes one under its id is refused (the
    /// current ring stays): records sealed with it would no longer open.
    pub fn reload(&self) -> Result<Option<String>, String> {
        let new = Ring::load(&self.file)?;
        let old = self.ring.load();
        for (id, fp) in &old.fingerprints {
            match new.fingerprints.iter().find(|(i, _)| i == id) {
                None => return Err(format!("{}: dead-letter key `{id}` was removed; keep it as long as the dead-letter topic keeps records sealed with it", self.file.display())),
                Some((_, f)) if f != fp => return Err(format!("{}: dead-letter key `{id}` changed; add a new id instead of changing a key", self.file.display())),
                _ => {}
            }
        }
        if new.fingerprints == old.fingerprints && new.active == old.active {
            return Ok(None);
        }
        let active = (new.active != old.active).then(|| new.active.clone());
        self.ring.store(Arc::new(new));
        Ok(active)
    }

    /// The id of the key new dead letters are sealed with.
    pub fn active_key_id(&self) -> String {
        self.ring.load().active.clone()
    }

    /// Seals a dead letter with the active key.
    pub fn seal<'h>(
        &self,
        payload: &[u8],
        key: Option<&[u8]>,
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) -> Sealed {
        let ring = self.ring.load();
        let id = ring.active.as_str();
        let c = ring.get(id).expect("the ring's active key is listed");
        let seal = |part: Part<'_>, value: &[u8]| {
            let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
            let aad = part.aad(id);
            let sealed = c
                .encrypt(
                    &nonce,
                    Payload {
                        msg: value,
                        aad: &aad,
                    },
                )
                .expect("XChaCha20-Poly1305 seals any length a Kafka record has");
            let mut v = Vec::with_capacity(NONCE + sealed.len());
            v.extend_from_slice(&nonce);
            v.extend_from_slice(&sealed);
            v
        };
        Sealed {
            key_id: id.to_string(),
            payload: seal(Part::Payload, payload),
            key: key.map(|k| seal(Part::Key, k)),
            headers: headers
                .map(|(n, v)| (n.to_string(), v.map(|v| seal(Part::Header(n), v))))
                .collect(),
        }
    }

    /// Opens one value sealed with `key_id` as `part`.
    pub fn open(&self, key_id: &str, part: Part<'_>, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let ring = self.ring.load();
        let c = ring
            .get(key_id)
            .ok_or_else(|| OpenError::UnknownKey(key_id.to_string()))?;
        if sealed.len() < NONCE {
            return Err(OpenError::Forged);
        }
        let (nonce, body) = sealed.split_at(NONCE);
        c.decrypt(
            nonce.into(),
            Payload {
                msg: body,
                aad: &part.aad(key_id),
            },
        )
        .map_err(|_| OpenError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "0123456789abcdef0123456789abcdef-a";
    const KEY_B: &str = "0123456789abcdef0123456789abcdef-b";

    fn ring(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("dlq-keys.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn sealed_values_open_by_key_id_after_a_rotation_and_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = ring(dir.path(), &format!("active: a\nkeys:\n  a: {KEY_A}\n"));
        let s = Sealer::load(&p).unwrap();
        let hs = [("trace-id", Some(&b"t-1"[..])), ("x-email", Some(b"a@b.c"))];
        let old = s.seal(b"raw payload", Some(b"user-1"), hs.into_iter());
        assert_eq!(old.key_id, "a");
        assert!(!old.payload.windows(3).any(|w| w == b"raw"));
        assert_ne!(
            s.seal(b"raw payload", None, [].into_iter()).payload,
            old.payload,
            "a fresh nonce each time"
        );
        // Rotate without a restart.
        std::fs::write(
            &p,
            format!("active: b\nkeys:\n  a: {KEY_A}\n  b: {KEY_B}\n"),
        )
        .unwrap();
        assert_eq!(s.reload().unwrap().as_deref(), Some("b"));
        let new = s.seal(b"second", None, [].into_iter());
        assert_eq!(new.key_id, "b");
        assert_eq!(
            s.open("a", Part::Payload, &old.payload).unwrap(),
            b"raw payload"
        );
        assert_eq!(
            s.open("a", Part::Key, old.key.as_ref().unwrap()).unwrap(),
            b"user-1"
        );
        let (name, v) = &old.headers[1];
        assert_eq!(
            s.open("a", Part::Header(name), v.as_ref().unwrap())
                .unwrap(),
            b"a@b.c"
        );
        assert_eq!(s.open("b", Part::Payload, &new.payload).unwrap(), b"second");
        // Bound to key id and place; altered bytes do not open.
        assert_eq!(
            s.open("b", Part::Payload, &old.payload),
            Err(OpenError::Forged)
        );
        assert_eq!(s.open("a", Part::Key, &old.payload), Err(OpenError::Forged));
        let mut bad = old.payload.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(s.open("a", Part::Payload, &bad), Err(OpenError::Forged));
        assert!(matches!(
            s.open("z", Part::Payload, &bad),
            Err(OpenError::UnknownKey(_))
        ));
        // Removing or changing a key that records use is refused; the ring stays.
        std::fs::write(&p, format!("active: b\nkeys:\n  b: {KEY_B}\n")).unwrap();
        assert!(s.reload().unwrap_err().contains("`a` was removed"));
        std::fs::write(
            &p,
            format!("active: b\nkeys:\n  a: {KEY_B}\n  b: {KEY_B}\n"),
        )
        .unwrap();
        assert!(s.reload().unwrap_err().contains("`a` changed"));
        assert_eq!(
            s.open("a", Part::Payload, &old.payload).unwrap(),
            b"raw payload"
        );
        assert!(!format!("{s:?}").contains("0123"));
    }

    #[test]
    fn short_keys_and_bad_rings_are_refused_without_showing_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = ring(dir.path(), "active: a\nkeys:\n  a: short-secret\n");
        let e = Sealer::load(&p).unwrap_err();
        assert!(
            e.contains("shorter than 32 bytes") && !e.contains("short-secret"),
            "{e}"
        );
        let p = ring(dir.path(), "active: c\nkeys:\n  a: x\n");
        let e = Sealer::load(&p).unwrap_err();
        assert!(
            e.contains("dead-letter key file") || e.contains("`active` names"),
            "{e}"
        );
    }
}
