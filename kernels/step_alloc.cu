// Per-token steps under a noise budget (contract §3), reading sum_t j_t^2 from device memory so the
// allocation -> quantize chain needs no host round-trip. The scale is computed in f64 and rounded
// once to f32, exactly as the CPU path does; step_t = scale * j_{pi(t)} is one f32 multiply.

extern "C" __global__ void __launch_bounds__(FJ_BLOCK) fj_step_alloc(const FjStepAllocParams p) {
    const u32 t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.tokens) return;
    float* steps = (float*)p.steps;
    if (p.strategy == FJ_STRATEGY_UNIFORM) {
        steps[t] = (float)(sqrt(12.0 * p.budget) * p.beta);
        return;
    }
    const double sum_sq = *(const double*)p.sum_sq;
    const float scale = (float)(sqrt(12.0 * p.budget * (double)p.tokens / sum_sq) * p.beta);
    const u32 src = p.strategy == FJ_STRATEGY_PERMUTED ? ((const u32*)p.perm)[t] : t;
    steps[t] = __fmul_rn(scale, ((const float*)p.token_tol)[src]);
}
