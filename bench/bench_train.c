/* bench_train.c - training throughput of the transformer trainer at
 * llm.c's GPT-2-shaped configs, tokens/s (best and median of the timed
 * steps) and peak memory, with the same-run ratio to llm.c's CPU trainer
 * when TNN_LLMC_BENCH names a program that runs it (built outside this
 * repository; see docs/PERFORMANCE.md); and SmolLM2-135M's shape (30
 * layers, 576 wide, 9 heads / 3 KV, FF 1536, vocabulary 49152: what
 * fine-tuning it costs a step), with PyTorch beside it on the CPU too when
 * TNN_TORCH_BENCH names tools/torch_train_speed.py's command line. Usage:
 *   bench_train [small|gpt2|smollm2|all] [--cuda] [--bf16] [--tf32] [--batch B] [--seq T]
 *               [--steps S] [--vocab-align N]
 * (--bf16: mixed precision, the products on bf16 copies of the weights, and
 * with --cuda of the activations;
 * --vocab-align: lm_optim.vocab_align, the output projection's rows rounded
 * up to a multiple of N (1: none; default: 64 on the GPU, none on the CPU);
 * --tf32: TNN_CUDA_TF32=1, the GPU's f32 products with TF32 inputs;
 * --batch/--seq/--steps replace the configs' own B, T and timed steps)
 * (--cuda: on the GPU; the peer is then PyTorch on the GPU when
 * TNN_TORCH_BENCH names tools/torch_train_speed.py's command line).
 */
#include "tinynn.h"

#include "bench_common.h"

#include "llm/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    const char *name;
    int L, C, H, V, B, T, steps;
    int KV, F;   /* KV heads and FF width; 0: H, and 8C/3 rounded up to 8 */
    double base; /* RoPE's; 0: 10000 */
} config;

/* One config: llama-style with as many parameters per block as GPT-2's
 * (SwiGLU d_ff = 8C/3 matches the 4C GELU MLP), all heads as KV heads. */
static bool g_bf16;
static int g_vocab_align;

static void run(const config *c, FILE *json, int *first) {
    int kv = c->KV ? c->KV : c->H, ff = c->F ? c->F : (8 * c->C / 3 + 7) / 8 * 8;
    double base = c->base > 0 ? c->base : 10000.0;
    lm_config m = {.vocab = c->V, .d_model = c->C, .n_layer = c->L, .n_head = c->H,
                   .n_kv_head = kv, .d_ff = ff, .seq_len = c->T, .rope_base = base,
                   .norm_eps = 1e-5};
    lm_optim opt = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0,
                    .bf16 = g_bf16, .vocab_align = g_vocab_align};
    lm_graph g;
    if (lm_graph_build(&g, &m, c->B, c->T, true, &opt, lm_cuda()) != TNN_OK) {
        fprintf(stderr, "%s: %s\n", c->name, tnn_last_error());
        return;
    }
    lm_init_weights(&g, 1);
    size_t n = (size_t)c->B * c->T;
    int64_t *tok = malloc(n * sizeof *tok), *tgt = malloc(n * sizeof *tgt);
    double times[64], loss = 0;
    uint64_t x = 7;
    for (int s = 0; s <= c->steps; s++) {
        for (size_t i = 0; i < n; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            tok[i] = (int64_t)((x >> 33) % (uint64_t)c->V);
            tgt[i] = (int64_t)((x >> 13) % (uint64_t)c->V);
        }
        double t0 = bench_now();
        tnn_upload_from_int_array(g.s, g.tokens, tok, n);
        tnn_upload_from_int_array(g.s, g.targets, tgt, n);
        if (tnn_compute(g.s) != TNN_OK) {
            fprintf(stderr, "%s: %s\n", c->name, tnn_last_error());
            break;
        }
        tnn_download_to_f64_array(g.s, g.loss, &loss, 1);
        if (s > 0) times[s - 1] = bench_now() - t0; /* step 0 warms up */
    }
    qsort(times, (size_t)c->steps, sizeof times[0], bench_cmp_double);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double best = (double)n / times[0], med = (double)n / times[c->steps / 2];
    printf("%-6s L=%d C=%d H=%d V=%d (%lld rows) B=%d T=%d (%lld params): %.1f / %.1f tokens/s "
           "(best / median of %d steps, %.0f ms/step), loss %.3f, peak RSS %.0f MiB\n",
           c->name, c->L, c->C, c->H, c->V, (long long)g.vocab_rows, c->B, c->T,
           (long long)lm_param_count(&m), best, med,
           c->steps, times[c->steps / 2] * 1e3, loss, ru.ru_maxrss / 1024.0);
    fprintf(json, "%s  {\"config\": \"%s\", \"tokens_per_s_best\": %.2f, \"tokens_per_s_median\": "
                  "%.2f, \"peak_rss_mib\": %.1f}", *first ? "" : ",\n", c->name, best, med,
            ru.ru_maxrss / 1024.0);
    *first = 0;
    /* the peers: llm.c's CPU trainer (GPT-2's shapes: all heads as KV heads),
     * PyTorch on the GPU, and on the CPU for the shapes llm.c does not take */
    bool torch = lm_cuda() || kv != c->H;
    const char *peer = getenv(torch ? "TNN_TORCH_BENCH" : "TNN_LLMC_BENCH");
    if (peer && *peer) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "%s %d %d %d %d %d %d %d", peer, c->L, c->C, c->H, c->V, c->B,
                 c->T, c->steps + 1);
        if (torch) /* the extra arguments of torch_train_speed.py */
            snprintf(cmd + strlen(cmd), sizeof cmd - strlen(cmd), " %d %d %g %s %d", kv, ff, base,
                     lm_cuda() ? "cuda" : "cpu", tnn_get_num_threads());
        printf("  %s (same run): ", torch ? "PyTorch" : "llm.c");
        fflush(stdout);
        if (system(cmd) != 0) printf("  peer: failed to run %s\n", peer);
    } else if (torch) {
        printf("  PyTorch: skipped (set TNN_TORCH_BENCH to \"python3 tools/torch_train_speed.py\")\n");
    } else {
        printf("  llm.c: skipped (set TNN_LLMC_BENCH to a program running its trainer)\n");
    }
    free(tok);
    free(tgt);
    lm_graph_free(&g);
}

