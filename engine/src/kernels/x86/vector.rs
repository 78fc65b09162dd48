//! AVX2+FMA bodies of [`crate::kernels::vector`]: eight lanes per step with fused multiply-adds.

use core::arch::x86_64::*;

use super::Isa;

/// See [`crate::kernels::vector::attention_scores`] (which checks the sizes). `isa` is the
/// proof that detection ran: both instruction sets it names include AVX2 and FMA.
pub fn attention_scores(isa: Isa, q: &[f32], keys: &[f32], d: usize, scale: f32, out: &mut [f32]) {
    let _ = isa;
    let len = keys.len() / d;
    for (r, q_row) in q.chunks_exact(d).enumerate() {
        for (j, key) in keys.chunks_exact(d).enumerate() {
            // SAFETY: `isa` came from detection, so the CPU has AVX2 and FMA.
            out[r * len + j] = unsafe { dot(q_row, key) } * scale;
        }
    }
}

/// See [`crate::kernels::vector::attention_values`] (which checks the sizes).
pub fn attention_values(isa: Isa, p: &[f32], values: &[f32], d: usize, out: &mut [f32]) {
    let _ = isa;
    let len = values.len() / d;
    for (o, p_row) in out.chunks_exact_mut(d).zip(p.chunks_exact(len)) {
        // SAFETY: as above.
        unsafe { weighted_sum(p_row, values, d, o) };
    }
}

/// `Σ a_i b_i` with two accumulators (FMA latency) and a scalar tail.
#[target_feature(enable = "avx2,fma")]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 <= n` keeps both loads of 8 inside both slices.
        unsafe {
            let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(8)), _mm256_loadu_ps(pb.add(8)), acc1);
        }
        i += 16;
    }
    if i + 8 <= n {
        // SAFETY: `i + 8 <= n`.
        unsafe {
            let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb), acc0);
        }
        i += 8;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let x = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_add_ss(x, _mm_movehdup_ps(x));
    _mm_cvtss_f32(x)
        + a[i..n]
            .iter()
            .zip(&b[i..n])
            .map(|(x, y)| x * y)
            .sum::<f32>()
}

/// `out = Σ_j p_j * value_j` over the rows of `values` (`d` wide): 64 columns at a time held in
/// eight registers across all rows, so `out` is written once per column block.
#[target_feature(enable = "avx2,fma")]
fn weighted_sum(p: &[f32], values: &[f32], d: usize, out: &mut [f32]) {
    let mut c = 0;
    while c + 64 <= d {
        let mut acc = [_mm256_setzero_ps(); 8];
        for (j, &w) in p.iter().enumerate() {
            let w = _mm256_set1_ps(w);
            // SAFETY: row `j` of `values` holds `d` values and `c + 64 <= d`.
            let row = unsafe { values.as_ptr().add(j * d + c) };
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: as above, `8 * k + 8 <= 64`.
                *acc = _mm256_fmadd_ps(w, unsafe { _mm256_loadu_ps(row.add(8 * k)) }, *acc);
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            // SAFETY: `c + 64 <= d == out.len()`.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * k), *acc) };
        }
        c += 64;
    }
    while c + 8 <= d {
        let mut acc = _mm256_setzero_ps();
        for (j, &w) in p.iter().enumerate() {
            // SAFETY: `c + 8 <= d` inside row `j`.
            let v = unsafe { _mm256_loadu_ps(values.as_ptr().add(j * d + c)) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(w), v, acc);
        }
        // SAFETY: `c + 8 <= d == out.len()`.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c), acc) };
        c += 8;
    }
    for (c, o) in out.iter_mut().enumerate().skip(c) {
        *o = p
            .iter()
            .enumerate()
            .map(|(j, w)| w * values[j * d + c])
            .sum();
    }
}
