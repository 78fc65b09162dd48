//! CPU matrix multiplication for quantized GGUF weights.
//!
//! candle's quantized CPU path picks its SIMD code when it is compiled, so a portable release
//! build runs scalar loops for the formats Qwen GGUFs use most (Q5_0 above all). This module
//! keeps the weights exactly as the file stores them and multiplies with kernels chosen at run
//! time from what the CPU offers (AVX-512 VNNI, AVX2, or a portable fallback):
//!
//! - the input is quantized once per call and shared by every matrix that reads it (q/k/v,
//!   gate/up: [`QuantMatmul::forward_many`]): in blocks of 32 ([`QuantizedRows`]), and for the
//!   k-quants per 256 ([`SuperRows`]) so that their blocks' integer products are scaled and
//!   summed before a single float conversion per super-block;
//! - decode (a few input rows): the weight rows of all matrices are split into chunks across
//!   the CPU pool ([`crate::parallel`]), each weight block is decoded in registers and
//!   multiplied with up to eight input rows, eight weight rows at a time (one per f32 lane);
//!   each task writes its chunk's columns of every output row;
//! - prefill (16 input rows or more; on AVX2 all formats but Q8_0): sixteen weight rows at a
//!   time are decoded and interleaved ([`Packed`]) so that one `vpdpbusd` advances eight dot
//!   products (two per step, for sixteen rows), then the input rows are split across the pool,
//!   each task writing whole output rows.
//!
//! Both compute a row to the same bits (exact integer dot products per block, then the same
//! float operations in the same order; see `x86::rows`): a sequence's logits do not depend on
//! how many rows share its forward pass. The portable kernel never packs.
//!
//! `unsafe` is confined to the x86 kernels; every other part is safe code.

mod activations;
mod formats;
mod packed;
#[cfg(test)]
mod tests;
pub mod vector;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::{Arc, OnceLock};

use crate::parallel;
use candle_core::quantized::{GgmlDType, QTensor};

pub use activations::{QuantizedRows, SuperRows};
pub use formats::{Block, Format, decode_block, dequantize_row};
pub use packed::Packed;

/// From this many input rows on, the SIMD kernels repack weight rows (see [`Packed`]).
const PACKED_MIN_ROWS: usize = 16;

/// The kernel family in use on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 VNNI (256-bit).
    Avx512Vnni,
}

