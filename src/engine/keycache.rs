//! The per-thread cache from a key's spelling to its class: an
//! open-addressing table whose slots hold keys of up to 16 bytes inline, so
//! a hit costs one hash and two word compares. Seeded at random per cache,
//! so crafted keys cannot be made to collide; bounded by the caller, which
//! empties it when it grows past a limit.

use std::hash::BuildHasher;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// 0 marks an empty slot.
    hash: u64,
    w0: u64,
    w1: u64,
    len: u32,
    class: u32,
    /// Offset of the full key in the arena (keys over 16 bytes).
    off: u32,
}

pub(crate) struct KeyCache {
    slots: Vec<Slot>,
    arena: Vec<u8>,
    used: usize,
    seed: u64,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            slots: vec![Slot::default(); 256],
            arena: Vec::new(),
            used: 0,
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1,
        }
    }
}

#[inline(always)]
fn mix(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The first 16 bytes of `key` as two little-endian words, zero-padded:
/// with overlapping fixed-size loads instead of a variable-length copy.
#[inline(always)]
pub(crate) fn words(key: &[u8]) -> (u64, u64) {
    let n = key.len();
    let load8 = |at: usize| u64::from_le_bytes(key[at..at + 8].try_into().unwrap_or([0; 8]));
    let load4 = |at: usize| {
        u64::from(u32::from_le_bytes(
            key[at..at + 4].try_into().unwrap_or([0; 4]),
        ))
    };
    match n {
        16.. => (load8(0), load8(8)),
        // Bytes 8..n are the top n - 8 bytes of the last eight.
        9..=15 => (load8(0), load8(n - 8) >> (8 * (16 - n))),
        8 => (load8(0), 0),
        // Bytes 4..n are the top n - 4 bytes of the last four.
        4..=7 => (load4(0) | ((load4(n - 4) >> (8 * (8 - n))) << 32), 0),
        // One to three bytes: the first, middle and last (which overlap
        // below three), each in its place.
        1..=3 => (
            u64::from(key[0])
                | u64::from(key[n / 2]) << (8 * (n / 2))
                | u64::from(key[n - 1]) << (8 * (n - 1)),
            0,
        ),
        _ => (0, 0),
    }
}

impl KeyCache {
    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.used
    }

    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = Slot::default());
        self.arena.clear();
        self.used = 0;
    }

    #[inline(always)]
    fn hash(&self, key: &[u8], w0: u64, w1: u64) -> u64 {
        let mut h = mix(
            w0 ^ self.seed,
            w1 ^ 0x9E37_79B9_7F4A_7C15 ^ key.len() as u64,
        );
        if key.len() > 16 {
            for c in key[16..].chunks(8) {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                h = mix(h ^ u64::from_le_bytes(b), 0xA076_1D64_78BD_642F);
            }
        }
        h | 1
    }

    #[inline(always)]
    pub fn get(&self, key: &[u8]) -> Option<u32> {
        let (w0, w1) = words(key);
        let h = self.hash(key, w0, w1);
        let mask = self.slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let s = &self.slots[i];
            if s.hash == 0 {
                return None;
            }
            if s.hash == h
                && s.len as usize == key.len()
                && s.w0 == w0
                && s.w1 == w1
                && (key.len() <= 16
                    || &self.arena[s.off as usize..s.off as usize + key.len()] == key)
            {
                return Some(s.class);
            }
            i = (i + 1) & mask;
        }
    }

    pub fn insert(&mut self, key: &[u8], class: u32) {
        if (self.used + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let (w0, w1) = words(key);
        let h = self.hash(key, w0, w1);
        let off = self.arena.len() as u32;
        if key.len() > 16 {
            self.arena.extend_from_slice(key);
        }
        self.place(Slot {
            hash: h,
            w0,
            w1,
            len: key.len() as u32,
            class,
            off,
        });
        self.used += 1;
    }

    fn place(&mut self, slot: Slot) {
        let mask = self.slots.len() - 1;
        let mut i = slot.hash as usize & mask;
        while self.slots[i].hash != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
    }

    fn grow(&mut self) {
        let bigger = vec![Slot::default(); self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, bigger);
        for s in old.into_iter().filter(|s| s.hash != 0) {
            self.place(s);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn words_are_the_zero_padded_first_sixteen_bytes() {
        let text = b"abcdefghijklmnopqrstuvwxyz";
        for n in 0..=text.len() {
            let key = &text[..n];
            let mut buf = [0u8; 16];
            buf[..n.min(16)].copy_from_slice(&key[..n.min(16)]);
            let want = (
                u64::from_le_bytes(buf[..8].try_into().unwrap()),
                u64::from_le_bytes(buf[8..].try_into().unwrap()),
            );
            assert_eq!(super::words(key), want, "{n} bytes");
        }
    }

    use super::*;

    #[test]
    fn finds_what_it_holds_and_nothing_else() {
        let mut c = KeyCache::default();
        let keys: Vec<String> = (0..3000)
            .map(|i| {
                if i % 3 == 0 {
                    format!("a-rather-long-key-name-{i}")
                } else {
                    format!("k{i}")
                }
            })
            .collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(c.get(k.as_bytes()), None);
            c.insert(k.as_bytes(), i as u32);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(c.get(k.as_bytes()), Some(i as u32), "{k}");
        }
        assert_eq!(c.get(b"k"), None);
        assert_eq!(c.get(b"a-rather-long-key-name-1"), None);
        assert_eq!(c.get(b""), None);
        c.insert(b"", 7);
        assert_eq!(c.get(b""), Some(7));
        assert_eq!(c.len(), 3001);
        c.clear();
        assert_eq!(c.get(b"k1"), None);
    }
}
