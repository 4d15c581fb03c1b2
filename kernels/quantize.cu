// Fused per-token quantize / dequantize (contract §4): symbols, reconstruction (in place allowed),
// per-token squared error, clamp count, symbol histogram, and the non-finite check, in one pass.
// Bit-identity with the CPU: inv = 1/step by one IEEE division, then exactly two f32 multiplies,
// rint (ties to even), no contraction (__fmul_rn; the module is also compiled with --fmad=false).
// NCHW: one thread per token (coalesced across neighbouring patches). NTC: one warp per token,
// 16-byte vector loads when the row is aligned, scalar otherwise.
//
// Specialised at compile time (src/cuda/compile.rs): NVRTC builds this file once per (bits, histogram)
// pair, -DFJ_Q_BITS=8|16 -DFJ_Q_HIST=0|1 (the modules of src/cuda/compile.rs), so the inner loops
// carry no run-time test of either and a kernel without a histogram reserves no shared memory for
// one. The launcher picks the module from the call; every kernel name exists in every module.
#if !defined(FJ_Q_BITS) || !defined(FJ_Q_HIST)
#error "quantize.cu is compiled per specialisation: -DFJ_Q_BITS=8|16 -DFJ_Q_HIST=0|1"
#endif
#if FJ_Q_BITS != 8 && FJ_Q_BITS != 16
#error "FJ_Q_BITS must be 8 or 16"
#endif

// Shared-memory histogram bins of this specialisation (1 unused cell without a histogram).
#define FJ_HIST_BINS (!FJ_Q_HIST ? 1 : FJ_Q_BITS == 8 ? FJ_HIST_BINS_B8 : FJ_HIST_BINS_B16)
#define FJ_QN_BATCH 8
#define FJ_QT_BATCH 4

struct QState {
    float sse;
    u32 clamped;
    u64 bad;
    u64 bad_step;  // bad_step_key of this thread's token, 0 = none (owners only)
};

// A step the CPU refuses (contract §4.2: finite, > 0, 1/step finite) or, in the chain, a j_t it
// refuses (§3: finite, > 0), as one key for the bad-step cell, which keeps the largest: bit 63 set
// for a j_t (the CPU checks every j_t before any step), then 0x7fffffff - t (tokens < 2^31, so the
// smallest token wins and a key is never 0), then the offending value's f32 bits for the message.
// The device check of the sync-free calls: no host round trip, no extra sync.
__device__ __forceinline__ u64 bad_step_key(bool is_jt, u32 t, float v) {
    return ((u64)is_jt << 63) | ((u64)(0x7fffffffu - t) << 32) | (u64)__float_as_uint(v);
}
__device__ __forceinline__ bool step_ok(float d) {
    return fj_finite(d) && d > 0.0f && fj_finite(__fdiv_rn(1.0f, d));
}

// Quantizes one value; returns the symbol (integer-valued float, never -0).
__device__ __forceinline__ float quant1(float v, float inv, float qmax, QState& st, u64 idx) {
    if (!fj_finite(v)) st.bad = idx < st.bad ? idx : st.bad;
    float r = rintf(__fmul_rn(v, inv));
    if (r > qmax || r < -qmax) {
        st.clamped += 1;
        r = fmaxf(-qmax, fminf(qmax, r));
    }
    return __fadd_rn(r, 0.0f);
}

template <u32 BITS>
__device__ __forceinline__ void hist_add(u32* sh, float q, bool live) {
    int bin;
    if (BITS == 8) bin = fj_f2i(q) + FJ_QMAX_B8;
    else bin = fabsf(q) <= (float)FJ_HIST_RANGE_B16 ? fj_f2i(q) + FJ_HIST_RANGE_B16 : FJ_HIST_BINS_B16 - 1;
    // Warp-aggregated: most symbols are near 0, so many lanes hit the same bin.
    const u32 active = __activemask();
    const u32 key = live ? (u32)bin : 0xffffffffu;
    const u32 peers = __match_any_sync(active, key);
    const int leader = __ffs(peers) - 1;
    if (live && (int)(threadIdx.x & 31) == leader) atomicAdd(&sh[bin], (u32)__popc(peers));
}

