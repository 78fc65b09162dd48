//! f32 vector work of decode attention, on the SIMD the CPU has.
//!
//! The engine is built for baseline x86-64 (SSE2), so plain loops over f32 compile to 4-wide
//! multiplies and adds without FMA; decode attention at a few hundred positions spent a quarter of
//! a decode step there. These helpers take a whole kv head at a time (one dispatch per head, not
//! per key) and run AVX2+FMA code when [`Kernel::best`] has it, portable loops otherwise.

use super::Kernel;

/// `scores[r * len + j] = scale * (q_r · key_j)` for the `rep` query rows of `q` (`rep * d`) and
/// the `len` key rows of `keys` (`len * d`), `scores` being `rep * len`.
pub fn attention_scores(q: &[f32], keys: &[f32], d: usize, scale: f32, scores: &mut [f32]) {
    assert!(d > 0 && q.len().is_multiple_of(d) && keys.len().is_multiple_of(d));
    assert_eq!(scores.len(), q.len() / d * (keys.len() / d), "scores size");
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = Kernel::best().isa() {
        return super::x86::vector::attention_scores(isa, q, keys, d, scale, scores);
    }
    scores_portable(q, keys, d, scale, scores);
}

/// `out_r = Σ_j p[r * stride + j] * value_j` for the `rep` rows of `p` (row `r` starting at
/// `r * stride`) and the `len` value rows of `values` (`len * d`), `out` being `rep * d`; each
/// output element sums its terms in the order of `j`, one fused multiply-add each (on AVX2).
pub fn attention_values(p: &[f32], stride: usize, values: &[f32], d: usize, out: &mut [f32]) {
    assert!(d > 0 && values.len().is_multiple_of(d) && out.len().is_multiple_of(d));
    let (len, rep) = (values.len() / d, out.len() / d);
    assert!(stride >= len, "probability rows overlap");
    assert!(
        rep == 0 || p.len() >= (rep - 1) * stride + len,
        "probabilities size"
    );
    if len == 0 {
        out.fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = Kernel::best().isa() {
        return super::x86::vector::attention_values(isa, p, stride, values, d, out);
    }
    values_portable(p, stride, values, d, out);
}

fn scores_portable(q: &[f32], keys: &[f32], d: usize, scale: f32, scores: &mut [f32]) {
    let len = keys.len() / d;
    for (r, q_row) in q.chunks_exact(d).enumerate() {
        for (j, key) in keys.chunks_exact(d).enumerate() {
            scores[r * len + j] = dot_portable(q_row, key) * scale;
        }
    }
}

fn values_portable(p: &[f32], stride: usize, values: &[f32], d: usize, out: &mut [f32]) {
    let len = values.len() / d;
    for (r, o) in out.chunks_exact_mut(d).enumerate() {
        let p_row = &p[r * stride..][..len];
        o.fill(0.0);
        for (&w, value) in p_row.iter().zip(values.chunks_exact(d)) {
            for (o, v) in o.iter_mut().zip(value) {
                *o += w * v;
            }
        }
    }
}

/// A dot product in eight independent lanes (a single running sum cannot be vectorised).
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    type Scores = fn(&[f32], &[f32], usize, f32, &mut [f32]);
    type Values = fn(&[f32], usize, &[f32], usize, &mut [f32]);

    /// The AVX2 bodies, even where the CPU's best is AVX-512; `None` without AVX2.
    #[cfg(target_arch = "x86_64")]
    fn avx2_paths() -> Option<(Scores, Values)> {
        use crate::kernels::x86::{Isa, vector};
        Isa::detect()?;
        Some((
            |q, k, d, scale, out| vector::attention_scores(Isa::Avx2, q, k, d, scale, out),
            |p, stride, v, d, out| vector::attention_values(Isa::Avx2, p, stride, v, d, out),
        ))
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn avx2_paths() -> Option<(Scores, Values)> {
        None
    }

    #[test]
    fn scores_and_values_match_f64_sums() {
        let mut rng = StdRng::seed_from_u64(5);
        // The dispatched path (SIMD where the CPU has it), AVX2's, and the portable one.
        let mut paths: Vec<(Scores, Values)> = vec![
            (super::attention_scores, super::attention_values),
            (super::scores_portable, super::values_portable),
        ];
        paths.extend(avx2_paths());
        // Head sizes that are and are not multiples of the vector width; 1 to 7 query rows.
        for (d, len, rep) in [
            (128, 37, 2),
            (64, 5, 7),
            (13, 9, 3),
            (8, 1, 1),
            (72, 100, 5),
        ] {
            let (q, keys) = (random(&mut rng, rep * d), random(&mut rng, len * d));
            let (p, values) = (random(&mut rng, rep * len), random(&mut rng, len * d));
            for (path, (scores_fn, values_fn)) in paths.iter().enumerate() {
                let mut scores = vec![0f32; rep * len];
                scores_fn(&q, &keys, d, 0.5, &mut scores);
                for r in 0..rep {
                    for j in 0..len {
                        let want: f64 = (0..d)
                            .map(|c| q[r * d + c] as f64 * keys[j * d + c] as f64)
                            .sum::<f64>()
                            * 0.5;
                        let got = scores[r * len + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{path} d={d} r={r} j={j}: {got} vs {want}"
                        );
                    }
                }
                let mut out = vec![f32::NAN; rep * d];
                values_fn(&p, len, &values, d, &mut out);
                for r in 0..rep {
                    for c in 0..d {
                        let want: f64 = (0..len)
                            .map(|j| p[r * len + j] as f64 * values[j * d + c] as f64)
                            .sum();
                        let got = out[r * d + c] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{path} d={d} r={r} c={c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
