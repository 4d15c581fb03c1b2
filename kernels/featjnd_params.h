/* Kernel parameter structs of featjnd: the one definition, read by NVRTC (the kernels include it)
 * and by bindgen (build.rs turns it into Rust). Plain C, fixed-width fields, no headers: NVRTC has
 * no system include path, so the fixed-width types are defined here for the device side.
 * Pointers travel as 64-bit integers (device or host addresses); 0 means "absent".
 * A "bad" cell is a zero-initialised u64 that receives ~index of the first offending element
 * (atomicMax), so 0 means none and all statistics of an op start from one memset.
 * See docs/contract.md for the meaning of every field. The numeric constants below are the one
 * definition of what the kernels and the Rust launchers (src/cuda/raw.rs) must agree on; bindgen
 * exports them as FJ_* constants. */
#ifndef FEATJND_PARAMS_H
#define FEATJND_PARAMS_H

#ifdef __CUDACC_RTC__
typedef unsigned int uint32_t;
typedef int int32_t;
typedef unsigned long long uint64_t;
#else
#include <stdint.h>
#endif

/* Launch geometry. Every kernel runs FJ_BLOCK threads per block (its __launch_bounds__); the
 * launchers size their grids from the same constants. */
#define FJ_BLOCK 256
#define FJ_WARP_SIZE 32
#define FJ_WARPS (FJ_BLOCK / FJ_WARP_SIZE)
/* Tokens one block of the token kernels (token_stats.cu, quantize.cu) covers: NCHW gives a lane to
 * each token (channels split over the warps), NTC a warp to each token. */
#define FJ_NCHW_TOKENS_PER_BLOCK FJ_WARP_SIZE
#define FJ_NTC_TOKENS_PER_BLOCK FJ_WARPS
/* Elements of one Philox4x32 block (4 random words, one noise value each). */
#define FJ_PHILOX_LANES 4
/* Philox blocks a perturbation thread takes per round, and the elements one perturbation block
 * covers (a block works on one chunk of one sample). */
#define FJ_PT_ITEMS 4
#define FJ_PT_CHUNK (FJ_BLOCK * FJ_PHILOX_LANES * FJ_PT_ITEMS)

/* Quantizer (contract §4): symbols in [-qmax, qmax], qmax = 2^(b-1) - 1. */
#define FJ_QMAX_B8 127
#define FJ_QMAX_B16 32767
/* Symbol histogram: 255 bins for b = 8 (-127..127); for b = 16, 511 bins for -255..255 and one
 * overflow bin (|q| > 255) last. */
#define FJ_HIST_BINS_B8 255
#define FJ_HIST_RANGE_B16 255
#define FJ_HIST_BINS_B16 512

/* Layout of a feature tensor (contract §1). */
enum { FJ_LAYOUT_NCHW = 0, FJ_LAYOUT_NTC = 1 };
/* Element dtype. */
enum { FJ_DTYPE_F32 = 0, FJ_DTYPE_F16 = 1, FJ_DTYPE_BF16 = 2 };
/* Token reduction (contract §2). */
enum { FJ_REDUCE_MEAN = 0, FJ_REDUCE_RMS = 1, FJ_REDUCE_MIN = 2 };
/* Step strategy (contract §3). */
enum { FJ_STRATEGY_UNIFORM = 0, FJ_STRATEGY_JND = 1, FJ_STRATEGY_PERMUTED = 2 };
/* Noise kind (contract §5). */
enum { FJ_NOISE_GAUSSIAN = 0, FJ_NOISE_UNIFORM = 1 };
/* What token_stats.cu rejects: a tolerance map (finite and > 0, contract §2) or a feature
 * (finite, for the token RMS of contract §3.5). */
enum { FJ_CHECK_JND = 0, FJ_CHECK_FINITE = 1 };
/* Bits of the capped allocation's status word (fj_caps). */
enum { FJ_CAPPED_ZERO_FEATURE = 1 };

/* How a tensor splits into tokens (contract §1). For NTC: n = N, c = C, h = T, w = 1, patch = 1.
 * tokens = number of tokens T (all samples), k = elements per token. */
typedef struct FjTokenGeom {
    uint32_t layout;
    uint32_t n, c, h, w;
    uint32_t patch;
    uint32_t tokens;
    uint32_t k;
} FjTokenGeom;

/* token_stats.cu: j_t = reduce(J over token t); optionally accumulates sum_t j_t^2 (f64) and
 * max_t j_t. With check = FJ_CHECK_FINITE and reduce = RMS the same kernel gives the token RMS
 * r_t of a feature x (contract §3.5): `jnd` then points at x. */