// Where a block's token steps come from: the given steps (a plain quantization), or the
// two-launch chain's scale and j_t (FjQuantizeChainParams), the owner of each token writing the
// step it used to p.steps, as fj_step_alloc would have.
struct StepSrc {
    const float* jt;  // null: read p.steps
    float scale;
    bool uniform;
};
__device__ __forceinline__ StepSrc given_steps() {
    StepSrc s = {nullptr, 0.0f, false};
    return s;
}
// The token's owner also checks the step (and the chain's j_t) into st.bad_step.
__device__ __forceinline__ float token_step(const FjQuantizeParams& p, const StepSrc& s, u32 t, bool owner, QState& st) {
    if (!s.jt) {
        const float step = ((const float*)p.steps)[t];
        if (owner && !step_ok(step)) st.bad_step = bad_step_key(false, t, step);
        return step;
    }
    // fj_step_alloc's arithmetic: one f32 multiply of the f32 scale (Jnd), or the scale (Uniform).
    const float j = s.jt[t];
    const float step = s.uniform ? s.scale : __fmul_rn(s.scale, j);
    if (owner) {
        ((float*)p.steps)[t] = step;
        if (!(fj_finite(j) && j > 0.0f)) st.bad_step = bad_step_key(true, t, j);
        else if (!step_ok(step)) st.bad_step = bad_step_key(false, t, step);
    }
    return step;
}

// One element end to end: quantize, write symbol and reconstruction, accumulate error.
template <class D, u32 BITS, bool HIST>
__device__ __forceinline__ void quant_elem(const FjQuantizeParams& p, u64 idx, float v, float inv,
                                           float step, float qmax, QState& st, u32* sh) {
    const float q = quant1(v, inv, qmax, st, idx);
    const float xh = __fmul_rn(q, step);
    if (p.symbols) {
        if (BITS == 8) ((signed char*)p.symbols)[idx] = (signed char)(int)q;
        else ((short*)p.symbols)[idx] = (short)(int)q;
    }
    if (p.recon) ((typename D::T*)p.recon)[idx] = D::store(xh);
    const float d = __fsub_rn(v, xh);
    st.sse = __fadd_rn(st.sse, __fmul_rn(d, d));
    if (HIST) hist_add<BITS>(sh, q, true);
}

__device__ __forceinline__ void hist_init(u32* sh) {
    for (u32 i = threadIdx.x; i < FJ_HIST_BINS; i += blockDim.x) sh[i] = 0;
    __syncthreads();
}

// Block epilogue: per-token error, totals, histogram flush.
template <u32 BITS, bool HIST>
__device__ __forceinline__ void finish_block(const FjQuantizeParams& p, u32* sh, bool owner, u32 t, QState st) {
    if (owner && p.token_sse) ((float*)p.token_sse)[t] = st.sse;
    report_bad((u64*)p.bad_index, st.bad);
    report_bad((u64*)p.bad_step, ~st.bad_step);  // the cell keeps the largest key
    if (p.total_sse) {
        const double s = block_sum_d(owner ? (double)st.sse : 0.0);
        if (threadIdx.x == 0) atomicAdd((double*)p.total_sse, s);
    }
    if (p.clamp_count) {
        const double c = block_sum_d((double)st.clamped);
        if (threadIdx.x == 0 && c > 0.0) atomicAdd((u64*)p.clamp_count, (u64)c);
    }
    if (HIST) {
        __syncthreads();
        const u32 nb = BITS == 8 ? (u32)FJ_HIST_BINS_B8 : (u32)FJ_HIST_BINS_B16;
        for (u32 i = threadIdx.x; i < nb; i += blockDim.x)
            if (sh[i]) atomicAdd(&((u64*)p.histogram)[i], (u64)sh[i]);
    }
}

