//! The §5 noise as a validated call (`featjnd_kernels::call`, contract §9): every executor (the
//! host; CUDA where present) writes exactly `philox::fill`'s values at every offset and length,
//! and the bad arguments are refused.
mod common;
use common::exec::each;
use common::host_mut;
use featjnd_kernels::call::{Buf, Elem, Mem, NoiseArgs};
use featjnd_kernels::cpu::perturb::NoiseSpec;
use featjnd_kernels::{philox, Error, NoiseKind};

#[test]
fn every_executor_writes_the_generator_s_values() {
    each(|ex| {
        for (len, offset) in [(0usize, 0u64), (1, 0), (7, 3), (17, 1 << 40), (1025, 5), (5137, u64::MAX - 6000)] {
            for kind in [NoiseKind::Gaussian, NoiseKind::Uniform] {
                let noise = NoiseSpec { kind, seed: 42, subsequence: 3 };
                let mut out = vec![f32::NAN; len];
                let call = NoiseArgs { out: ex.output("out", &mut out, Elem::F32), offset, noise }.validate().unwrap();
                ex.run(&call).unwrap();
                let mut want = vec![0f32; len];
                philox::fill(&mut want, offset, 42, 3, kind);
                assert_eq!(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            }
        }
    });
}

#[test]
fn bad_arguments_are_refused() {
    let noise = NoiseSpec::default();
    let mut out = vec![0f32; 8];
    let e = NoiseArgs { out: host_mut("out", &mut out, Elem::F32), offset: u64::MAX - 3, noise }.validate().unwrap_err();
    assert!(matches!(&e, Error::Arg(m) if m.contains("2^64")), "{e}");
    let mut ints = vec![0i16; 8];
    assert!(matches!(NoiseArgs { out: host_mut("out", &mut ints, Elem::I16), offset: 0, noise }.validate(), Err(Error::Dtype(_))));
    // SAFETY: never dereferenced: the call is refused.
    let ro = unsafe { Buf::new("out", out.as_ptr() as usize, 8, Elem::F32, Mem::Host, false) };
    assert!(matches!(NoiseArgs { out: ro, offset: 0, noise }.validate(), Err(Error::Arg(_))));
}
