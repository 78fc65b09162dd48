//! AVX2+FMA bodies of [`crate::kernels::vector`]: eight lanes per step with fused multiply-adds.

use core::arch::x86_64::*;

use super::Isa;

/// See [`crate::kernels::vector::attention_scores`] (which checks the sizes). `isa` is the
/// proof that detection ran: both instruction sets it names include AVX2 and FMA.
pub fn attention_scores(isa: Isa, q: &[f32], keys: &[f32], d: usize, scale: f32, out: &mut [f32]) {
    let _ = isa;
    let len = keys.len() / d;
    let rows: Vec<&[f32]> = keys.chunks_exact(d).collect();
    for (r, q_row) in q.chunks_exact(d).enumerate() {
        for (g, group) in rows.chunks(4).enumerate() {
            // A short last group repeats its first key; those lanes are dropped.
            let four: [&[f32]; 4] = core::array::from_fn(|k| *group.get(k).unwrap_or(&group[0]));
            // SAFETY: `isa` came from detection, so the CPU has AVX2 and FMA.
            let dots = unsafe { dot4(q_row, four) };
            for (k, dot) in dots.iter().take(group.len()).enumerate() {
                out[r * len + 4 * g + k] = dot * scale;
            }
        }
    }
}

/// See [`crate::kernels::vector::attention_values`] (which checks the sizes).
pub fn attention_values(
    isa: Isa,
    p: &[f32],
    stride: usize,
    values: &[f32],
    d: usize,
    out: &mut [f32],
) {
    let _ = isa;
    let len = values.len() / d;
    for (r, o) in out.chunks_exact_mut(d).enumerate() {
        let p_row = &p[r * stride..][..len];
        // SAFETY: as above.
        unsafe { weighted_sum(p_row, values, d, o) };
    }
}

/// `a · b_k` for four rows `b_k` (each at least as long as `a`): per key, two accumulators
/// over steps of sixteen (FMA latency), their lanes summed in a fixed tree, then a scalar tail.
/// Every score decode and prefill compute goes through here, so a score's bits do not depend
/// on which keys it was computed beside.
#[target_feature(enable = "avx2,fma")]
fn dot4(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    let n = a.len();
    assert!(b.iter().all(|row| row.len() >= n), "key rows");
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 <= n` keeps both loads of 8 inside `a` and every row of `b`.
        unsafe {
            let pa = a.as_ptr().add(i);
            let (a0, a1) = (_mm256_loadu_ps(pa), _mm256_loadu_ps(pa.add(8)));
            for (acc, row) in acc.iter_mut().zip(&b) {
                let pb = row.as_ptr().add(i);
                acc[0] = _mm256_fmadd_ps(a0, _mm256_loadu_ps(pb), acc[0]);
                acc[1] = _mm256_fmadd_ps(a1, _mm256_loadu_ps(pb.add(8)), acc[1]);
            }
        }
        i += 16;
    }
    if i + 8 <= n {
        // SAFETY: `i + 8 <= n`.
        unsafe {
            let a0 = _mm256_loadu_ps(a.as_ptr().add(i));
            for (acc, row) in acc.iter_mut().zip(&b) {
                acc[0] = _mm256_fmadd_ps(a0, _mm256_loadu_ps(row.as_ptr().add(i)), acc[0]);
            }
        }
        i += 8;
    }
    let [k0, k1, k2, k3] = acc.map(|[x, y]| _mm256_add_ps(x, y));
    // Lanes (0+1)+(2+3) of each key in the low half, (4+5)+(6+7) in the high half.
    let quads = _mm256_hadd_ps(_mm256_hadd_ps(k0, k1), _mm256_hadd_ps(k2, k3));
    let sums = _mm_add_ps(
        _mm256_castps256_ps128(quads),
        _mm256_extractf128_ps::<1>(quads),
    );
    let mut out = [0f32; 4];
    // SAFETY: `out` is four f32s.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), sums) };
    for (o, row) in out.iter_mut().zip(&b) {
        *o += a[i..n]
            .iter()
            .zip(&row[i..n])
            .map(|(x, y)| x * y)
            .sum::<f32>();
    }
    out
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
