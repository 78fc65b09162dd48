//! Elementwise steps fused into one pass on the CPU, and the `exp` they share.
//!
//! candle runs each elementwise op as its own pass with its own output tensor: SwiGLU is a
//! sigmoid, a multiply and another multiply over megabytes at prefill, each reading and writing
//! memory and calling libm's `exp` per element. Here it is one pass, and `exp` is a branch-free
//! polynomial that the compiler vectorises.

use candle_core::{DType, Device, Storage, Tensor};

use crate::error::Result;

/// `silu(gate) * up` (SwiGLU's gating; `silu(x) = x / (1 + e^-x)`), for two f32 CPU tensors of one
/// shape. `None` when they are not f32 on the CPU (the caller keeps candle's ops).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if !matches!(gate.device(), Device::Cpu)
        || gate.dtype() != DType::F32
        || up.dtype() != DType::F32
        || gate.dims() != up.dims()
    {
        return Ok(None);
    }
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let (g_store, g_layout) = gate.storage_and_layout();
    let (u_store, u_layout) = up.storage_and_layout();
    let (Storage::Cpu(g), Storage::Cpu(u), Some((g0, g1)), Some((u0, u1))) = (
        &*g_store,
        &*u_store,
        g_layout.contiguous_offsets(),
        u_layout.contiguous_offsets(),
    ) else {
        return Ok(None);
    };
    let (g, u) = (&g.as_slice::<f32>()?[g0..g1], &u.as_slice::<f32>()?[u0..u1]);
    let mut out = vec![0f32; g.len()];
    let chunk = g.len().div_ceil(crate::parallel::threads() * 4).max(4096);
    let tasks: Vec<_> = out
        .chunks_mut(chunk)
        .zip(g.chunks(chunk).zip(u.chunks(chunk)))
        .collect();
    crate::parallel::for_each(tasks, |(out, (g, u))| {
        for (o, (&g, &u)) in out.iter_mut().zip(g.iter().zip(u)) {
            *o = silu(g) * u;
        }
    });
    Ok(Some(Tensor::from_vec(out, gate.shape(), &Device::Cpu)?))
}

/// `x / (1 + e^-x)` through `e^-|x|` (never overflows): `1 / (1 + e)` of `x` for `x >= 0`, and
/// `e / (1 + e)` for `x < 0`.
fn silu(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let sigmoid = if x >= 0.0 { 1.0 } else { e } / (1.0 + e);
    x * sigmoid
}

/// `e^x` for `x <= 0` (larger `x` is not handled), relative error about 2e-7; below -87 it
/// is clamped to about 1e-38, which a softmax row that holds its own maximum (1.0) rounds
/// away. Branch-free so a loop over it vectorises: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a
/// degree-6 polynomial for `e^r` and `2^n` made from its exponent bits.
pub fn exp_nonpositive(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Not `max`: that would turn a NaN into -87, hiding it; a comparison keeps it.
    let x = if x < -87.0 { -87.0 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    p * f32::from_bits(((n_bits + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn exp_matches_std_over_the_softmax_range() {
        let mut x = 0.0f32;
        while x > -90.0 {
            let (got, want) = (super::exp_nonpositive(x), x.max(-87.0).exp());
            assert!((got - want).abs() <= want * 4e-7, "{x}: {got} vs {want}");
            x -= 0.0137;
        }
        assert_eq!(super::exp_nonpositive(0.0), 1.0);
        assert!(super::exp_nonpositive(f32::NAN).is_nan());
        assert!(super::silu(f32::NAN).is_nan());
    }

    #[test]
    fn silu_matches_the_definition_at_the_extremes() {
        for x in [
            -200.0f32, -90.0, -20.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 3.0, 50.0, 200.0,
        ] {
            let want = (x as f64 / (1.0 + (-x as f64).exp())) as f32;
            let got = super::silu(x);
            assert!(
                (got - want).abs() <= want.abs() * 1e-6 + 1e-30,
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn swiglu_matches_candle() {
        let dev = Device::Cpu;
        let gate = Tensor::randn(0f32, 3.0, (3, 5000), &dev).expect("gate");
        let up = Tensor::randn(0f32, 1.0, (3, 5000), &dev).expect("up");
        let got = super::swiglu(&gate, &up)
            .expect("swiglu")
            .expect("fast path taken");
        let expected = (candle_nn::ops::silu(&gate).expect("silu") * &up).expect("mul");
        let flat = |x: &Tensor| {
            x.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("flat")
        };
        for (i, (g, e)) in flat(&got).iter().zip(&flat(&expected)).enumerate() {
            assert!((g - e).abs() <= e.abs() * 1e-6 + 1e-7, "{i}: {g} vs {e}");
        }
    }
}
