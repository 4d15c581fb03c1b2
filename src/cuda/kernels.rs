//! The kernels the launchers use, declared once. Each module group below lists its modules (slots
//! of [`MODULES`], which follow from that list's order) and its kernels in handle-table order; the
//! table indices, the dtype families and [`kernel_names`] — the list the NVRTC, ptxas and CPU
//! emulation tests walk — are computed from it. Adding a kernel is one line here (and the kernel in
//! its `.cu` file); nothing is numbered by hand.
use super::compile::{M_PERTURB, M_PERTURB_GENERIC, M_QUANTIZE, M_STEP_ALLOC, M_TOKEN_STATS};
use super::MAX_KERNELS_PER_MODULE;
use crate::element::Dtype;
use crate::geom::{Bits, NoiseKind};
use crate::params::{FJ_NOISE_GAUSSIAN, FJ_NOISE_UNIFORM};

/// A kernel as the launchers name it: its module (a slot of [`MODULES`]), its index in the
/// device's handle table for that module, and its name. `Device::kernel` turns it into a cached
/// handle with one table read.
///
/// [`MODULES`]: super::compile::MODULES
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub module: usize,
    pub index: usize,
    pub name: &'static str,
}

/// A kernel per dtype (f32, f16, bf16: the `_f32`, `_f16`, `_bf16` suffixes of one name) at
/// indices `first..first + 3` of its module's table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Family {
    names: [&'static str; 3],
    first: usize,
}

impl Family {
    pub(crate) const fn at(&self, module: usize, dt: Dtype) -> Kernel {
        Kernel { module, index: self.first + dt as usize, name: self.names[dt as usize] }
    }
}

/// One entry of a group: a dtype family, or a single kernel (only in one-module groups).
#[derive(Clone, Copy)]
enum Entry {
    Family(Family),
    Single(Kernel),
}

/// Modules compiled from one source with the same kernels, and those kernels in table order.
struct Group {
    modules: &'static [usize],
    entries: &'static [Entry],
}

/// Handle cells a group's table uses.
const fn cells(g: &Group) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < g.entries.len() {
        n += match g.entries[i] {
            Entry::Family(_) => 3,
            Entry::Single(_) => 1,
        };
        i += 1;
    }
    n
}

/// `group!(NAME in MODULES => { family CONST "fj_name"; single CONST "fj_name"; … })` declares
/// each kernel's constant with its table index (a running count) and the group `NAME`.
macro_rules! group {
    ($group:ident in $modules:expr => { $($kind:ident $name:ident $lit:literal;)* }) => {
        group!(@consts $modules, 0usize; $($kind $name $lit;)*);
        const $group: Group = Group { modules: $modules, entries: &[$(group!(@entry $kind $name)),*] };
        const _: () = assert!(cells(&$group) <= MAX_KERNELS_PER_MODULE, "a module holds more kernels than its handle table");
    };
    (@consts $modules:expr, $at:expr;) => {};
    (@consts $modules:expr, $at:expr; family $name:ident $lit:literal; $($rest:tt)*) => {
        pub(crate) const $name: Family =
            Family { names: [concat!($lit, "_f32"), concat!($lit, "_f16"), concat!($lit, "_bf16")], first: $at };
        group!(@consts $modules, $at + 3; $($rest)*);
    };
    (@consts $modules:expr, $at:expr; single $name:ident $lit:literal; $($rest:tt)*) => {
        const _: () = assert!($modules.len() == 1, "a single kernel belongs to a one-module group");
        pub(crate) const $name: Kernel = Kernel { module: $modules[0], index: $at, name: $lit };
        group!(@consts $modules, $at + 1; $($rest)*);
    };
    (@entry family $name:ident) => { Entry::Family($name) };
    (@entry single $name:ident) => { Entry::Single($name) };
}

