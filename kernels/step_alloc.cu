// Per-token steps under a noise budget (contract §3; the capped allocation of §3.5 below),
// reading sum_t j_t^2 from device memory so the allocation -> quantize chain needs no host
// round-trip. The scale is computed in f64 and rounded once to f32, exactly as the CPU path does;
// step_t = scale * j_{pi(t)} is one f32 multiply.

extern "C" __global__ void __launch_bounds__(FJ_BLOCK) fj_step_alloc(const FjStepAllocParams p) {
    const u32 t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.tokens) return;
    float* steps = (float*)p.steps;
    if (p.strategy == FJ_STRATEGY_UNIFORM) {
        steps[t] = fj_uniform_step(p.budget, p.beta);
        return;
    }
    const float scale = fj_jnd_scale(p.budget, p.tokens, *(const double*)p.sum_sq, p.beta);
    const u32 src = p.strategy == FJ_STRATEGY_PERMUTED ? ((const u32*)p.perm)[t] : t;
    steps[t] = __fmul_rn(scale, ((const float*)p.token_tol)[src]);
}

// ---- the capped allocation (contract §3.5) ----
// Four small kernels instead of one: the max over tokens and the caps are grid-wide (a max must be
// complete before any cap is written), the solve for the common scale is a 1-D root search that
// one block does alone, and the steps are again grid-wide. All of it reads and writes device
// memory only, so token RMS -> caps -> solve -> steps -> quantize needs no host round trip.

// max_t r_t over the r_t > 0 (a given r tensor; the fused chain gets it from token_stats.cu).
extern "C" __global__ void __launch_bounds__(FJ_BLOCK) fj_max_pos(const FjCappedParams p) {
    const u32 t = blockIdx.x * blockDim.x + threadIdx.x;
    // Every lane takes part in the warp reduction, live or not.
    report_max_pos((u32*)p.max_rms, t < p.tokens ? ((const float*)p.rms)[t] : 0.0f);
}

// c_t = kappa * max(r_t, 2^-24 * max_r), each operation one f32 operation as on the CPU
// (steps::caps_from_rms). fmaxf returns the other operand for a NaN r_t, as Rust's f32::max does.
extern "C" __global__ void __launch_bounds__(FJ_BLOCK) fj_caps(const FjCappedParams p) {
    const u32 t = blockIdx.x * blockDim.x + threadIdx.x;
    const float m = *(const float*)p.max_rms;
    // A feature that is zero in every token has no scale: the host maps this bit to the same
    // error as the CPU. The caps are then 0 and the solver's cap check fires too; the host
    // reports the status first.
    if (t == 0 && p.status && !(m > 0.0f && fj_finite(m))) atomicOr((u64*)p.status, (u64)FJ_CAPPED_ZERO_FEATURE);
    if (t >= p.tokens) return;
    const float floor = __fmul_rn(m, 5.9604644775390625e-8f);  // 2^-24: exact unless subnormal
    ((float*)p.caps)[t] = __fmul_rn(p.kappa, fmaxf(((const float*)p.rms)[t], floor));
}

