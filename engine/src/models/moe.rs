//! Qwen3 MoE's sparse MLP block: a router and a set of SwiGLU experts, each token going through
//! the `k` experts its router scores highest.
//!
//! Routing is transformers' (`Qwen3MoeTopKRouter`): softmax over all experts in f32, top-k,
//! renormalised to sum to one when the config says so, then cast to the activation dtype. The
//! rows of a pass are grouped by expert, so each chosen expert runs once on all the rows that
//! chose it and an expert no row chose is never read: decode of one token reads `k` experts'
//! weights, not all of them. Experts are ordinary [`Mlp`]s, so quantized experts go through
//! Kestrel's CPU kernels like any other projection.

use candle_core::{DType, Tensor};

use crate::config::MoeConfig;
use crate::error::{EngineError, Result};
use crate::layers::{Linear, Mlp};
use crate::options::CpuOps;
use crate::weights::Weights;

/// One layer's router and experts.
#[derive(Debug, Clone)]
pub(crate) struct SparseMoe {
    /// The router, transposed to `(hidden, num_experts)` once at load (dequantized when the
    /// file quantizes it): scoring a row is then one small product with no copy of the weight.
    gate_t: Tensor,
    experts: Vec<Mlp>,
    experts_per_token: usize,
    norm_topk_prob: bool,
}

/// The experts one row goes through and their weights.
#[derive(Debug, Clone, PartialEq)]
struct Route {
    experts: Vec<usize>,
    weights: Vec<f32>,
}

impl SparseMoe {
    /// Loads the block `prefix` (`model.layers.3.mlp`).
    pub(crate) fn load(
        w: &mut Weights,
        prefix: &str,
        moe: &MoeConfig,
        ops: CpuOps,
    ) -> Result<Self> {
        let gate = w.tensor(&format!("{prefix}.gate.weight"))?;
        let n = moe.num_experts;
        // A router of another size would pick experts that are not there.
        if gate.dims().len() != 2 || gate.dims()[0] != n {
            return Err(EngineError::Weights {
                path: format!("{prefix}.gate.weight").into(),
                message: format!(
                    "the router has shape {:?}, the config has {n} experts",
                    gate.dims()
                ),
            });
        }
        let gate_t = gate.to_dtype(w.dtype())?.t()?.contiguous()?;
        let gates = w.expert_matmuls(prefix, "gate_proj", n)?;
        let ups = w.expert_matmuls(prefix, "up_proj", n)?;
        let downs = w.expert_matmuls(prefix, "down_proj", n)?;
        let experts = gates
            .into_iter()
            .zip(ups)
            .zip(downs)
            .map(|((g, u), d)| {
                Mlp::new(
                    Linear::new(g, None, ops),
                    Linear::new(u, None, ops),
                    Linear::new(d, None, ops),
                    ops,
                )
            })
            .collect();
        Ok(Self {
            gate_t,
            experts,
            experts_per_token: moe.experts_per_token,
            norm_topk_prob: moe.norm_topk_prob,
        })
    }

    /// The block on `x` (`(1, rows, hidden)`).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let hidden = dims.last().copied().unwrap_or(0);
        let x = x.reshape(((), hidden))?;
        let logits = x.contiguous()?.matmul(&self.gate_t)?;
        let scores = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        let routes: Vec<Route> = scores
            .to_vec2::<f32>()?
            .iter()
            .map(|p| route(p, self.experts_per_token, self.norm_topk_prob))
            .collect();
        if let [only] = routes.as_slice() {
            return Ok(self.one_row(&x, only)?.reshape(dims)?);
        }
        // Rows and weights per expert, in the order rows appear.
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); self.experts.len()];
        for (row, r) in routes.iter().enumerate() {
            for (&e, &w) in r.experts.iter().zip(&r.weights) {
                rows[e].push(row as u32);
                weights[e].push(w);
            }
        }
        let mut out = x.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let n = rows[e].len();
            let index = Tensor::new(rows[e].as_slice(), x.device())?;
            let input = x.index_select(&index, 0)?;
            let w = Tensor::from_slice(&weights[e], (n, 1), x.device())?.to_dtype(x.dtype())?;
            let y = expert.forward(&input)?.broadcast_mul(&w)?;
            out = out.index_add(&index, &y, 0)?;
        }
        Ok(out.reshape(dims)?)
    }

    /// One row (decode): its experts' gate and up projections share one pass over the input
    /// (they all read it), then each expert's down projection, summed with the weights.
    fn one_row(&self, x: &Tensor, route: &Route) -> Result<Tensor> {
        let experts: Vec<&Mlp> = route.experts.iter().map(|&e| &self.experts[e]).collect();
        let projections: Vec<&Linear> = experts.iter().flat_map(|e| e.gate_up()).collect();
        let outs = Linear::forward_all(&projections, x)?;
        let mut sum: Option<Tensor> = None;
        for ((expert, pair), &w) in experts.iter().zip(outs.chunks_exact(2)).zip(&route.weights) {
            let w = Tensor::new(&[w], x.device())?.to_dtype(x.dtype())?;
            let y = expert.finish(&pair[0], &pair[1])?.broadcast_mul(&w)?;
            sum = Some(match sum {
                Some(s) => (s + y)?,
                None => y,
            });
        }
        sum.ok_or_else(|| EngineError::InvalidRequest("a token routed to no expert".into()))
    }
}

/// The `k` experts of highest probability (the lower index first among equals) and their
/// weights, renormalised to sum to one when `normalise`.
fn route(probs: &[f32], k: usize, normalise: bool) -> Route {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.truncate(k);
    let mut weights: Vec<f32> = order.iter().map(|&e| probs[e]).collect();
    if normalise {
        let sum: f32 = weights.iter().sum();
        if sum > 0.0 {
            weights.iter_mut().for_each(|w| *w /= sum);
        }
    }
    Route {
        experts: order,
        weights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_the_top_k_and_renormalises_when_asked() {
        let probs = [0.1, 0.4, 0.2, 0.3];
        let plain = route(&probs, 2, false);
        assert_eq!(plain.experts, [1, 3]);
        assert_eq!(plain.weights, [0.4, 0.3]);
        let normalised = route(&probs, 2, true);
        assert_eq!(normalised.experts, [1, 3]);
        assert!((normalised.weights[0] - 4.0 / 7.0).abs() < 1e-6);
        assert!((normalised.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // Equal scores: the lower index wins.
        assert_eq!(route(&[0.25; 4], 3, false).experts, [0, 1, 2]);
    }
}
