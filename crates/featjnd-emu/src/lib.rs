//! The CPU emulation tier of the CUDA kernels: the same `kernels/*.cu` sources that
//! NVRTC compiles, built as C++ by `build.rs` with `emu/fj_emu.h` (the CUDA vocabulary) and run by
//! `emu/fj_emu.cpp` (each block's threads as fibers with real barriers and warp collectives). Test
//! only: it launches a kernel of a module on host memory, so the tests in `tests/` can compare every
//! kernel entry point with the CPU path of the kernel library.
//!
//! Bit-exactness (the rule the tests apply): the emulated kernel does every f32/f64 operation the
//! GPU does, in the same order within a block, IEEE round-to-nearest with no contraction
//! (`-ffp-contract=off` here, `--fmad=false` for NVRTC), so wherever the contract says the GPU is
//! bit-identical to the CPU path (symbols, reconstructions, steps from the same scale, uniform
//! noise, histograms, clamp counts, first bad indices), the emulation must be too. Two things
//! differ from a GPU and are compared with the contract's tolerance instead: `logf`/`sincosf`
//! (glibc here, CUDA's libdevice there: Box-Muller noise and what it feeds), and the order of
//! cross-block f64 atomics (block order here, arbitrary there).
use std::ffi::{c_char, c_int, c_void, CStr};

#[repr(C)]
struct RawKernel {
    name: *const c_char,
    params_size: usize,
    thunk: Option<unsafe extern "C" fn(*const c_void)>,
}

extern "C" {
    fn fj_emu_table(kind: c_int, i: c_int, label: *mut *const c_char) -> *const RawKernel;
    fn fj_emu_run(
        kernel: *const RawKernel,
        params: *const c_void,
        grid: u32,
        block: u32,
        flags: u32,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

/// Threads per block of every kernel (`FJ_BLOCK`).
pub const BLOCK: u32 = featjnd_kernels::params::FJ_BLOCK;

/// How a launch schedules its threads. The kernels must give the same results under every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sched {
    /// Resume a block's threads from the last to the first (default: first to last).
    pub reverse: bool,
    /// Reverse every odd block (so both orders occur in one launch).
    pub alternate: bool,
    /// `__activemask()` returns the calling lane alone (a fully diverged warp) instead of every
    /// lane of the warp at the same call (a converged one).
    pub diverged: bool,
    /// Run the blocks last to first (default: first to last). Blocks add into global f64 cells
    /// in another order then, so results may differ in the last bits of such sums.
    pub blocks_backward: bool,
    /// Resume a block's threads in another (deterministic, pseudo-random) order every pass.
    pub shuffle: bool,
}

impl Sched {
    fn flags(self) -> u32 {
        (self.reverse as u32)
            | ((self.alternate as u32) << 1)
            | ((self.diverged as u32) << 2)
            | ((self.blocks_backward as u32) << 3)
            | ((self.shuffle as u32) << 4)
    }
}

/// The schedules a test runs a kernel under: converged warps in alternating block order, and
/// diverged warps in reverse order.
pub const SCHEDS: [Sched; 2] = [
    Sched { reverse: false, alternate: true, diverged: false, blocks_backward: false, shuffle: false },
    Sched { reverse: true, alternate: false, diverged: true, blocks_backward: false, shuffle: false },
];

/// Blocks last to first, threads in a shuffled order every pass: compared with the CPU only, since
/// f64 sums over blocks round differently in another block order.
pub const BACKWARD: Sched = Sched { reverse: false, alternate: false, diverged: false, blocks_backward: true, shuffle: true };

/// One compiled kernel of a module (or of a deliberately broken copy of one).
#[derive(Clone, Copy)]
pub struct Kernel {
    raw: *const RawKernel,
    /// The label of its module (or mutant).
    pub owner: &'static str,
}

impl Kernel {
    pub fn name(&self) -> &'static str {
        // SAFETY: `raw` points into a table of build.rs's generated code (static, never freed)
        // whose names are NUL-terminated string literals.
        unsafe { CStr::from_ptr((*self.raw).name) }.to_str().unwrap()
    }
    pub fn params_size(&self) -> usize {
        // SAFETY: as in `name`.
        unsafe { (*self.raw).params_size }
    }
}

/// A module's (or a mutant's) kernel table.
pub struct Module {
    pub label: &'static str,
    pub kernels: Vec<Kernel>,
}

impl Module {
    /// The kernel called `name`; panics naming the module when it has none.
    pub fn kernel(&self, name: &str) -> Kernel {
        *self.kernels.iter().find(|k| k.name() == name).unwrap_or_else(|| panic!("{} has no kernel {name}", self.label))
    }
}

fn table(kind: c_int, i: usize) -> Option<Module> {
    let mut label: *const c_char = std::ptr::null();
    // SAFETY: fj_emu_table only reads its integer arguments and writes `label` when it returns a
    // table.
    let t = unsafe { fj_emu_table(kind, i as c_int, &mut label) };
    if t.is_null() {
        return None;
    }
    let mut kernels = Vec::new();
    let mut k = t;
    // SAFETY: the table is a static array ended by an entry with a null name (build.rs), and
    // `label` is a static NUL-terminated literal.
    unsafe {
        let owner = CStr::from_ptr(label).to_str().unwrap();
        while !(*k).name.is_null() {
            kernels.push(Kernel { raw: k, owner });
            k = k.add(1);
        }
        Some(Module { label: owner, kernels })
    }
}

