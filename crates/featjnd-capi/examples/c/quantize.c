/* featjnd from C: JND-guided step allocation and fused quantization of a feature on the CPU path.
 * Built and run by tests/capi.rs:  cc quantize.c -I include -L <dir of libfeatjnd.so> -lfeatjnd -lm
 * Usage: quantize [budget]   (default 0.01) */
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include "featjnd.h"

#define CHECK(call)                                                                          \
    do {                                                                                     \
        int32_t st_ = (call);                                                                \
        if (st_ != FJ_OK) {                                                                  \
            fprintf(stderr, "%s failed with status %d: %s\n", #call, st_, fj_last_error());  \
            return 1;                                                                        \
        }                                                                                    \
    } while (0)

/* A deterministic pseudo-random value in [0, 1). */
static float lcg(uint64_t* s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f;
}

int main(int argc, char** argv) {
    const double budget = argc > 1 ? atof(argv[1]) : 0.01;
    const uint64_t N = 2, C = 16, H = 12, W = 12;
    const size_t n = N * C * H * W;
    float* x = malloc(n * sizeof(float));
    float* j = malloc(n * sizeof(float));
    uint64_t seed = 42;
    for (size_t i = 0; i < n; ++i) {
        const size_t w = i % W, h = (i / W) % H;
        const float blob = expf(-((float)(h - 6) * (h - 6) + (float)(w - 6) * (w - 6)) / 18.0f);
        x[i] = (2.0f * lcg(&seed) - 1.0f) * (0.2f + blob);
        j[i] = 0.05f + 0.5f * fabsf(x[i]) + 0.1f * lcg(&seed);
    }

    FjContextOptions copts = {0};
    copts.size = sizeof copts;
    copts.device = -1;
    copts.num_threads = 2;
    FjContext* ctx = NULL;
    CHECK(fj_context_create(&copts, &ctx));

    FjFeature fx = {FJ_F32, FJ_NCHW, {N, C, H, W}, x};
    FjFeature fj = {FJ_F32, FJ_NCHW, {N, C, H, W}, j};
    uint64_t tokens = 0;
    CHECK(fj_token_count(&fx, 1, &tokens));
    float* jt = malloc(tokens * sizeof(float));
    float* steps = malloc(tokens * sizeof(float));
    CHECK(fj_token_tolerance(ctx, &fj, 1, FJ_MEAN, jt, tokens, NULL));
    CHECK(fj_allocate_steps(ctx, jt, tokens, budget, FJ_JND, 0, steps));

    int8_t* sym = malloc(n);
    float* rec = malloc(n * sizeof(float));
    uint64_t hist[255];
    FjQuantizeOptions qo = {0};
    qo.size = sizeof qo;
    qo.bits = 8;
    qo.symbols = sym;
    qo.recon = rec;
    qo.histogram = hist;
    FjQuantizeResult r;
    CHECK(fj_quantize(ctx, &fx, steps, &qo, &r, NULL));

    /* The reconstruction is symbol * step of the element's token (t = (n*H + h)*W + w). */
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
        const size_t w = i % W, h = (i / W) % H, s = i / (C * H * W);
        const size_t t = (s * H + h) * W + w;
        if (rec[i] != (float)sym[i] * steps[t]) ++bad;
    }
    printf("featjnd %s: %llu tokens, budget %.3g: mse %.6g, clamped %llu, %.3f bits/element, %zu mismatches\n",
           fj_version(), (unsigned long long)tokens, budget, r.mse, (unsigned long long)r.clamped,
           r.bits_per_element, bad);

    /* The serving form: each sample as its own request, quantized in one batched call with its
       statistics in a caller array, then all decoded with one read. Per item the symbols equal
       the synchronous call's. */
    FjFeature fs[2];
    FjQuantizeItem items[2];
    int8_t* bsym = malloc(n);
    const size_t per = C * H * W;
    for (int i = 0; i < 2; ++i) {
        fs[i] = (FjFeature){FJ_F32, FJ_NCHW, {1, C, H, W}, x + i * per};
        items[i] = (FjQuantizeItem){0};
        items[i].size = sizeof items[i];
        items[i].patch = 1;
        items[i].x = &fs[i];
        items[i].steps = steps + i * (tokens / 2);
        items[i].symbols = bsym + i * per;
    }
    uint64_t slots = 0;
    CHECK(fj_quantize_batch_stats_slots(8, 2, &slots));
    int64_t* stats = malloc(slots * sizeof(int64_t));
    CHECK(fj_quantize_batch_async(ctx, items, 2, 8, stats, slots, NULL));
    int32_t statuses[2] = {-1, -1};
    FjQuantizeResult br[2];
    CHECK(fj_quantize_batch_decode(ctx, items, 2, 8, stats, slots, NULL, statuses, br, NULL));
    size_t bmis = 0;
    for (size_t i = 0; i < n; ++i) bmis += bsym[i] != sym[i];
    const int batch_ok = statuses[0] == FJ_OK && statuses[1] == FJ_OK && br[0].clamped + br[1].clamped == r.clamped;
    printf("batch: 2 items %s, %zu batch mismatches\n", batch_ok ? "ok" : "FAILED", bmis);

    /* Errors come back as a status and a message, never a crash. */
    const int32_t st = fj_quantize(ctx, NULL, steps, &qo, &r, NULL);
    printf("null feature -> status %d: %s\n", st, fj_last_error());

    fj_context_destroy(ctx);
    free(x); free(j); free(jt); free(steps); free(sym); free(rec); free(bsym); free(stats);
    return (bad == 0 && st == FJ_ERR_NULL && batch_ok && bmis == 0) ? 0 : 2;
}
