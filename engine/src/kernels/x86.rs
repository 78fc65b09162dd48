//! x86-64 SIMD kernels: dot products of quantized weight rows with quantized activation rows.
//!
//! This file decodes the GGUF formats in registers: a super-block becomes 32-byte vectors of
//! values with a per-lane scale and a min (see `formats`). Two kernel families read them, both
//! computing each block's integer dot product exactly and then the same float operations in the
//! same order, so that a row's result does not depend on which one ran it:
//! [`rows`] (decode: weight rows as stored, a few input rows) and [`packed`] (prefill: weight
//! rows decoded once per call and interleaved, many input rows).
//!
//! Each is written once in a macro and compiled twice, for AVX2+FMA+F16C and for AVX-512 VNNI;
//! the caller picks one at run time after checking the CPU, so a release build needs no
//! `-C target-cpu`.
#![allow(unsafe_code)]

mod packed;
mod rows;
pub mod vector;

use core::arch::x86_64::*;

pub use packed::{packed_rows, packed_rows_k};
pub use rows::{GROUP, dot_rows_k, dot_rows8};

use super::formats::{Format, f16_to_f32, q4k_scale_min};

const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q5_0: u8 = 2;
const Q4K: u8 = 3;
const Q6K: u8 = 4;

/// A decoded block: weight `e` is `scale[lane of e] * v[e] + min`, where lane `i` of the eight
/// f32 lanes covers elements `4i..4i + 4` (the lane layout of the integer dot products).
#[derive(Clone, Copy)]
struct Decoded {
    v: __m256i,
    scale: __m256,
    min: f32,
}

/// The instruction sets with a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512 VNNI, BW and VL on 256-bit registers (with AVX2, FMA, F16C) for the integer
    /// kernels; AVX-512F's 512-bit registers for attention's f32 work.
    Avx512Vnni,
}

impl Isa {
    /// The best instruction set this CPU has, if any.
    pub fn detect() -> Option<Self> {
        let base = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if !base {
            return None;
        }
        if is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw")
        {
            Some(Self::Avx512Vnni)
        } else {
            Some(Self::Avx2)
        }
    }
}

/// The eight 6-bit scales and mins packed in a Q4_K super-block's 12 bytes, as
/// [`q4k_scale_min`] unpacks them one at a time, here four at a time in 32-bit words.
#[inline(always)]
pub(super) fn q4k_scales_mins(packed: [u8; 12]) -> ([u8; 8], [u8; 8]) {
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let low6 = 0x3f3f_3f3f;
    let sc_hi = (c & 0x0f0f_0f0f) | ((a >> 2) & 0x3030_3030);
    let m_hi = ((c >> 4) & 0x0f0f_0f0f) | ((b >> 2) & 0x3030_3030);
    let join = |lo: u32, hi: u32| ((lo as u64) | ((hi as u64) << 32)).to_le_bytes();
    (join(a & low6, sc_hi), join(b & low6, m_hi))
}

