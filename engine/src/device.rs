//! Choosing a compute device from a user's spec: `auto`, `cpu`, `cuda`, `cuda:N`, `metal`.
//!
//! `auto` takes a GPU when the binary was built with its feature and one answers, else the CPU: a
//! CUDA build on a machine whose driver reports no device still runs, and says why it fell back.
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
        ("auto", None) => {
            let cuda = || Device::new_cuda(0);
            let metal = || Device::new_metal(0);
            let mut gpus: Vec<(&str, &GpuOpener)> = Vec::new();
            if cfg!(feature = "cuda") {
                gpus.push(("CUDA", &cuda));
            }
            if cfg!(feature = "metal") {
                gpus.push(("Metal", &metal));
            }
            Ok(first_gpu_or_cpu(&gpus))
        }
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

/// Opens device 0 of one GPU backend.
type GpuOpener<'a> = dyn Fn() -> candle_core::Result<Device> + 'a;

/// The first GPU of `gpus` (backend name, opener) that opens, else the CPU. A backend compiled in
/// but failing to open (no device, a driver error) is reported, not fatal: `auto` promises a
/// device wherever the binary runs.
fn first_gpu_or_cpu(gpus: &[(&str, &GpuOpener<'_>)]) -> Device {
    let mut failures = Vec::new();
    for (backend, open) in gpus {
        match open() {
            Ok(device) => return device,
            Err(e) => failures.push(format!("no {backend} device: {e}")),
        }
    }
    if !failures.is_empty() {
        tracing::warn!(
            "--device auto: running on the CPU ({})",
            failures.join("; ")
        );
    }
    Device::Cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_past_gpus_that_fail_to_open() {
        use std::cell::Cell;
        let tried = Cell::new(Vec::new());
        let attempt = |name: &'static str, opens: bool| {
            let mut names = tried.take();
            names.push(name);
            tried.set(names);
            if opens {
                Ok(Device::Cpu) // stands in for a GPU
            } else {
                Err(candle_core::Error::Msg(format!("{name}: no device")))
            }
        };
        let failing = || attempt("failing", false);
        let opening = || attempt("opening", true);
        let later = || attempt("later", true);
        assert!(first_gpu_or_cpu(&[]).is_cpu());
        assert!(first_gpu_or_cpu(&[("CUDA", &failing)]).is_cpu());
        assert_eq!(tried.take(), ["failing"]);
        first_gpu_or_cpu(&[("CUDA", &failing), ("Metal", &opening), ("Later", &later)]);
        assert_eq!(
            tried.take(),
            ["failing", "opening"],
            "the first that opens is taken"
        );
    }

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
