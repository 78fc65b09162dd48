//! Kernels against candle's own dequantization on random matrices: every format, every kernel
//! this CPU has, row counts and input-row counts that are not multiples of the chunk or group
//! sizes, and widths that are not multiples of the vector width.

use std::sync::Arc;

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{Format, Kernel, QuantMatmul, dequantize_row, format_of};

const DTYPES: [GgmlDType; 5] = [
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q5_0,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

fn kernels() -> Vec<Kernel> {
    let mut all = vec![Kernel::Portable];
    match Kernel::detect() {
        Kernel::Avx512Vnni => all.extend([Kernel::Avx2, Kernel::Avx512Vnni]),
        Kernel::Avx2 => all.push(Kernel::Avx2),
        Kernel::Portable => {}
    }
    all
}

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn quantized(dtype: GgmlDType, rows: usize, cols: usize, rng: &mut StdRng) -> Arc<QTensor> {
    let w = random(rng, rows * cols, 0.5);
    let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).expect("tensor");
    Arc::new(QTensor::quantize(&t, dtype).expect("quantize"))
}

/// `sum_k W[j,k] * xq[r,k]` in f64, with candle's dequantized weights and the quantized inputs
/// the kernel sees: what every kernel must compute up to f32 rounding.
fn reference(mm: &QuantMatmul, w: &QTensor, x: &[f32], cols: usize) -> Vec<f64> {
    let dense = w.dequantize(&Device::Cpu).expect("dequantize");
    let dense: Vec<f32> = dense.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
    let xq = mm.seen_input(x);
    let (m, rows) = (x.len() / cols, dense.len() / cols);
    let mut out = vec![0f64; m * rows];
    for r in 0..m {
        for j in 0..rows {
            out[r * rows + j] = (0..cols)
                .map(|k| dense[j * cols + k] as f64 * xq[r * cols + k])
                .sum();
        }
    }
    out
}

#[test]
fn a_kernel_runs_only_where_its_instructions_exist() {
    use Kernel::*;
    for detected in [Portable, Avx2, Avx512Vnni] {
        assert!(Portable.within(detected));
        assert_eq!(Avx2.within(detected), detected != Portable);
        assert_eq!(Avx512Vnni.within(detected), detected == Avx512Vnni);
    }
    assert!(Kernel::best().runs_here());
    let weight = Arc::new(
        QTensor::quantize(
            &Tensor::zeros((4, 256), candle_core::DType::F32, &Device::Cpu).expect("zeros"),
            GgmlDType::Q8_0,
        )
        .expect("quantize"),
    );
    for kernel in [Portable, Avx2, Avx512Vnni] {
        assert_eq!(
            QuantMatmul::with_kernel(weight.clone(), kernel).is_some(),
            kernel.runs_here(),
            "{kernel:?}"
        );
    }
}

#[test]
fn decoder_matches_candle_dequantization() {
    let mut rng = StdRng::seed_from_u64(7);
    for dtype in DTYPES {
        let format = format_of(dtype).expect("supported");
        let cols = format.super_elems() * 3;
        let w = quantized(dtype, 5, cols, &mut rng);
        let expected: Vec<f32> = w
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("dequantize");
        let data = w.data().expect("data");
        let mut got = vec![0f32; 5 * cols];
        for (row, out) in data
            .chunks_exact(format.row_bytes(cols))
            .zip(got.chunks_exact_mut(cols))
        {
            dequantize_row(format, row, out);
        }
        assert_eq!(got, expected, "{dtype:?}");
    }
}