// NCHW: a block owns 32 consecutive tokens (one per lane) and splits the channels over its warps,
// so even few, deep tokens fill the GPU; partial errors are summed in a fixed warp order.
// `blk` is the block's index within its item's grid (blockIdx.x for a single quantization).
template <class D, u32 BITS, bool HIST>
__device__ void quantize_nchw(const FjQuantizeParams& p, u32 blk, const StepSrc& src) {
    __shared__ u32 sh[FJ_HIST_BINS];
    __shared__ float part[FJ_WARPS][FJ_NCHW_TOKENS_PER_BLOCK];
    if (HIST) hist_init(sh);
    const FjTokenGeom g = p.geom;
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 t = blk * FJ_NCHW_TOKENS_PER_BLOCK + lane;
    const bool live = t < g.tokens;
    const float qmax = BITS == 8 ? (float)FJ_QMAX_B8 : (float)FJ_QMAX_B16;
    QState st = {0.0f, 0u, ~0ull, 0ull};
    if (live) {
        const typename D::T* x = (const typename D::T*)p.x;
        const float step = token_step(p, src, t, warp == 0, st);
        const float inv = __fdiv_rn(1.0f, step);
        // Offsets advance by additions: a warp's channels are FJ_WARPS planes apart, a batch of
        // them FJ_QN_BATCH times that (no 64-bit multiply per element).
        const u64 wstride = (u64)FJ_WARPS * ((u64)g.h * g.w);
        const u64 base = nchw_token_base(g, t, warp);
        // FJ_QN_BATCH channels' loads are issued before any store: x and the outputs may alias
        // (in place), so without the batch the compiler must serialise load -> store -> load.
        // The patch row's first element, advanced by an addition (one u64 fewer live across the
        // loops than base + r * w: ptxas spilled it on sm_90 before, tests/ptxas.rs).
        u64 row = base;
        for (u32 r = 0; r < g.patch; ++r, row += g.w)
            for (u32 q = 0; q < g.patch; ++q) {
                u64 off = row + q;  // element (warp's channel c, this pixel)
                for (u32 c = warp; c < g.c; c += FJ_WARPS * FJ_QN_BATCH, off += FJ_QN_BATCH * wstride) {
                    float v[FJ_QN_BATCH];
#pragma unroll
                    for (int b = 0; b < FJ_QN_BATCH; ++b)
                        v[b] = c + b * FJ_WARPS < g.c ? D::load(x[off + b * wstride]) : 0.0f;
#pragma unroll
                    for (int b = 0; b < FJ_QN_BATCH; ++b)
                        if (c + b * FJ_WARPS < g.c)
                            quant_elem<D, BITS, HIST>(p, off + b * wstride, v[b], inv, step, qmax, st, sh);
                }
            }
    }
    part[warp][lane] = st.sse;
    __syncthreads();
    if (warp == 0) {
        float e = part[0][lane];
        for (int w = 1; w < FJ_WARPS; ++w) e = __fadd_rn(e, part[w][lane]);
        st.sse = e;
    }
    finish_block<BITS, HIST>(p, sh, live && warp == 0, t, st);
}

template <class D, u32 BITS, bool HIST>
__device__ void quantize_ntc(const FjQuantizeParams& p, u32 blk, const StepSrc& src) {
    __shared__ u32 sh[FJ_HIST_BINS];
    if (HIST) hist_init(sh);
    const FjTokenGeom g = p.geom;
    const u32 lane = threadIdx.x & 31;
    const u32 t = blk * FJ_NTC_TOKENS_PER_BLOCK + (threadIdx.x >> 5);
    const bool live = t < g.tokens;
    const float qmax = BITS == 8 ? (float)FJ_QMAX_B8 : (float)FJ_QMAX_B16;
    QState st = {0.0f, 0u, ~0ull, 0ull};
    if (live) {
        const typename D::T* x = (const typename D::T*)p.x;
        const float step = token_step(p, src, t, lane == 0, st);
        const float inv = __fdiv_rn(1.0f, step);
        const u64 base = (u64)t * g.k;
        const u32 esz = sizeof(typename D::T);
        // Vector path: rows of a multiple of 4 elements with every buffer 4-element aligned.
        const bool vec = (g.k % 4 == 0) && ((p.x | p.recon) % (4 * esz) == 0) &&
                         (p.symbols % (BITS / 2) == 0);
        u32 e = 0;
        if (vec) {
            // Up to FJ_QT_BATCH 16-byte loads per lane in flight before the first store.
            for (; e < g.k; e += 128 * FJ_QT_BATCH) {
                float v[FJ_QT_BATCH][4];
#pragma unroll
                for (int b = 0; b < FJ_QT_BATCH; ++b) {
                    const u32 ee = e + b * 128 + lane * 4;
                    if (ee < g.k) load4<D>(x, base + ee, v[b]);
                }
#pragma unroll
                for (int b = 0; b < FJ_QT_BATCH; ++b) {
                    const u32 ee = e + b * 128 + lane * 4;
                    if (ee >= g.k) continue;
                    float xh[4], qs[4];
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        qs[i] = quant1(v[b][i], inv, qmax, st, base + ee + i);
                        xh[i] = __fmul_rn(qs[i], step);
                        const float d = __fsub_rn(v[b][i], xh[i]);
                        st.sse = __fadd_rn(st.sse, __fmul_rn(d, d));
                    }
                    if (p.recon) store4<D>((typename D::T*)p.recon, base + ee, xh);
                    if (p.symbols) {
                        if (BITS == 8) {
                            const u32 w = ((u32)(unsigned char)(signed char)(int)qs[0]) |
                                          ((u32)(unsigned char)(signed char)(int)qs[1] << 8) |
                                          ((u32)(unsigned char)(signed char)(int)qs[2] << 16) |
                                          ((u32)(unsigned char)(signed char)(int)qs[3] << 24);
                            *(u32*)((signed char*)p.symbols + base + ee) = w;
                        } else {
                            uint2 w;
                            w.x = (u32)(unsigned short)(short)(int)qs[0] | ((u32)(unsigned short)(short)(int)qs[1] << 16);
                            w.y = (u32)(unsigned short)(short)(int)qs[2] | ((u32)(unsigned short)(short)(int)qs[3] << 16);
                            *(uint2*)((short*)p.symbols + base + ee) = w;
                        }
                    }
                    if (HIST)
                        for (int i = 0; i < 4; ++i) hist_add<BITS>(sh, qs[i], true);
                }
            }
        } else {
            for (e = lane; e < g.k; e += 32)
                quant_elem<D, BITS, HIST>(p, base + e, D::load(x[base + e]), inv, step, qmax, st, sh);
        }
    }
    st.sse = warp_sum(st.sse);
    finish_block<BITS, HIST>(p, sh, live && lane == 0, t, st);
}

