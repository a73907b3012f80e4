/* bench_generate.c - LLM inference speed: prompt processing (512 tokens)
 * and greedy generation (128 tokens) of a GGUF model, tokens/s best and
 * median of 3 runs, and generation as a fraction of the bandwidth bound
 * (weight bytes per token x tokens/s / triad GB/s measured in the same run).
 * Usage: bench_generate MODEL.gguf [--cuda] [--prompts 5,16,64] [--prompts-only]
 *                       [--qmm-rows N] [--lora ADAPTER.gguf]
 * (--prompts: also prompts of those lengths, best of 3 each; llama.cpp's
 * figures for the same file: tools/llama_speed.py, with the same option;
 * --prompts-only: only those; --qmm-rows N: products with up to N rows of x
 * run the quantized matrix-vector kernels, more the GEMM, instead of the
 * crossovers built in (ops/matmul.c): for measuring them; --lora: with
 * that adapter applied at run time, as tools/llama_speed.py --lora does)
 */
#include "tinynn.h"

#include "bench_common.h"

#include "llm/llama.h"
#include "llm/model.h"
#include "ops/kernels.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The triad over 3 x 256 MiB on the threads generation runs on: the
 * streaming bandwidth those cores have now (GB/s, best of 5). */
static double triad_gbs(void) {
    bench_triad t = bench_triad_new((int64_t)64 << 20);
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double gbs = bench_triad_once(&t);
        if (gbs > best) best = gbs;
    }
    bench_triad_free(&t);
    return best;
}

/* lm_llama_eval, its error printed: false when it failed. */
static bool eval(lm_llama *m, const int32_t *tokens, int n, float *logits) {
    if (lm_llama_eval(m, tokens, n, logits) == 0) return true;
    fprintf(stderr, "%s\n", tnn_last_error());
    return false;
}

int main(int argc, char **argv) {
    const char *lens = NULL, *lora = NULL;
    bool only = false;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--cuda"))
            lm_use_cuda(true);
        else if (!strcmp(argv[i], "--prompts") && i + 1 < argc)
            lens = argv[++i];
        else if (!strcmp(argv[i], "--lora") && i + 1 < argc)
            lora = argv[++i];
        else if (!strcmp(argv[i], "--prompts-only"))
            only = true;
        else if (!strcmp(argv[i], "--qmm-rows") && i + 1 < argc)
            tnn__qmm_set_rows(atoll(argv[++i]));
        else
            argc = 0; /* usage */
    }
    if (argc < 2 || (only && !lens)) {
        fprintf(stderr, "usage: bench_generate MODEL.gguf [--cuda] [--prompts N,N,... "
                        "[--prompts-only]] [--qmm-rows N] [--lora ADAPTER.gguf]\n");
        return 2;
    }
    lm_llama *m = lm_llama_load(argv[1], 1024, TNN_F16, lm_cuda());
    if (m && lora && lm_llama_add_lora(m, lora, 1.0) != TNN_OK) {
        lm_llama_free(m);
        m = NULL;
    }
    if (!m) {
        fprintf(stderr, "%s\n", tnn_last_error());
        return 1;
    }
    const lm_llama_hparams *hp = lm_llama_hparams_of(m);
    float *lg = malloc(sizeof(float) * (size_t)hp->n_vocab);
    int32_t prompt[512];
    for (int i = 0; i < 512; i++) prompt[i] = (1000 + i) % hp->n_vocab;
    double pp[3], tg[3];
    for (int r = 0; r < (only ? 0 : 3); r++) {
        lm_llama_reset(m);
        double t0 = bench_now();
        if (!eval(m, prompt, 512, lg)) return 1;
        double t1 = bench_now();
        int tok = 504 % hp->n_vocab;
        for (int i = 0; i < 128; i++) {
            if (!eval(m, &tok, 1, lg)) return 1;
            int b = 0;
            for (int v = 1; v < hp->n_vocab; v++)
                if (lg[v] > lg[b]) b = v;
            tok = b;
        }
        pp[r] = 512 / (t1 - t0);
        tg[r] = 128 / (bench_now() - t1);
    }
    qsort(pp, 3, sizeof pp[0], bench_cmp_double);
    qsort(tg, 3, sizeof tg[0], bench_cmp_double);
    /* bytes of weights streamed per generated token */
    const tnn_gguf *g = lm_llama_gguf(m);
    int64_t bytes = 0;
    for (int64_t i = 0; i < tnn_gguf_n_tensors(g); i++) /* a checkpoint's moments aside */
        if (strncmp(tnn_gguf_tensor_name(g, i), "opt.", 4)) bytes += tnn_gguf_tensor_nbytes(g, i);
    if (only) { /* untimed: what the long runs would have warmed (buffers, pages, threads) */
        lm_llama_reset(m);
        if (!eval(m, prompt, 512, lg)) return 1;
        for (int i = 0; i < 128; i++)
            if (!eval(m, &prompt[i], 1, lg)) return 1;
    }
    for (const char *p = lens; p && *p;) { /* short prompts: tokens/s, best of 3 */
        char *end;
        long n = strtol(p, &end, 10);
        if (end == p || n < 1 || n > 512) {
            fprintf(stderr, "bench_generate: --prompts wants lengths 1..512, comma-separated\n");
            return 2;
        }
        double best = 0;
        for (int r = 0; r < 3; r++) {
            lm_llama_reset(m);
            double t0 = bench_now();
            if (!eval(m, prompt, (int)n, lg)) return 1;
            double v = n / (bench_now() - t0);
            if (v > best) best = v;
        }
        printf("prompt %ld: %.1f tokens/s\n", n, best);
        p = *end == ',' ? end + 1 : end;
    }
    if (only) {
        free(lg);
        lm_llama_free(m);
        return 0;
    }
    double triad = triad_gbs();
    printf("%s, %s, %d threads: prompt 512: %.1f / %.1f tokens/s; generation 128: %.1f / %.1f "
           "tokens/s (best / median of 3)\n",
           argv[1], lm_cuda() ? "CUDA requested" : "CPU", tnn_get_num_threads(), pp[2], pp[1], tg[2], tg[1]);
    printf("weights %.1f MB per token; triad (%d threads) %.1f GB/s; generation streams %.1f "
           "GB/s = %.2f of that bound (above 1: weights partly served from the cache)\n",
           bytes / 1e6, tnn_get_num_threads(), triad, bytes * tg[2] / 1e9,
           triad > 0 ? bytes * tg[2] / 1e9 / triad : 0);
    free(lg);
    lm_llama_free(m);
    return 0;
}