#[test]
fn every_kernel_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for dtype in DTYPES {
        let format = format_of(dtype).expect("supported");
        // 7 super-blocks: not a multiple of 2, 4 or 8 blocks.
        let cols = format.super_elems() * 7;
        let rows = 37;
        let w = quantized(dtype, rows, cols, &mut rng);
        for m in [1, 3, 4, 6, 9, 13, 16, 19] {
            let x = random(&mut rng, m * cols, 2.0);
            for kernel in kernels() {
                let mm = QuantMatmul::with_kernel(w.clone(), kernel).expect("supported");
                let expected = reference(&mm, &w, &x, cols);
                let got = mm.forward(&x).expect("forward");
                assert_eq!(got.len(), expected.len());
                for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                    let tol = 1e-4 * (1.0 + e.abs());
                    assert!(
                        ((*g as f64) - e).abs() <= tol,
                        "{dtype:?} {kernel:?} m={m} output {i}: {g} vs {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_row_gives_the_same_bits_whatever_rows_share_its_call() {
    // Decode (a few rows, weights as stored) and prefill (16 rows or more, weights packed) must
    // agree to the bit: a sequence's logits may not depend on its company.
    let mut rng = StdRng::seed_from_u64(23);
    for dtype in DTYPES {
        let format = format_of(dtype).expect("supported");
        let cols = format.super_elems() * 3;
        // 21 weight rows: two groups of eight and a ragged one, one packed group and a ragged one.
        let w = quantized(dtype, 21, cols, &mut rng);
        let x = random(&mut rng, 20 * cols, 2.0);
        for kernel in kernels() {
            let mm = QuantMatmul::with_kernel(w.clone(), kernel).expect("supported");
            let all = mm.forward(&x).expect("20 rows");
            for m in [1, 2, 3, 5, 8, 15, 16] {
                let part = mm.forward(&x[..m * cols]).expect("part");
                let same = part
                    .iter()
                    .zip(&all)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{dtype:?} {kernel:?}: {m} rows differ from the same rows among 20"
                );
            }
        }
    }
}

#[test]
fn extreme_values_do_not_saturate() {
    // Every weight value and every activation at the end of its range: 8-bit products summed in
    // 16 bits must not clip.
    for format in [
        Format::Q8_0,
        Format::Q4_0,
        Format::Q5_0,
        Format::Q4K,
        Format::Q6K,
    ] {
        let cols = format.super_elems() * 2;
        let mut sb = vec![0xffu8; format.super_bytes()];
        let one = half::f16::from_f32(1.0).to_le_bytes();
        match format {
            Format::Q8_0 => {
                sb[..2].copy_from_slice(&one);
                sb[2..].fill(0x80); // -128
            }
            Format::Q4_0 | Format::Q5_0 => sb[..2].copy_from_slice(&one),
            Format::Q4K => {
                sb[..2].copy_from_slice(&one);
                sb[2..4].copy_from_slice(&one);
            }
            Format::Q6K => {
                sb[..192].fill(0); // every value -32
                sb[192..208].fill(0x7f);
                sb[208..].copy_from_slice(&one);
            }
        }
        let bytes: Vec<u8> = sb.repeat(2);
        let dtype = DTYPES[[
            Format::Q8_0,
            Format::Q4_0,
            Format::Q5_0,
            Format::Q4K,
            Format::Q6K,
        ]
        .iter()
        .position(|f| *f == format)
        .expect("listed")];
        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype).expect("storage");
        let w = Arc::new(QTensor::new(storage, (1, cols)).expect("tensor"));
        let row: Vec<f32> = (0..cols)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        // One input row (the decode kernels) and enough for the packed prefill kernels.
        for m in [1, 17] {
            let x = row.repeat(m);
            for kernel in kernels() {
                let mm = QuantMatmul::with_kernel(w.clone(), kernel).expect("supported");
                let expected = reference(&mm, &w, &x, cols);
                let got = mm.forward(&x).expect("forward");
                for (g, e) in got.iter().zip(&expected) {
                    assert!(
                        (*g as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{format:?} {kernel:?} m={m}: {g} vs {e}"
                    );
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn simd_row_decoder_matches_the_portable_one() {
    let Some(isa) = super::x86::Isa::detect() else {
        return; // nothing to compare on this CPU
    };
    let mut rng = StdRng::seed_from_u64(3);
    for dtype in DTYPES {
        let format = format_of(dtype).expect("supported");
        let cols = format.super_elems() * 3;
        let w = quantized(dtype, 1, cols, &mut rng);
        let data = w.data().expect("data");
        let blocks = cols / 32;
        let mut simd = (vec![0i8; cols], vec![0f32; 2 * blocks], vec![0f32; blocks]);
        let mut portable = simd.clone();
        super::x86::decode_row(isa, format, &data, &mut simd.0, &mut simd.1, &mut simd.2);
        super::packed::decode_row_portable(
            format,
            &data,
            &mut portable.0,
            &mut portable.1,
            &mut portable.2,
        );
        assert_eq!(simd, portable, "{dtype:?}");
    }
}

#[test]
fn matrices_sharing_an_input_match_their_own_products() {
    let mut rng = StdRng::seed_from_u64(5);
    let cols = 256 * 2;
    let mats = [
        quantized(GgmlDType::Q5_0, 19, cols, &mut rng),
        quantized(GgmlDType::Q8_0, 5, cols, &mut rng),
        quantized(GgmlDType::Q4K, 12, cols, &mut rng),
    ];
    for kernel in kernels() {
        let qs: Vec<QuantMatmul> = mats
            .iter()
            .map(|w| QuantMatmul::with_kernel(w.clone(), kernel).expect("supported"))
            .collect();
        let refs: Vec<&QuantMatmul> = qs.iter().collect();
        for m in [1, 3, 17] {
            let x = random(&mut rng, m * cols, 1.0);
            let together = QuantMatmul::forward_many(&refs, &x).expect("forward");
            for (q, got) in qs.iter().zip(&together) {
                assert_eq!(got, &q.forward(&x).expect("forward"), "{kernel:?} m={m}");
            }
        }
    }
    let narrow = QuantMatmul::new(quantized(GgmlDType::Q8_0, 4, 64, &mut rng)).expect("supported");
    let wide = QuantMatmul::new(mats[1].clone()).expect("supported");
    let err = QuantMatmul::forward_many(&[&narrow, &wide], &[0.0; 64]).expect_err("mismatch");
    assert!(err.to_string().contains("cannot share an input"), "{err}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn q4k_scales_unpack_four_at_a_time_as_one_at_a_time() {
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..1000 {
        let packed: [u8; 12] = std::array::from_fn(|_| rng.random());
        let (sc, m) = super::x86::q4k_scales_mins(packed);
        for j in 0..8 {
            assert_eq!(
                (sc[j], m[j]),
                super::formats::q4k_scale_min(&packed, j),
                "{packed:?} {j}"
            );
        }
    }
}

#[test]
fn kernel_choice_names_what_it_cannot_honour() {
    assert_eq!(
        Kernel::choose("portable", Kernel::Avx512Vnni),
        Ok(Kernel::Portable)
    );
    assert_eq!(Kernel::choose("avx2", Kernel::Avx512Vnni), Ok(Kernel::Avx2));
    let err = Kernel::choose("avx512", Kernel::Avx2).expect_err("unknown");
    assert!(err.contains("`avx512`"), "{err}");
    let err = Kernel::choose("avx2", Kernel::Portable).expect_err("unsupported");
    assert!(err.contains("lacks AVX2"), "{err}");
}
