// The awkward shapes of the GPU tests (tests/gpu.rs, tests/async_api.rs) and of the CPU emulation
// tier (crates/featjnd-emu/tests), one list for both, so that the tier runs the GPU tests' cases:
// (layout, sizes, patch). Included with `include!` (an item list, hence no inner doc comment).
pub const SHAPES: [(featjnd_kernels::Layout, &[usize], usize); 10] = [
    (featjnd_kernels::Layout::Nchw, &[1, 1, 1, 1], 1),
    (featjnd_kernels::Layout::Nchw, &[2, 7, 5, 3], 1),
    (featjnd_kernels::Layout::Nchw, &[3, 17, 6, 10], 2),
    (featjnd_kernels::Layout::Nchw, &[1, 64, 28, 28], 4),
    (featjnd_kernels::Layout::Nchw, &[2, 256, 14, 14], 1),
    (featjnd_kernels::Layout::Ntc, &[1, 1, 1], 1),
    (featjnd_kernels::Layout::Ntc, &[2, 7, 17], 1),
    (featjnd_kernels::Layout::Ntc, &[3, 33, 1025], 1),
    (featjnd_kernels::Layout::Ntc, &[2, 50, 768], 1),
    (featjnd_kernels::Layout::Ntc, &[1, 3, 5137], 1),
];
