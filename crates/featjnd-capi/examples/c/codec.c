/* featjnd from C: the .fjq codec. For every dtype (f32, f16, bf16), both layouts, odd sizes
 * (1, 7, 17, 1025 and 5137 tokens or elements), both symbol widths and four ways to store the
 * steps, a feature is quantized with fj_quantize (steps first rounded by fj_round_steps, as the
 * file stores them), encoded with fj_encode into a buffer of fj_encode_bound bytes, described by
 * fj_decode_info, decoded with fj_decode into a fresh buffer, and the decoded reconstruction must
 * be bit for bit fj_quantize's. Then the errors a server sees: a short output buffer
 * (FJ_ERR_SPACE with the size needed), a damaged chunk and a truncated file (FJ_ERR_FORMAT,
 * naming the chunk), an output of the wrong dtype or dims.
 * Built with -std=c99 -Wall -Werror and run by tests/capi.rs against the shared and the static
 * library. Prints "codec: <n> cases, 0 mismatches" and exits 0 when every check holds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "featjnd.h"

#define CHECK(call)                                                                          \
    do {                                                                                     \
        int32_t st_ = (call);                                                                \
        if (st_ != FJ_OK) {                                                                  \
            fprintf(stderr, "%s failed with status %d: %s\n", #call, st_, fj_last_error());  \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static uint64_t rng(uint64_t* s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/* A value in [-2, 2). */
static float value(uint64_t* s) {
    return (float)((double)(rng(s) & 0xffffff) / 4194304.0 - 2.0);
}

static size_t elem_size(uint32_t dtype) {
    return dtype == FJ_F32 ? 4 : 2;
}

/* Fills n elements of dtype: f32 values, f16 bit patterns of finite normal values in about
 * [2^-6, 2^3] with a random sign, bf16 as the upper half of an f32 value. */
static void fill(void* data, uint32_t dtype, size_t n, uint64_t* s) {
    for (size_t i = 0; i < n; ++i) {
        float v = value(s);
        if (dtype == FJ_F32) {
            ((float*)data)[i] = v;
        } else if (dtype == FJ_F16) {
            uint16_t sign = (uint16_t)((rng(s) & 1) << 15);
            uint16_t e = (uint16_t)(9 + rng(s) % 9);
            ((uint16_t*)data)[i] = (uint16_t)(sign | (e << 10) | (rng(s) & 0x3ff));
        } else {
            uint32_t bits;
            memcpy(&bits, &v, 4);
            ((uint16_t*)data)[i] = (uint16_t)(bits >> 16);
        }
    }
}

static int failures = 0;

static void expect(int ok, const char* what, const char* detail) {
    if (!ok) {
        ++failures;
        fprintf(stderr, "FAILED: %s (%s)\n", what, detail);
    }
}

