//! Prefill kernels: input rows against [`Packed`] groups of sixteen weight rows, for AVX-512 VNNI
//! and for AVX2 (one loop, written once in a macro).
//!
//! Per 4-byte step, one broadcast input word and two `vpdpbusd` advance the dot products of all
//! sixteen rows (on AVX2, `vpmaddubsw` + `vpmaddwd` each: the 16-bit pair sums of an unsigned
//! activation byte times a weight hold only for weights of at most 32 in magnitude, so Q8_0 is
//! not packed there); with four input rows that is eight independent accumulation chains, enough to
//! keep the unit busy despite its latency. Q8_0, Q4_0 and Q5_0 groups convert and scale per
//! 32-value block; the k-quants (Q4_K, Q6_K) scale their sub-blocks in integers and convert once
//! per 256 values ([`crate::kernels::packed::SuperScales`]). Activations are biased (`q + 128`, unsigned) and each
//! sub-block's dot product starts from the weights' `-128 * Σw`.

use core::arch::x86_64::*;

use super::Isa;
use crate::kernels::activations::{QuantizedRows, SuperRows};
use crate::kernels::packed::{Packed, ROWS};

/// Dot products of the sixteen rows of `p` with input rows `first..first + RA` of `a` (biased),
/// one `[f32; 16]` per input row. On AVX2 the group's values must fit the 16-bit pair sums
/// ([`Packed::fits_16_bit_pairs`], checked).
pub fn packed_rows<const RA: usize>(
    isa: Isa,
    p: &Packed,
    a: &QuantizedRows,
    first: usize,
) -> [[f32; ROWS]; RA] {
    check_group(isa, p, a.biased, a.blocks * 32);
    assert!((first + RA) * a.blocks <= a.d.len(), "activation rows");
    macro_rules! call {
        ($isa:ident) => {
            // SAFETY: `isa` was detected on this CPU; the asserts above bound every read the
            // kernel makes.
            unsafe {
                match (p.sub_elems, p.has_min) {
                    (16, _) => $isa::rows::<16, false, RA>(p, a, first),
                    (_, false) => $isa::rows::<32, false, RA>(p, a, first),
                    (_, true) => $isa::rows::<32, true, RA>(p, a, first),
                }
            }
        };
    }
    match isa {
        Isa::Avx2 => call!(avx2),
        Isa::Avx512Vnni => call!(vnni),
    }
}

/// What both entry points check of a group against activation rows of `cols` values: biased
/// activations, values narrow enough for `isa`, and the group's values and biases covering `cols`.
fn check_group(isa: Isa, p: &Packed, biased: bool, cols: usize) {
    assert!(biased, "packed kernels read biased activations");
    assert!(
        isa == Isa::Avx512Vnni || p.fits_16_bit_pairs,
        "weights too wide for AVX2"
    );
    assert_eq!(p.subs * p.sub_elems, cols, "row length");
    assert!(p.w.len() >= cols * ROWS && p.bias.len() >= p.subs * ROWS);
}

/// [`packed_rows`] for a k-quant group (`p.k` set) against activations quantized per 256
/// (biased).
pub fn packed_rows_k<const RA: usize>(
    isa: Isa,
    p: &Packed,
    a: &SuperRows,
    first: usize,
) -> [[f32; ROWS]; RA] {
    check_group(isa, p, a.biased, a.supers * 256);
    let k = p.k.as_ref().expect("a k-quant group");
    let supers = a.supers;
    assert!(k.sc.len() >= p.subs * ROWS && k.d.len() >= supers * ROWS);
    assert!(!p.has_min || (k.mins.len() >= 8 * supers * ROWS && k.dmin.len() >= supers * ROWS));
    assert!((first + RA) * supers <= a.d.len(), "activation rows");
    macro_rules! call {
        ($isa:ident) => {
            // SAFETY: `isa` was detected on this CPU; the asserts above bound every read the
            // kernel makes.
            unsafe {
                match (p.sub_elems, p.has_min) {
                    (16, false) => $isa::rows_k::<16, false, RA>(p, k, a, first),
                    (32, true) => $isa::rows_k::<32, true, RA>(p, k, a, first),
                    _ => unreachable!("k-quant groups are Q6_K (16, no mins) or Q4_K (32, mins)"),
                }
            }
        };
    }
    match isa {
        Isa::Avx2 => call!(avx2),
        Isa::Avx512Vnni => call!(vnni),
    }
}