typedef struct FjTokenStatsParams {
    FjTokenGeom geom;
    uint64_t jnd;          /* const elem*: J (or x), shape of x */
    uint64_t token_tol;    /* float*: j_t (or r_t), T values */
    uint64_t sum_sq;       /* double*: += sum_t j_t^2 (zeroed by the caller); 0 = skip */
    uint64_t bad_index;    /* unsigned long long*: bad cell: first element `check` rejects */
    uint64_t max_out;      /* unsigned int*: atomicMax of the f32 bits of every j_t > 0, i.e. the
                              f32 max_t j_t (zeroed by the caller; the low half of a stats slot);
                              0 = skip */
    uint32_t reduce;
    uint32_t check;        /* FJ_CHECK_* */
    /* The two-launch chain (FjQuantizeChainParams). Where `partials` is set, block b
     * writes its own sum of j_t^2 to ((double*)partials)[b] and its first bad index (~0 = none) to
     * ((uint64_t*)partials)[gridDim.x + b] instead of adding into sum_sq and bad_index, so nothing
     * needs zeroing before; and block 0 sets the `zero_count` cells at `zero` to 0 (the
     * quantizer's accumulators, which the next launch adds into). 0 = off. */
    uint64_t partials;
    uint64_t zero;         /* unsigned long long*: cells to clear; 0 = none */
    uint32_t zero_count;
    uint32_t pad0;
} FjTokenStatsParams;

/* step_alloc.cu: steps_t from token tolerances and a budget, no host round-trip.
 * scale = sqrt(12 D) (Uniform) or sqrt(12 D T / sum_sq) (Jnd, Permuted), times beta, in f64,
 * rounded once to f32; step_t = scale_f32 * j_{perm(t)} (one f32 multiply). */
typedef struct FjStepAllocParams {
    uint64_t token_tol;    /* const float*: j_t */
    uint64_t sum_sq;       /* const double*: sum_t j_t^2 (device) */
    uint64_t perm;         /* const uint32_t*: pi(t) for Permuted, else 0 */
    uint64_t steps;        /* float*: out, T values */
    double budget;         /* D > 0 */
    double beta;           /* common factor of the measured budget (1 = nominal) */
    uint32_t tokens;
    uint32_t strategy;
} FjStepAllocParams;

/* step_alloc.cu: the capped allocation (contract §3.5), three kernels sharing one struct:
 *  fj_max_pos      (grid over T)  *max_rms = max of the r_t > 0 (atomicMax on f32 bits; NaN and
 *                                 values <= 0 ignored, as the CPU's fold from 0 does);
 *  fj_caps         (grid over T)  c_t = kappa * max(r_t, 2^-24 * max_rms), one f32 multiply each;
 *                                 sets FJ_CAPPED_ZERO_FEATURE in *status unless max_rms is finite > 0;
 *  fj_capped_solve (ONE block)    validates j_t and c_t, solves for (a, b) in f64 (scales[0..2]);
 *  fj_capped_steps (grid over T)  step_t = min(f32(a beta) * j_t, f32(b beta) * c_t).
 * Every pointer a kernel does not use may be 0. */
typedef struct FjCappedParams {
    uint64_t token_tol;    /* const float*: j_t */
    uint64_t rms;          /* const float*: r_t (fj_max_pos, fj_caps) */
    uint64_t max_rms;      /* unsigned int* / const float*: max_t r_t (zeroed by the caller) */
    uint64_t caps;         /* float*: c_t (written by fj_caps, read by the others) */
    uint64_t scales;       /* double[2]: (a, b), written by fj_capped_solve */
    uint64_t steps;        /* float*: out, T values */
    uint64_t bad_jnd;      /* unsigned long long*: bad cell: first j_t not finite and > 0 */
    uint64_t bad_cap;      /* unsigned long long*: bad cell: first c_t not finite and > 0 */
    uint64_t status;       /* unsigned long long*: FJ_CAPPED_* bits (zeroed by the caller) */
    double budget;         /* D > 0 */
    double beta;           /* common factor of the measured budget (1 = nominal) */
    float kappa;           /* cap factor > 0 */
    uint32_t tokens;
} FjCappedParams;

/* quantize.cu: fused quantize / dequantize (contract §4). Every output is optional (0 = skip). */
typedef struct FjQuantizeParams {
    FjTokenGeom geom;
    uint64_t x;            /* const elem* */
    uint64_t steps;        /* const float*: step_t */
    uint64_t symbols;      /* int8_t* (bits 8) or int16_t* (bits 16) */
    uint64_t recon;        /* elem*: may equal x (in place) */
    uint64_t token_sse;    /* float*: e_t */
    uint64_t total_sse;    /* double*: += sum of e_t (measured MSE without a host pass) */
    uint64_t clamp_count;  /* unsigned long long*: += clamped elements */
    uint64_t histogram;    /* unsigned long long*: 255 bins (b=8) or 511 + 1 overflow (b=16) */
    uint64_t bad_index;    /* unsigned long long*: bad cell: first non-finite x */
    uint64_t bad_step;     /* unsigned long long*: the first step (or chain j_t) the CPU would
                              refuse, as a key (quantize.cu, bad_step_key); 0 = none */
    uint32_t bits;         /* 8 or 16 */
    uint32_t pad0;
} FjQuantizeParams;

