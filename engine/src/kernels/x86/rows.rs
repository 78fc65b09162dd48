//! Decode kernels: weight rows read as the file stores them, against a few activation rows.
//!
//! Their arithmetic is the packed prefill kernels' ([`super::packed`]) to the bit, so that a
//! sequence's logits do not depend on how many rows share its forward pass. Both first compute
//! each block's (or super-block's) integer dot product exactly, then apply the same float
//! operations in the same order:
//!
//! - Q8_0, Q4_0, Q5_0: per 32-value block, `f = float(dot) * d_a`, `acc = fma(f, d_w, acc)`, then
//!   for the offset formats `acc = fma(min_w, sum_a, acc)`. Eight weight rows go together, one
//!   per f32 lane as in the packed kernels: each row's per-lane partial sums are reduced across
//!   lanes (integers, so exactly) into one vector, and the float work is one vector operation for
//!   the eight rows instead of one per row.
//! - Q4_K, Q6_K: per 256-value super-block, the sub-blocks' products scaled by their integer
//!   scales and summed in integers, `f = float(total) * d_w`, Q4_K's `f -= float(mins) * dmin`
//!   (fused), `acc = fma(f, d_a, acc)`. One weight row at a time: there is one float step per 256
//!   values, so the cross-lane sums cost little.
//!
//! The integer products are `u8 x i8` (`vpmaddubsw` on AVX2, `vpdpbusd` with AVX-512 VNNI):
//! unsigned values (Q4_0, Q5_0, Q4_K) go in as they are; Q8_0 goes in biased by 128 with VNNI (the
//! activation block's `Σq` takes it off) and moves its sign onto the activation on AVX2; Q6_K's
//! values go in unsigned and the offset of 32 comes off through the 16-value sums.

use core::arch::x86_64::*;

use super::{Isa, Q4_0, Q4K, Q5_0, Q6K, Q8_0};
use crate::kernels::activations::{QuantizedRows, SuperRows};
use crate::kernels::formats::Format;

/// Weight rows per group in [`dot_rows8`].
pub const GROUP: usize = 8;

/// How far ahead of the block being read [`dot_rows8`] prefetches each weight row, in bytes.
const PREFETCH: usize = 384;

/// Dot products of up to eight weight rows `w` (Q8_0, Q4_0 or Q5_0, whole blocks) with
/// activation rows `first..first + RA` of `a`: `out[i][r]` is input row `first + i` against
/// weight row `r` (lanes past `w.len()` are meaningless). `isa` must come from [`Isa::detect`]
/// on this machine.
pub fn dot_rows8<const RA: usize>(
    isa: Isa,
    format: Format,
    w: &[&[u8]],
    a: &QuantizedRows,
    first: usize,
) -> [[f32; GROUP]; RA] {
    assert!(
        !w.is_empty() && w.len() <= GROUP,
        "one to eight weight rows"
    );
    let row_bytes = format.row_bytes(a.blocks * 32);
    assert!(w.iter().all(|r| r.len() == row_bytes), "weight row length");
    assert!((first + RA) * a.blocks <= a.d.len(), "activation rows");
    assert!(!a.biased, "row kernels read plain activations");
    // Missing rows repeat the first: their lanes are computed and dropped.
    let rows: [*const u8; GROUP] = core::array::from_fn(|r| w.get(r).unwrap_or(&w[0]).as_ptr());
    macro_rules! call {
        ($isa:ident) => {
            // SAFETY: `isa` was detected on this CPU, so the target features the kernel is
            // compiled for are present; the asserts above bound every pointer the kernel forms
            // (eight whole rows of `a.blocks` blocks, whole blocks of the activation rows).
            unsafe {
                match format {
                    Format::Q8_0 => $isa::rows8::<Q8_0, RA>(rows, a, first),
                    Format::Q4_0 => $isa::rows8::<Q4_0, RA>(rows, a, first),
                    Format::Q5_0 => $isa::rows8::<Q5_0, RA>(rows, a, first),
                    Format::Q4K | Format::Q6K => {
                        unreachable!("the k-quants' row kernel is dot_rows_k")
                    }
                }
            }
        };
    }
    match isa {
        Isa::Avx2 => call!(avx2),
        Isa::Avx512Vnni => call!(vnni),
    }
}

/// Dot products of the Q4_K or Q6_K weight row `w` with rows `first..first + RA` of `a`.
/// `isa` must come from [`Isa::detect`] on this machine.
pub fn dot_rows_k<const RA: usize>(
    isa: Isa,
    format: Format,
    w: &[u8],
    a: &SuperRows,
    first: usize,
) -> [f32; RA] {
    assert_eq!(
        w.len(),
        format.row_bytes(a.supers * 256),
        "weight row length"
    );
    assert!(first + RA <= a.rows(), "activation rows");
    assert!(
        !a.biased,
        "the k-quant row kernels read unbiased activations"
    );
    macro_rules! call {
        ($isa:ident) => {
            // SAFETY: `isa` was detected on this CPU; the asserts above bound every read.
            unsafe {
                match format {
                    Format::Q4K => $isa::rows_k::<Q4K, RA>(w, a, first),
                    Format::Q6K => $isa::rows_k::<Q6K, RA>(w, a, first),
                    _ => unreachable!("only the k-quants have super-block kernels"),
                }
            }
        };
    }
    match isa {
        Isa::Avx2 => call!(avx2),
        Isa::Avx512Vnni => call!(vnni),
    }
}