macro_rules! kernels {
    ($name:ident, $features:literal, $dot:ident, $nibbles:ident, $bit4:ident, $vnni:literal) => {
        mod $name {
            use super::*;

            #[inline(always)]
            fn f16(bits: u16) -> f32 {
                f16_to_f32(bits)
            }

            /// The four 32-value blocks of half `half` (0 or 1) of the Q6_K super-block at `p`,
            /// unsigned (0..63, the offset of 32 not taken off).
            ///
            /// # Safety
            /// `p` must point at one whole Q6_K super-block.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q6k_half(p: *const u8, half: usize) -> [__m256i; 4] {
                let lo4 = _mm256_set1_epi8(0x0f);
                let three = _mm256_set1_epi8(3);
                // SAFETY: low bits at 64 * half.., high bits at 128 + 32 * half.., inside the
                // 210-byte super-block.
                let (ql0, ql1, qh) = unsafe {
                    (
                        _mm256_loadu_si256(p.add(64 * half).cast()),
                        _mm256_loadu_si256(p.add(64 * half + 32).cast()),
                        _mm256_loadu_si256(p.add(128 + 32 * half).cast()),
                    )
                };
                let join = |low: __m256i, high: __m256i| {
                    _mm256_or_si256(low, _mm256_slli_epi16::<4>(_mm256_and_si256(high, three)))
                };
                [
                    join(_mm256_and_si256(ql0, lo4), qh),
                    join(_mm256_and_si256(ql1, lo4), _mm256_srli_epi16::<2>(qh)),
                    join(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), lo4),
                        _mm256_srli_epi16::<4>(qh),
                    ),
                    join(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), lo4),
                        _mm256_srli_epi16::<6>(qh),
                    ),
                ]
            }

            /// Decodes the super-block at `p` into `out` (1 block for the 32-element formats, 8
            /// for the k-quants).
            ///
            /// # Safety
            /// `p` must point at one whole super-block of format `F`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn decode<const F: u8>(p: *const u8, out: &mut [Decoded; 8]) {
                let lo4 = _mm256_set1_epi8(0x0f);
                // SAFETY (whole function): every offset below lies inside the super-block's
                // layout (see `formats`), which the caller guarantees is readable; all loads are
                // unaligned loads.
                unsafe {
                    let bits = p.cast::<u16>().read_unaligned();
                    // The `_0` formats' scale converted as a whole vector (every lane is used,
                    // so it stays one broadcast and one conversion).
                    let dv = _mm256_cvtph_ps(_mm_set1_epi16(bits as i16));
                    let d = _mm256_cvtss_f32(dv);
                    match F {
                        Q8_0 => {
                            let v = _mm256_loadu_si256(p.add(2).cast());
                            out[0] = Decoded {
                                v,
                                scale: dv,
                                min: 0.0,
                            };
                        }
                        Q4_0 => {
                            let v = $nibbles(_mm_loadu_si128(p.add(2).cast()));
                            out[0] = Decoded {
                                v,
                                scale: dv,
                                min: -8.0 * d,
                            };
                        }
                        Q5_0 => {
                            let qh = p.add(2).cast::<u32>().read_unaligned();
                            let v = $nibbles(_mm_loadu_si128(p.add(6).cast()));
                            out[0] = Decoded {
                                v: $bit4(v, qh),
                                scale: dv,
                                min: -16.0 * d,
                            };
                        }
                        Q4K => {
                            let dmin = f16(p.add(2).cast::<u16>().read_unaligned());
                            let scales = p.add(4).cast::<[u8; 12]>().read_unaligned();
                            for pair in 0..4 {
                                let x = _mm256_loadu_si256(p.add(16 + 32 * pair).cast());
                                let halves = [
                                    _mm256_and_si256(x, lo4),
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(x), lo4),
                                ];
                                for (h, v) in halves.into_iter().enumerate() {
                                    let (sc, m) = q4k_scale_min(&scales, 2 * pair + h);
                                    out[2 * pair + h] = Decoded {
                                        v,
                                        scale: _mm256_set1_ps(d * sc as f32),
                                        min: -dmin * m as f32,
                                    };
                                }
                            }
                        }
                        _ => {
                            let d = f16(p.add(208).cast::<u16>().read_unaligned());
                            let offset = _mm256_set1_epi8(32);
                            for half in 0..2 {
                                let qs = q6k_half(p, half);
                                let sc = p.add(192 + 8 * half).cast::<[i8; 8]>().read_unaligned();
                                for (k, q) in qs.into_iter().enumerate() {
                                    let (s0, s1) = (d * sc[2 * k] as f32, d * sc[2 * k + 1] as f32);
                                    out[4 * half + k] = Decoded {
                                        v: _mm256_sub_epi8(q, offset),
                                        scale: _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0)),
                                        min: 0.0,
                                    };
                                }
                            }
                        }
                    }
                }
            }

            /// Decodes a whole row into values, per-half scales and per-block mins (the
            /// layout of [`crate::kernels::formats::Block`], one entry per block).
            ///
            /// # Safety
            /// `w` must be whole super-blocks of `F`; `v` must hold 32 values, `scale` 2 and
            /// `min` 1 per block of `w`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn decode_row<const F: u8>(
                w: &[u8],
                v: &mut [i8],
                scale: &mut [f32],
                min: &mut [f32],
            ) {
                let (sb_bytes, per) = match F {
                    Q8_0 => (34, 1),
                    Q4_0 => (18, 1),
                    Q5_0 => (22, 1),
                    Q4K => (144, 8),
                    _ => (210, 8),
                };
                let mut blocks = [Decoded {
                    v: _mm256_setzero_si256(),
                    scale: _mm256_setzero_ps(),
                    min: 0.0,
                }; 8];
                for s in 0..w.len() / sb_bytes {
                    // SAFETY: `s` indexes a whole super-block of `w`, and block `s * per + b`
                    // has room in `v`, `scale` and `min` (the caller's contract).
                    unsafe {
                        decode::<F>(w.as_ptr().add(s * sb_bytes), &mut blocks);
                        for (b, blk) in blocks.iter().take(per).enumerate() {
                            let idx = s * per + b;
                            _mm256_storeu_si256(v.as_mut_ptr().add(32 * idx).cast(), blk.v);
                            let mut lanes = [0f32; 8];
                            _mm256_storeu_ps(lanes.as_mut_ptr(), blk.scale);
                            scale[2 * idx] = lanes[0];
                            scale[2 * idx + 1] = lanes[4];
                            min[idx] = blk.min;
                        }
                    }
                }
            }
        }
    };
}

