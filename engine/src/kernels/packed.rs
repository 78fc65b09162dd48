//! Weight rows repacked for prefill: sixteen rows decoded to signed bytes and interleaved.
//!
//! With many input rows the cost that matters is not decoding the weights (done once per group
//! of rows and reused by every input row) but the float work per block: converting each integer
//! dot product and applying two scales. Interleaving weight rows four bytes at a time lets one
//! `vpdpbusd` of a broadcast input word advance the dot products of eight rows, one per lane, so
//! the conversion and the scales are paid once per eight rows instead of once per row. A group
//! holds sixteen rows (two such halves) so that a kernel running four input rows has eight
//! independent dot-product chains: enough to hide `vpdpbusd`'s latency.
//!
//! Layout for sub-block `s` (32 elements, or 16 for Q6_K whose scales cover 16), step `k`
//! (4 elements), row `r`, byte `j`: `w[((s * steps + k) * ROWS + r) * 4 + j]`.
//!
//! The k-quants (Q4_K, Q6_K) keep their sub-block scales as the small integers they are
//! ([`SuperScales`]): the kernel multiplies each sub-block's integer dot product by its scale in
//! integers and converts to float once per 256-value super-block, against activations quantized
//! per 256 ([`super::activations::SuperRows`]). The float path's per-sub-block conversion and
//! two multiplies were most of the work left once the dot products ran at full rate (every 16
//! values for Q6_K).

use super::formats::{Format, decode_block, f16_at, q4k_scale_min};

/// Rows interleaved per group.
pub const ROWS: usize = 16;

/// Up to `ROWS` (16) weight rows decoded and interleaved (missing rows are zero).
#[derive(Debug, Clone, Default)]
pub struct Packed {
    /// Elements per sub-block: 32, or 16 for Q6_K.
    pub sub_elems: usize,
    /// Sub-blocks per row.
    pub subs: usize,
    /// Interleaved values.
    pub w: Vec<i8>,
    /// Scale of each sub-block of each row, `subs * ROWS`.
    pub scale: Vec<f32>,
    /// Min of each sub-block of each row (zero for Q8_0 and Q6_K).
    pub min: Vec<f32>,
    /// `-128 * Σv` of each sub-block of each row: the start that cancels biased activations.
    pub bias: Vec<i32>,
    /// Whether the format has mins (every format but Q8_0 and Q6_K).
    pub has_min: bool,
    /// The k-quants' scales as integers (then `scale` and `min` are empty).
    pub k: Option<SuperScales>,
    /// Whether every value is at most 32 in magnitude (every format but Q8_0): what the AVX2
    /// kernel's 16-bit sums of two products with an unsigned activation byte need.
    pub fits_16_bit_pairs: bool,
}

/// A k-quant group's scales: integers per sub-block, floats per super-block.
#[derive(Debug, Clone, Default)]
pub struct SuperScales {
    /// Integer scale of each sub-block of each row, `subs * ROWS` (Q4_K 0..=63, Q6_K signed).
    pub sc: Vec<i32>,
    /// Q4_K: each 32-value block's integer min `m` as the 16-bit pair `(m, m)` (one multiply-add
    /// of pairs against two 16-value input sums gives `m` times the block's sum), `8 * supers *
    /// ROWS`; empty for Q6_K.
    pub mins: Vec<i32>,
    /// Scale of each super-block of each row, `supers * ROWS`.
    pub d: Vec<f32>,
    /// Q4_K's min scale of each super-block of each row, `supers * ROWS`.
    pub dmin: Vec<f32>,
}

