// Shared device helpers for the featjnd kernels: dtype conversions (no CUDA headers needed),
// exact f32 arithmetic without contraction, warp/block reductions, Philox4x32-10 (contract §5).
// NVRTC compiles each .cu with this file prepended (see src/cuda/compile.rs); no #include needed.
#pragma once

// FJ_BLOCK, FJ_WARPS and the other launch constants come from featjnd_params.h (prepended too).

// Occupancy targets of the hot kernels' __launch_bounds__ (tests/ptxas.rs, ptxas 13.0 on every module
// for sm_80 and sm_90, table in BENCHMARKS.md): with the default target ptxas capped the quantizers
// at 48 registers and spilled 4-28 bytes on sm_90; asking for 4 blocks of FJ_BLOCK threads per SM
// (at most 64 registers) removes every spill of quantize.cu. The single perturbation's apply pass
// fits 3 blocks (at most 85 registers; 56-80 used); its norms pass and both batch passes spill at
// 3 and take 2 (at most 128; 71-105 used, where 64-101 were used before, the f16/bf16 uniform
// norms with spills): up to one block per SM fewer than before, a change of occupancy that awaits
// a GPU measurement (BENCHMARKS.md). tests/ptxas.rs fails on any spill.
#define FJ_QUANTIZE_MIN_BLOCKS 4
#define FJ_PERTURB_MIN_BLOCKS 2
#define FJ_PERTURB_APPLY_MIN_BLOCKS 3

typedef unsigned short fj_f16;   // IEEE binary16 bits
typedef unsigned short fj_bf16;  // bfloat16 bits
typedef unsigned long long u64;
typedef unsigned int u32;