// Block reductions whose result every thread of the (single) block gets, bit-identical across
// threads: the warp partials are combined in one fixed order by each thread. The leading
// __syncthreads protects `part` from the previous call's readers.
__device__ __forceinline__ double block_all_sum(double v) {
    __shared__ double part[FJ_WARPS];
    v = warp_sum_d(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = part[0];
    for (int w = 1; w < FJ_WARPS; ++w) s += part[w];
    return s;
}
__device__ __forceinline__ double block_all_minmax(double v, bool is_max) {
    __shared__ double part[FJ_WARPS];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const double w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmax(v, w) : fmin(v, w);
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = part[0];
    for (int w = 1; w < FJ_WARPS; ++w) s = is_max ? fmax(s, part[w]) : fmin(s, part[w]);
    return s;
}

// The budget the steps min(s j_t, c_t) spend, times 12 T: sum_t min(s j_t, c_t)^2 in f64.
__device__ __forceinline__ double spent(const float* j, const float* c, u32 tokens, double s) {
    double acc = 0.0;
    for (u32 t = threadIdx.x; t < tokens; t += FJ_BLOCK) {
        const double v = fmin(s * (double)j[t], (double)c[t]);
        acc += v * v;
    }
    return block_all_sum(acc);
}

// (a, b) of contract §3.5 in f64, launched as ONE block of FJ_BLOCK threads. It also validates
// j_t and c_t (finite, > 0; the first bad index of each into its bad cell), so the fused chain and
// the tensor API report what the CPU reports. Saturated (S_c <= G = 12 D T): a = +Inf,
// b = sqrt(G / S_c). Otherwise b = 1 and a = s, the root of f(s) = sum_t min(s j_t, c_t)^2 = G:
// the capped set is located by bisection on s over [min_t rho_t, max_t rho_t] (rho_t = c_t/j_t,
// f(max rho) = S_c > G), geometric while the bracket spans more than a factor 2 (the ratios of
// f32 values can span ~2^277), then arithmetic down to adjacent doubles: about 10 + 53 rounds. The
// tokens with rho_t <= lo (f(lo) < G) are the capped ones, and s is the closed form
// sqrt((G - sum_capped c^2) / sum_free j^2) over that set, as on the CPU (which finds the set by
// sorting; the two may differ in the last f64 bits, so a step by one f32 ulp).
// Launched as one block, so its launch bounds ask for no occupancy (min 1 block per SM): with the
// default target ptxas spilled 16 bytes around its f64 division and square-root subroutine calls
// (tests/ptxas.rs).
// Cost: O(rounds x T) loads on one SM (each round is one pass over j and c and a block reduction):
// well below a millisecond for T ~ 1e5, a few milliseconds for T ~ 1e6.
extern "C" __global__ void __launch_bounds__(FJ_BLOCK, 1) fj_capped_solve(const FjCappedParams p) {
    const float* j = (const float*)p.token_tol;
    const float* c = (const float*)p.caps;
    double* out = (double*)p.scales;
    const u32 tokens = p.tokens;
    u64 bad_j = ~0ull, bad_c = ~0ull;
    double sc = 0.0, rmin = __longlong_as_double(0x7ff0000000000000ll), rmax = 0.0;
    for (u32 t = threadIdx.x; t < tokens; t += FJ_BLOCK) {
        const float jv = j[t], cv = c[t];
        const bool jok = jv > 0.0f && fj_finite(jv), cok = cv > 0.0f && fj_finite(cv);
        if (!jok && t < bad_j) bad_j = t;
        if (!cok && t < bad_c) bad_c = t;
        if (jok && cok) {
            sc += (double)cv * (double)cv;
            const double r = (double)cv / (double)jv;
            rmin = fmin(rmin, r);
            rmax = fmax(rmax, r);
        }
    }
    report_bad((u64*)p.bad_jnd, bad_j);
    report_bad((u64*)p.bad_cap, bad_c);
    // Uniform across the block: everyone returns or nobody does (the reductions below sync).
    if (block_all_sum(bad_j != ~0ull || bad_c != ~0ull ? 1.0 : 0.0) > 0.0) {
        if (threadIdx.x == 0) out[0] = out[1] = __longlong_as_double(0x7ff8000000000000ll);
        return;
    }
    sc = block_all_sum(sc);
    rmin = block_all_minmax(rmin, false);
    rmax = block_all_minmax(rmax, true);
    const double g = 12.0 * p.budget * (double)tokens;
    const double inf = __longlong_as_double(0x7ff0000000000000ll);
    double a = inf, b = sqrt(g / sc);
    if (sc > g) {
        // thr: tokens with rho_t <= thr are capped; -1 = none (f(min rho) >= G: the Jnd scale).
        double thr = -1.0;
        if (spent(j, c, tokens, rmin) < g) {
            double lo = rmin, hi = rmax;
            for (int it = 0; it < 2200; ++it) {
                // sqrt(lo) sqrt(hi), not sqrt(lo hi): the product may overflow.
                const double mid = hi > 2.0 * lo ? sqrt(lo) * sqrt(hi) : 0.5 * (lo + hi);
                if (!(mid > lo && mid < hi)) break;
                if (spent(j, c, tokens, mid) < g) lo = mid;
                else hi = mid;
            }
            thr = lo;
        }
        double capped_c = 0.0, free_j = 0.0;
        for (u32 t = threadIdx.x; t < tokens; t += FJ_BLOCK) {
            const float jv = j[t], cv = c[t];
            if ((double)cv / (double)jv <= thr) capped_c += (double)cv * (double)cv;
            else free_j += (double)jv * (double)jv;
        }
        capped_c = block_all_sum(capped_c);
        free_j = block_all_sum(free_j);
        // Every token capped happens only by rounding at the saturation boundary, where the
        // saturated formula gives the same steps (as on the CPU).
        if (free_j > 0.0) {
            a = sqrt(fmax(g - capped_c, 0.0) / free_j);
            b = 1.0;
        }
    }
    if (threadIdx.x == 0) {
        out[0] = a;
        out[1] = b;
    }
}

// step_t = min(f32(a beta) * j_t, f32(b beta) * c_t): each scale rounded once to f32 (cvt.rn, as
// Rust's `as f32`), each candidate one f32 multiply. No NaN reaches fminf on valid inputs
// (a = +Inf gives +Inf * j_t = +Inf, and the cap term wins), so it agrees with Rust's f32::min.
extern "C" __global__ void __launch_bounds__(FJ_BLOCK) fj_capped_steps(const FjCappedParams p) {
    const u32 t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.tokens) return;
    const double* s = (const double*)p.scales;
    const float fa = (float)(s[0] * p.beta), fb = (float)(s[1] * p.beta);
    ((float*)p.steps)[t] = fminf(__fmul_rn(fa, ((const float*)p.token_tol)[t]), __fmul_rn(fb, ((const float*)p.caps)[t]));
}