/* The value after option argv[*i], a whole number in [1, max]; 0 if not. */
static int opt_int(int argc, char **argv, int *i, int max) {
    if (*i + 1 >= argc) return 0;
    char *end;
    long v = strtol(argv[++*i], &end, 10);
    return *end || v < 1 || v > max ? 0 : (int)v;
}

int main(int argc, char **argv) {
    const char *which = "small";
    int batch = 0, seq = 0, steps = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cuda")) {
            lm_use_cuda(true);
        } else if (!strcmp(argv[i], "--bf16")) {
            g_bf16 = true;
        } else if (!strcmp(argv[i], "--tf32")) {
            setenv("TNN_CUDA_TF32", "1", 1);
        } else if (!strcmp(argv[i], "--vocab-align")) {
            if (!(g_vocab_align = opt_int(argc, argv, &i, 1 << 16))) {
                fprintf(stderr, "bench_train: --vocab-align wants a whole number from 1 to %d\n",
                        1 << 16);
                return 2;
            }
        } else if (!strcmp(argv[i], "--batch") || !strcmp(argv[i], "--seq") ||
                   !strcmp(argv[i], "--steps")) {
            const char *o = argv[i];
            bool is_steps = !strcmp(o, "--steps");
            int v = opt_int(argc, argv, &i, is_steps ? 64 : 1 << 16);
            if (!v) {
                fprintf(stderr, "bench_train: %s wants a whole number from 1 to %d\n", o,
                        is_steps ? 64 : 1 << 16);
                return 2;
            }
            *(is_steps ? &steps : !strcmp(o, "--seq") ? &seq : &batch) = v;
        } else {
            which = argv[i];
        }
    }
    config cfgs[] = {
        {"small", 4, 256, 4, 8192, 8, 64, 10, 0, 0, 0.0},
        {"gpt2", 12, 768, 12, 50257, 4, 64, 4, 0, 0, 0.0},
        {"smollm2", 30, 576, 9, 49152, 4, 64, 4, 3, 1536, 100000.0},
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
        if (batch) cfgs[i].B = batch;
        if (seq) cfgs[i].T = seq;
        if (steps) cfgs[i].steps = steps;
    }
    const char *tf = getenv("TNN_CUDA_TF32");
    printf("training throughput, %s%s%s\n", lm_cuda() ? "CUDA requested" : "CPU",
           g_bf16 ? ", mixed precision (bf16 products)" : "",
           lm_cuda() && tf && !strcmp(tf, "1") ? ", TF32 products" : "");
    printf("threads: %d\n", tnn_get_num_threads());
    FILE *json = fopen(TNN_BENCH_RESULTS "/train.json", "w");
    if (!json) json = fopen("/dev/null", "w");
    fprintf(json, "[\n");
    int first = 1;
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
        if (!strcmp(which, "all") || !strcmp(which, cfgs[i].name)) run(&cfgs[i], json, &first);
    fprintf(json, "\n]\n");
    fclose(json);
    return 0;
}
