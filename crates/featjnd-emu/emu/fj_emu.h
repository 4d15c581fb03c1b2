// The CUDA vocabulary of kernels/*.cu on the CPU: this header is compiled in front of
// featjnd_params.h, common.cuh and one kernel file, as C++17 with -ffp-contract=off, so the very
// sources NVRTC compiles run here. The runtime it declares (fj_emu.cpp) runs each block's threads as
// fibers on the calling OS thread, blocks one after another:
//   * threadIdx is the running fiber's own index; blockIdx/blockDim/gridDim are per OS thread;
//   * __syncthreads is a block barrier (every fiber arrives, then all go on; an exited thread counts
//     as arrived, as on sm_70+; two call sites meeting in one barrier are reported as an error);
//   * warp collectives (__shfl_xor_sync, __match_any_sync) wait until every lane of their mask has
//     reached the same collective with the same mask, then compute every lane's result at once;
//     __activemask returns the lanes of the warp that reached the same __activemask while no other
//     lane of the warp can run any more (the most converged warp), or, with FJ_EMU_DIVERGED, only
//     the calling lane (the most diverged one): the kernels must be right for both;
//   * __shared__ is `static thread_local`: one copy per OS thread, i.e. per block in flight, shared
//     by the block's fibers; it keeps the previous block's contents (uninitialised, as on a GPU);
//   * atomics are __atomic builtins (a launch runs on one OS thread, but tests run launches in
//     parallel on separate buffers);
//   * f32/f64 arithmetic is IEEE binary32/binary64 round-to-nearest on SSE2 with no contraction,
//     as NVRTC's --fmad=false --prec-div=true --prec-sqrt=true --ftz=false gives on the GPU; the
//     f16/bf16 conversions are written out below (round to nearest even, canonical NaN 0x7fff as
//     PTX's cvt). What is NOT the GPU's: logf and sincosf are glibc's, not CUDA's (both within a
//     few ulps), so Box-Muller noise is compared with a tolerance; and the order in which blocks
//     add into global atomics is fixed here and arbitrary there.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>

#define FJ_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
struct fj_dim3 {
    unsigned int x, y, z;
};

namespace fj_emu {
extern thread_local const fj_dim3* t_thread_idx;
extern thread_local fj_dim3 t_block_idx, t_block_dim, t_grid_dim;
void syncthreads(int line);
uint64_t shfl_xor(unsigned mask, uint64_t v, int lane_mask);
unsigned match_any(unsigned mask, uint64_t key);
unsigned activemask(int line);
}  // namespace fj_emu

#define threadIdx (*fj_emu::t_thread_idx)
#define blockIdx (fj_emu::t_block_idx)
#define blockDim (fj_emu::t_block_dim)
#define gridDim (fj_emu::t_grid_dim)
#define __syncthreads() fj_emu::syncthreads(__LINE__)
#define __activemask() fj_emu::activemask(__LINE__)

template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    b = fj_emu::shfl_xor(mask, b, lane_mask);
    T r;
    memcpy(&r, &b, sizeof(T));
    return r;
}
template <class T>
static inline unsigned __match_any_sync(unsigned mask, T key) {
    static_assert(std::is_integral<T>::value && sizeof(T) <= 8, "integer keys");
    return fj_emu::match_any(mask, (uint64_t)key);
}

// ---- integer and bit intrinsics ----
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
static inline int __ffs(int v) { return __builtin_ffs(v); }
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
template <class A, class B>
static inline typename std::common_type<A, B>::type min(A a, B b) {
    static_assert(std::is_integral<A>::value && std::is_integral<B>::value, "min/max on integers only here");
    typedef typename std::common_type<A, B>::type C;
    return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B>
static inline typename std::common_type<A, B>::type max(A a, B b) {
    static_assert(std::is_integral<A>::value && std::is_integral<B>::value, "min/max on integers only here");
    typedef typename std::common_type<A, B>::type C;
    return (C)a < (C)b ? (C)b : (C)a;
}

// ---- reinterpretation ----
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline double __longlong_as_double(long long i) {
    double d;
    memcpy(&d, &i, 8);
    return d;
}

// ---- IEEE f32 operations, round to nearest even (one SSE instruction each, never contracted) ----
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
using std::isfinite;

// f32 -> s32 toward zero as PTX cvt.rzi.s32.f32: NaN -> 0, saturating (a C++ cast of those is UB).
static inline int fj_f2i(float v) {
    if (v != v) return 0;
    if (v >= 2147483648.0f) return 2147483647;
    if (v < -2147483648.0f) return (-2147483647 - 1);
    return (int)v;
}

// ---- f16 / bf16 (bits in unsigned short), as PTX cvt: widening exact, narrowing RNE ----
static inline float fj_f16_to_f32(unsigned short h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu, bits;
    if (e == 0x1f) {
        bits = sign | 0x7f800000u | (m << 13);
    } else if (e != 0) {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    } else if (m == 0) {
        bits = sign;
    } else {  // subnormal: m * 2^-24, normalised
        uint32_t k = 0;
        while (!(m & 0x400u)) {
            m <<= 1;
            ++k;
        }
        bits = sign | ((113u - k) << 23) | ((m & 0x3ffu) << 13);
    }
    return __uint_as_float(bits);
}
static inline unsigned short fj_f32_to_f16(float f) {
    const uint32_t x = __float_as_uint(f);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fff;                       // NaN: canonical
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520 rounds to Inf
    if (ax >= 0x38800000u) {                                    // a normal f16 (>= 2^-14)
        uint32_t h = (ax - 0x38000000u) >> 13;
        const uint32_t rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
        return (unsigned short)(sign | h);
    }
    const uint32_t e = ax >> 23;
    if (e == 0) return (unsigned short)sign;  // f32 subnormal: far below 2^-25
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u, shift = 126u - e;  // units of 2^-24: m >> shift
    if (shift > 24) return (unsigned short)sign;
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return (unsigned short)(sign | h);
}
static inline unsigned short fj_f32_to_bf16(float f) {
    const uint32_t x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // NaN: canonical
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// ---- atomics (global and shared alike) ----
static inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
static inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
static inline double atomicAdd(double* a, double v) {
    uint64_t* p = (uint64_t*)a;
    uint64_t old = __atomic_load_n(p, __ATOMIC_RELAXED), want;
    do {
        double d;
        memcpy(&d, &old, 8);
        d += v;
        memcpy(&want, &d, 8);
    } while (!__atomic_compare_exchange_n(p, &old, want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    double r;
    memcpy(&r, &old, 8);
    return r;
}
template <class T>
static inline T fj_atomic_max(T* a, T v) {
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
static inline unsigned atomicMax(unsigned* a, unsigned v) { return fj_atomic_max(a, v); }
static inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) { return fj_atomic_max(a, v); }
static inline unsigned long long atomicOr(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_or(a, v, __ATOMIC_RELAXED);
}

// ---- the launch table a module exports (written by build.rs) ----
struct FjEmuKernel {
    const char* name;
    size_t params_size;
    void (*thunk)(const void* params);
};
