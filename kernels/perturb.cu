// Perturbation at a matched per-sample NRMSE (contract §6) and noise materialisation (contract §5).
// The noise is never stored: pass 1 generates xi from Philox counters and reduces ||x_n||^2 and
// ||J_n ⊙ xi_n||^2 into f64 per sample; pass 2 regenerates the same xi and writes
// x' = x + s_n (J ⊙ xi) with s_n = r ||x_n|| / ||J_n ⊙ xi_n||. A block covers one chunk of one
// sample; a thread takes whole Philox blocks (4 flat elements) with one vector load where aligned.

// FJ_PT_ITEMS and FJ_PT_CHUNK (elements per block) are in featjnd_params.h: the launcher sizes the
// grid from the same FJ_PT_CHUNK.
//
// Specialised at compile time (src/cuda/compile.rs): the single perturbation's kernels are built once per
// (noise kind, J given or J == 1) with -DFJ_P_NOISE=0|1 -DFJ_P_JND=0|1, so their loops carry
// neither the other noise's code nor a test for J; without J they load nothing for it. The module
// without those defines holds what must decide at run time: the batch kernels (items may differ
// in noise and J) and fj_noise. A template argument of -1 means "read it from the parameters".
#if defined(FJ_P_NOISE) != defined(FJ_P_JND)
#error "define both FJ_P_NOISE and FJ_P_JND (a specialised module) or neither (the generic one)"
#endif

// The noise kind and "J given" of a specialisation (NOISE, JND >= 0) or of the parameters (-1).
template <int NOISE>
__device__ __forceinline__ u32 noise_of(const FjPerturbParams& p) { return NOISE < 0 ? p.noise : (u32)NOISE; }
template <int JND>
__device__ __forceinline__ bool has_jnd(const FjPerturbParams& p) { return JND < 0 ? p.jnd != 0 : JND != 0; }

// Loads the 4 elements of Philox block g that lie in [lo, hi) (others read as 0 / J = 1).
template <class D, int JND>
__device__ __forceinline__ void load_group(const FjPerturbParams& p, u64 g, u64 lo, u64 hi, bool vec,
                                           float v[4], float j[4], bool in[4]) {
    const typename D::T* x = (const typename D::T*)p.x;
    const typename D::T* jp = has_jnd<JND>(p) ? (const typename D::T*)p.jnd : nullptr;
    const u64 i0 = 4 * g;
    if (vec && i0 >= lo && i0 + 4 <= hi) {
        load4<D>(x, i0, v);
        if (jp) load4<D>(jp, i0, j);
        else j[0] = j[1] = j[2] = j[3] = 1.0f;
#pragma unroll
        for (int l = 0; l < 4; ++l) in[l] = true;
        return;
    }
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const u64 i = i0 + l;
        in[l] = i >= lo && i < hi;
        v[l] = in[l] ? D::load(x[i]) : 0.0f;
        j[l] = (in[l] && jp) ? D::load(jp[i]) : 1.0f;
    }
}

// Loads FJ_PT_ITEMS Philox blocks (gb, gb + blockDim.x, ...) before any math uses them.
template <class D, int JND>
__device__ __forceinline__ void load_items(const FjPerturbParams& p, u64 gb, u64 lo, u64 hi, bool vec,
                                           float v[FJ_PT_ITEMS][4], float j[FJ_PT_ITEMS][4], bool in[FJ_PT_ITEMS][4]) {
#pragma unroll
    for (int k = 0; k < FJ_PT_ITEMS; ++k) load_group<D, JND>(p, gb + k * blockDim.x, lo, hi, vec, v[k], j[k], in[k]);
}