/* One round trip: quantize, encode, describe, decode, compare. */
static void round_trip(FjContext* ctx, uint32_t dtype, uint32_t layout, const uint64_t dims[4], uint32_t patch,
                       uint32_t bits, uint32_t step_mode, uint32_t coding, uint64_t* seed) {
    char what[256];
    snprintf(what, sizeof what, "dtype %u layout %u dims %llu,%llu,%llu,%llu patch %u bits %u mode %u coding %u",
             dtype, layout, (unsigned long long)dims[0], (unsigned long long)dims[1], (unsigned long long)dims[2],
             (unsigned long long)dims[3], patch, bits, step_mode, coding);
    const size_t n = (size_t)(dims[0] * dims[1] * dims[2] * (layout == FJ_NTC ? 1 : dims[3]));
    const size_t es = elem_size(dtype);
    void* x = malloc(n * es);
    fill(x, dtype, n, seed);
    FjFeature fx = {dtype, layout, {dims[0], dims[1], dims[2], dims[3]}, x};

    uint64_t tokens = 0;
    CHECK(fj_token_count(&fx, patch, &tokens));
    /* The steps: one per token (the tensor mode: one step, repeated for fj_quantize). */
    const uint64_t nsteps = step_mode == FJ_STEPS_TENSOR ? 1 : tokens;
    float* steps = malloc(tokens * sizeof(float));
    float* rounded = malloc(tokens * sizeof(float));
    float* stored = malloc(tokens * sizeof(float));
    for (uint64_t t = 0; t < tokens; ++t) {
        steps[t] = step_mode == FJ_STEPS_AUTO ? 0.0625f : 0.005f + 0.2f * (float)(rng(seed) % 1000) / 1000.0f;
    }
    FjEncodeOptions eo = {0};
    eo.size = sizeof eo;
    eo.bits = bits;
    eo.patch = patch;
    eo.step_mode = step_mode;
    eo.step_coding = coding;
    eo.chunk_symbols = 1000; /* several chunks for the larger features */
    eo.steps_out = stored;
    CHECK(fj_round_steps(steps, nsteps, &eo, rounded));
    for (uint64_t t = nsteps; t < tokens; ++t) rounded[t] = rounded[0];

    /* What a server computes: the symbols and reconstruction of fj_quantize. */
    void* recon = malloc(n * es);
    FjQuantizeOptions qo = {0};
    qo.size = sizeof qo;
    qo.bits = bits;
    qo.patch = patch;
    qo.recon = recon;
    FjQuantizeResult qr;
    CHECK(fj_quantize(ctx, &fx, rounded, &qo, &qr, NULL));

    /* Encode into a buffer of the bound's size. */
    uint64_t bound = 0, len = 0;
    CHECK(fj_encode_bound(&fx, &eo, &bound));
    uint8_t* file = malloc(bound);
    CHECK(fj_encode(ctx, &fx, steps, nsteps, &eo, file, bound, &len, NULL));
    expect(len > 0 && len <= bound, what, "file length within the bound");
    expect(memcmp(stored, rounded, nsteps * sizeof(float)) == 0, what, "steps_out are fj_round_steps' steps");

    /* Size the output from the header, decode, compare bit for bit. */
    FjFileInfo info = {0};
    info.size = sizeof info;
    CHECK(fj_decode_info(file, len, &info));
    expect(info.dtype == dtype && info.layout == layout && info.bits == bits && info.elements == n &&
               info.tokens == tokens && info.patch == patch && info.file_bytes == len && info.version == 3,
           what, "header");
    expect(info.step_mode == (step_mode == FJ_STEPS_AUTO ? FJ_STEPS_TENSOR : step_mode), what, "step mode");
    void* dec = malloc(n * es);
    memset(dec, 0xAB, n * es);
    FjFeature fo = {info.dtype, info.layout, {info.dims[0], info.dims[1], info.dims[2], info.dims[3]}, dec};
    CHECK(fj_decode(ctx, file, len, &fo, NULL));
    expect(memcmp(dec, recon, n * es) == 0, what, "fj_decode's reconstruction is fj_quantize's");

    /* The _async forms on a CPU context run synchronously and agree. */
    memset(dec, 0xCD, n * es);
    CHECK(fj_decode_async(ctx, file, len, &fo, NULL));
    expect(memcmp(dec, recon, n * es) == 0, what, "fj_decode_async");

    free(x); free(steps); free(rounded); free(stored); free(recon); free(file); free(dec);
}