// A batch: the block finds its item by a scan of the (at most FJ_BATCH_MAX) prefix sums, the same
// for every thread of the block, then runs the single-item body, so each item's results are
// those of its own launch bit for bit.
template <class D, u32 BITS, bool HIST>
__device__ void quantize_batch(const FjQuantizeBatchParams& b) {
    const u32 i = fj_batch_item(b.block_start, b.count);
    const FjQuantizeParams& p = b.items[i];
    const u32 blk = blockIdx.x - b.block_start[i];
    if (p.geom.layout == FJ_LAYOUT_NCHW) quantize_nchw<D, BITS, HIST>(p, blk, given_steps());
    else quantize_ntc<D, BITS, HIST>(p, blk, given_steps());
}

// The chain's prologue, in every block: the first launch's partials summed in one fixed order
// (each thread a strided run, then the block reduction), the scale as fj_step_alloc computes it
// (f64, rounded once to f32), and from block 0 the chain's two token-stats cells.
__device__ __forceinline__ StepSrc chain_steps(const FjQuantizeChainParams& c) {
    __shared__ double sum_sh;
    const double* ps = (const double*)c.partials;
    const u64* pb = (const u64*)c.partials + c.nparts;
    double s = 0.0;
    u64 b = ~0ull;
    for (u32 i = threadIdx.x; i < c.nparts; i += blockDim.x) {
        s += ps[i];
        b = pb[i] < b ? pb[i] : b;
    }
    s = block_sum_d(s);
    b = block_min_u64(b);
    if (threadIdx.x == 0) {
        sum_sh = s;
        if (blockIdx.x == 0) {
            *(double*)c.sum_sq_out = s;
            *(u64*)c.bad_jnd_out = b == ~0ull ? 0ull : ~b;
        }
    }
    __syncthreads();
    StepSrc r;
    r.jt = (const float*)c.token_tol;
    r.uniform = c.strategy == FJ_STRATEGY_UNIFORM;
    r.scale = r.uniform ? fj_uniform_step(c.budget, c.beta) : fj_jnd_scale(c.budget, c.q.geom.tokens, sum_sh, c.beta);
    return r;
}

// The module's specialisation, as template arguments.
#define FJ_QSPEC FJ_Q_BITS, (FJ_Q_HIST != 0)
#define FJ_QUANTIZE(NAME, D)                                                                        \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK, FJ_QUANTIZE_MIN_BLOCKS)                                         \
        fj_quantize_nchw_##NAME(const FjQuantizeParams p) { quantize_nchw<D, FJ_QSPEC>(p, blockIdx.x, given_steps()); } \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK, FJ_QUANTIZE_MIN_BLOCKS)                                         \
        fj_quantize_ntc_##NAME(const FjQuantizeParams p) { quantize_ntc<D, FJ_QSPEC>(p, blockIdx.x, given_steps()); } \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK, FJ_QUANTIZE_MIN_BLOCKS)                                         \
        fj_quantize_batch_##NAME(const FjQuantizeBatchParams b) { quantize_batch<D, FJ_QSPEC>(b); }      \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK, FJ_QUANTIZE_MIN_BLOCKS) fj_quantize_chain_nchw_##NAME(const FjQuantizeChainParams c) { \
        quantize_nchw<D, FJ_QSPEC>(c.q, blockIdx.x, chain_steps(c));                                \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(FJ_BLOCK, FJ_QUANTIZE_MIN_BLOCKS) fj_quantize_chain_ntc_##NAME(const FjQuantizeChainParams c) { \
        quantize_ntc<D, FJ_QSPEC>(c.q, blockIdx.x, chain_steps(c));                                 \
    }
FJ_FOR_DTYPES(FJ_QUANTIZE)
