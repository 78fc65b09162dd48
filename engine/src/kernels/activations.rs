//! Activations quantized for the integer kernels.
//!
//! Each input row is cut into 32-element blocks and stored as signed bytes with one f32 scale per
//! block (`x ≈ d * q`), plus `d * Σq` per block so that formats with an offset or a min (see
//! `formats`) can apply it with one multiply instead of a second pass over the bytes. A row is
//! quantized once per matmul call and read by every weight row.

/// `rows` rows of `cols` activations, quantized in blocks of 32.
#[derive(Debug, Clone, Default)]
pub struct QuantizedRows {
    /// Values, row-major, `rows * cols`.
    pub qs: Vec<i8>,
    /// Scale of each block, `rows * cols / 32`.
    pub d: Vec<f32>,
    /// `d * Σq` of each block.
    pub sum: Vec<f32>,
    /// `Σq` of each block.
    pub isum: Vec<i32>,
    /// Blocks per row.
    pub blocks: usize,
    /// Whether `qs` holds `q + 128` as unsigned bytes (the encoding the VNNI kernels multiply
    /// with signed weights) instead of `q`.
    pub biased: bool,
}

/// 1.5 * 2^23: adding and subtracting it rounds an f32 below 2^22 in magnitude to an integer.
const ROUND: f32 = 12_582_912.0;

impl QuantizedRows {
    /// Quantizes `x` (`rows * cols`, `cols` a multiple of 32), biased or not.
    pub fn quantize(x: &[f32], cols: usize, biased: bool) -> Self {
        debug_assert_eq!(cols % 32, 0);
        let n_blocks = x.len() / 32;
        let mut out = Self {
            qs: vec![0; x.len()],
            d: vec![0.0; n_blocks],
            sum: vec![0.0; n_blocks],
            isum: vec![0; n_blocks],
            blocks: cols / 32,
            biased,
        };
        let bias = if biased { 0x80 } else { 0 };
        // Prefill's inputs are megabytes: quantize runs of blocks in parallel.
        let run = 256;
        let tasks: Vec<_> = x
            .chunks(32 * run)
            .zip(out.qs.chunks_mut(32 * run))
            .zip(out.d.chunks_mut(run))
            .zip(out.sum.chunks_mut(run))
            .zip(out.isum.chunks_mut(run))
            .collect();
        crate::parallel::for_each(tasks, |((((x, qs), d), sum), isum)| {
            for (b, (src, dst)) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).enumerate() {
                let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = amax / 127.0;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                let mut total = 0i32;
                for (q, v) in dst.iter_mut().zip(src) {
                    // |v * inv| <= 127 by construction of `inv`, so the cast cannot saturate.
                    // The magic constant rounds to nearest-even without a libm call, which kept
                    // this loop from vectorising.
                    let r = ((v * inv + ROUND) - ROUND) as i32;
                    *q = (r as i8 as u8 ^ bias) as i8;
                    total += r;
                }
                d[b] = scale;
                sum[b] = scale * total as f32;
                isum[b] = total;
            }
        });
        out
    }

    /// Values of row `r`.
    pub fn row(&self, r: usize) -> &[i8] {
        &self.qs[r * self.blocks * 32..][..self.blocks * 32]
    }

    /// Block scales of row `r`.
    pub fn row_d(&self, r: usize) -> &[f32] {
        &self.d[r * self.blocks..][..self.blocks]
    }

    /// Block `Σq` of row `r`.
    pub fn row_isum(&self, r: usize) -> &[i32] {
        &self.isum[r * self.blocks..][..self.blocks]
    }

    /// Block `d * Σq` of row `r`.
    pub fn row_sum(&self, r: usize) -> &[f32] {
        &self.sum[r * self.blocks..][..self.blocks]
    }
}

#[cfg(test)]
mod tests {
    use super::{QuantizedRows, SuperRows};

    #[test]
    fn super_rows_in_parallel_and_biased_match_one_super_block_at_a_time() {
        // 70 super-blocks: more than one run, the last run partial.
        let x: Vec<f32> = (0..256 * 70)
            .map(|i| ((i * 7919) % 1000) as f32 / 97.0 - 5.0)
            .collect();
        let (plain, biased) = (
            SuperRows::quantize(&x, 256 * 35, false),
            SuperRows::quantize(&x, 256 * 35, true),
        );
        assert_eq!((plain.rows(), plain.supers), (2, 35));
        for (b, block) in x.chunks_exact(256).enumerate() {
            let one = SuperRows::quantize(block, 256, false);
            assert_eq!(plain.qs[256 * b..256 * b + 256], one.qs[..]);
            assert_eq!(plain.d[b], one.d[0]);
            assert_eq!(plain.sums16[16 * b..16 * b + 16], one.sums16[..]);
            let sums: Vec<i16> = one
                .qs
                .chunks_exact(16)
                .map(|r| r.iter().map(|&q| q as i16).sum())
                .collect();
            assert_eq!(one.sums16, sums);
        }
        for (p, b) in plain.qs.iter().zip(&biased.qs) {
            assert_eq!((*p as i32 + 128) as u8, *b as u8);
        }
        assert_eq!((plain.d, plain.sums16), (biased.d, biased.sums16));
    }

