//! The quantization as one validated call (`featjnd_kernels::call`, contract §9): each case is
//! defined once and run on every executor (`common::exec`: the host, and CUDA where present)
//! against the reference; bad step values on every executor; and every bad argument the core
//! checks, with the error kind and the name it reports, which every surface (tensor API, C,
//! Python) shares.
mod common;
use common::exec::{each, Exec};
use common::*;
use featjnd_kernels::call::{symbol_elem, Buf, Elem, Mem, QuantizeArgs};
use featjnd_kernels::{reference, Bits, Element, Error, FeatureShape, Layout};
use half::{bf16, f16};

fn shape(layout: Layout, dims: [usize; 4]) -> FeatureShape {
    match layout {
        Layout::Nchw => FeatureShape::nchw(dims[0], dims[1], dims[2], dims[3]),
        Layout::Ntc => FeatureShape::ntc(dims[0], dims[1], dims[2]),
    }
}

/// One case on the host executor, out of place and in place, against the reference.
fn case<E: Element>(ex: &Exec, layout: Layout, dims: [usize; 4], patch: usize, bits: Bits, seed: u64) {
    let sh = shape(layout, dims);
    let grid = featjnd_kernels::TokenGrid::new(sh, patch).unwrap();
    let x: Vec<E> = to(&randn(grid.numel(), seed, 3.0));
    let steps: Vec<f32> = positive(grid.tokens(), seed ^ 9, 0.01, 0.5);
    let want = reference::quantize(&x, &grid, &steps, bits);
    let n = x.len();
    let mut recon = vec![E::from_f32(0.0); n];
    let mut sse = vec![0f32; grid.tokens()];
    let (mut s8, mut s16) = (vec![0i8; n], vec![0i16; n]);
    let sym = match bits {
        Bits::B8 => ex.output("symbols", &mut s8, Elem::I8),
        Bits::B16 => ex.output("symbols", &mut s16, Elem::I16),
    };
    let mut hist = vec![0u64; bits.hist_bins()];
    let args = QuantizeArgs {
        x: ex.input("x", &x, E::DTYPE.into()),
        shape: sh,
        patch,
        steps: ex.input("steps", &steps, Elem::F32),
        bits,
        symbols: Some(sym),
        recon: Some(ex.output("recon", &mut recon, E::DTYPE.into())),
        token_sse: Some(ex.output("token_sse", &mut sse, Elem::F32)),
        histogram: true,
        histogram_out: Some(ex.output("histogram", &mut hist, Elem::U64)),
    };
    let call = args.validate().unwrap();
    assert!(!call.in_place());
    let r = ex.run(&call).unwrap();
    let label = format!("{layout:?} {dims:?} p={patch} {bits:?} {}", E::DTYPE.name());
    let syms: Vec<i32> = match bits {
        Bits::B8 => s8.iter().map(|&v| v as i32).collect(),
        Bits::B16 => s16.iter().map(|&v| v as i32).collect(),
    };
    assert_eq!(syms, want.symbols, "{label}");
    assert!(recon == want.recon, "{label}: reconstruction");
    assert_eq!(r.clamped, want.clamped, "{label}");
    assert_eq!(r.histogram.as_ref().unwrap(), &want.histogram, "{label}");
    assert_eq!(hist, want.histogram, "{label}: histogram_out");
    let total: f64 = want.token_sse.iter().sum();
    assert!(rel_close(r.total_sse, total, 1e-4, 1e-30), "{label}: {} vs {total}", r.total_sse);
    assert!((r.mse - r.total_sse / n as f64).abs() <= 1e-12 * r.mse.abs().max(1e-30), "{label}");
    let rate = r.rate.expect("a counted histogram gives a rate");
    assert!(rate.entropy_bits >= 0.0 && rate.bits_per_element >= rate.entropy_bits, "{label}");
    for (a, b) in sse.iter().zip(&want.token_sse) {
        assert!(rel_close(*a as f64, *b, 1e-4, 1e-30), "{label}: token sse {a} vs {b}");
    }
    // In place: x itself is the reconstruction (the same array as `recon`).
    let mut xi = x.clone();
    let xb = ex.output("x", &mut xi, E::DTYPE.into());
    let args = QuantizeArgs { x: xb, recon: Some(xb.named("recon")), symbols: None, token_sse: None, histogram_out: None, ..args };
    let call = args.validate().unwrap();
    assert!(call.in_place());
    let ri = ex.run(&call).unwrap();
    assert!(xi == want.recon, "{label}: in place");
    assert_eq!(ri.histogram, r.histogram, "{label}: in place histogram");
}

#[test]
fn every_executor_matches_the_reference_on_awkward_shapes() {
    each(|ex| {
        let cases: &[(Layout, [usize; 4], usize)] = &[
            (Layout::Nchw, [1, 1, 1, 1], 1),
            (Layout::Nchw, [1, 7, 17, 3], 1),
            (Layout::Nchw, [2, 3, 14, 7], 7),
            (Layout::Ntc, [3, 17, 1025, 1], 1),
            (Layout::Ntc, [1, 1, 5137, 1], 1),
        ];
        for (i, &(layout, dims, patch)) in cases.iter().enumerate() {
            for bits in [Bits::B8, Bits::B16] {
                let seed = 100 + i as u64;
                case::<f32>(ex, layout, dims, patch, bits, seed);
                case::<f16>(ex, layout, dims, patch, bits, seed);
                case::<bf16>(ex, layout, dims, patch, bits, seed);
            }
        }
    });
}

