//! Weight bytes per second of the CPU kernels in decode (one input row), per format and shape,
//! on this machine's best kernel family (`KESTREL_KERNEL` lowers it). The matrices together
//! exceed the caches, as a model's do, so the figure is comparable with the machine's read
//! bandwidth. Run: `RAYON_NUM_THREADS=1 cargo run --release -p kestrel-engine --example
//! kernel_bandwidth`.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use kestrel_engine::kernels::{Kernel, QuantMatmul, format_of};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shapes = [
        (GgmlDType::Q5_0, 4864, 896),
        (GgmlDType::Q8_0, 151936 / 4, 896),
        (GgmlDType::Q6K, 896, 4864),
        (GgmlDType::Q4K, 3072, 1024),
        (GgmlDType::Q6K, 3072, 1024),
        (GgmlDType::Q4K, 1024, 3072),
    ];
    println!("kernel: {:?}", Kernel::best());
    for (dtype, rows, cols) in shapes {
        let mats = (0..24)
            .map(|_| {
                let dense = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu)?;
                let q = Arc::new(QTensor::quantize(&dense, dtype)?);
                QuantMatmul::new(q).ok_or("format not supported by the kernels".into())
            })
            .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
        let format = format_of(dtype).ok_or("format not supported by the kernels")?;
        let bytes = mats.len() * rows * format.row_bytes(cols);
        let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            for m in &mats {
                std::hint::black_box(m.forward(&x)?);
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{dtype:?} {rows}x{cols}: {:.1} GB/s",
            bytes as f64 / best / 1e9
        );
    }
    Ok(())
}