// ---- dtype conversions: widen exactly, narrow round-to-nearest-even (contract §1) ----
struct F32 {
    typedef float T;
    static __device__ __forceinline__ float load(T v) { return v; }
    static __device__ __forceinline__ T store(float v) { return v; }
};
// The three conversions that need PTX. The CPU emulation tier (crates/featjnd-emu) defines FJ_EMU
// and supplies the same three functions (IEEE round-to-nearest-even in software) from its header.
#ifndef FJ_EMU
__device__ __forceinline__ float fj_f16_to_f32(fj_f16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
}
__device__ __forceinline__ fj_f16 fj_f32_to_f16(float v) {
    fj_f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
__device__ __forceinline__ fj_bf16 fj_f32_to_bf16(float v) {
    fj_bf16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
#endif
// f32 -> s32 rounding toward zero as PTX's cvt.rzi.s32.f32: NaN gives 0, out-of-range values
// saturate. The quantizer's histogram indexes with it, so the NaN symbol of a NaN input (which the
// call then rejects) is counted in symbol 0's bin (8 bits; 16 bits: the overflow bin) instead of
// out of bounds. A C++ cast of NaN is undefined (x86 gives INT_MIN): the emulation tier supplies
// this function with the PTX semantics.
#ifndef FJ_EMU
__device__ __forceinline__ int fj_f2i(float v) { return (int)v; }
#endif
struct F16 {
    typedef fj_f16 T;
    static __device__ __forceinline__ float load(T v) { return fj_f16_to_f32(v); }
    static __device__ __forceinline__ T store(float v) { return fj_f32_to_f16(v); }
};
struct BF16 {
    typedef fj_bf16 T;
    static __device__ __forceinline__ float load(T v) { return __uint_as_float(((u32)v) << 16); }
    static __device__ __forceinline__ T store(float v) { return fj_f32_to_bf16(v); }
};

// Loads 4 consecutive elements with one 16-byte (f32) or 8-byte (f16/bf16) load.
template <class D>
__device__ __forceinline__ void load4(const typename D::T* x, u64 i, float v[4]);
template <>
__device__ __forceinline__ void load4<F32>(const float* x, u64 i, float v[4]) {
    const float4 a = *(const float4*)(x + i);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
}
template <class D>
__device__ __forceinline__ void load4(const typename D::T* x, u64 i, float v[4]) {
    const uint2 a = *(const uint2*)(x + i);
    v[0] = D::load((typename D::T)(a.x & 0xffff)); v[1] = D::load((typename D::T)(a.x >> 16));
    v[2] = D::load((typename D::T)(a.y & 0xffff)); v[3] = D::load((typename D::T)(a.y >> 16));
}
template <class D>
__device__ __forceinline__ void store4(typename D::T* x, u64 i, const float v[4]);
template <>
__device__ __forceinline__ void store4<F32>(float* x, u64 i, const float v[4]) {
    *(float4*)(x + i) = make_float4(v[0], v[1], v[2], v[3]);
}
template <class D>
__device__ __forceinline__ void store4(typename D::T* x, u64 i, const float v[4]) {
    uint2 a;
    a.x = (u32)D::store(v[0]) | ((u32)D::store(v[1]) << 16);
    a.y = (u32)D::store(v[2]) | ((u32)D::store(v[3]) << 16);
    *(uint2*)(x + i) = a;
}

// A feature element is finite iff its f32 widening is (f16/bf16 Inf/NaN widen to Inf/NaN).
__device__ __forceinline__ bool fj_finite(float v) { return isfinite(v); }

// NCHW, a lane per token with the channels split over the block's warps: the flat index of
// token t's first element (patch corner) in channel c0.
__device__ __forceinline__ u64 nchw_token_base(const FjTokenGeom& g, u32 t, u32 c0) {
    const u32 wp = g.w / g.patch, hp = g.h / g.patch;
    const u32 tw = t % wp, th = (t / wp) % hp, n = t / (wp * hp);
    return ((u64)n * g.c + c0) * ((u64)g.h * g.w) + (u64)th * g.patch * g.w + (u64)tw * g.patch;
}

// ---- reductions ----
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ u64 warp_min_u64(u64 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        u64 w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w < v ? w : v;
    }
    return v;
}
// Block-wide sum of one double per thread; result valid in thread 0. blockDim.x == FJ_BLOCK.
__device__ __forceinline__ double block_sum_d(double v) {
    __shared__ double part[FJ_WARPS];
    v = warp_sum_d(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // `part` may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    double s = 0.0;
    if (warp == 0) {
        s = lane < FJ_WARPS ? part[lane] : 0.0;
        s = warp_sum_d(s);
    }
    return s;
}
// Block-wide min of one u64 per thread; result valid in thread 0. blockDim.x == FJ_BLOCK.
__device__ __forceinline__ u64 block_min_u64(u64 v) {
    __shared__ u64 part[FJ_WARPS];
    v = warp_min_u64(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // `part` may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    u64 m = ~0ull;
    if (warp == 0) m = warp_min_u64(lane < FJ_WARPS ? part[lane] : ~0ull);
    return m;
}
// Records the smallest offending flat index (one atomic per warp at most). The cell starts at 0
// and holds ~index: atomicMax of ~index keeps the smallest index, and a zeroed buffer means "none",
// so one memset initialises every statistic of an op.
__device__ __forceinline__ void report_bad(u64* bad, u64 idx_or_max) {
    u64 m = warp_min_u64(idx_or_max);
    if ((threadIdx.x & 31) == 0 && m != ~0ull && bad) atomicMax(bad, ~m);
}
// Max of the values > 0 into a zeroed cell holding f32 bits: for non-negative floats the bit
// patterns order as the values (+Inf included), so an unsigned atomicMax is an exact,
// order-independent max. NaN and values <= 0 contribute nothing (0 bits = +0.0f). One atomic per
// warp at most; every lane of the warp must call it.
__device__ __forceinline__ void report_max_pos(u32* cell, float v) {
    u32 m = v > 0.0f ? __float_as_uint(v) : 0u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const u32 w = __shfl_xor_sync(0xffffffffu, m, o);
        m = w > m ? w : m;
    }
    if ((threadIdx.x & 31) == 0 && m != 0u && cell) atomicMax(cell, m);
}
__device__ __forceinline__ bool bad_seen(u64 cell) { return cell && *(const u64*)cell != 0ull; }

// ---- step allocation (contract §3): the one definition of the scale, f64 rounded once to f32 ----
// fj_step_alloc and the two-launch chain's quantizer both call these, so their steps agree bit for
// bit by construction.
__device__ __forceinline__ float fj_uniform_step(double budget, double beta) {
    return (float)(sqrt(12.0 * budget) * beta);
}
__device__ __forceinline__ float fj_jnd_scale(double budget, u32 tokens, double sum_sq, double beta) {
    return (float)(sqrt(12.0 * budget * (double)tokens / sum_sq) * beta);
}

// ---- batches (FjQuantizeBatchParams, FjPerturbBatchParams) ----
// The item whose blocks contain this block: the last i < count with starts[i] <= blockIdx.x (the
// starts ascend). Every thread of a block gets the same item, so the item's body may synchronize.
__device__ __forceinline__ u32 fj_batch_item(const uint32_t* starts, u32 count) {
    u32 i = 0;
    while (i + 1 < count && blockIdx.x >= starts[i + 1]) ++i;
    return i;
}

// ---- fast division by a runtime constant (unsigned 32-bit, n < 2^31) ----
struct FastDiv {
    u32 d, m, s;
};
__device__ __forceinline__ FastDiv fastdiv_make(u32 d) {
    FastDiv f;
    f.d = d;
    u32 s = 0;
    while ((1ull << s) < d) ++s;
    f.s = s;
    f.m = (u32)((((1ull << s) - d) << 32) / d + 1);
    return f;
}
__device__ __forceinline__ u32 fastdiv(u32 n, FastDiv f) {
    return (__umulhi(n, f.m) + n) >> f.s;
}

// ---- Philox4x32-10 (Random123), contract §5 ----
struct U4 {
    u32 x, y, z, w;
};
__device__ __forceinline__ U4 philox4x32_10(U4 c, u32 k0, u32 k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        const u32 hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        const u32 hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        U4 n;
        n.x = hi1 ^ c.y ^ k0;
        n.y = lo1;
        n.z = hi0 ^ c.w ^ k1;
        n.w = lo0;
        c = n;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c;
}
// The 4 random words of block g (elements 4g..4g+3) for a seed and subsequence (the third counter word).
__device__ __forceinline__ U4 philox_block(u64 g, u64 seed, u32 subsequence) {
    U4 c;
    c.x = (u32)g;
    c.y = (u32)(g >> 32);
    c.z = subsequence;
    c.w = 0;
    return philox4x32_10(c, (u32)seed, (u32)(seed >> 32));
}
__device__ __forceinline__ float u01(u32 r) { return __fmul_rn((float)(r >> 8), 5.9604644775390625e-8f); }
// Unit-variance uniform noise: (2u - 1) * sqrt(3), each step one f32 operation.
__device__ __forceinline__ float uniform_noise(u32 r) {
    return __fmul_rn(__fsub_rn(__fmul_rn(2.0f, u01(r)), 1.0f), 1.7320508075688772f);
}
// Box-Muller on a pair of words; writes the cos and sin variates.
__device__ __forceinline__ void box_muller(u32 r0, u32 r1, float* z0, float* z1) {
    const float u1 = __fadd_rn(u01(r0), 2.98023223876953125e-8f);
    const float u2 = u01(r1);
    const float rad = __fsqrt_rn(__fmul_rn(-2.0f, logf(u1)));
    const float th = __fmul_rn(6.2831853071795864769f, u2);
    float s, c;
    sincosf(th, &s, &c);
    *z0 = __fmul_rn(rad, c);
    *z1 = __fmul_rn(rad, s);
}
// The four noise values of block g.
__device__ __forceinline__ void noise4(u64 g, u64 seed, u32 subsequence, u32 kind, float xi[4]) {
    const U4 r = philox_block(g, seed, subsequence);
    if (kind == FJ_NOISE_UNIFORM) {
        xi[0] = uniform_noise(r.x);
        xi[1] = uniform_noise(r.y);
        xi[2] = uniform_noise(r.z);
        xi[3] = uniform_noise(r.w);
    } else {
        box_muller(r.x, r.y, &xi[0], &xi[1]);
        box_muller(r.z, r.w, &xi[2], &xi[3]);
    }
}

// Instantiate a templated kernel body for the three dtypes: NAME_f32, NAME_f16, NAME_bf16.
#define FJ_FOR_DTYPES(MACRO) MACRO(f32, F32) MACRO(f16, F16) MACRO(bf16, BF16)
