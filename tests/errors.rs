//! Every bad input of contract §7 gets its typed error, through the tensor API (one test each).
use featjnd_kernels::ops::{self, Noise, QuantizeOptions};
use featjnd_kernels::{Error, Layout, Reduce, Strategy};
use tch::{Device, Kind, Tensor};

/// Inputs from Philox, not torch's global RNG (shared by the tests running in parallel).
fn philox_tensor(sizes: &[i64], seed: u64, kind: featjnd_kernels::NoiseKind) -> Tensor {
    let mut v = vec![0.0f32; sizes.iter().product::<i64>() as usize];
    featjnd_kernels::philox::fill(&mut v, 0, seed, 0, kind);
    Tensor::from_slice(&v).reshape(sizes)
}
fn x4() -> Tensor {
    philox_tensor(&[2, 3, 4, 4], 3, featjnd_kernels::NoiseKind::Gaussian)
}
fn j4() -> Tensor {
    philox_tensor(&[2, 3, 4, 4], 4, featjnd_kernels::NoiseKind::Uniform).abs() + 0.1
}
fn steps(x: &Tensor) -> Tensor {
    let jt = ops::token_tolerance(&j4(), Layout::Nchw, 1, Reduce::Mean).unwrap();
    let _ = x;
    ops::allocate_steps(&jt, 0.01, Strategy::Jnd).unwrap()
}
fn q(x: &Tensor, st: &Tensor) -> featjnd_kernels::Result<ops::Quantized> {
    ops::quantize(x, Layout::Nchw, 1, st, &QuantizeOptions::default())
}

#[test]
fn shape_mismatch_between_x_and_j() {
    let r = ops::quantize_with_jnd(
        &x4(),
        &(philox_tensor(&[2, 3, 4, 5], 5, featjnd_kernels::NoiseKind::Uniform).abs() + 0.1),
        Layout::Nchw,
        1,
        Reduce::Mean,
        0.1,
        Strategy::Jnd,
        &QuantizeOptions::default(),
    );
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    let r = ops::perturb(&x4(), Some(&Tensor::ones([2, 3, 4, 5], (Kind::Float, Device::Cpu))), 0.1, Noise::default());
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
}

#[test]
fn steps_of_the_wrong_length() {
    let r = q(&x4(), &Tensor::ones([5], (Kind::Float, Device::Cpu)));
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
}

#[test]
fn wrong_rank_for_the_layout() {
    let r = ops::token_tolerance(&Tensor::ones([2, 3, 4], (Kind::Float, Device::Cpu)), Layout::Nchw, 1, Reduce::Mean);
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
}

#[test]
fn unsupported_dtype() {
    let x = x4().to_kind(Kind::Double);
    assert!(matches!(q(&x, &steps(&x)), Err(Error::Dtype(_))));
    let r = ops::token_tolerance(&j4().to_kind(Kind::Int), Layout::Nchw, 1, Reduce::Mean);
    assert!(matches!(r, Err(Error::Dtype(_))), "{r:?}");
}

#[test]
fn mixed_dtypes_in_perturb() {
    let r = ops::perturb(&x4(), Some(&j4().to_kind(Kind::Half)), 0.1, Noise::default());
    assert!(matches!(r, Err(Error::Dtype(_))), "{r:?}");
}

#[test]
fn non_contiguous_input() {
    let x = x4().transpose(2, 3);
    assert!(matches!(q(&x, &steps(&x)), Err(Error::NonContiguous("x"))));
}

#[test]
fn patch_not_dividing() {
    let r = ops::token_tolerance(&j4(), Layout::Nchw, 3, Reduce::Mean);
    assert!(matches!(r, Err(Error::Patch { patch: 3, h: 4, w: 4 })), "{r:?}");
}

#[test]
fn empty_tensors() {
    let e = Tensor::ones([0, 3, 4, 4], (Kind::Float, Device::Cpu));
    assert!(matches!(ops::token_tolerance(&e, Layout::Nchw, 1, Reduce::Mean), Err(Error::Empty(_))));
    assert!(matches!(ops::perturb(&e, None, 0.1, Noise::default()), Err(Error::Empty(_))));
}