impl Kernel {
    /// The best kernel for this CPU (detected once). `KESTREL_KERNEL=portable|avx2` lowers it,
    /// to compare paths or work around a CPU problem; a value it cannot honour is reported (a
    /// warning naming it) and the detected kernel kept.
    pub fn best() -> Self {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let detected = Self::detect();
            let Ok(value) = std::env::var("KESTREL_KERNEL") else {
                return detected;
            };
            Self::choose(&value, detected).unwrap_or_else(|problem| {
                tracing::warn!("KESTREL_KERNEL: {problem}; using {detected:?}");
                detected
            })
        })
    }

    /// The kernel `KESTREL_KERNEL=value` asks for on a CPU whose best is `detected`.
    fn choose(value: &str, detected: Self) -> std::result::Result<Self, String> {
        match value {
            "portable" => Ok(Self::Portable),
            "avx2" if detected != Self::Portable => Ok(Self::Avx2),
            "avx2" => Err("`avx2` asked for, but this CPU lacks AVX2, FMA or F16C".into()),
            other => Err(format!(
                "unknown value `{other}` (expected `avx2` or `portable`)"
            )),
        }
    }

    /// Whether this CPU has the instructions of this kernel family. A kernel that does not run
    /// here is never used: calling its instructions would be undefined behaviour.
    pub fn runs_here(self) -> bool {
        static DETECTED: OnceLock<Kernel> = OnceLock::new();
        self.within(*DETECTED.get_or_init(Self::detect))
    }

    /// Whether a CPU whose best family is `detected` can run this one (each family's
    /// instructions include the ones below it).
    fn within(self, detected: Self) -> bool {
        match self {
            Self::Portable => true,
            Self::Avx2 => detected != Self::Portable,
            Self::Avx512Vnni => detected == Self::Avx512Vnni,
        }
    }

    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            match x86::Isa::detect() {
                Some(x86::Isa::Avx512Vnni) => return Self::Avx512Vnni,
                Some(x86::Isa::Avx2) => return Self::Avx2,
                None => {}
            }
        }
        Self::Portable
    }

    /// Whether `m` input rows of a matrix in `format` go through packed weights (see
    /// [`Packed`]). AVX2 sums products in 16-bit pairs, which Q8_0's full-range bytes overflow.
    fn packs(self, m: usize, format: Format) -> bool {
        m >= PACKED_MIN_ROWS
            && match self {
                Self::Avx512Vnni => true,
                Self::Avx2 => format != Format::Q8_0,
                Self::Portable => false,
            }
    }

    /// The x86 instruction set of this kernel family.
    #[cfg(target_arch = "x86_64")]
    fn isa(self) -> Option<x86::Isa> {
        match self {
            Self::Avx2 => Some(x86::Isa::Avx2),
            Self::Avx512Vnni => Some(x86::Isa::Avx512Vnni),
            Self::Portable => None,
        }
    }

    /// Whether this kernel reads the k-quants against [`SuperRows`].
    fn super_rows(self, format: Format) -> bool {
        self != Self::Portable && matches!(format, Format::Q4K | Format::Q6K)
    }

    /// Dot products of weight rows `w` (one to [`GROUP`] whole rows of `format`) with input rows
    /// `first..first + RA`: `out[i][r]` for input row `first + i` and weight row `r`. On the
    /// SIMD kernels the arithmetic is the packed kernels' to the bit (see `x86::rows`).
    fn dot_group<const RA: usize>(
        self,
        format: Format,
        w: &[&[u8]],
        input: &Input,
        first: usize,
    ) -> [[f32; GROUP]; RA] {
        let mut out = [[0f32; GROUP]; RA];
        #[cfg(target_arch = "x86_64")]
        if let Some(isa) = self.isa() {
            match &input.k {
                Some(k) if self.super_rows(format) => {
                    for (r, row) in w.iter().enumerate() {
                        let dots = x86::dot_rows_k::<RA>(isa, format, row, k, first);
                        for (o, v) in out.iter_mut().zip(dots) {
                            o[r] = v;
                        }
                    }
                }
                _ => out = x86::dot_rows8::<RA>(isa, format, w, &input.a, first),
            }
            return out;
        }
        for (r, row) in w.iter().enumerate() {
            for (i, o) in out.iter_mut().enumerate() {
                o[r] = portable_dot(format, row, &input.a, first + i);
            }
        }
        out
    }
}

/// Weight rows the row kernels take at a time (one per f32 lane).
const GROUP: usize = 8;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(GROUP == x86::GROUP);

/// An input quantized for the row kernels: in blocks of 32 for every format, and per 256 for the
/// k-quants when some matrix reads them that way.
#[derive(Debug)]
struct Input {
    a: QuantizedRows,
    k: Option<SuperRows>,
}

/// The portable dot product of weight row `w` with input row `r`.
fn portable_dot(format: Format, w: &[u8], a: &QuantizedRows, r: usize) -> f32 {
    let (qs, d, sum) = (a.row(r), a.row_d(r), a.row_sum(r));
    let per = format.super_elems() / 32;
    let mut total = 0f32;
    for (s, sb) in w.chunks_exact(format.super_bytes()).enumerate() {
        for b in 0..per {
            let idx = s * per + b;
            let block = decode_block(format, sb, b);
            let x = &qs[idx * 32..][..32];
            for h in 0..2 {
                let dot: i32 = (16 * h..16 * h + 16)
                    .map(|e| block.v[e] as i32 * x[e] as i32)
                    .sum();
                total += block.scale[h] * d[idx] * dot as f32;
            }
            total += block.min * sum[idx];
        }
    }
    total
}