/// The emulated module at slot `i` of `compile::MODULES`.
pub fn module(i: usize) -> Option<Module> {
    table(0, i)
}

/// The deliberately broken copy called `name` (build.rs's `MUTANTS`).
pub fn mutant(name: &str) -> Module {
    (0..).map_while(|i| table(1, i)).find(|m| m.label == name).unwrap_or_else(|| panic!("no mutant {name}"))
}

/// Runs `kernel` over `grid` blocks of [`BLOCK`] threads with parameters `p`.
///
/// # Safety
/// `P` must be the kernel's parameter struct (its size is checked), and every address in `p` must
/// be valid host memory for what the kernel reads and writes there, as on a device.
pub unsafe fn launch<P>(kernel: Kernel, p: &P, grid: u32, sched: Sched) -> Result<(), String> {
    assert_eq!(std::mem::size_of::<P>(), kernel.params_size(), "{}: parameter struct size", kernel.name());
    record(kernel);
    let mut err = vec![0u8; 1024];
    // SAFETY: `kernel.raw` is a static table entry; `p` is a live struct of the kernel's type
    // (caller's contract, size checked above); `err` has the room passed with it.
    let rc =
        unsafe { fj_emu_run(kernel.raw, p as *const P as *const c_void, grid, BLOCK, sched.flags(), err.as_mut_ptr().cast(), err.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(CStr::from_bytes_until_nul(&err).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default())
    }
}

/// With `FEATJND_EMU_COUNTS=FILE`, every launch appends `module-or-mutant<TAB>kernel` to FILE, so
/// that `tests/coverage.rs` can check afterwards that the tier launched every kernel entry point
/// and count the cases of each.
fn record(kernel: Kernel) {
    use std::io::Write as _;
    static FILE: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);
    let Some(path) = std::env::var_os("FEATJND_EMU_COUNTS").filter(|p| !p.is_empty()) else { return };
    let mut f = FILE.lock().unwrap_or_else(|e| e.into_inner());
    if f.is_none() {
        *f = std::fs::OpenOptions::new().create(true).append(true).open(path).ok();
    }
    if let Some(f) = f.as_mut() {
        let _ = writeln!(f, "{}\t{}", kernel.owner, kernel.name());
    }
}

/// A host buffer with guard zones on both sides, filled with a pattern the kernels never write,
/// so that a kernel writing out of bounds is caught ([`Guarded::check`]) and one reading out of
/// bounds reads garbage that shows in its results.
pub struct Guarded<T: Plain> {
    mem: Vec<T>,
    len: usize,
    fill: T,
}

/// Elements of guard zone on each side.
pub const GUARD: usize = 64;

/// Element types of [`Guarded`], compared by their bits (a NaN fill must equal itself).
pub trait Plain: Copy + std::fmt::Debug {
    fn bits(&self) -> u64;
}
macro_rules! plain {
    ($($t:ty => $e:expr),*) => {$(impl Plain for $t {
        fn bits(&self) -> u64 {
            let f: fn(&$t) -> u64 = $e;
            f(self)
        }
    })*};
}
plain!(f32 => |v| v.to_bits() as u64, f64 => |v| v.to_bits(), i8 => |v| *v as u8 as u64, i16 => |v| *v as u16 as u64,
       u16 => |v| *v as u64, u32 => |v| *v as u64, u64 => |v| *v, half::f16 => |v| v.to_bits() as u64, half::bf16 => |v| v.to_bits() as u64);

impl<T: Plain> Guarded<T> {
    /// `data` between guard zones of `fill`.
    pub fn new(data: &[T], fill: T) -> Self {
        let mut mem = vec![fill; data.len() + 2 * GUARD];
        mem[GUARD..GUARD + data.len()].copy_from_slice(data);
        Guarded { mem, len: data.len(), fill }
    }
    /// `len` elements of `fill` (an output the kernel must overwrite, or garbage).
    pub fn filled(len: usize, fill: T) -> Self {
        Guarded { mem: vec![fill; len + 2 * GUARD], len, fill }
    }
    pub fn addr(&self) -> u64 {
        self.mem[GUARD..].as_ptr() as u64
    }
    pub fn as_slice(&self) -> &[T] {
        &self.mem[GUARD..GUARD + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.mem[GUARD..GUARD + self.len]
    }
    /// An error naming the first element written outside the buffer, if any.
    pub fn check_res(&self, what: &str) -> Result<(), String> {
        let (lo, rest) = self.mem.split_at(GUARD);
        let hi = &rest[self.len..];
        if let Some(i) = lo.iter().position(|v| v.bits() != self.fill.bits()) {
            return Err(format!("{what}: written {} elements before the buffer ({:?})", GUARD - i, lo[i]));
        }
        if let Some(i) = hi.iter().position(|v| v.bits() != self.fill.bits()) {
            return Err(format!("{what}: written at element {} past the end ({:?})", self.len + i, hi[i]));
        }
        Ok(())
    }
}