/* quantize.cu: the second launch of the two-launch chain J -> j_t -> steps -> quantize (contract §8;
 * the first is token_stats.cu with `partials` set). Every block sums the first launch's
 * per-block partials in one fixed order (so the chain needs no zeroed accumulator and no launch
 * between), computes the scale exactly as fj_step_alloc does, quantizes its tokens with
 * step_t = scale * j_t (Jnd) or scale (Uniform), and the owner of each token writes step_t to
 * q.steps. Block 0 writes sum_t j_t^2 and J's bad cell. The grid is the quantizer's own, so the
 * partials are re-read by every block: the launcher uses this form only up to
 * FJ_CHAIN_MAX_PARTS partials. */
#define FJ_CHAIN_MAX_PARTS 512
typedef struct FjQuantizeChainParams {
    FjQuantizeParams q;    /* q.steps is written here (float*: out, T values) */
    uint64_t token_tol;    /* const float*: j_t */
    uint64_t partials;     /* const: nparts doubles, then nparts bad indices (~0 = none) */
    uint64_t sum_sq_out;   /* double*: sum_t j_t^2 (written by block 0) */
    uint64_t bad_jnd_out;  /* unsigned long long*: J's bad cell (written by block 0: ~index or 0) */
    double budget;         /* D > 0 */
    double beta;
    uint32_t nparts;
    uint32_t strategy;     /* FJ_STRATEGY_UNIFORM or FJ_STRATEGY_JND */
} FjQuantizeChainParams;

/* quantize.cu: a batch of independent quantizations in one launch (contract §8). Item i owns the
 * grid blocks from block_start[i] up to the next item's start (the last item: to the grid's end)
 * and runs exactly the single-item kernel of its layout on them, with its own geometry, steps,
 * outputs and statistics cells. The table travels by value in the kernel's parameter space
 * (FJ_BATCH_MAX items keep it under the 4 KiB parameter limit), so a batched call needs no device
 * upload and is capturable into a graph.
 * Every item has the launch's dtype and bits; the grid is exactly the items' blocks. */
#define FJ_BATCH_MAX 32
typedef struct FjQuantizeBatchParams {
    FjQuantizeParams items[FJ_BATCH_MAX];
    uint32_t block_start[FJ_BATCH_MAX];    /* first grid block of each item (prefix sums) */
    uint32_t count;                        /* items used, 1..FJ_BATCH_MAX */
} FjQuantizeBatchParams;

/* perturb.cu: x' = x + s_n * J ⊙ xi with s_n = r ||x_n|| / ||J_n ⊙ xi_n|| (contract §6). */
typedef struct FjPerturbParams {
    uint64_t x;            /* const elem* */
    uint64_t jnd;          /* const elem*: 0 means J == 1 */
    uint64_t out;          /* elem*: x' (may equal x) */
    uint64_t norms;        /* double*: 2 per sample: sum x^2, sum (J xi)^2 (zeroed by the caller) */
    uint64_t scales;       /* float*: s_n per sample (pass 2 writes it) */
    uint64_t bad_index;    /* unsigned long long*: bad cell: first non-finite x */
    uint64_t bad_jnd;      /* unsigned long long*: bad cell: first non-finite or <= 0 J */
    uint64_t numel;        /* all elements */
    uint64_t sample_len;   /* elements per sample */
    uint64_t seed;
    double nrmse;          /* r >= 0 */
    uint32_t samples;
    uint32_t subsequence;
    uint32_t noise;        /* FJ_NOISE_* */
    uint32_t pad0;
} FjPerturbParams;

/* perturb.cu: a batch of independent perturbations, two launches (norms, apply) over one table,
 * laid out and used as FjQuantizeBatchParams (contract §8). */
typedef struct FjPerturbBatchParams {
    FjPerturbParams items[FJ_BATCH_MAX];
    uint32_t block_start[FJ_BATCH_MAX];    /* first grid block of each item (prefix sums) */
    uint32_t count;                        /* items used, 1..FJ_BATCH_MAX */
} FjPerturbBatchParams;

/* perturb.cu: materialise noise xi (tests and tools; the perturbation never stores it). */
typedef struct FjNoiseParams {
    uint64_t out;          /* float* */
    uint64_t numel;
    uint64_t offset;       /* flat index of out[0] */
    uint64_t seed;
    uint32_t subsequence;
    uint32_t noise;
} FjNoiseParams;

#endif /* FEATJND_PARAMS_H */