/// The two kernels for one instruction set: `$dot` adds the products of four unsigned and four
/// signed bytes per 32-bit lane (`vpdpbusd`, or `vpmaddubsw` + `vpmaddwd` on AVX2), `$pairs` the
/// products of two 16-bit pairs (`vpdpwssd`, or `vpmaddwd` + add).
macro_rules! packed_kernels {
    ($name:ident, $features:literal, $dot:ident, $pairs:ident) => {
        mod $name {
            use core::arch::x86_64::*;

            use super::super::$dot;
            use super::$pairs;
            use crate::kernels::activations::{QuantizedRows, SuperRows};
            use crate::kernels::packed::{Packed, ROWS, SuperScales};

            /// # Safety
            /// See [`super::packed_rows_k`], which checks what this relies on.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn rows_k<const G: usize, const MIN: bool, const RA: usize>(
                p: &Packed,
                k: &SuperScales,
                a: &SuperRows,
                first: usize,
            ) -> [[f32; ROWS]; RA] {
                let per = 256 / G;
                let mut acc = [[_mm256_setzero_ps(); 2]; RA];
                let x: [*const u8; RA] = core::array::from_fn(|i| a.row(first + i).as_ptr().cast());
                let d: [*const f32; RA] = core::array::from_fn(|i| a.row_d(first + i).as_ptr());
                let sums: [*const i16; RA] =
                    core::array::from_fn(|i| a.row_sums16(first + i).as_ptr());
                let (w, bias, sc) = (p.w.as_ptr(), p.bias.as_ptr(), k.sc.as_ptr());
                for b in 0..a.supers {
                    // SAFETY (loop body): super-block `b` has `per` sub-blocks of `G / 4` interleaved
                    // 64-byte steps, and sixteen biases and scales per sub-block, inside `p`; sixteen
                    // `d`, `dmin` and eight min pairs per row inside `k`; values `256 * b..256 * b + 256`,
                    // scale `b` and sums `16 * b..16 * b + 16` inside every activation row (asserted by the
                    // caller).
                    unsafe {
                        let mut total = [[_mm256_setzero_si256(); 2]; RA];
                        for j in 0..per {
                            let s = b * per + j;
                            let start = [0, 1]
                                .map(|h| _mm256_loadu_si256(bias.add(s * ROWS + 8 * h).cast()));
                            let mut dot = [start; RA];
                            for step in 0..G / 4 {
                                let at = w.add((s * (G / 4) + step) * ROWS * 4);
                                let wv = [0, 1].map(|h| _mm256_loadu_si256(at.add(32 * h).cast()));
                                for i in 0..RA {
                                    let word =
                                        x[i].add(s * G + 4 * step).cast::<i32>().read_unaligned();
                                    let word = _mm256_set1_epi32(word);
                                    for h in 0..2 {
                                        dot[i][h] = $dot(dot[i][h], word, wv[h]);
                                    }
                                }
                            }
                            // Integer scales: at most 8 * 63 * 32 * 15 * 127 (Q4_K) or 16 * 128 * 16 * 32 *
                            // 127 (Q6_K) in magnitude over a super-block, well inside i32.
                            let scale =
                                [0, 1].map(|h| _mm256_loadu_si256(sc.add(s * ROWS + 8 * h).cast()));
                            for i in 0..RA {
                                for h in 0..2 {
                                    let scaled = _mm256_mullo_epi32(dot[i][h], scale[h]);
                                    total[i][h] = _mm256_add_epi32(total[i][h], scaled);
                                }
                            }
                        }
                        let dw =
                            [0, 1].map(|h| _mm256_loadu_ps(k.d.as_ptr().add(b * ROWS + 8 * h)));
                        for i in 0..RA {
                            let da = _mm256_set1_ps(*d[i].add(b));
                            for h in 0..2 {
                                let mut f = _mm256_mul_ps(_mm256_cvtepi32_ps(total[i][h]), dw[h]);
                                if MIN {
                                    // Σ_j m_j * (block j's sum): pairs of 16-value sums against (m_j, m_j).
                                    let mut mins = _mm256_setzero_si256();
                                    for j in 0..8 {
                                        let m = k.mins.as_ptr().add((8 * b + j) * ROWS + 8 * h);
                                        let pair = sums[i]
                                            .add(16 * b + 2 * j)
                                            .cast::<i32>()
                                            .read_unaligned();
                                        mins = $pairs(
                                            mins,
                                            _mm256_loadu_si256(m.cast()),
                                            _mm256_set1_epi32(pair),
                                        );
                                    }
                                    let dmin =
                                        _mm256_loadu_ps(k.dmin.as_ptr().add(b * ROWS + 8 * h));
                                    f = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), dmin, f);
                                }
                                acc[i][h] = _mm256_fmadd_ps(f, da, acc[i][h]);
                            }
                        }
                    }
                }
                core::array::from_fn(|i| {
                    let mut out = [0f32; ROWS];
                    // SAFETY: `out` is sixteen f32s.
                    unsafe {
                        _mm256_storeu_ps(out.as_mut_ptr(), acc[i][0]);
                        _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[i][1]);
                    }
                    out
                })
            }

            /// # Safety
            /// See [`super::packed_rows`], which checks what this relies on.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn rows<const G: usize, const MIN: bool, const RA: usize>(
                p: &Packed,
                a: &QuantizedRows,
                first: usize,
            ) -> [[f32; ROWS]; RA] {
                // Two halves of eight rows each: 2 * RA independent dot-product chains, enough to cover
                // `vpdpbusd`'s latency (with one half, four chains left the unit idle half the time).
                let mut acc = [[_mm256_setzero_ps(); 2]; RA];
                let x: [*const u8; RA] = core::array::from_fn(|i| a.row(first + i).as_ptr().cast());
                let d: [*const f32; RA] = core::array::from_fn(|i| a.row_d(first + i).as_ptr());
                let sums: [*const f32; RA] =
                    core::array::from_fn(|i| a.row_sum(first + i).as_ptr());
                let (w, scale, min, bias) = (
                    p.w.as_ptr(),
                    p.scale.as_ptr(),
                    p.min.as_ptr(),
                    p.bias.as_ptr(),
                );
                for s in 0..p.subs {
                    // SAFETY (loop body): sub-block `s` has `G / 4` interleaved 64-byte steps and sixteen
                    // scales, mins and biases inside `p`, and elements `s * G..s * G + G` (block
                    // `s * G / 32`) inside every activation row (asserted by the caller).
                    unsafe {
                        let start =
                            [0, 1].map(|h| _mm256_loadu_si256(bias.add(s * ROWS + 8 * h).cast()));
                        let mut dot = [start; RA];
                        for k in 0..G / 4 {
                            let at = w.add((s * (G / 4) + k) * ROWS * 4);
                            let wv = [0, 1].map(|h| _mm256_loadu_si256(at.add(32 * h).cast()));
                            for i in 0..RA {
                                let word = _mm256_set1_epi32(
                                    x[i].add(s * G + 4 * k).cast::<i32>().read_unaligned(),
                                );
                                for h in 0..2 {
                                    dot[i][h] = $dot(dot[i][h], word, wv[h]);
                                }
                            }
                        }
                        let blk = s * G / 32;
                        for h in 0..2 {
                            let sc = _mm256_loadu_ps(scale.add(s * ROWS + 8 * h));
                            let m = _mm256_loadu_ps(min.add(s * ROWS + 8 * h));
                            for i in 0..RA {
                                let f = _mm256_mul_ps(
                                    _mm256_cvtepi32_ps(dot[i][h]),
                                    _mm256_set1_ps(*d[i].add(blk)),
                                );
                                acc[i][h] = _mm256_fmadd_ps(f, sc, acc[i][h]);
                                if MIN {
                                    acc[i][h] = _mm256_fmadd_ps(
                                        m,
                                        _mm256_set1_ps(*sums[i].add(blk)),
                                        acc[i][h],
                                    );
                                }
                            }
                        }
                    }
                }
                core::array::from_fn(|i| {
                    let mut out = [0f32; ROWS];
                    // SAFETY: `out` is sixteen f32s.
                    unsafe {
                        _mm256_storeu_ps(out.as_mut_ptr(), acc[i][0]);
                        _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[i][1]);
                    }
                    out
                })
            }
        }
    };
}

packed_kernels!(avx2, "avx2,fma", dot_maddubs, pairs_madd);
packed_kernels!(
    vnni,
    "avx2,fma,avx512vnni,avx512vl",
    dot_dpbusd,
    pairs_dpwssd
);

#[target_feature(enable = "avx2")]
fn pairs_madd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
}

#[target_feature(enable = "avx512vnni,avx512vl")]
fn pairs_dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, a, b)
}