#[test]
fn bad_budget() {
    let jt = ops::token_tolerance(&j4(), Layout::Nchw, 1, Reduce::Mean).unwrap();
    for d in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let r = ops::allocate_steps(&jt, d, Strategy::Jnd);
        assert!(matches!(r, Err(Error::Budget(_))), "D = {d}: {r:?}");
    }
}

#[test]
fn negative_or_nan_nrmse() {
    for r in [-0.1, f64::NAN] {
        let res = ops::perturb(&x4(), None, r, Noise::default());
        assert!(matches!(res, Err(Error::Nrmse(_))), "r = {r}: {res:?}");
    }
}

#[test]
fn non_positive_or_non_finite_j_names_the_first_index() {
    for (bad, at) in [(0.0, 17i64), (-1.0, 5), (f64::NAN, 40), (f64::INFINITY, 91)] {
        let j = j4();
        let _ = j.view([-1]).narrow(0, at, 1).fill_(bad);
        let _ = j.view([-1]).narrow(0, at + 3, 1).fill_(bad); // a later one is not reported
        match ops::token_tolerance(&j, Layout::Nchw, 1, Reduce::Mean) {
            Err(Error::Jnd { index, .. }) => assert_eq!(index as i64, at, "J = {bad}"),
            other => panic!("J = {bad}: {other:?}"),
        }
        match ops::perturb(&x4(), Some(&j), 0.1, Noise::default()) {
            Err(Error::Jnd { index, .. }) => assert_eq!(index as i64, at, "J = {bad} in perturb"),
            other => panic!("perturb J = {bad}: {other:?}"),
        }
    }
}

#[test]
fn non_finite_x_names_the_first_index_and_leaves_input_untouched() {
    for (bad, at) in [(f64::NAN, 33i64), (f64::INFINITY, 0), (f64::NEG_INFINITY, 95)] {
        let x = x4();
        let _ = x.view([-1]).narrow(0, at, 1).fill_(bad);
        let before = x.copy();
        let st = steps(&x);
        match q(&x, &st) {
            Err(Error::NonFinite { index, value }) => {
                assert_eq!(index as i64, at);
                assert!(!value.is_finite());
            }
            other => panic!("x = {bad}: {other:?}"),
        }
        // Out of place: the input is untouched.
        assert!(x.isnan().eq_tensor(&before.isnan()).all().int64_value(&[]) == 1);
        assert!(x.nan_to_num(0.0, None, None).equal(&before.nan_to_num(0.0, None, None)));
        match ops::perturb(&x, None, 0.1, Noise::default()) {
            Err(Error::NonFinite { index, .. }) => assert_eq!(index as i64, at),
            other => panic!("perturb x = {bad}: {other:?}"),
        }
        // In place perturbation validates in pass 1: nothing is written.
        let mut xi = x.copy();
        assert!(ops::perturb_(&mut xi, None, 0.1, Noise::default()).is_err());
        assert!(xi.nan_to_num(0.0, None, None).equal(&before.nan_to_num(0.0, None, None)));
    }
}

#[test]
fn cuda_path_without_a_gpu_is_a_clear_error() {
    featjnd_kernels::cuda::load_torch_cuda();
    match featjnd_kernels::cuda::available() {
        Err(Error::CudaUnavailable(msg)) => {
            assert!(!msg.is_empty());
            let r = ops::noise(8, 0, Noise::default(), Device::Cuda(0));
            assert!(matches!(r, Err(Error::CudaUnavailable(_))), "{r:?}");
            // The CPU path stays available.
            assert!(ops::noise(8, 0, Noise::default(), Device::Cpu).is_ok());
        }
        Err(other) => panic!("unexpected error kind: {other:?}"),
        Ok(()) => println!("a GPU is present here: the no-GPU error path is not exercised"),
    }
}

#[test]
fn measured_budget_out_of_reach() {
    let x = x4();
    let jt = ops::token_tolerance(&j4(), Layout::Nchw, 1, Reduce::Mean).unwrap();
    let r = ops::allocate_steps_measured(&x, Layout::Nchw, 1, &jt, 1e6, Strategy::Jnd, featjnd_kernels::Bits::B8);
    assert!(matches!(r, Err(Error::Unreachable { .. })), "{r:?}");
}

