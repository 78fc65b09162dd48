//! Choosing a compute device from a user's spec: `auto`, `cpu`, `cuda`, `cuda:N`, `metal`.
//!
//! `auto` takes a GPU when the binary was built with its feature and one is present, else the CPU.
//! Asking for a backend the binary was built without is an error that says which feature to enable.

use candle_core::Device;

use crate::error::{EngineError, Result};

/// Resolves a device spec.
pub fn parse_device(spec: &str) -> Result<Device> {
    let err = |message: String| EngineError::Device {
        spec: spec.to_string(),
        message,
    };
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => (
            k,
            Some(
                n.parse::<usize>()
                    .map_err(|_| err(format!("`{n}` is not a device number")))?,
            ),
        ),
        None => (spec, None),
    };
    match (kind, ordinal) {
        ("cpu", None) => Ok(Device::Cpu),
        ("auto", None) => Ok(
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).map_err(|e| err(e.to_string()))?
            } else if cfg!(feature = "metal") && candle_core::utils::metal_is_available() {
                Device::new_metal(0).map_err(|e| err(e.to_string()))?
            } else {
                Device::Cpu
            },
        ),
        ("cuda", n) => {
            if !cfg!(feature = "cuda") {
                return Err(err(
                    "this build has no CUDA support (build with `--features cuda`)".into(),
                ));
            }
            Device::new_cuda(n.unwrap_or(0)).map_err(|e| err(e.to_string()))
        }
        ("metal", n) => {
            if !cfg!(feature = "metal") {
                return Err(err(
                    "this build has no Metal support (build with `--features metal`)".into(),
                ));
            }
            Device::new_metal(n.unwrap_or(0)).map_err(|e| err(e.to_string()))
        }
        _ => Err(err("expected auto, cpu, cuda, cuda:N or metal".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert!(parse_device("cpu").expect("cpu").is_cpu());
        assert!(parse_device("auto").is_ok());
        for bad in ["gpu", "cpu:1", "cuda:x", ""] {
            let e = parse_device(bad).expect_err(bad).to_string();
            assert!(e.contains(bad), "{e}");
        }
        if !cfg!(feature = "cuda") {
            assert!(
                parse_device("cuda:0")
                    .expect_err("no cuda")
                    .to_string()
                    .contains("--features cuda")
            );
        }
    }
}