impl Packed {
    /// Decodes `rows` (at most `ROWS`, each `cols` elements of `format`) into `self`;
    /// `decode_row` decodes one row as [`super::formats::Block`]s (values, half scales, mins).
    pub fn pack(
        &mut self,
        format: Format,
        rows: &[&[u8]],
        cols: usize,
        mut decode_row: impl FnMut(&[u8], &mut [i8], &mut [f32], &mut [f32]),
    ) {
        debug_assert!(rows.len() <= ROWS);
        self.sub_elems = if format == Format::Q6K { 16 } else { 32 };
        self.has_min = !matches!(format, Format::Q8_0 | Format::Q6K);
        self.fits_16_bit_pairs = format != Format::Q8_0;
        self.subs = cols / self.sub_elems;
        let steps = self.sub_elems / 4;
        let halves = 32 / self.sub_elems;
        self.w.clear();
        self.w.resize(cols * ROWS, 0);
        for v in [&mut self.scale, &mut self.min] {
            v.clear();
            v.resize(self.subs * ROWS, 0.0);
        }
        self.bias.clear();
        self.bias.resize(self.subs * ROWS, 0);
        let supers = cols / format.super_elems();
        self.k = matches!(format, Format::Q4K | Format::Q6K).then(|| SuperScales {
            sc: vec![0; self.subs * ROWS],
            mins: vec![0; if self.has_min { 8 * supers * ROWS } else { 0 }],
            d: vec![0.0; supers * ROWS],
            dmin: vec![0.0; supers * ROWS],
        });
        if self.k.is_some() {
            self.scale.clear();
            self.min.clear();
        }
        let blocks = cols / 32;
        let (mut v, mut scale, mut min) =
            (vec![0i8; cols], vec![0f32; 2 * blocks], vec![0f32; blocks]);
        for (r, row) in rows.iter().enumerate() {
            decode_row(row, &mut v, &mut scale, &mut min);
            for (s, values) in v.chunks_exact(self.sub_elems).enumerate() {
                let block = s / halves;
                for (k, word) in values.chunks_exact(4).enumerate() {
                    let at = ((s * steps + k) * ROWS + r) * 4;
                    self.w[at..at + 4].copy_from_slice(word);
                }
                if self.k.is_none() {
                    self.scale[s * ROWS + r] = scale[2 * block + (s % halves)];
                    self.min[s * ROWS + r] = min[block];
                }
                self.bias[s * ROWS + r] = -128 * values.iter().map(|&x| x as i32).sum::<i32>();
            }
            if let Some(k) = &mut self.k {
                k.fill_row(format, row, r);
            }
        }
    }
}

impl SuperScales {
    /// Reads row `r`'s scales from its k-quant super-blocks.
    fn fill_row(&mut self, format: Format, row: &[u8], r: usize) {
        for (b, sb) in row.chunks_exact(format.super_bytes()).enumerate() {
            if format == Format::Q4K {
                self.d[b * ROWS + r] = f16_at(sb, 0);
                self.dmin[b * ROWS + r] = f16_at(sb, 2);
                for j in 0..8 {
                    let (sc, m) = q4k_scale_min(&sb[4..16], j);
                    self.sc[(8 * b + j) * ROWS + r] = sc as i32;
                    self.mins[(8 * b + j) * ROWS + r] = m as i32 * 0x1_0001;
                }
            } else {
                self.d[b * ROWS + r] = f16_at(sb, 208);
                for j in 0..16 {
                    self.sc[(16 * b + j) * ROWS + r] = sb[192 + j] as i8 as i32;
                }
            }
        }
    }
}

/// The portable row decoder for [`Packed::pack`].
#[cfg_attr(not(test), allow(dead_code))]
pub fn decode_row_portable(
    format: Format,
    w: &[u8],
    v: &mut [i8],
    scale: &mut [f32],
    min: &mut [f32],
) {
    let per = format.super_elems() / 32;
    for (s, sb) in w.chunks_exact(format.super_bytes()).enumerate() {
        for b in 0..per {
            let idx = s * per + b;
            let block = decode_block(format, sb, b);
            v[32 * idx..32 * idx + 32].copy_from_slice(&block.v);
            scale[2 * idx..2 * idx + 2].copy_from_slice(&block.scale);
            min[idx] = block.min;
        }
    }
}