/// The format of a GGUF dtype, when the kernels implement it.
pub fn format_of(dtype: GgmlDType) -> Option<Format> {
    Some(match dtype {
        GgmlDType::Q8_0 => Format::Q8_0,
        GgmlDType::Q4_0 => Format::Q4_0,
        GgmlDType::Q5_0 => Format::Q5_0,
        GgmlDType::Q4K => Format::Q4K,
        GgmlDType::Q6K => Format::Q6K,
        _ => return None,
    })
}

/// A quantized `(rows, cols)` weight matrix multiplied as `x W^T` by this module's kernels. It
/// shares the loaded tensor's bytes (no copy).
#[derive(Debug, Clone)]
pub struct QuantMatmul {
    weight: Arc<QTensor>,
    format: Format,
    rows: usize,
    cols: usize,
    kernel: Kernel,
}

impl QuantMatmul {
    /// Wraps `weight` when it is a 2-D CPU tensor of a supported format; `None` otherwise (the
    /// caller keeps candle's path).
    pub fn new(weight: Arc<QTensor>) -> Option<Self> {
        Self::with_kernel(weight, Kernel::best())
    }

    /// As [`Self::new`], with an explicit kernel (tests compare kernels this way); `None` also
    /// when this CPU cannot run `kernel` (see [`Kernel::runs_here`]).
    pub fn with_kernel(weight: Arc<QTensor>, kernel: Kernel) -> Option<Self> {
        if !kernel.runs_here() {
            return None;
        }
        let format = format_of(weight.dtype())?;
        let (rows, cols) = weight.shape().dims2().ok()?;
        if !weight.device().is_cpu() || cols % format.super_elems() != 0 {
            return None;
        }
        Some(Self {
            weight,
            format,
            rows,
            cols,
            kernel,
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x W^T` for `x` of `m` rows of `cols` values, row-major; returns `m * rows` values.
    pub fn forward(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        Self::forward_many(&[self], x)?
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("no output".into()))
    }

    /// `x W^T` for each of several matrices that read the same input (q/k/v, gate/up): the input
    /// is quantized once and, for few input rows, the rows of all of them share one parallel
    /// pass (one hand-off to the pool instead of one per matrix).
    pub fn forward_many(mats: &[&Self], x: &[f32]) -> candle_core::Result<Vec<Vec<f32>>> {
        let Some(lead) = mats.first() else {
            return Ok(Vec::new());
        };
        if let Some(other) = mats
            .iter()
            .find(|q| q.cols != lead.cols || q.kernel != lead.kernel)
        {
            candle_core::bail!(
                "matrices of {} and {} columns cannot share an input",
                lead.cols,
                other.cols
            );
        }
        if !x.len().is_multiple_of(lead.cols) {
            candle_core::bail!(
                "input of {} values is not a whole number of rows of {}",
                x.len(),
                lead.cols
            );
        }
        let m = x.len() / lead.cols;
        let data = mats
            .iter()
            .map(|q| q.data())
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Each matrix takes its own path (packed or by rows), whatever its companions take.
        let packs: Vec<bool> = mats.iter().map(|q| q.kernel.packs(m, q.format)).collect();
        let mut outs: Vec<Vec<f32>> = vec![Vec::new(); mats.len()];
        #[cfg(target_arch = "x86_64")]
        if packs.contains(&true) {
            let by_super = |q: &Self| q.kernel.super_rows(q.format);
            let packed = || {
                mats.iter()
                    .zip(&packs)
                    .filter(|(_, p)| **p)
                    .map(|(q, _)| *q)
            };
            let a = packed()
                .any(|q| !by_super(q))
                .then(|| QuantizedRows::quantize(x, lead.cols, true));
            let k = packed()
                .any(by_super)
                .then(|| SuperRows::quantize(x, lead.cols, true));
            for (i, q) in mats.iter().enumerate().filter(|(i, _)| packs[*i]) {
                outs[i] = q.forward_packed(&data[i], a.as_ref(), k.as_ref(), m)?;
            }
        }
        let rest: Vec<usize> = (0..mats.len()).filter(|&i| !packs[i]).collect();
        if !rest.is_empty() {
            let by_rows: Vec<&Self> = rest.iter().map(|&i| mats[i]).collect();
            let bytes: Vec<&[u8]> = rest.iter().map(|&i| &*data[i]).collect();
            for (i, out) in rest
                .into_iter()
                .zip(Self::forward_rows(&by_rows, &bytes, x, m))
            {
                outs[i] = out;
            }
        }
        Ok(outs)
    }

    /// `x W^T` (`m` input rows) for matrices sharing the input, by weight rows: the rows of all
    /// of them are split into chunks across the pool, each chunk running every input row.
    fn forward_rows(mats: &[&Self], data: &[&[u8]], x: &[f32], m: usize) -> Vec<Vec<f32>> {
        let cols = mats.first().map_or(0, |q| q.cols);
        let a = QuantizedRows::quantize(x, cols, false);
        let k = mats
            .iter()
            .any(|q| q.kernel.super_rows(q.format))
            .then(|| SuperRows::quantize(x, cols, false));
        let input = Input { a, k };
        // Enough chunks to balance the pool, each a run of whole weight rows of one matrix.
        let threads = parallel::threads();
        let total_rows: usize = mats.iter().map(|q| q.rows).sum();
        let chunk = total_rows.div_ceil(threads * 8).max(1);
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|q| vec![0f32; m * q.rows]).collect();
        // A task owns its chunk's columns in every input row's output.
        let mut tasks = Vec::new();
        for (i, (q, out)) in mats.iter().zip(outs.iter_mut()).enumerate() {
            let mut columns: Vec<Vec<&mut [f32]>> = (0..q.rows.div_ceil(chunk))
                .map(|_| Vec::with_capacity(m))
                .collect();
            for row in out.chunks_mut(q.rows) {
                for (part, cols) in row.chunks_mut(chunk).zip(columns.iter_mut()) {
                    cols.push(part);
                }
            }
            tasks.extend(columns.into_iter().enumerate().map(|(c, dst)| (i, c, dst)));
        }
        let work = |(i, c, mut dst): (usize, usize, Vec<&mut [f32]>)| {
            let q = mats[i];
            let row_bytes = q.format.row_bytes(q.cols);
            let width = dst.first().map_or(0, |d| d.len());
            let w = &data[i][c * chunk * row_bytes..][..width * row_bytes];
            let mut first = 0;
            if q.kernel == Kernel::Avx512Vnni {
                first = q.fill::<8>(w, &input, first, &mut dst);
            }
            first = q.fill::<4>(w, &input, first, &mut dst);
            // Two rows share each decoded weight block too (two sequences decoding together).
            first = q.fill::<2>(w, &input, first, &mut dst);
            q.fill::<1>(w, &input, first, &mut dst);
        };
        parallel::for_each(tasks, work);
        outs
    }

    /// The input values the kernels multiply for `x` (its quantized form, dequantized): what a
    /// reference product must use to be exact.
    #[cfg(test)]
    fn seen_input(&self, x: &[f32]) -> Vec<f64> {
        // Decode and prefill read the same quantization: per 256 for the k-quants on the SIMD
        // kernels, per 32 otherwise.
        if self.kernel.super_rows(self.format) {
            let k = SuperRows::quantize(x, self.cols, false);
            k.qs.iter()
                .enumerate()
                .map(|(i, &q)| k.d[i / 256] as f64 * q as f64)
                .collect()
        } else {
            let a = QuantizedRows::quantize(x, self.cols, false);
            a.qs.iter()
                .enumerate()
                .map(|(i, &q)| a.d[i / 32] as f64 * q as f64)
                .collect()
        }
    }

    /// The weight bytes, checked against the shape.
    fn data(&self) -> candle_core::Result<std::borrow::Cow<'_, [u8]>> {
        let data = self.weight.data()?;
        let expected = self.format.row_bytes(self.cols) * self.rows;
        if data.len() != expected {
            candle_core::bail!("weight holds {} bytes, expected {expected}", data.len());
        }
        Ok(data)
    }

    /// Computes input rows `first..` in groups of `RA` against every weight row of `w` (a chunk
    /// of whole rows), into `dst` (one slice per input row, the chunk's columns of its output);
    /// returns the first row left.
    fn fill<const RA: usize>(
        &self,
        w: &[u8],
        input: &Input,
        mut first: usize,
        dst: &mut [&mut [f32]],
    ) -> usize {
        let m = input.a.d.len() / input.a.blocks;
        let row_bytes = self.format.row_bytes(self.cols);
        while first + RA <= m {
            for (g, group) in w.chunks(GROUP * row_bytes).enumerate() {
                let mut rows: [&[u8]; GROUP] = [&[]; GROUP];
                let n = group.len() / row_bytes;
                for (slot, row) in rows.iter_mut().zip(group.chunks_exact(row_bytes)) {
                    *slot = row;
                }
                let dots = self
                    .kernel
                    .dot_group::<RA>(self.format, &rows[..n], input, first);
                for (out, dots) in dst[first..first + RA].iter_mut().zip(dots) {
                    out[g * GROUP..][..n].copy_from_slice(&dots[..n]);
                }
            }
            first += RA;
        }
        first
    }

    /// `x W^T` for many input rows with the SIMD kernels: the weight rows are packed sixteen at a
    /// time (in parallel, once per call), then the input rows are split across the pool, each
    /// task writing whole output rows.
    #[cfg(target_arch = "x86_64")]
    fn forward_packed(
        &self,
        data: &[u8],
        a: Option<&QuantizedRows>,
        k: Option<&SuperRows>,
        m: usize,
    ) -> candle_core::Result<Vec<f32>> {
        // The k-quants read activations per 256 (`k`), the other formats per 32 (`a`).
        enum Rows<'a> {
            Blocks(&'a QuantizedRows),
            Supers(&'a SuperRows),
        }
        let rows = match (self.kernel.super_rows(self.format), a, k) {
            (false, Some(a), _) => Rows::Blocks(a),
            (true, _, Some(k)) => Rows::Supers(k),
            _ => candle_core::bail!("packed {:?} matmul without its activations", self.format),
        };
        let Some(isa) = self.kernel.isa() else {
            candle_core::bail!("packed matmul on the portable kernel");
        };
        let row_bytes = self.format.row_bytes(self.cols);
        let mut groups = vec![Packed::default(); self.rows.div_ceil(packed::ROWS)];
        let packing: Vec<_> = groups
            .iter_mut()
            .zip(data.chunks(row_bytes * packed::ROWS))
            .collect();
        parallel::for_each(packing, |(p, chunk)| {
            let rows: Vec<&[u8]> = chunk.chunks_exact(row_bytes).collect();
            p.pack(self.format, &rows, self.cols, |w, v, scale, min| {
                x86::decode_row(isa, self.format, w, v, scale, min)
            });
        });
        let mut out = vec![0f32; m * self.rows];
        let per_task = m.div_ceil(parallel::threads() * 4).next_multiple_of(4);
        let tasks: Vec<_> = out.chunks_mut(per_task * self.rows).enumerate().collect();
        parallel::for_each(tasks, |(t, dst)| {
            let (first, n) = (t * per_task, dst.len() / self.rows);
            for (g, p) in groups.iter().enumerate() {
                let col = g * packed::ROWS;
                let width = packed::ROWS.min(self.rows - col);
                let mut put = |i: usize, r: &[f32; packed::ROWS]| {
                    dst[i * self.rows + col..][..width].copy_from_slice(&r[..width]);
                };
                let mut i = 0;
                while i + 4 <= n {
                    let r = match rows {
                        Rows::Blocks(a) => x86::packed_rows::<4>(isa, p, a, first + i),
                        Rows::Supers(k) => x86::packed_rows_k::<4>(isa, p, k, first + i),
                    };
                    for (k, row) in r.iter().enumerate() {
                        put(i + k, row);
                    }
                    i += 4;
                }
                for i in i..n {
                    let [r] = match rows {
                        Rows::Blocks(a) => x86::packed_rows::<1>(isa, p, a, first + i),
                        Rows::Supers(k) => x86::packed_rows_k::<1>(isa, p, k, first + i),
                    };
                    put(i, &r);
                }
            }
        });
        Ok(out)
    }
}
