//! Customer.io's reporting-webhook signature: the lowercase hex
//! HMAC-SHA256, keyed with the webhook signing key, of
//! `v0:<X-CIO-Timestamp>:<raw body>`. Compared in constant time against
//! every configured key, so old and new keys both verify during rotation.

use crate::secret::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"v0:");
    m.update(timestamp.as_bytes());
    m.update(b":");
    m.update(body);
    m
}

/// The signature Customer.io sends for `body` at `timestamp` (for tests,
/// load generators and replay tools).
pub fn sign(key: &[u8], timestamp: &str, body: &[u8]) -> String {
    hex::encode(mac(key, timestamp, body).finalize().into_bytes())
}

/// Whether `signature` (hex) is the signature of `body` at `timestamp`
/// under one of `keys`. Every comparison is constant-time; a signature
/// that is not 64 lowercase hex digits (the documented form) fails without
/// touching a key.
pub fn verify(keys: &[Secret], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let mut raw = [0u8; 32];
    let lowercase = signature
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lowercase || hex::decode_to_slice(signature, &mut raw).is_err() {
        return false;
    }
    // Try every key (no early exit), so timing does not say which matched.
    keys.iter().fold(false, |ok, k| {
        mac(k.expose(), timestamp, body).verify_slice(&raw).is_ok() | ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_construction() {
        // Python: hmac.new(b"k", b"v0:1700000000:{}", sha256).hexdigest()
        assert_eq!(
            sign(b"k", "1700000000", b"{}"),
            "4d1ef9dc58210a288bb6450caca892dd965babccd8da5c4357f3c01e8fe6ecad"
        );
        let keys = [Secret::new("old"), Secret::new("new")];
        let sig = sign(b"new", "1", b"body");
        assert!(verify(&keys, "1", b"body", &sig));
        assert!(
            !verify(&keys, "1", b"body", &sig.to_uppercase()),
            "lowercase hex, as documented"
        );
        assert!(!verify(&keys, "2", b"body", &sig));
        assert!(!verify(&keys, "1", b"body!", &sig));
        assert!(!verify(&keys[..1], "1", b"body", &sig));
        assert!(!verify(&keys, "1", b"body", "zz"));
        assert!(!verify(&keys, "1", b"body", ""));
    }
}
