//! AVX2+FMA bodies of [`crate::kernels::vector`]: eight lanes per step with fused multiply-adds,
//! sixteen where the CPU has AVX-512 (the `Avx512Vnni` family).

use core::arch::x86_64::*;

use super::Isa;

/// See [`crate::kernels::vector::attention_scores`] (which checks the sizes). `isa` is the
/// proof that detection ran: both instruction sets it names include AVX2 and FMA.
///
/// Each score is one chain of fused multiply-adds over the head in steps of eight, its eight
/// lanes summed in a fixed tree, then a scalar tail: the same bits whatever keys and query rows
/// it is computed beside. Tiles of three query rows by four keys keep twelve such chains in
/// registers, so every key load serves three rows and every query load four keys.
pub fn attention_scores(isa: Isa, q: &[f32], keys: &[f32], d: usize, scale: f32, out: &mut [f32]) {
    let rep = q.len() / d;
    let mut r = 0;
    while r < rep {
        let rows = (rep - r).min(3);
        // SAFETY: `isa` came from detection, so the CPU has AVX2 and FMA (and AVX-512F for
        // `Avx512Vnni`); rows `r..r + rows` of `q` exist.
        unsafe {
            match (isa, rows) {
                (Isa::Avx512Vnni, 3) => scores_rows512::<3>(q, r, keys, d, scale, out),
                (Isa::Avx512Vnni, 2) => scores_rows512::<2>(q, r, keys, d, scale, out),
                (Isa::Avx512Vnni, _) => scores_rows512::<1>(q, r, keys, d, scale, out),
                (_, 3) => scores_rows::<3>(q, r, keys, d, scale, out),
                (_, 2) => scores_rows::<2>(q, r, keys, d, scale, out),
                _ => scores_rows::<1>(q, r, keys, d, scale, out),
            }
        }
        r += rows;
    }
}

/// Scores of query rows `first..first + R` against every key, into their rows of `out`.
#[target_feature(enable = "avx2,fma")]
fn scores_rows<const R: usize>(
    q: &[f32],
    first: usize,
    keys: &[f32],
    d: usize,
    scale: f32,
    out: &mut [f32],
) {
    let len = keys.len() / d;
    let steps = d / 8 * 8;
    assert!(q.len() >= (first + R) * d && out.len() >= (first + R) * len);
    let q_rows: [&[f32]; R] = core::array::from_fn(|i| &q[(first + i) * d..][..d]);
    for (g, group) in keys.chunks(4 * d).enumerate() {
        let n = group.len() / d;
        // A short last group repeats its first key; those lanes are dropped.
        let key: [&[f32]; 4] =
            core::array::from_fn(|k| &group[if k < n { k * d } else { 0 }..][..d]);
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let mut c = 0;
        while c < steps {
            // SAFETY: `c + 8 <= steps <= d`, inside every query and key row.
            unsafe {
                let qv: [__m256; R] =
                    core::array::from_fn(|i| _mm256_loadu_ps(q_rows[i].as_ptr().add(c)));
                for k in 0..4 {
                    let kv = _mm256_loadu_ps(key[k].as_ptr().add(c));
                    for i in 0..R {
                        acc[i][k] = _mm256_fmadd_ps(qv[i], kv, acc[i][k]);
                    }
                }
            }
            c += 8;
        }
        for (i, lanes) in acc.into_iter().enumerate() {
            let row = &mut out[(first + i) * len + 4 * g..][..n];
            finish_scores(lanes, q_rows[i], key, steps, scale, row);
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
    let len = values.len() / d;
    for (r, o) in out.chunks_exact_mut(d).enumerate() {
        let p_row = &p[r * stride..][..len];
        // SAFETY: as above (AVX-512F for `Avx512Vnni`).
        unsafe {
            match isa {
                Isa::Avx512Vnni => weighted_sum512(p_row, values, d, o),
                Isa::Avx2 => weighted_sum(p_row, values, d, 0, o),
            }
        }
    }
}

/// Finishes one query row's scores against four keys from their eight-lane partial sums: the
/// lanes of each key summed in a fixed tree ((0+1)+(2+3) in the low half, (4+5)+(6+7) in the
/// high half, then the halves), the head's last `d % 8` products added, then `scale`; the
/// first `out.len()` keys are written.
#[target_feature(enable = "avx2,fma")]
fn finish_scores(
    [k0, k1, k2, k3]: [__m256; 4],
    q_row: &[f32],
    key: [&[f32]; 4],
    steps: usize,
    scale: f32,
    out: &mut [f32],
) {
    let quads = _mm256_hadd_ps(_mm256_hadd_ps(k0, k1), _mm256_hadd_ps(k2, k3));
    let sums = _mm_add_ps(
        _mm256_castps256_ps128(quads),
        _mm256_extractf128_ps::<1>(quads),
    );
    let mut dots = [0f32; 4];
    // SAFETY: `dots` is four f32s.
    unsafe { _mm_storeu_ps(dots.as_mut_ptr(), sums) };
    for ((o, dot), key) in out.iter_mut().zip(dots).zip(key) {
        let tail: f32 = q_row[steps..]
            .iter()
            .zip(&key[steps..])
            .map(|(x, y)| x * y)
            .sum();
        *o = (dot + tail) * scale;
    }
}

/// [`scores_rows`] on 512-bit registers: each score is one chain of fused multiply-adds over the
/// head in steps of sixteen, its halves added, then (for a head with eight more) one chain in
/// steps of eight added, the eight lanes summed in the same tree as on AVX2, then a scalar tail.
#[target_feature(enable = "avx2,fma,avx512f")]
fn scores_rows512<const R: usize>(
    q: &[f32],
    first: usize,
    keys: &[f32],
    d: usize,
    scale: f32,
    out: &mut [f32],
) {
    let len = keys.len() / d;
    let (wide, steps) = (d / 16 * 16, d / 8 * 8);
    assert!(q.len() >= (first + R) * d && out.len() >= (first + R) * len);
    let q_rows: [&[f32]; R] = core::array::from_fn(|i| &q[(first + i) * d..][..d]);
    for (g, group) in keys.chunks(4 * d).enumerate() {
        let n = group.len() / d;
        // A short last group repeats its first key; those lanes are dropped.
        let key: [&[f32]; 4] =
            core::array::from_fn(|k| &group[if k < n { k * d } else { 0 }..][..d]);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let mut c = 0;
        while c < wide {
            // SAFETY: `c + 16 <= wide <= d`, inside every query and key row.
            unsafe {
                let qv: [__m512; R] =
                    core::array::from_fn(|i| _mm512_loadu_ps(q_rows[i].as_ptr().add(c)));
                for k in 0..4 {
                    let kv = _mm512_loadu_ps(key[k].as_ptr().add(c));
                    for i in 0..R {
                        acc[i][k] = _mm512_fmadd_ps(qv[i], kv, acc[i][k]);
                    }
                }
            }
            c += 16;
        }
        let mut half = acc.map(|row| {
            row.map(|z| {
                _mm256_add_ps(
                    _mm512_castps512_ps256(z),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(z))),
                )
            })
        });
        if steps > wide {
            // SAFETY: `wide + 8 == steps <= d`.
            unsafe {
                let qv: [__m256; R] =
                    core::array::from_fn(|i| _mm256_loadu_ps(q_rows[i].as_ptr().add(wide)));
                for k in 0..4 {
                    let kv = _mm256_loadu_ps(key[k].as_ptr().add(wide));
                    for i in 0..R {
                        half[i][k] = _mm256_fmadd_ps(qv[i], kv, half[i][k]);
                    }
                }
            }
        }
        for (i, lanes) in half.into_iter().enumerate() {
            let row = &mut out[(first + i) * len + 4 * g..][..n];
            finish_scores(lanes, q_rows[i], key, steps, scale, row);
        }
    }
}

