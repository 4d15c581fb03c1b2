// Token tolerance j_t = reduce(J over the K elements of token t) (contract §2), fused with the
// validation of J (finite, > 0) and the device-side sum_t j_t^2 the Jnd step allocation needs.
// The same kernels give the token RMS r_t of a feature (contract §3.5: reduce = RMS, check =
// FJ_CHECK_FINITE, and max_t r_t for the caps' floor), so both share one summation order.
// NCHW: a lane per token and the channels split over the block's warps; neighbouring lanes hold
// neighbouring patches, so each warp load covers 32*p contiguous elements of a row (coalesced for
// every p). NTC: one warp per token row.

template <class D>
__device__ __forceinline__ void acc_elem(float v, u64 idx, u32 reduce, u32 check, float& a, u64& bad) {
    // A feature may be zero or negative; a tolerance must be > 0.
    const bool ok = fj_finite(v) && (check == FJ_CHECK_FINITE || v > 0.0f);
    if (!ok) bad = idx < bad ? idx : bad;
    if (reduce == FJ_REDUCE_MIN) a = fminf(a, v);
    else if (reduce == FJ_REDUCE_RMS) a = __fadd_rn(a, __fmul_rn(v, v));
    else a = __fadd_rn(a, v);
}

__device__ __forceinline__ float finish(float a, u32 reduce, u32 k) {
    if (reduce == FJ_REDUCE_MIN) return a;
    const float m = __fdiv_rn(a, (float)k);
    return reduce == FJ_REDUCE_RMS ? __fsqrt_rn(m) : m;
}

__device__ __forceinline__ void emit(const FjTokenStatsParams& p, u32 t, bool live, float jt, u64 bad) {
    if (live) ((float*)p.token_tol)[t] = jt;
    if (p.partials) {
        // The two-launch chain: this block's own cells, nothing accumulated across blocks.
        const double s = block_sum_d(live ? (double)jt * (double)jt : 0.0);
        const u64 b = block_min_u64(bad);
        if (threadIdx.x == 0) {
            ((double*)p.partials)[blockIdx.x] = s;
            ((u64*)p.partials)[gridDim.x + blockIdx.x] = b;
        }
        if (blockIdx.x == 0)
            for (u32 i = threadIdx.x; i < p.zero_count; i += blockDim.x) ((u64*)p.zero)[i] = 0ull;
        return;
    }
    report_bad((u64*)p.bad_index, bad);
    if (p.max_out) report_max_pos((u32*)p.max_out, live ? jt : 0.0f);
    if (p.sum_sq) {
        const double s = block_sum_d(live ? (double)jt * (double)jt : 0.0);
        if (threadIdx.x == 0) atomicAdd((double*)p.sum_sq, s);
    }
}

// NCHW: a block owns 32 consecutive tokens (one per lane) and splits the channels over its warps;
// the partial reductions meet in shared memory and are combined in a fixed warp order.
template <class D>
__device__ void token_stats_nchw(const FjTokenStatsParams& p) {
    __shared__ float part[FJ_WARPS][FJ_NCHW_TOKENS_PER_BLOCK];
    const FjTokenGeom g = p.geom;
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 t = blockIdx.x * FJ_NCHW_TOKENS_PER_BLOCK + lane;
    const bool live = t < g.tokens;
    const bool is_min = p.reduce == FJ_REDUCE_MIN;
    float a = is_min ? __int_as_float(0x7f800000) : 0.0f;
    u64 bad = ~0ull;
    if (live) {
        const typename D::T* j = (const typename D::T*)p.jnd;
        // Offsets advance by additions (as in quantize.cu): a warp's channels are FJ_WARPS planes
        // apart, a batch of 8 of them 8 times that.
        const u64 wstride = (u64)FJ_WARPS * ((u64)g.h * g.w);
        const u64 base = nchw_token_base(g, t, warp);
        for (u32 r = 0; r < g.patch; ++r)
            for (u32 q = 0; q < g.patch; ++q) {
                u64 off = base + (u64)r * g.w + q;  // element (warp's channel c, this pixel)
                for (u32 c = warp; c < g.c; c += FJ_WARPS * 8, off += 8 * wstride) {
                    float v[8];
#pragma unroll
                    for (int b = 0; b < 8; ++b) v[b] = c + b * FJ_WARPS < g.c ? D::load(j[off + b * wstride]) : 0.0f;
#pragma unroll
                    for (int b = 0; b < 8; ++b)
                        if (c + b * FJ_WARPS < g.c) acc_elem<D>(v[b], off + b * wstride, p.reduce, p.check, a, bad);
                }
            }
    }
    part[warp][lane] = a;
    __syncthreads();
    if (warp == 0) {
        a = part[0][lane];
        for (int w = 1; w < FJ_WARPS; ++w) a = is_min ? fminf(a, part[w][lane]) : __fadd_rn(a, part[w][lane]);
    }
    emit(p, t, live && warp == 0, finish(a, p.reduce, g.k), bad);
}

template <class D>
__device__ void token_stats_ntc(const FjTokenStatsParams& p) {
    const FjTokenGeom g = p.geom;
    const u32 lane = threadIdx.x & 31;
    const u32 t = blockIdx.x * FJ_NTC_TOKENS_PER_BLOCK + (threadIdx.x >> 5);
    const bool live = t < g.tokens;
    float a = p.reduce == FJ_REDUCE_MIN ? __int_as_float(0x7f800000) : 0.0f;
    u64 bad = ~0ull;
    if (live) {
        const typename D::T* j = (const typename D::T*)p.jnd;
        const u64 base = (u64)t * g.k;
        for (u32 e = lane; e < g.k; e += 32) acc_elem<D>(D::load(j[base + e]), base + e, p.reduce, p.check, a, bad);
    }
    a = p.reduce == FJ_REDUCE_MIN ? warp_min(a) : warp_sum(a);
    emit(p, t, live && lane == 0, finish(a, p.reduce, g.k), bad);
}

#define FJ_TOKEN_STATS(NAME, D)                                                       \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK)                           \
        fj_token_stats_nchw_##NAME(const FjTokenStatsParams p) { token_stats_nchw<D>(p); } \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK)                           \
        fj_token_stats_ntc_##NAME(const FjTokenStatsParams p) { token_stats_ntc<D>(p); }
FJ_FOR_DTYPES(FJ_TOKEN_STATS)
