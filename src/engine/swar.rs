//! Eight bytes at a time in one machine word (SWAR): the masks the
//! tokenizer's string scan and the detectors' digit-run gate share.

/// The low seven bits of every byte.
pub(crate) const LO7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
/// The high bit of every byte.
pub(crate) const HI: u64 = 0x8080_8080_8080_8080;
/// One in every byte: `ONES * c` is the byte `c` in every lane.
pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;

/// High bit set in each byte of `x` that is zero (exact: the masked add
/// cannot carry between bytes).
#[inline(always)]
pub(crate) fn zero_bytes(x: u64) -> u64 {
    !(((x & LO7).wrapping_add(LO7)) | x) & HI
}