group!(TOKEN_STATS_GROUP in &[M_TOKEN_STATS] => {
    family TOKEN_STATS_NCHW "fj_token_stats_nchw";
    family TOKEN_STATS_NTC "fj_token_stats_ntc";
});
group!(STEP_ALLOC_GROUP in &[M_STEP_ALLOC] => {
    single STEP_ALLOC "fj_step_alloc";
    single MAX_POS "fj_max_pos";
    single CAPS "fj_caps";
    single CAPPED_SOLVE "fj_capped_solve";
    single CAPPED_STEPS "fj_capped_steps";
});
// The four quantize.cu specialisations ([`quantize_module`]).
group!(QUANTIZE_GROUP in &[M_QUANTIZE, M_QUANTIZE + 1, M_QUANTIZE + 2, M_QUANTIZE + 3] => {
    family QUANTIZE_NCHW "fj_quantize_nchw";
    family QUANTIZE_NTC "fj_quantize_ntc";
    family QUANTIZE_BATCH "fj_quantize_batch";
    family QUANTIZE_CHAIN_NCHW "fj_quantize_chain_nchw";
    family QUANTIZE_CHAIN_NTC "fj_quantize_chain_ntc";
});
// The four specialised perturb.cu modules ([`perturb_module`]).
group!(PERTURB_GROUP in &[M_PERTURB, M_PERTURB + 1, M_PERTURB + 2, M_PERTURB + 3] => {
    family PERTURB_NORMS "fj_perturb_norms";
    family PERTURB_APPLY "fj_perturb_apply";
});
// perturb.cu unspecialised.
group!(PERTURB_GENERIC_GROUP in &[M_PERTURB_GENERIC] => {
    family PERTURB_NORMS_BATCH "fj_perturb_norms_batch";
    family PERTURB_APPLY_BATCH "fj_perturb_apply_batch";
    single NOISE "fj_noise";
});

const GROUPS: [&Group; 5] = [&TOKEN_STATS_GROUP, &STEP_ALLOC_GROUP, &QUANTIZE_GROUP, &PERTURB_GROUP, &PERTURB_GENERIC_GROUP];

/// The quantize.cu module specialised for `bits` and a histogram or none.
pub(crate) fn quantize_module(bits: Bits, histogram: bool) -> usize {
    M_QUANTIZE + 2 * usize::from(bits == Bits::B16) + usize::from(histogram)
}

/// The perturb.cu module specialised for a noise kind and J given (or J == 1).
pub(crate) fn perturb_module(noise: NoiseKind, jnd: bool) -> usize {
    M_PERTURB + 2 * noise_code(noise) as usize + usize::from(jnd)
}

/// The header's code of a noise kind.
pub(crate) fn noise_code(k: NoiseKind) -> u32 {
    match k {
        NoiseKind::Gaussian => FJ_NOISE_GAUSSIAN,
        NoiseKind::Uniform => FJ_NOISE_UNIFORM,
    }
}

/// Every kernel the launchers may ask for, in every module (for tests against the compiled PTX
/// and the CPU emulation tier).
pub fn kernel_names() -> Vec<Kernel> {
    let dts = [Dtype::F32, Dtype::F16, Dtype::Bf16];
    let mut v = Vec::new();
    for g in GROUPS {
        for &m in g.modules {
            for e in g.entries {
                match e {
                    Entry::Family(f) => v.extend(dts.map(|dt| f.at(m, dt))),
                    Entry::Single(k) => v.push(*k),
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::super::compile::MODULES;
    use super::*;

    #[test]
    fn the_tables_follow_from_the_groups() {
        // Every module of MODULES belongs to exactly one group.
        let mut owners = vec![0; MODULES.len()];
        for g in GROUPS {
            for &m in g.modules {
                owners[m] += 1;
                assert!(g.modules.iter().all(|&o| MODULES[o].file == MODULES[m].file), "a group mixes files");
            }
        }
        assert!(owners.iter().all(|&n| n == 1), "{owners:?}");
        // Indices run 0.. without gaps within each module; no cell is shared; names are unique.
        let all = kernel_names();
        for m in 0..MODULES.len() {
            let mut idx: Vec<usize> = all.iter().filter(|k| k.module == m).map(|k| k.index).collect();
            idx.sort();
            assert_eq!(idx, (0..idx.len()).collect::<Vec<_>>(), "module {m}");
            let mut names: Vec<&str> = all.iter().filter(|k| k.module == m).map(|k| k.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), idx.len(), "module {m}: a name listed twice");
        }
        assert_eq!(all.len(), 6 + 5 + 4 * 15 + 4 * 6 + 7);
        assert_eq!(
            QUANTIZE_NTC.at(quantize_module(Bits::B16, true), Dtype::Bf16),
            Kernel { module: M_QUANTIZE + 3, index: 5, name: "fj_quantize_ntc_bf16" }
        );
        assert_eq!((NOISE.module, NOISE.index), (M_PERTURB_GENERIC, 6));
        assert_eq!(perturb_module(NoiseKind::Uniform, false), M_PERTURB + 2);
    }
}