// Block -> (sample, chunk); the groups of this thread overlap [lo, hi).
struct Span {
    u32 n;
    u64 lo, hi, g0, g1;
};
// `blk` is the block's index within its item's grid (blockIdx.x for a single perturbation).
__device__ __forceinline__ Span span_of(const FjPerturbParams& p, u32 blk) {
    // Blocks per sample, in 32 bits: the launcher's grid (samples x bps blocks) is at most 2^31 - 1
    // blocks, so bps fits. A 64-bit division here was a call to ptxas's u64 division subroutine,
    // whose calling convention made the f16/bf16 norms kernels spill on sm_90 (tests/ptxas.rs).
    const u32 bps = (u32)((p.sample_len + FJ_PT_CHUNK - 1) / FJ_PT_CHUNK);
    Span s;
    s.n = blk / bps;
    const u64 c = blk % bps;
    const u64 start = (u64)s.n * p.sample_len;
    s.lo = start + c * FJ_PT_CHUNK;
    s.hi = min(start + p.sample_len, s.lo + FJ_PT_CHUNK);
    s.g0 = s.lo / 4;
    s.g1 = (s.hi + 3) / 4;
    return s;
}

// Every thread takes FJ_PT_ITEMS Philox blocks per round and issues all their loads before any
// noise math, so the memory system sees several requests in flight per thread.
template <class D, int NOISE, int JND>
__device__ void perturb_norms(const FjPerturbParams& p, u32 blk) {
    const Span s = span_of(p, blk);
    const bool vec = (p.x % 16 == 0) && (p.jnd % 16 == 0);
    float sx = 0.0f, sj = 0.0f;
    u64 badx = ~0ull, badj = ~0ull;
    for (u64 gb = s.g0 + threadIdx.x; gb < s.g1; gb += FJ_PT_ITEMS * blockDim.x) {
        float v[FJ_PT_ITEMS][4], j[FJ_PT_ITEMS][4];
        bool in[FJ_PT_ITEMS][4];
        load_items<D, JND>(p, gb, s.lo, s.hi, vec, v, j, in);
#pragma unroll
        for (int k = 0; k < FJ_PT_ITEMS; ++k) {
            const u64 g = gb + k * blockDim.x;
            if (g >= s.g1) continue;
            float xi[4];
            noise4(g, p.seed, p.subsequence, noise_of<NOISE>(p), xi);
#pragma unroll
            for (int l = 0; l < 4; ++l) {
                if (!in[k][l]) continue;
                const u64 i = 4 * g + l;
                if (!fj_finite(v[k][l])) badx = i < badx ? i : badx;
                if (!(j[k][l] > 0.0f) || !fj_finite(j[k][l])) badj = i < badj ? i : badj;
                const float e = __fmul_rn(j[k][l], xi[l]);
                sx = __fadd_rn(sx, __fmul_rn(v[k][l], v[k][l]));
                sj = __fadd_rn(sj, __fmul_rn(e, e));
            }
        }
    }
    report_bad((u64*)p.bad_index, badx);
    report_bad((u64*)p.bad_jnd, badj);
    const double bx = block_sum_d((double)sx);
    const double bj = block_sum_d((double)sj);
    if (threadIdx.x == 0) {
        atomicAdd((double*)p.norms + 2 * s.n, bx);
        atomicAdd((double*)p.norms + 2 * s.n + 1, bj);
    }
}

// s_n from the two sums: 0 for an all-zero sample (returned unchanged).
__device__ __forceinline__ float scale_of(const FjPerturbParams& p, u32 n) {
    const double sx = ((const double*)p.norms)[2 * n], sj = ((const double*)p.norms)[2 * n + 1];
    if (!(sx > 0.0) || !(sj > 0.0)) return 0.0f;
    return (float)(p.nrmse * sqrt(sx) / sqrt(sj));
}