/// The 32 low and high nibbles of 16 bytes, as elements 0..16 and 16..32.
#[target_feature(enable = "avx2")]
fn nibbles_avx2(x: __m128i) -> __m256i {
    let m = _mm_set1_epi8(0x0f);
    _mm256_set_m128i(
        _mm_and_si128(_mm_srli_epi16::<4>(x), m),
        _mm_and_si128(x, m),
    )
}

/// As [`nibbles_avx2`], with one per-lane shift.
#[target_feature(enable = "avx2,avx512bw,avx512vl")]
fn nibbles_avx512(x: __m128i) -> __m256i {
    let shifts = _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4);
    let both = _mm256_srlv_epi16(_mm256_broadcastsi128_si256(x), shifts);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// `v` with 0x10 added to byte `e` where bit `e` of `bits` is set (Q5_0's fifth bit).
#[target_feature(enable = "avx2")]
fn bit4_avx2(v: __m256i, bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        ),
    );
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let hit = _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask);
    _mm256_or_si256(v, _mm256_and_si256(hit, _mm256_set1_epi8(0x10)))
}

/// As [`bit4_avx2`], with the bits as a byte mask.
#[target_feature(enable = "avx2,avx512bw,avx512vl")]
fn bit4_avx512(v: __m256i, bits: u32) -> __m256i {
    _mm256_mask_add_epi8(v, bits, v, _mm256_set1_epi8(0x10))
}

#[target_feature(enable = "avx2")]
fn dot_maddubs(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    // No pair of products can saturate the 16-bit sums. Row kernels: |s| <= 127 after
    // activation quantization and u <= 128 (Q4_K's unsigned nibbles, or |v| of a signed value),
    // so a pair is at most 2 * 128 * 127 = 32512. Packed kernels: u <= 255 (a biased
    // activation) and |s| <= 32 (every packed format but Q8_0, which AVX2 does not pack), so at
    // most 2 * 255 * 32 = 16320.
    let pairs = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
    _mm256_add_epi32(acc, pairs)
}

#[target_feature(enable = "avx512vnni,avx512vl")]
fn dot_dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

kernels!(
    avx2,
    "avx2,fma,f16c",
    dot_maddubs,
    nibbles_avx2,
    bit4_avx2,
    false
);
kernels!(
    vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw",
    dot_dpbusd,
    nibbles_avx512,
    bit4_avx512,
    true
);

/// Decodes row `w` of `format` as [`crate::kernels::formats::decode_block`] does for each block:
/// 32 values, two half scales and a min per block.
pub fn decode_row(
    isa: Isa,
    format: Format,
    w: &[u8],
    v: &mut [i8],
    scale: &mut [f32],
    min: &mut [f32],
) {
    let blocks = w.len() / format.super_bytes() * format.super_elems() / 32;
    assert_eq!(w.len() % format.super_bytes(), 0, "whole super-blocks");
    assert!(v.len() >= 32 * blocks && scale.len() >= 2 * blocks && min.len() >= blocks);
    macro_rules! call {
        ($isa:ident) => {
            // SAFETY: `isa` was detected on this CPU; the asserts above are the bounds the
            // decoder relies on.
            unsafe {
                match format {
                    Format::Q8_0 => $isa::decode_row::<Q8_0>(w, v, scale, min),
                    Format::Q4_0 => $isa::decode_row::<Q4_0>(w, v, scale, min),
                    Format::Q5_0 => $isa::decode_row::<Q5_0>(w, v, scale, min),
                    Format::Q4K => $isa::decode_row::<Q4K>(w, v, scale, min),
                    Format::Q6K => $isa::decode_row::<Q6K>(w, v, scale, min),
                }
            }
        };
    }
    match isa {
        Isa::Avx2 => call!(avx2),
        Isa::Avx512Vnni => call!(vnni),
    }
}
