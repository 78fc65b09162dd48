//! The layers every decoder is built from: a projection (dense or quantized, on Kestrel's CPU
//! kernels where they apply), a SwiGLU MLP, RMSNorm, and rotary position embedding (YaRN
//! included). Each is a small struct with its weights and a `forward`; the model files put them
//! together.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kernels::QuantMatmul;
use crate::options::CpuOps;
use crate::weights::Weights;

/// A projection `x W^T + b`, dense or quantized. Quantized CPU weights of the formats
/// [`QuantMatmul`] implements go through its run-time-dispatched kernels; everything else
/// through candle.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: QMatMul,
    cpu_kernel: Option<QuantMatmul>,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn load(w: &mut Weights, prefix: &str, bias: bool, ops: CpuOps) -> Result<Self> {
        let weight = w.matmul(&format!("{prefix}.weight"))?;
        let bias = if bias {
            Some(w.tensor(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Ok(Self::new(weight, bias, ops))
    }

    pub(crate) fn new(weight: QMatMul, bias: Option<Tensor>, ops: CpuOps) -> Self {
        let cpu_kernel = match (&weight, ops) {
            (QMatMul::QTensor(q), CpuOps::Kestrel) => QuantMatmul::new(q.clone()),
            _ => None,
        };
        Self {
            weight,
            cpu_kernel,
            bias,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [y] = Self::forward_many([self], x)?;
        Ok(y)
    }

    /// Several projections of the same input. On the CPU kernels they share one quantized copy
    /// of the input and one parallel pass; otherwise each runs on its own.
    pub(crate) fn forward_many<const N: usize>(
        linears: [&Self; N],
        x: &Tensor,
    ) -> Result<[Tensor; N]> {
        // One output per projection by construction.
        Self::forward_all(&linears, x)?
            .try_into()
            .map_err(|_| EngineError::InvalidRequest("projection count".into()))
    }

    /// [`Linear::forward_many`] over a slice (a MoE token's chosen experts).
    pub(crate) fn forward_all(linears: &[&Self], x: &Tensor) -> Result<Vec<Tensor>> {
        let kernels: Option<Vec<&QuantMatmul>> =
            linears.iter().map(|l| l.cpu_kernel.as_ref()).collect();
        let ys: Vec<Tensor> = match kernels {
            Some(kernels) if x.dtype() == DType::F32 => {
                // The input is read where it lies when contiguous (a copy of a 512-token
                // activation is megabytes of fresh pages per call).
                let x = x.contiguous()?;
                let in_place = {
                    let (storage, layout) = x.storage_and_layout();
                    match (&*storage, layout.contiguous_offsets()) {
                        (candle_core::Storage::Cpu(cpu), Some((start, end))) => {
                            let input = &cpu.as_slice::<f32>()?[start..end];
                            Some(QuantMatmul::forward_many(&kernels, input)?)
                        }
                        _ => None,
                    }
                };
                let outs = match in_place {
                    Some(outs) => outs,
                    None => {
                        let input = x.flatten_all()?.to_vec1::<f32>()?;
                        QuantMatmul::forward_many(&kernels, &input)?
                    }
                };
                kernels
                    .iter()
                    .zip(outs)
                    .map(|(kernel, out)| {
                        let mut dims = x.dims().to_vec();
                        if let Some(last) = dims.last_mut() {
                            *last = kernel.rows();
                        }
                        Ok(Tensor::from_vec(out, dims, x.device())?)
                    })
                    .collect::<Result<_>>()?
            }
            _ => {
                let x = x.contiguous()?;
                linears
                    .iter()
                    .map(|l| Ok(l.weight.forward(&x)?))
                    .collect::<Result<_>>()?
            }
        };
        linears
            .iter()
            .zip(ys)
            .map(|(l, y)| {
                Ok(match &l.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            })
            .collect()
    }
}

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))`. A dense layer's MLP, or one expert.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    ops: CpuOps,
}

impl Mlp {
    pub(crate) fn load(w: &mut Weights, p: &str, ops: CpuOps) -> Result<Self> {
        Ok(Self::new(
            Linear::load(w, &format!("{p}.gate_proj"), false, ops)?,
            Linear::load(w, &format!("{p}.up_proj"), false, ops)?,
            Linear::load(w, &format!("{p}.down_proj"), false, ops)?,
            ops,
        ))
    }

    pub(crate) fn new(gate_proj: Linear, up_proj: Linear, down_proj: Linear, ops: CpuOps) -> Self {
        Self {
            gate_proj,
            up_proj,
            down_proj,
            ops,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up] = Linear::forward_many([&self.gate_proj, &self.up_proj], x)?;
        self.finish(&gate, &up)
    }

    /// The gate and up projections, for a caller that runs several MLPs' at once.
    pub(crate) fn gate_up(&self) -> [&Linear; 2] {
        [&self.gate_proj, &self.up_proj]
    }

    /// The rest of [`Mlp::forward`] after the gate and up projections.
    pub(crate) fn finish(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        let fused = match self.ops {
            CpuOps::Kestrel => crate::fused::swiglu(gate, up)?,
            CpuOps::Candle => None,
        };
        let gated = match fused {
            Some(gated) => gated,
            None => (candle_nn::ops::silu(gate)? * up)?,
        };
        self.down_proj.forward(&gated)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn load(w: &mut Weights, name: &str, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.tensor(name)?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.weight,
            self.eps,
        )?)
    }
}

/// Rotary position embedding: inverse frequencies (YaRN-corrected when configured) and the cos/sin
/// scale. cos/sin are computed per call for the positions at hand, in f32, so long positions keep
/// full precision and no table of the whole context is kept.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    inv_freq: Vec<f32>,
    scale: f32,
}

impl Rope {
    pub(crate) fn new(c: &ModelConfig) -> Self {
        let dim = c.head_dim;
        let base = c.rope_theta as f32;
        // As transformers: base^(2i/dim) in f32.
        let pos_freqs: Vec<f32> = (0..dim / 2)
            .map(|i| base.powf((2 * i) as f32 / dim as f32))
            .collect();
        let Some(y) = &c.yarn else {
            return Self {
                inv_freq: pos_freqs.iter().map(|p| 1.0 / p).collect(),
                scale: 1.0,
            };
        };
        let correction_dim = |rotations: f64| {
            dim as f64
                * (y.original_max_position_embeddings as f64
                    / (rotations * 2.0 * std::f64::consts::PI))
                    .ln()
                / (2.0 * c.rope_theta.ln())
        };
        let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
        if y.truncate {
            low = low.floor();
            high = high.ceil();
        }
        let low = low.max(0.0) as f32;
        let mut high = high.min(dim as f64 - 1.0) as f32;
        if low == high {
            high += 0.001;
        }
        let factor = y.factor as f32;
        let inv_freq = pos_freqs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation = 1.0 - ramp;
                (1.0 / (factor * p)) * (1.0 - extrapolation) + (1.0 / p) * extrapolation
            })
            .collect();
        Self {
            inv_freq,
            scale: y.attention_factor as f32,
        }
    }

    /// cos and sin for positions `offset..offset + len`, each `(len, head_dim / 2)`.
    pub(crate) fn cos_sin(
        &self,
        offset: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in offset..offset + len {
            for f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos() * self.scale);
                sin.push(angle.sin() * self.scale);
            }
        }
        let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yarn_keeps_high_frequencies_and_scales_low_ones() {
        let text = r#"{"model_type":"qwen3","hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":4,"head_dim":16,"max_position_embeddings":128,"vocab_size":8,
            "rope_parameters":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32,"rope_theta":10000.0}}"#;
        let c = ModelConfig::from_hf_json(text, std::path::Path::new("c.json")).expect("config");
        let rope = Rope::new(&c);
        assert_eq!(rope.inv_freq[0], 1.0);
        let plain = 1.0 / 10000f32.powf(14.0 / 16.0);
        assert!((rope.inv_freq[7] - plain / 4.0).abs() < 1e-9);
        assert!((rope.scale - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
    }
}