/// [`weighted_sum`] on 512-bit registers: 64 columns at a time in four registers, then sixteen,
/// then the AVX2 path's eights and scalar tail; each output element is one chain of fused
/// multiply-adds over the rows in order.
#[target_feature(enable = "avx2,fma,avx512f")]
fn weighted_sum512(p: &[f32], values: &[f32], d: usize, out: &mut [f32]) {
    assert!(values.len() >= p.len() * d && out.len() >= d);
    let mut c = 0;
    while c + 64 <= d {
        let mut acc = [_mm512_setzero_ps(); 4];
        for (j, &w) in p.iter().enumerate() {
            let w = _mm512_set1_ps(w);
            // SAFETY: row `j` of `values` holds `d` values and `c + 64 <= d`.
            let row = unsafe { values.as_ptr().add(j * d + c) };
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: as above, `16 * k + 16 <= 64`.
                *acc = _mm512_fmadd_ps(w, unsafe { _mm512_loadu_ps(row.add(16 * k)) }, *acc);
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            // SAFETY: `c + 64 <= d <= out.len()`.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(c + 16 * k), *acc) };
        }
        c += 64;
    }
    while c + 16 <= d {
        let mut acc = _mm512_setzero_ps();
        for (j, &w) in p.iter().enumerate() {
            // SAFETY: `c + 16 <= d` inside row `j`.
            let v = unsafe { _mm512_loadu_ps(values.as_ptr().add(j * d + c)) };
            acc = _mm512_fmadd_ps(_mm512_set1_ps(w), v, acc);
        }
        // SAFETY: `c + 16 <= d <= out.len()`.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(c), acc) };
        c += 16;
    }
    // The last columns as the AVX2 path computes them.
    weighted_sum(p, values, d, c, out);
}

/// `out = Σ_j p_j * value_j` over the rows of `values` (`d` wide), columns `from..d`: 64
/// columns at a time held in eight registers across all rows, so `out` is written once per
/// column block.
#[target_feature(enable = "avx2,fma")]
fn weighted_sum(p: &[f32], values: &[f32], d: usize, from: usize, out: &mut [f32]) {
    let mut c = from;
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
