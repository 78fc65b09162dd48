//! The GGUF block layouts the CPU kernels read, and a portable decoder for them.
//!
//! Every supported format is described the same way: a row is a run of *super-blocks* (32
//! elements for the `_0` types, 256 for the k-quants), each split into 32-element *blocks*, and
//! every block decodes to 32 small integers `v` with a scale per 16-element half and an additive
//! `min`, so that weight `e` of the block is `scale[e / 16] * v[e] + min`. Offsets become mins
//! (Q4_0's `-8 * d`, Q5_0's `-16 * d`) so their values stay unsigned and enter the `u8 x i8`
//! products directly; Q8_0 and Q6_K decode to signed values. The SIMD kernels compute
//! exactly this on packed registers; [`decode_block`] computes it one element at a time and is
//! both the portable path and the reference the kernels are tested against.

/// A quantized weight format the kernels implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 32 signed bytes and an f16 scale.
    Q8_0,
    /// 32 nibbles (offset 8) and an f16 scale.
    Q4_0,
    /// 32 five-bit values (offset 16) and an f16 scale.
    Q5_0,
    /// 256 nibbles in 8 blocks, each with a 6-bit scale and min, under f16 super-scales.
    Q4K,
    /// 256 six-bit values (offset 32) in 16 groups of 16, each with an 8-bit scale, under an f16
    /// super-scale.
    Q6K,
}

impl Format {
    /// Elements per super-block.
    pub const fn super_elems(self) -> usize {
        match self {
            Self::Q8_0 | Self::Q4_0 | Self::Q5_0 => 32,
            Self::Q4K | Self::Q6K => 256,
        }
    }

    /// Bytes per super-block.
    pub const fn super_bytes(self) -> usize {
        match self {
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q5_0 => 22,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    /// Bytes of one row of `cols` elements (`cols` a multiple of [`Self::super_elems`]).
    pub const fn row_bytes(self, cols: usize) -> usize {
        cols / self.super_elems() * self.super_bytes()
    }
}

/// One block decoded: weight `e` is `scale[e / 16] * v[e] + min`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block {
    /// The integer values.
    pub v: [i8; 32],
    /// The scale of each 16-element half.
    pub scale: [f32; 2],
    /// Added to every weight of the block.
    pub min: f32,
}

pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// An IEEE half to f32 in plain integer arithmetic. The SIMD kernels use it for block scales:
/// LLVM turns the F16C conversion of a single value into an insert that merges into an arbitrary
/// register (it picked the accumulator), which chained each block to the one before. Subnormal
/// halves (common among the scales of small weights) are converted through an integer-to-float
/// conversion, never through a subnormal f32, which costs a microcode assist per operation.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let rest = h & 0x7fff;
    let magnitude = match rest >> 10 {
        // Infinities and NaNs keep an all-ones exponent and their payload.
        0x1f => (rest << 13) | 0x7f80_0000,
        // Subnormal: mantissa * 2^-24, exact in f32.
        0 => (rest as f32 * f32::from_bits(0x3380_0000)).to_bits(),
        // Normal: the exponent rebiased from 15 to 127.
        _ => (rest << 13) + ((127 - 15) << 23),
    };
    f32::from_bits(magnitude | sign)
}

/// The 6-bit scale and min of block `j` (0..8) of a Q4_K super-block's 12 packed scale bytes.
pub(crate) fn q4k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Decodes block `block` (0..super_elems/32) of the super-block `sb` (exactly `super_bytes` long).
pub fn decode_block(format: Format, sb: &[u8], block: usize) -> Block {
    let mut v = [0i8; 32];
    match format {
        Format::Q8_0 => {
            for (o, &b) in v.iter_mut().zip(&sb[2..34]) {
                *o = b as i8;
            }
            let d = f16_at(sb, 0);
            Block {
                v,
                scale: [d; 2],
                min: 0.0,
            }
        }
        Format::Q4_0 => {
            for i in 0..16 {
                v[i] = (sb[2 + i] & 0x0f) as i8;
                v[i + 16] = (sb[2 + i] >> 4) as i8;
            }
            let d = f16_at(sb, 0);
            Block {
                v,
                scale: [d; 2],
                min: -8.0 * d,
            }
        }
        Format::Q5_0 => {
            let qh = u32::from_le_bytes([sb[2], sb[3], sb[4], sb[5]]);
            for i in 0..16 {
                let lo = (sb[6 + i] & 0x0f) | ((((qh >> i) & 1) as u8) << 4);
                let hi = (sb[6 + i] >> 4) | ((((qh >> (i + 16)) & 1) as u8) << 4);
                v[i] = lo as i8;
                v[i + 16] = hi as i8;
            }
            let d = f16_at(sb, 0);
            Block {
                v,
                scale: [d; 2],
                min: -16.0 * d,
            }
        }
        Format::Q4K => {
            let (d, dmin) = (f16_at(sb, 0), f16_at(sb, 2));
            let (sc, m) = q4k_scale_min(&sb[4..16], block);
            let qs = &sb[16 + 32 * (block / 2)..16 + 32 * (block / 2) + 32];
            for (o, &q) in v.iter_mut().zip(qs) {
                *o = if block.is_multiple_of(2) {
                    q & 0x0f
                } else {
                    q >> 4
                } as i8;
            }
            let scale = d * sc as f32;
            Block {
                v,
                scale: [scale; 2],
                min: -dmin * m as f32,
            }
        }
        Format::Q6K => {
            let (half, k) = (block / 4, block % 4);
            let ql = &sb[64 * half + 32 * (k % 2)..][..32];
            let qh = &sb[128 + 32 * half..][..32];
            for l in 0..32 {
                let low = if k < 2 { ql[l] & 0x0f } else { ql[l] >> 4 };
                let high = (qh[l] >> (2 * k)) & 3;
                v[l] = (low | (high << 4)) as i8 - 32;
            }
            let d = f16_at(sb, 208);
            let sc = |i: usize| d * (sb[192 + 8 * half + 2 * k + i] as i8) as f32;
            Block {
                v,
                scale: [sc(0), sc(1)],
                min: 0.0,
            }
        }
    }
}

/// Dequantizes one row (for tests and the portable path's clarity).
pub fn dequantize_row(format: Format, row: &[u8], out: &mut [f32]) {
    let per = format.super_elems() / 32;
    for (s, sb) in row.chunks_exact(format.super_bytes()).enumerate() {
        for b in 0..per {
            let block = decode_block(format, sb, b);
            let dst = &mut out[(s * per + b) * 32..][..32];
            for (e, o) in dst.iter_mut().enumerate() {
                *o = block.scale[e / 16] * block.v[e] as f32 + block.min;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_conversion_matches_half_for_every_value() {
        for bits in 0..=u16::MAX {
            let expected = half::f16::from_bits(bits).to_f32();
            let got = f16_to_f32(bits);
            if expected.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), expected.to_bits(), "{bits:#06x}");
            }
        }
    }
}