int main(void) {
    FjContextOptions copts = {0};
    copts.size = sizeof copts;
    copts.device = -1;
    copts.num_threads = 2;
    FjContext* ctx = NULL;
    CHECK(fj_context_create(&copts, &ctx));

    /* NCHW: 1, 7, 17, 1025 and 5137 tokens or elements (N·H·W tokens of C elements). */
    static const uint64_t nchw[][4] = {{1, 1, 1, 1}, {1, 7, 1, 1}, {1, 3, 1, 7}, {1, 1, 17, 1},
                                       {1, 2, 1, 1025}, {1, 1, 1, 5137}, {2, 3, 5, 7}};
    /* NTC: N·T tokens of C elements. */
    static const uint64_t ntc[][4] = {{1, 1, 1, 0}, {1, 1, 7, 0}, {1, 7, 3, 0}, {1, 17, 5, 0},
                                      {1, 1025, 3, 0}, {1, 5137, 1, 0}, {1, 1, 5137, 0}};
    static const uint32_t dtypes[3] = {FJ_F32, FJ_F16, FJ_BF16};
    /* Step mode and coding: per token on the log grid, per token as f16, one tensor step, and
     * automatic with equal steps (stored as the tensor mode). */
    static const uint32_t modes[4][2] = {{FJ_STEPS_TOKEN, FJ_CODING_GRID}, {FJ_STEPS_TOKEN, FJ_CODING_F16},
                                         {FJ_STEPS_TENSOR, FJ_CODING_F32}, {FJ_STEPS_AUTO, FJ_CODING_GRID}};
    uint64_t seed = 7;
    int cases = 0;
    for (int d = 0; d < 3; ++d)
        for (int m = 0; m < 4; ++m)
            for (uint32_t bits = 8; bits <= 16; bits += 8) {
                for (size_t i = 0; i < sizeof nchw / sizeof nchw[0]; ++i, ++cases)
                    round_trip(ctx, dtypes[d], FJ_NCHW, nchw[i], 1, bits, modes[m][0], modes[m][1], &seed);
                for (size_t i = 0; i < sizeof ntc / sizeof ntc[0]; ++i, ++cases)
                    round_trip(ctx, dtypes[d], FJ_NTC, ntc[i], 1, bits, modes[m][0], modes[m][1], &seed);
                static const uint64_t patched[4] = {1, 3, 6, 10};
                round_trip(ctx, dtypes[d], FJ_NCHW, patched, 2, bits, modes[m][0], modes[m][1], &seed);
                ++cases;
            }

    /* The errors a server handles, on one 1025-token feature coded in 17 chunks of 192 symbols. */
    const size_t n = 3 * 1025;
    float* x = malloc(n * sizeof(float));
    fill(x, FJ_F32, n, &seed);
    float* steps = malloc(1025 * sizeof(float));
    for (int t = 0; t < 1025; ++t) steps[t] = 0.05f;
    FjFeature fx = {FJ_F32, FJ_NTC, {1, 1025, 3, 0}, x};
    FjEncodeOptions eo = {0};
    eo.size = sizeof eo;
    eo.chunk_symbols = 192;
    uint64_t len = 0, need = 0;
    /* Asking for the size: a null buffer of capacity 0. */
    int32_t st = fj_encode(ctx, &fx, steps, 1025, &eo, NULL, 0, &need, NULL);
    expect(st == FJ_ERR_SPACE && need > 0, "size query", fj_last_error());
    uint8_t* file = malloc(need);
    st = fj_encode(ctx, &fx, steps, 1025, &eo, file, need - 1, &len, NULL);
    expect(st == FJ_ERR_SPACE && len == need, "one byte short", fj_last_error());
    CHECK(fj_encode(ctx, &fx, steps, 1025, &eo, file, need, &len, NULL));
    expect(len == need, "exact size", "");
    float* out = malloc(n * sizeof(float));
    FjFeature fo = {FJ_F32, FJ_NTC, {1, 1025, 3, 0}, out};
    /* A flipped byte in the last chunk. */
    file[len - 3] ^= 0x10;
    st = fj_decode(ctx, file, len, &fo, NULL);
    printf("flipped byte -> status %d: %s\n", st, fj_last_error());
    expect(st == FJ_ERR_FORMAT && strstr(fj_last_error(), "fjq: chunk 16 of 17") != NULL, "flipped byte", fj_last_error());
    file[len - 3] ^= 0x10;
    /* A truncated file. */
    st = fj_decode(ctx, file, len - 10, &fo, NULL);
    printf("truncated file -> status %d: %s\n", st, fj_last_error());
    expect(st == FJ_ERR_FORMAT && strstr(fj_last_error(), "fjq:") != NULL, "truncated", fj_last_error());
    /* Outputs that do not match the file. */
    FjFeature wrong_dtype = {FJ_F16, FJ_NTC, {1, 1025, 3, 0}, out};
    st = fj_decode(ctx, file, len, &wrong_dtype, NULL);
    expect(st == FJ_ERR_DTYPE, "wrong dtype", fj_last_error());
    FjFeature wrong_dims = {FJ_F32, FJ_NTC, {1, 3, 1025, 0}, out};
    st = fj_decode(ctx, file, len, &wrong_dims, NULL);
    printf("wrong dims -> status %d: %s\n", st, fj_last_error());
    expect(st == FJ_ERR_SHAPE, "wrong dims", fj_last_error());
    CHECK(fj_decode(ctx, file, len, &fo, NULL));

    fj_context_destroy(ctx);
    free(x); free(steps); free(file); free(out);
    printf("codec: %d cases, %d mismatches\n", cases, failures);
    return failures == 0 ? 0 : 2;
}
