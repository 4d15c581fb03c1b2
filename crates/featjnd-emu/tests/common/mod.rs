//! Shared by the emulation tier's tests: inputs from Philox (as tests/common/gpu.rs makes them, no
//! global RNG), the GPU tests' awkward shapes, launches, and comparisons that return an error
//! instead of panicking (the broken-kernel tests need the failure as a value).
#![allow(dead_code, clippy::neg_cmp_op_on_partial_ord)]
use featjnd_emu::{self as emu, Module, Sched};
use featjnd_kernels::{philox, Element, FeatureShape, Layout, NoiseKind, TokenGrid};

pub type Res = Result<(), String>;

/// Emulated module `slot` of `compile::MODULES`.
pub fn module(slot: usize) -> Module {
    emu::module(slot).unwrap_or_else(|| panic!("no emulated module {slot}"))
}

/// Runs `name` of `m` over `grid` blocks.
pub fn run<P>(m: &Module, name: &str, p: &P, grid: u64, s: Sched) -> Res {
    let grid = u32::try_from(grid).map_err(|_| format!("{name}: {grid} blocks"))?;
    // SAFETY: every test builds `p` from live `Guarded` buffers (or 0 for absent ones) of the
    // sizes the kernel's contract asks for, and keeps them alive across the launch.
    unsafe { emu::launch(m.kernel(name), p, grid, s) }.map_err(|e| format!("emulator: {e}"))
}

/// Runs a plan of `featjnd_kernels::cuda::raw` — the very steps `Plan::launch` enqueues on a
/// device — on the emulator: a memset step zeroes its host slots, a kernel step runs its module's
/// kernel with the planned parameters and grid. Returns whether the plan zeroed anything first
/// (the chain's fallback form).
pub fn run_plan(plan: &featjnd_kernels::cuda::raw::Plan, s: Sched) -> Result<bool, String> {
    use featjnd_kernels::cuda::raw::{ParamsVisitor, Step};
    struct Emu {
        kernel: featjnd_kernels::cuda::raw::Kernel,
        blocks: u64,
        s: Sched,
    }
    impl ParamsVisitor for Emu {
        type Out = Res;
        fn visit<P: featjnd_kernels::cuda::raw::DeviceRepr>(self, p: &P) -> Res {
            run(&module(self.kernel.module), self.kernel.name, p, self.blocks, self.s)
        }
    }
    let mut zeroed = false;
    for step in plan.steps() {
        match step {
            Step::Zero(b) => {
                // SAFETY: the tests plan with `StatsBuf`s over live host `Guarded` buffers of at
                // least `b.len()` slots, so the addresses are host memory of that size.
                unsafe { std::ptr::write_bytes(b.base().addr() as *mut u64, 0, b.len()) };
                zeroed = true;
            }
            Step::Kernel { kernel, params, blocks } => {
                params.visit(Emu { kernel: *kernel, blocks: *blocks, s })?;
            }
        }
    }
    Ok(zeroed)
}

include!("../../../../tests/common/shapes.rs");

/// The GPU tests' shapes ([`SHAPES`], the kernel crate's `tests/common/shapes.rs`): (layout,
/// sizes, patch).
pub fn shapes() -> Vec<(Layout, Vec<usize>, usize)> {
    SHAPES.iter().map(|&(l, s, p)| (l, s.to_vec(), p)).collect()
}

pub fn grid_of(layout: Layout, s: &[usize], patch: usize) -> TokenGrid {
    let shape = match layout {
        Layout::Nchw => FeatureShape::nchw(s[0], s[1], s[2], s[3]),
        Layout::Ntc => FeatureShape::ntc(s[0], s[1], s[2]),
    };
    TokenGrid::new(shape, patch).unwrap()
}

/// Gaussian values times 3 from Philox.
pub fn feature(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    philox::fill(&mut v, 0, seed, 0, NoiseKind::Gaussian);
    v.iter_mut().for_each(|x| *x *= 3.0);
    v
}

/// Tolerances in [0.05, 2.05) from Philox.
pub fn jnd(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    philox::fill(&mut v, 0, seed + 1000, 0, NoiseKind::Uniform);
    v.iter_mut().for_each(|x| *x = (*x / 3f32.sqrt() + 1.0) * 0.5 * 2.0 + 0.05);
    v
}

pub fn narrow<E: Element>(v: &[f32]) -> Vec<E> {
    v.iter().map(|&x| E::from_f32(x)).collect()
}

/// Bit patterns of the f32 widening (exact and injective on non-NaN values of every dtype).
pub fn bits_of<E: Element>(v: &[E]) -> Vec<u32> {
    v.iter().map(|x| x.to_f32().to_bits()).collect()
}

pub fn bits_eq<E: Element>(a: &[E], b: &[E], what: &str) -> Res {
    if a.len() != b.len() {
        return Err(format!("{what}: {} vs {} values", a.len(), b.len()));
    }
    match bits_of(a).iter().zip(bits_of(b)).position(|(x, y)| *x != y) {
        Some(i) => Err(format!("{what}: first difference at {i}: {:?} vs {:?}", a[i], b[i])),
        None => Ok(()),
    }
}

/// |a - b| <= rtol |b| + atol elementwise.
pub fn close(a: &[f32], b: &[f32], rtol: f32, atol: f32, what: &str) -> Res {
    if a.len() != b.len() {
        return Err(format!("{what}: {} vs {} values", a.len(), b.len()));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if !((x - y).abs() <= rtol * y.abs() + atol) {
            return Err(format!("{what}: element {i}: {x} vs {y}"));
        }
    }
    Ok(())
}

pub fn close64(a: f64, b: f64, rtol: f64, what: &str) -> Res {
    if (a - b).abs() <= rtol * b.abs() {
        Ok(())
    } else {
        Err(format!("{what}: {a} vs {b}"))
    }
}

pub fn ensure(ok: bool, what: impl FnOnce() -> String) -> Res {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// The index a bad cell holds (`~index`, 0 = none).
pub fn bad_of(cell: u64) -> Option<u64> {
    (cell != 0).then_some(!cell)
}

/// A bit pattern no kernel writes into a float output: a NaN with a payload.
pub const GARBAGE_F32: f32 = f32::from_bits(0x7fc0_dead);
pub const GARBAGE_U64: u64 = 0x5a5a_5a5a_dead_beef;