/// A valid 1×2×4×4 f32 call (8 tokens of patch 2 → 4 tokens) over the given arrays.
fn args(ex: &Exec, x: &[f32], steps: &[f32], sse: &mut [f32]) -> QuantizeArgs {
    QuantizeArgs {
        x: ex.input("x", x, Elem::F32),
        shape: FeatureShape::nchw(1, 2, 4, 4),
        patch: 2,
        steps: ex.input("steps", steps, Elem::F32),
        bits: Bits::B8,
        symbols: None,
        recon: None,
        token_sse: Some(ex.output("token_sse", sse, Elem::F32)),
        histogram: false,
        histogram_out: None,
    }
}

#[test]
fn every_bad_argument_is_refused_before_anything_runs() {
    let mut x = vec![1f32; 32];
    let mut steps = vec![0.5f32; 4];
    let mut sse = vec![0f32; 4];
    let ok = args(&Exec::host(), &x, &steps, &mut sse);
    ok.validate().unwrap();
    let err = |a: QuantizeArgs| a.validate().expect_err("refused");
    // dtype of x
    let xi = vec![0i16; 32];
    assert!(matches!(err(QuantizeArgs { x: host("x", &xi, Elem::I16), ..ok }), Error::Dtype(_)));
    // grid: patch 3 does not divide 4; patch 0; empty
    assert!(matches!(err(QuantizeArgs { patch: 3, ..ok }), Error::Patch { .. }));
    assert!(matches!(err(QuantizeArgs { patch: 0, ..ok }), Error::Arg(_)));
    assert!(matches!(err(QuantizeArgs { shape: FeatureShape::nchw(0, 2, 4, 4), ..ok }), Error::Empty(_)));
    // x's length against its shape
    assert!(matches!(err(QuantizeArgs { shape: FeatureShape::nchw(2, 2, 4, 4), ..ok }), Error::Shape(_)));
    // steps: count, type, memory, alignment
    let short = vec![0.5f32; 3];
    let e = err(QuantizeArgs { steps: host("steps", &short, Elem::F32), ..ok });
    assert!(matches!(&e, Error::Shape(m) if m.contains("steps")), "{e}");
    // SAFETY: never dereferenced: the call is refused.
    let dev = unsafe { Buf::new("steps", steps.as_ptr() as usize, 4, Elem::F32, Mem::Cuda(0), false) };
    assert!(matches!(err(QuantizeArgs { steps: dev, ..ok }), Error::MixedDevices(_)));
    let bytes = [0u8; 64];
    // An address that is not a multiple of 4, whatever the allocator's alignment.
    let base = bytes.as_ptr() as usize;
    let addr = if base.is_multiple_of(4) { base + 1 } else { base };
    // SAFETY: never dereferenced: the call is refused.
    let odd = unsafe { Buf::new("steps", addr, 4, Elem::F32, Mem::Host, false) };
    let e = err(QuantizeArgs { steps: odd, ..ok });
    assert!(matches!(&e, Error::Align(m) if m.starts_with("steps")), "{e}");
    // outputs: symbol type follows bits; read-only; histogram_out without counting
    let mut s8 = vec![0i8; 32];
    let e = err(QuantizeArgs { bits: Bits::B16, symbols: Some(host_mut("symbols", &mut s8, Elem::I8)), ..ok });
    assert!(matches!(&e, Error::Shape(m) if m.contains("symbols") && m.contains("i16")), "{e}");
    assert_eq!(symbol_elem(Bits::B16), Elem::I16);
    let e = err(QuantizeArgs { token_sse: Some(host("token_sse", &sse, Elem::F32)), ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("read-only")), "{e}");
    let mut h = vec![0u64; 255];
    assert!(matches!(err(QuantizeArgs { histogram_out: Some(host_mut("histogram", &mut h, Elem::U64)), ..ok }), Error::Arg(_)));
    // aliasing: an output on an input, two outputs on each other, in place on a read-only x
    let e = err(QuantizeArgs { token_sse: Some(host_mut("token_sse", &mut steps, Elem::F32)), ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("token_sse overlaps steps")), "{e}");
    let mut both = [0f32; 33];
    let e = err(QuantizeArgs {
        recon: Some(host_mut("recon", &mut both[..32], Elem::F32)),
        token_sse: Some(host_mut("token_sse", &mut both[29..33], Elem::F32)),
        ..ok
    });
    assert!(matches!(&e, Error::Arg(m) if m.contains("token_sse overlaps recon")), "{e}");
    let e = err(QuantizeArgs { recon: Some(host_mut("x", &mut x, Elem::F32)), ..ok });
    assert!(matches!(&e, Error::Arg(m) if m.contains("read-only (in place)")), "{e}");
}

/// Step values are checked when the call runs, before anything is written (contract §4.2): the
/// same error on every executor.
#[test]
fn bad_step_values_are_refused_before_anything_is_written() {
    each(|ex| {
        let x = vec![1f32; 32];
        let mut sse = vec![0f32; 4];
        let bad = vec![0.5f32, 0.5, f32::NAN, 0.5];
        let call = args(ex, &x, &bad, &mut sse).validate().unwrap();
        let e = ex.run(&call).err().unwrap();
        assert!(matches!(&e, Error::Arg(m) if m.contains("Δ[2]")), "{}: {e}", ex.name());
        assert!(sse.iter().all(|&v| v == 0.0), "{}", ex.name());
    });
}

#[test]
fn one_rule_for_bits() {
    assert_eq!(Bits::from_code(0).unwrap(), Bits::B8);
    assert_eq!(Bits::from_code(8).unwrap(), Bits::B8);
    assert_eq!(Bits::from_code(16).unwrap(), Bits::B16);
    for b in [1, 4, 7, 9, 12, 15, 17, 32, u32::MAX] {
        assert!(matches!(Bits::from_code(b), Err(Error::Arg(_))), "bits {b}");
    }
}