#[test]
fn impossible_noise_size_is_an_error() {
    let r = ops::noise(usize::MAX / 2, 0, Noise::default(), Device::Cpu);
    assert!(matches!(r, Err(Error::Arg(_))), "{r:?}");
}

#[test]
fn overflowing_strength_is_an_error_and_writes_nothing() {
    let x = x4();
    // r = 1e40 cannot be represented at all; r = 1e3 overflows f16 (max 65504) but not f32.
    for (kind, r) in [(Kind::Float, 1e40), (Kind::Half, 1e5), (Kind::BFloat16, 1e40)] {
        let xk = x.to_kind(kind);
        match ops::perturb(&xk, None, r, Noise::default()) {
            Err(Error::Overflow(msg)) => assert!(msg.contains(&format!("{r:e}")), "{msg}"),
            other => panic!("{kind:?} r = {r}: {other:?}"),
        }
        let mut xi = xk.copy();
        assert!(matches!(ops::perturb_(&mut xi, Some(&j4().to_kind(kind)), r, Noise::default()), Err(Error::Overflow(_))));
        assert!(xi.equal(&xk), "{kind:?}: the in-place buffer was written before the error");
    }
    // A large but representable strength still works and stays finite.
    let (y, _) = ops::perturb(&x, None, 1e3, Noise::default()).unwrap();
    assert!(y.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn into_outputs_must_not_alias_inputs() {
    let x = x4();
    let st = steps(&x);
    // The reconstruction buffer is x itself, or a view into it: refused (in place is `quantize_`).
    let opts = QuantizeOptions::default();
    let bufs = ops::QuantizeBuffers { recon: Some(&x), ..Default::default() };
    assert!(matches!(ops::quantize_into(&x, Layout::Nchw, 1, &st, &opts, &bufs), Err(Error::Arg(m)) if m.contains("overlaps x")));
    // Token errors written over the steps.
    let bufs = ops::QuantizeBuffers { token_sse: Some(&st), ..Default::default() };
    assert!(matches!(ops::quantize_into(&x, Layout::Nchw, 1, &st, &opts, &bufs), Err(Error::Arg(m)) if m.contains("overlaps steps")));
    // Two outputs sharing memory: an f32 reconstruction and token errors carved from one buffer.
    let big = Tensor::zeros([2 * 3 * 4 * 4 + 32], (Kind::Float, Device::Cpu));
    let rec = big.narrow(0, 0, 96).view([2, 3, 4, 4]);
    let sse = big.narrow(0, 90, 32);
    let bufs = ops::QuantizeBuffers { recon: Some(&rec), token_sse: Some(&sse), ..Default::default() };
    assert!(matches!(ops::quantize_into(&x, Layout::Nchw, 1, &st, &opts, &bufs), Err(Error::Arg(m)) if m.contains("overlaps")));
    // Disjoint buffers are fine, and equal to the allocating call.
    let (rec, sse) = (x.zeros_like(), Tensor::zeros([32], (Kind::Float, Device::Cpu)));
    let bufs = ops::QuantizeBuffers { recon: Some(&rec), token_sse: Some(&sse), ..Default::default() };
    ops::quantize_into(&x, Layout::Nchw, 1, &st, &opts, &bufs).unwrap();
    assert!(rec.equal(q(&x, &st).unwrap().recon.as_ref().unwrap()));
    // In place with steps that live inside x.
    let mut xs = x.copy();
    let view = xs.flatten(0, -1).narrow(0, 0, 32);
    assert!(matches!(ops::quantize_(&mut xs, Layout::Nchw, 1, &view, &opts), Err(Error::Arg(m)) if m.contains("overlaps steps")));
    // perturb_into over x or over J.
    let j = j4();
    assert!(matches!(ops::perturb_into(&x, Some(&j), 0.1, Noise::default(), &x), Err(Error::Arg(m)) if m.contains("overlaps x")));
    assert!(matches!(ops::perturb_into(&x, Some(&j), 0.1, Noise::default(), &j), Err(Error::Arg(m)) if m.contains("overlaps J")));
}
