//! Digests: keyed HMAC-SHA256 (default) or plain SHA-256, encoded and
//! truncated as the rule file says, over a normalized string, a scalar's
//! JSON text, or a container's canonical JSON.

use super::json::{escape_into, unescape, Kind, Tok};
use crate::rules::{Encoding, HashAlgorithm, Normalize};
use crate::secret::Secret;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// The two lowercase hex digits of every byte value: a digest is
/// encoded one table read per byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [HEX[b >> 4], HEX[b & 15]];
        b += 1;
    }
    t
};

/// One hash configuration (file defaults merged with a rule's overrides).
#[derive(Clone)]
pub(crate) struct Hasher {
    /// Pre-keyed HMAC state, cloned per digest (saves re-keying); `None`
    /// for unkeyed SHA-256.
    mac: Option<Hmac<Sha256>>,
    encoding: Encoding,
    keep: usize,
    pub normalize: Vec<Normalize>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("keyed", &self.mac.is_some())
            .field("encoding", &self.encoding)
            .field("keep", &self.keep)
            .field("normalize", &self.normalize)
            .finish()
    }
}

impl Hasher {
    pub fn new(
        algorithm: HashAlgorithm,
        key: Option<&Secret>,
        encoding: Encoding,
        truncate: Option<usize>,
        normalize: Vec<Normalize>,
    ) -> Hasher {
        let mac = match algorithm {
            HashAlgorithm::Sha256 => None,
            HashAlgorithm::HmacSha256 => {
                let key = key.map_or(&[][..], Secret::expose);
                // HMAC accepts keys of any length.
                Hmac::<Sha256>::new_from_slice(key).ok()
            }
        };
        let full = encoding.full_len();
        Hasher {
            mac,
            encoding,
            keep: truncate.map_or(full, |t| t.min(full)),
            normalize,
        }
    }

    /// The raw 32-byte digest of `data`.
    pub fn digest(&self, data: &[u8]) -> [u8; 32] {
        match &self.mac {
            Some(mac) => {
                let mut m = mac.clone();
                m.update(data);
                m.finalize().into_bytes().into()
            }
            None => Sha256::digest(data).into(),
        }
    }

    /// Appends the encoded, truncated digest of `data` to `out`.
    pub fn write(&self, data: &[u8], out: &mut Vec<u8>) {
        let d = self.digest(data);
        match self.encoding {
            Encoding::Hex => {
                let mut buf = [0u8; 64];
                for (pair, byte) in buf.chunks_exact_mut(2).zip(d) {
                    pair.copy_from_slice(&HEX_PAIRS[byte as usize]);
                }
                out.extend_from_slice(&buf[..self.keep.min(64)]);
            }
            Encoding::Base64Url => {
                let mut buf = [0u8; 44];
                let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode_slice(d, &mut buf)
                    .unwrap_or(0);
                out.extend_from_slice(&buf[..n.min(self.keep)]);
            }
        }
    }

    /// Applies `normalize` to `s` into `buf`; returns the text to hash.
    pub fn normalized<'a>(&self, s: &'a str, buf: &'a mut String) -> &'a str {
        if self.normalize.is_empty() {
            return s;
        }
        let mut cur = s.to_string();
        for step in &self.normalize {
            cur = match step {
                Normalize::Trim => cur.trim().to_string(),
                Normalize::Lowercase => cur.to_lowercase(),
                Normalize::Digits => cur.chars().filter(char::is_ascii_digit).collect(),
                Normalize::RemoveWhitespace => cur.chars().filter(|c| !c.is_whitespace()).collect(),
            };
        }
        *buf = cur;
        buf.as_str()
    }
}

/// Writes the canonical JSON of the value at `tape[idx]`: object keys
/// sorted by their decoded bytes, no white space, strings escaped as
/// `serde_json` does, numbers as written.
pub(crate) fn canonical(src: &str, tape: &[Tok], idx: usize, out: &mut Vec<u8>) {
    let t = tape[idx];
    match t.kind {
        Kind::Object => {
            // Keys borrowed from the input unless escaped; a small object's
            // members on the stack.
            let mut members: smallvec::SmallVec<[(Cow<'_, str>, usize); 16]> =
                smallvec::SmallVec::new();
            let mut i = idx + 1;
            while i < t.next as usize {
                let k = tape[i];
                let raw = &src[k.start as usize..k.end as usize];
                let key = if k.escaped {
                    let mut key = String::new();
                    unescape(raw, &mut key);
                    Cow::Owned(key)
                } else {
                    Cow::Borrowed(raw)
                };
                members.push((key, i + 1));
                i = tape[i + 1].next as usize;
            }
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (n, (key, v)) in members.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                escape_into(key, out);
                out.extend_from_slice(b"\":");
                canonical(src, tape, *v, out);
            }
            out.push(b'}');
        }
        Kind::Array => {
            out.push(b'[');
            let mut i = idx + 1;
            let mut first = true;
            while i < t.next as usize {
                if !first {
                    out.push(b',');
                }
                first = false;
                canonical(src, tape, i, out);
                i = tape[i].next as usize;
            }
            out.push(b']');
        }
        Kind::String => {
            let raw = &src[t.start as usize..t.end as usize];
            out.push(b'"');
            if t.escaped {
                let mut s = String::new();
                unescape(raw, &mut s);
                escape_into(&s, out);
            } else {
                out.extend_from_slice(raw.as_bytes());
            }
            out.push(b'"');
        }
        _ => out.extend_from_slice(&src.as_bytes()[t.start as usize..t.end as usize]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checklist_compatible_sha256() {
        let h = Hasher::new(HashAlgorithm::Sha256, None, Encoding::Hex, Some(16), vec![]);
        let mut out = Vec::new();
        h.write(b"+1-555-123-4567", &mut out);
        let expect = hex::encode(Sha256::digest(b"+1-555-123-4567"));
        assert_eq!(String::from_utf8(out).unwrap(), &expect[..16]);
    }

    #[test]
    fn hmac_matches_reference() {
        let key = Secret::new("k");
        let h = Hasher::new(
            HashAlgorithm::HmacSha256,
            Some(&key),
            Encoding::Hex,
            None,
            vec![],
        );
        let mut out = Vec::new();
        h.write(b"v", &mut out);
        let mut m = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        m.update(b"v");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            hex::encode(m.finalize().into_bytes())
        );
        let b = Hasher::new(
            HashAlgorithm::HmacSha256,
            Some(&key),
            Encoding::Base64Url,
            Some(10),
            vec![],
        );
        let mut out = Vec::new();
        b.write(b"v", &mut out);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn normalize_steps_in_order() {
        let h = Hasher::new(
            HashAlgorithm::Sha256,
            None,
            Encoding::Hex,
            None,
            vec![Normalize::Trim, Normalize::Lowercase],
        );
        let mut buf = String::new();
        assert_eq!(h.normalized("  Jane@X.COM ", &mut buf), "jane@x.com");
        let h = Hasher::new(
            HashAlgorithm::Sha256,
            None,
            Encoding::Hex,
            None,
            vec![Normalize::Digits],
        );
        assert_eq!(h.normalized("+1 (555) 010-9999", &mut buf), "15550109999");
    }
}