template <class D, int NOISE, int JND>
__device__ void perturb_apply(const FjPerturbParams& p, u32 blk) {
    // Pass 1 found a bad x or J: write nothing (the in-place input stays intact, no host sync).
    if (bad_seen(p.bad_index) || (has_jnd<JND>(p) && bad_seen(p.bad_jnd))) return;
    const Span s = span_of(p, blk);
    const float sc = scale_of(p, s.n);
    if (threadIdx.x == 0 && s.lo == (u64)s.n * p.sample_len && p.scales) ((float*)p.scales)[s.n] = sc;
    const bool vec = (p.x % 16 == 0) && (p.jnd % 16 == 0) && (p.out % 16 == 0);
    typename D::T* out = (typename D::T*)p.out;
    for (u64 gb = s.g0 + threadIdx.x; gb < s.g1; gb += FJ_PT_ITEMS * blockDim.x) {
        float v[FJ_PT_ITEMS][4], j[FJ_PT_ITEMS][4];
        bool in[FJ_PT_ITEMS][4];
        load_items<D, JND>(p, gb, s.lo, s.hi, vec, v, j, in);
#pragma unroll
        for (int k = 0; k < FJ_PT_ITEMS; ++k) {
            const u64 g = gb + k * blockDim.x;
            if (g >= s.g1) continue;
            float xi[4], o[4];
            noise4(g, p.seed, p.subsequence, noise_of<NOISE>(p), xi);
#pragma unroll
            for (int l = 0; l < 4; ++l)
                o[l] = sc == 0.0f ? v[k][l] : __fadd_rn(v[k][l], __fmul_rn(sc, __fmul_rn(j[k][l], xi[l])));
            if (vec && in[k][0] && in[k][3]) {
                store4<D>(out, 4 * g, o);
            } else {
#pragma unroll
                for (int l = 0; l < 4; ++l)
                    if (in[k][l]) out[4 * g + l] = D::store(o[l]);
            }
        }
    }
}

#ifdef FJ_P_NOISE
// A specialised module: the single perturbation's two passes.
#define FJ_PERTURB(NAME, D)                                                                  \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK, FJ_PERTURB_MIN_BLOCKS) fj_perturb_norms_##NAME(const FjPerturbParams p) { \
        perturb_norms<D, FJ_P_NOISE, FJ_P_JND>(p, blockIdx.x);                               \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK, FJ_PERTURB_APPLY_MIN_BLOCKS) fj_perturb_apply_##NAME(const FjPerturbParams p) { \
        perturb_apply<D, FJ_P_NOISE, FJ_P_JND>(p, blockIdx.x);                               \
    }
FJ_FOR_DTYPES(FJ_PERTURB)
#else
// The generic module. A batch (FjPerturbBatchParams): each block runs the single-item pass of its
// item, so every item's result is that of its own launch.
template <class D>
__device__ void perturb_norms_batch(const FjPerturbBatchParams& b) {
    const u32 i = fj_batch_item(b.block_start, b.count);
    perturb_norms<D, -1, -1>(b.items[i], blockIdx.x - b.block_start[i]);
}
template <class D>
__device__ void perturb_apply_batch(const FjPerturbBatchParams& b) {
    const u32 i = fj_batch_item(b.block_start, b.count);
    perturb_apply<D, -1, -1>(b.items[i], blockIdx.x - b.block_start[i]);
}

#define FJ_PERTURB_BATCH(NAME, D)                                                            \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK, FJ_PERTURB_MIN_BLOCKS)                                  \
        fj_perturb_norms_batch_##NAME(const FjPerturbBatchParams b) { perturb_norms_batch<D>(b); } \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK, FJ_PERTURB_MIN_BLOCKS)                                  \
        fj_perturb_apply_batch_##NAME(const FjPerturbBatchParams b) { perturb_apply_batch<D>(b); }
FJ_FOR_DTYPES(FJ_PERTURB_BATCH)

extern "C" __global__ void __launch_bounds__(FJ_BLOCK) fj_noise(const FjNoiseParams p) {
    const u64 g0 = p.offset / 4, g1 = (p.offset + p.numel + 3) / 4;
    const u64 g = g0 + (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= g1) return;
    float xi[4];
    noise4(g, p.seed, p.subsequence, p.noise, xi);
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        const u64 i = 4 * g + l;
        if (i >= p.offset && i < p.offset + p.numel) ((float*)p.out)[i - p.offset] = xi[l];
    }
}
#endif