    #[test]
    fn round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37)
            .collect();
        let q = QuantizedRows::quantize(&x, 64, false);
        for (i, v) in x.iter().enumerate() {
            let d = q.d[i / 32];
            assert!(
                (d * q.qs[i] as f32 - v).abs() <= d * 0.5 + 1e-6,
                "element {i}"
            );
        }
        let sum: i32 = q.qs[..32].iter().map(|&v| v as i32).sum();
        assert_eq!(q.sum[0], q.d[0] * sum as f32);
    }

    #[test]
    fn large_inputs_quantized_in_parallel_match_block_by_block() {
        // More blocks than one parallel run holds, and a ragged last run.
        let x: Vec<f32> = (0..32 * 700)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 0.01)
            .collect();
        let q = QuantizedRows::quantize(&x, 32 * 70, true);
        for (b, block) in x.chunks_exact(32).enumerate() {
            let one = QuantizedRows::quantize(block, 32, true);
            assert_eq!(&q.qs[32 * b..32 * b + 32], &one.qs[..], "block {b}");
            assert_eq!(
                (q.d[b], q.sum[b], q.isum[b]),
                (one.d[0], one.sum[0], one.isum[0])
            );
        }
    }

    #[test]
    fn zero_block_has_zero_scale() {
        let q = QuantizedRows::quantize(&[0.0; 32], 32, false);
        assert_eq!((q.d[0], q.sum[0]), (0.0, 0.0));
        assert!(q.qs.iter().all(|&v| v == 0));
    }

    #[test]
    fn biased_rows_hold_q_plus_128() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let (plain, biased) = (
            QuantizedRows::quantize(&x, 32, false),
            QuantizedRows::quantize(&x, 32, true),
        );
        for (p, b) in plain.qs.iter().zip(&biased.qs) {
            assert_eq!(*p as i32 + 128, *b as u8 as i32);
        }
        assert_eq!((plain.d, plain.sum), (biased.d, biased.sum));
    }
}

/// `rows` rows quantized in super-blocks of 256 with one f32 scale each and the sum of every 16
/// values: what the k-quant decode kernels read. With one scale per 256 values, the integer dot
/// products of a weight super-block's eight blocks are summed (each times its small integer
/// scale) before a single conversion to float, and the mins and offsets come from the 16-value
/// sums.
#[derive(Debug, Clone, Default)]
pub struct SuperRows {
    /// Values, row-major.
    pub qs: Vec<i8>,
    /// Scale of each super-block.
    pub d: Vec<f32>,
    /// Sum of each run of 16 values.
    pub sums16: Vec<i16>,
    /// Super-blocks per row.
    pub supers: usize,
    /// Whether `qs` holds `q + 128` as unsigned bytes (see [`QuantizedRows::biased`]); the sums
    /// are of `q` either way.
    pub biased: bool,
}

impl SuperRows {
    /// Quantizes `x` (`rows * cols`, `cols` a multiple of 256), biased or not.
    pub fn quantize(x: &[f32], cols: usize, biased: bool) -> Self {
        debug_assert_eq!(cols % 256, 0);
        let n = x.len() / 256;
        let mut out = Self {
            qs: vec![0; x.len()],
            d: vec![0.0; n],
            sums16: vec![0; n * 16],
            supers: cols / 256,
            biased,
        };
        let bias = if biased { 0x80 } else { 0 };
        // As in `QuantizedRows::quantize`: runs of super-blocks in parallel.
        let run = 32;
        let tasks: Vec<_> = x
            .chunks(256 * run)
            .zip(out.qs.chunks_mut(256 * run))
            .zip(out.d.chunks_mut(run))
            .zip(out.sums16.chunks_mut(16 * run))
            .collect();
        crate::parallel::for_each(tasks, |(((x, qs), d), sums16)| {
            for (b, (src, dst)) in x
                .chunks_exact(256)
                .zip(qs.chunks_exact_mut(256))
                .enumerate()
            {
                let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = amax / 127.0;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                for ((s, q16), v16) in sums16[16 * b..16 * b + 16]
                    .iter_mut()
                    .zip(dst.chunks_exact_mut(16))
                    .zip(src.chunks_exact(16))
                {
                    let mut total = 0i16;
                    for (q, v) in q16.iter_mut().zip(v16) {
                        // As in `QuantizedRows::quantize`: |v * inv| <= 127, rounded to
                        // nearest-even.
                        let r = ((v * inv + ROUND) - ROUND) as i32;
                        *q = (r as i8 as u8 ^ bias) as i8;
                        // At most 16 * 127 in magnitude.
                        total += r as i16;
                    }
                    *s = total;
                }
                d[b] = scale;
            }
        });
        out
    }

    /// Values of row `r`.
    pub fn row(&self, r: usize) -> &[i8] {
        &self.qs[r * self.supers * 256..][..self.supers * 256]
    }

    /// Super-block scales of row `r`.
    pub fn row_d(&self, r: usize) -> &[f32] {
        &self.d[r * self.supers..][..self.supers]
    }

    /// 16-value sums of row `r`.
    pub fn row_sums16(&self, r: usize) -> &[i16] {
        &self.sums16[r * self.supers * 16..][..self.supers * 16]
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.d.len() / self.supers.max(1)
    }
}