/// Lane `r` of the result is the sum of the eight lanes of `v[r]`.
#[target_feature(enable = "avx2")]
fn transpose_sum(v: [__m256i; GROUP]) -> __m256i {
    let pairs = [
        _mm256_hadd_epi32(v[0], v[1]),
        _mm256_hadd_epi32(v[2], v[3]),
        _mm256_hadd_epi32(v[4], v[5]),
        _mm256_hadd_epi32(v[6], v[7]),
    ];
    // Each 128-bit half now holds rows 0..4 (and 4..8) summed over that half's four lanes.
    let low = _mm256_hadd_epi32(pairs[0], pairs[1]);
    let high = _mm256_hadd_epi32(pairs[2], pairs[3]);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(low, high),
        _mm256_permute2x128_si256::<0x31>(low, high),
    )
}

/// The sum of the eight lanes of `v`.
#[target_feature(enable = "avx2")]
fn sum_lanes(v: __m256i) -> i32 {
    let x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32::<0x4e>(x));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32::<0xb1>(x));
    _mm_cvtsi128_si32(x)
}

macro_rules! row_kernels {
    ($name:ident, $features:literal, $dot:ident, $vnni:literal) => {
        mod $name {
            use super::*;
            use crate::kernels::formats::f16_to_f32;
            use crate::kernels::x86::{
                Decoded, q4k_scales_mins, $dot, $name::decode, $name::q6k_half,
            };

            /// # Safety
            /// See [`super::dot_rows8`], which checks the bounds this relies on: each of `w`
            /// points at a whole row of `a.blocks` blocks of `F`.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn rows8<const F: u8, const RA: usize>(
                w: [*const u8; GROUP],
                a: &QuantizedRows,
                first: usize,
            ) -> [[f32; GROUP]; RA] {
                let block_bytes = match F {
                    Q8_0 => 34,
                    Q4_0 => 18,
                    _ => 22,
                };
                // With VNNI, Q8_0's values go in as `v + 128` and `-128 * Σq` starts the sum.
                let biased = F == Q8_0 && $vnni;
                let signed = F == Q8_0 && !$vnni;
                let min_factor = match F {
                    Q4_0 => -8.0,
                    Q5_0 => -16.0,
                    _ => 0.0,
                };
                let mut acc = [_mm256_setzero_ps(); RA];
                let mut decoded = [Decoded {
                    v: _mm256_setzero_si256(),
                    scale: _mm256_setzero_ps(),
                    min: 0.0,
                }; 8];
                for s in 0..a.blocks {
                    let mut raw = [_mm256_setzero_si256(); GROUP];
                    let mut v = [_mm256_setzero_si256(); GROUP];
                    let mut bits = [0u16; GROUP];
                    for r in 0..GROUP {
                        // SAFETY (block): block `s` of row `r` is inside that row.
                        unsafe {
                            let p = w[r].add(s * block_bytes);
                            // Eight rows are eight streams, more than the hardware prefetcher
                            // follows well: ask for each row's bytes a few lines ahead.
                            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH).cast());
                            decode::<F>(p, &mut decoded);
                            bits[r] = p.cast::<u16>().read_unaligned();
                        }
                        raw[r] = decoded[0].v;
                        v[r] = if biased {
                            _mm256_xor_si256(raw[r], _mm256_set1_epi8(-128))
                        } else if signed {
                            _mm256_sign_epi8(raw[r], raw[r])
                        } else {
                            raw[r]
                        };
                    }
                    // From registers: eight narrow stores read back as one vector would stall.
                    let [b0, b1, b2, b3, b4, b5, b6, b7] = bits.map(|b| b as i16);
                    let d_w = _mm256_cvtph_ps(_mm_set_epi16(b7, b6, b5, b4, b3, b2, b1, b0));
                    let min_w = _mm256_mul_ps(d_w, _mm256_set1_ps(min_factor));
                    for i in 0..RA {
                        let row = first + i;
                        let at = row * a.blocks + s;
                        // SAFETY: block `s` of activation row `row` is inside `a`.
                        let x = unsafe { _mm256_loadu_si256(a.qs.as_ptr().add(32 * at).cast()) };
                        let start = if biased {
                            _mm256_zextsi128_si256(_mm_cvtsi32_si128(-128 * a.isum[at]))
                        } else {
                            _mm256_setzero_si256()
                        };
                        let dots: [__m256i; GROUP] = core::array::from_fn(|r| {
                            if signed {
                                $dot(start, v[r], _mm256_sign_epi8(x, raw[r]))
                            } else {
                                $dot(start, v[r], x)
                            }
                        });
                        let f = _mm256_mul_ps(
                            _mm256_cvtepi32_ps(transpose_sum(dots)),
                            _mm256_set1_ps(a.d[at]),
                        );
                        acc[i] = _mm256_fmadd_ps(f, d_w, acc[i]);
                        if F != Q8_0 {
                            acc[i] = _mm256_fmadd_ps(min_w, _mm256_set1_ps(a.sum[at]), acc[i]);
                        }
                    }
                }
                core::array::from_fn(|i| {
                    let mut out = [0f32; GROUP];
                    // SAFETY: `out` is eight f32s.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc[i]) };
                    out
                })
            }

            /// # Safety
            /// See [`super::dot_rows_k`], which checks the bounds this relies on.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn rows_k<const F: u8, const RA: usize>(
                w: &[u8],
                a: &SuperRows,
                first: usize,
            ) -> [f32; RA] {
                let sb_bytes = if F == Q4K { 144 } else { 210 };
                let lo4 = _mm256_set1_epi8(0x0f);
                let mut acc = [0f32; RA];
                let xs: [*const i8; RA] = core::array::from_fn(|i| a.row(first + i).as_ptr());
                let ds: [&[f32]; RA] = core::array::from_fn(|i| a.row_d(first + i));
                let sums: [*const i16; RA] =
                    core::array::from_fn(|i| a.row_sums16(first + i).as_ptr());
                for s in 0..w.len() / sb_bytes {
                    // SAFETY (loop body): super-block `s` is whole inside `w`, and values
                    // `256 * s..256 * s + 256` and sums `16 * s..16 * s +16` are inside every
                    // activation row (the caller's bounds).
                    unsafe {
                        let p = w.as_ptr().add(s * sb_bytes);
                        let mut dots = [_mm256_setzero_si256(); RA];
                        if F == Q4K {
                            let d = f16_to_f32(p.cast::<u16>().read_unaligned());
                            let dmin = f16_to_f32(p.add(2).cast::<u16>().read_unaligned());
                            let (sc, m) =
                                q4k_scales_mins(p.add(4).cast::<[u8; 12]>().read_unaligned());
                            for pair in 0..4 {
                                let q = _mm256_loadu_si256(p.add(16 + 32 * pair).cast());
                                let lo = _mm256_and_si256(q, lo4);
                                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), lo4);
                                let (s0, s1) = (
                                    _mm256_set1_epi16(sc[2 * pair] as i16),
                                    _mm256_set1_epi16(sc[2 * pair + 1] as i16),
                                );
                                for i in 0..RA {
                                    let x = xs[i].add(256 * s + 64 * pair);
                                    let x0 = _mm256_loadu_si256(x.cast());
                                    let x1 = _mm256_loadu_si256(x.add(32).cast());
                                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), s0);
                                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), s1);
                                    dots[i] = _mm256_add_epi32(dots[i], _mm256_add_epi32(p0, p1));
                                }
                            }
                            // Each block's min times the block's sum: the 16-value sums against
                            // the mins repeated twice.
                            let pairs = _mm_shuffle_epi8(
                                _mm_cvtsi64_si128(u64::from_le_bytes(m) as i64),
                                _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
                            );
                            let m16 = _mm256_cvtepu8_epi16(pairs);
                            for i in 0..RA {
                                let sum16 = _mm256_loadu_si256(sums[i].add(16 * s).cast());
                                let mins = sum_lanes(_mm256_madd_epi16(m16, sum16));
                                let f = sum_lanes(dots[i]) as f32 * d;
                                let f = (-(mins as f32)).mul_add(dmin, f);
                                acc[i] = f.mul_add(ds[i][s], acc[i]);
                            }
                        } else {
                            let d = f16_to_f32(p.add(208).cast::<u16>().read_unaligned());
                            let scales = p.add(192).cast::<[i8; 16]>().read_unaligned();
                            for half in 0..2 {
                                let qs = q6k_half(p, half);
                                // Unsigned 0..63; the offset of 32 comes off below.
                                for (k, q) in qs.into_iter().enumerate() {
                                    let sc = _mm256_set_m128i(
                                        _mm_set1_epi16(scales[8 * half + 2 * k + 1] as i16),
                                        _mm_set1_epi16(scales[8 * half + 2 * k] as i16),
                                    );
                                    for i in 0..RA {
                                        let x = xs[i].add(256 * s + 128 * half + 32 * k);
                                        let x = _mm256_loadu_si256(x.cast());
                                        let prod =
                                            _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), sc);
                                        dots[i] = _mm256_add_epi32(dots[i], prod);
                                    }
                                }
                            }
                            let sc16 =
                                _mm256_cvtepi8_epi16(_mm_loadu_si128(scales.as_ptr().cast()));
                            for i in 0..RA {
                                let sum16 = _mm256_loadu_si256(sums[i].add(16 * s).cast());
                                let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, sum16));
                                let f = sum_lanes(_mm256_sub_epi32(dots[i], offset)) as f32 * d;
                                acc[i] = f.mul_add(ds[i][s], acc[i]);
                            }
                        }
                    }
                }
                acc
            }
        }
    };
}

row_kernels!(avx2, "avx2,fma,f16c", dot_maddubs, false);
row_kernels!(
    vnni,
    "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw",
    dot_dpbusd,
    true
);
