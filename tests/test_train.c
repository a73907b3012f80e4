/* test_train.c - the transformer language model: finite-difference check of
 * every parameter's gradient on a tiny config, a shortened training run
 * whose validation loss must fall below a stated bound, and determinism of
 * the loss curve across runs and thread counts.
 */
#define _GNU_SOURCE
#include "harness.h"

#include "llm/checkpoint.h"
#include "llm/llama.h"
#include "llm/model.h"
#include "llm/train.h"

#include "ops/kernels.h"
#include "quant/quant.h"

#include <sys/types.h>
#include <unistd.h>

static lm_config tiny(void) {
    lm_config c = {.vocab = 256, .d_model = 16, .n_layer = 2, .n_head = 4, .n_kv_head = 2,
                   .d_ff = 24, .seq_len = 8, .rope_base = 10000.0, .norm_eps = 1e-5};
    return c;
}

typedef struct {
    tnn_session *s;
    int index, checked;
    double worst;
    tnn_tensor *loss;
    const char *worst_name;
    bool lora; /* only the LoRA factors are parameters */
} fd_ctx;

static double model_loss(tnn_session *s, tnn_tensor *loss) {
    double v = NAN;
    if (tnn_compute(s) || tnn_download_to_f64_array(s, loss, &v, 1)) return NAN;
    return v;
}

/* Central differences on a few elements of one parameter. */
static int fd_param(void *p, const char *name, tnn_tensor *t) {
    fd_ctx *c = p;
    if (!strcmp(name, "rope_freqs.weight")) return 0; /* fixed, not a parameter */
    if (c->lora && !lm_is_lora_name(name)) return 0;  /* frozen */
    size_t n = (size_t)tnn_tensor_nelements(t);
    double *w = th_alloc(n), *g = th_alloc(n);
    tnn_download_to_f64_array(c->s, t, w, n);
    model_loss(c->s, c->loss);
    tnn_download_to_f64_array(c->s, tnn_grad(c->s, t), g, n);
    for (size_t k = 0; k < 3; k++) {
        size_t e = (k * 7919 + (size_t)c->index * 31) % n;
        double keep = w[e], h = 1e-2;
        w[e] = (double)(float)(keep + h);
        double hp = w[e] - keep;
        tnn_upload_from_float_array(c->s, t, w, n);
        double lp = model_loss(c->s, c->loss);
        w[e] = (double)(float)(keep - h);
        double hm = keep - w[e];
        tnn_upload_from_float_array(c->s, t, w, n);
        double lm = model_loss(c->s, c->loss);
        w[e] = keep;
        tnn_upload_from_float_array(c->s, t, w, n);
        double fd = (lp - lm) / (hp + hm);
        /* |fd - g| <= 2e-3 + 2e-2 |fd|: f32 loss rounding / h ~ 1e-5 plus O(h^2) */
        double err = fabs(fd - g[e]) / (2e-3 + 2e-2 * fabs(fd));
        if (err > c->worst) c->worst = err, c->worst_name = name;
        if (err > 1) fprintf(stderr, "%s[%zu]: analytic %.6g, finite difference %.6g\n", name, e, g[e], fd);
        c->checked++;
    }
    c->index++;
    free(w);
    free(g);
    return 0;
}

/* Uploads n random values in [lo, hi) to t, from a fixed seed. */
static void upload_uniform(tnn_session *s, tnn_tensor *t, double lo, double hi) {
    size_t n = (size_t)tnn_tensor_nelements(t);
    double *v = th_alloc(n);
    for (size_t i = 0; i < n; i++) v[i] = lo + (hi - lo) * th_uniform();
    CHECK_OK(tnn_upload_from_float_array(s, t, v, n));
    free(v);
}

/* Every parameter's gradient by finite differences: the model trained from
 * scratch, the variants a fine-tuned GGUF model brings (qwen2's q/k/v
 * biases with NeoX RoPE and an output matrix of its own; Llama 3's RoPE
 * frequency factors), and LoRA's factors on a frozen qwen2-like model. */
static void test_model_gradients(void) {
    for (int variant = 0; variant < 4; variant++) {
        lm_config cfg = tiny();
        if (variant == 1) cfg.qkv_bias = true, cfg.rope_mode = 1, cfg.untied = true;
        if (variant == 2) cfg.rope_factors = true, cfg.rope_base = 500000.0;
        if (variant == 3)
            cfg.qkv_bias = true, cfg.rope_mode = 1, cfg.lora_rank = 2, cfg.lora_alpha = 3.0;
        lm_graph g;
        /* lr 0: the optimizer runs but leaves the weights alone */
        lm_optim opt = {.lr = 0.0, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.0};
        CHECK_OK(lm_graph_build(&g, &cfg, 2, 8, true, &opt, lm_cuda()));
        CHECK_OK(lm_init_weights(&g, 7));
        th_seed(70 + (uint64_t)variant);
        for (int l = 0; l < cfg.n_layer && cfg.qkv_bias; l++) { /* biases start at 0 */
            upload_uniform(g.s, g.p.layer[l].bq, -0.5, 0.5);
            upload_uniform(g.s, g.p.layer[l].bk, -0.5, 0.5);
            upload_uniform(g.s, g.p.layer[l].bv, -0.5, 0.5);
        }
        if (cfg.rope_factors) upload_uniform(g.s, g.p.rope_freqs, 1.0, 8.0);
        for (int l = 0; l < cfg.n_layer && cfg.lora_rank; l++) /* B starts at 0: A's gradient too */
            for (int i = 0; i < LM_LORA_N; i++) upload_uniform(g.s, g.p.layer[l].lora_b[i], -0.3, 0.3);
        int64_t tok[16], tgt[16];
        for (int i = 0; i < 16; i++) tok[i] = (i * 37 + 11) % 256, tgt[i] = (i * 53 + 5) % 256;
        CHECK_OK(tnn_upload_from_int_array(g.s, g.tokens, tok, 16));
        CHECK_OK(tnn_upload_from_int_array(g.s, g.targets, tgt, 16));
        fd_ctx c = {.s = g.s, .loss = g.loss, .lora = cfg.lora_rank > 0};
        CHECK(lm_params_each(&g, fd_param, &c) == 0, "walk");
        int per_layer = 9 + (cfg.qkv_bias ? 3 : 0), params = 2 + per_layer * cfg.n_layer + cfg.untied;
        if (cfg.lora_rank) params = 2 * LM_LORA_N * cfg.n_layer;
        CHECK(c.checked == 3 * params, "variant %d: checked %d elements", variant, c.checked);
        CHECK(c.worst <= 1.0, "variant %d: whole-model gradient off by %.3g tolerances (%s)",
              variant, c.worst, c.worst_name ? c.worst_name : "-");
        lm_graph_free(&g);
    }
}

/* A corpus with structure a small model learns fast. */
static const char *write_corpus(char *path, size_t n) {
    snprintf(path, 64, "/tmp/tnn-test-corpus-%d.txt", (int)getpid());
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    static const char *words[] = {"the cat sat on the mat. ", "a dog ran in the park. ",
                                  "the sun is warm today. ", "we like to read books. "};
    unsigned x = 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        fputs(words[(x >> 16) % 4], f);
        if ((x >> 8) % 5 == 0) fputc('\n', f);
    }
    fclose(f);
    return path;
}

static lm_train_opts short_run(const char **files) {
    lm_train_opts o = lm_train_defaults();
    o.model = tiny();
    o.model.d_model = 32;
    o.model.d_ff = 64;
    o.model.seq_len = 32;
    o.batch = 8;
    o.steps = 400;
    o.warmup = 10;
    o.lr = o.optim.lr = 1e-2;
    o.print_every = 1000;
    o.eval_every = 200;
    o.eval_batches = 4;
    o.sample_len = 0;
    o.data_files = files;
    o.n_data_files = 1;
    o.out = fopen("/dev/null", "w");
    return o;
}

static void test_training_run(void) {
    char path[64];
    CHECK(write_corpus(path, 3000) != NULL, "corpus");
    const char *files[1] = {path};
    lm_train_opts o = short_run(files);
    lm_train_result a, b, c;
    CHECK_OK(tnn_set_num_threads(2));
    CHECK(lm_train(&o, &a) == 0, "training run failed");
    /* The corpus is 4 phrases in random order: an untrained model is at
     * ln 256 = 5.55 nats/byte; the text's own entropy is ~0.1. After 400
     * steps the validation loss must be below 0.5 (measured 0.16). */
    CHECK(a.first_val > 5.0, "initial validation loss %.3f", a.first_val);
    CHECK(a.last_val < 0.5, "validation loss after %d steps: %.3f (bound 0.5)", a.steps_done,
          a.last_val);
    printf("short run: validation loss %.3f -> %.3f, training loss %.3f -> %.3f\n", a.first_val,
           a.last_val, a.first_loss, a.last_loss);
    /* Same seed: the same curve, with 2 threads and with 1. */
    o.steps = 30;
    CHECK(lm_train(&o, &a) == 0, "run a");
    CHECK_OK(tnn_set_num_threads(1));
    CHECK(lm_train(&o, &b) == 0, "run b");
    CHECK_OK(tnn_set_num_threads(2));
    CHECK(lm_train(&o, &c) == 0, "run c");
    CHECK(a.last_loss == b.last_loss && a.last_val == b.last_val && a.first_loss == b.first_loss,
          "1 vs 2 threads: %.9g/%.9g vs %.9g/%.9g", a.last_loss, a.last_val, b.last_loss,
          b.last_val);
    CHECK(a.last_loss == c.last_loss && a.last_val == c.last_val, "two runs differ");

    /* Checkpoint at step 15 of 30, resume from it: the final checkpoint is
     * byte for byte the one of the uninterrupted run. */
    char full[96], mid[96], res[96], pattern[96];
    snprintf(pattern, sizeof pattern, "/tmp/tnn-test-ck-%d-{step}.gguf", (int)getpid());
    snprintf(full, sizeof full, "/tmp/tnn-test-ck-%d-30.gguf", (int)getpid());
    snprintf(mid, sizeof mid, "/tmp/tnn-test-ck-%d-15.gguf", (int)getpid());
    snprintf(res, sizeof res, "/tmp/tnn-test-ck-%d-resumed.gguf", (int)getpid());
    o.checkpoint = pattern;
    o.checkpoint_every = 15;
    CHECK(lm_train(&o, &a) == 0, "run with checkpoints");
    lm_train_opts r = o;
    r.resume = mid;
    r.checkpoint = res;
    r.checkpoint_every = 0;
    CHECK(lm_train(&r, &b) == 0, "resumed run: %s", tnn_last_error());
    CHECK(b.first_step == 16 && b.last_loss == a.last_loss, "resumed at %d, loss %.9g vs %.9g",
          b.first_step, b.last_loss, a.last_loss);
    size_t la = 0, lb = 0;
    const char *why;
    const char *fa[1] = {full}, *fb[1] = {res};
    unsigned char *da = lm_read_files(fa, 1, &la, &why), *db = lm_read_files(fb, 1, &lb, &why);
    CHECK(da && db && la == lb && memcmp(da, db, la) == 0,
          "resumed checkpoint differs from the uninterrupted one (%zu vs %zu bytes)", la, lb);
    free(da);
    free(db);
    /* A truncated checkpoint is refused with a message, not a crash. */
    FILE *f = fopen(res, "r+b");
    if (f) {
        CHECK(ftruncate(fileno(f), (off_t)(lb / 2)) == 0, "truncate");
        fclose(f);
    }
    r.resume = res;
    CHECK(lm_train(&r, &b) != 0, "a truncated checkpoint was accepted");
    unlink(full), unlink(mid), unlink(res);
    fclose(o.out);
    unlink(path);
}

/* Training on a GGUF model's tokenizer (SmolLM2's, when `make models` has
 * fetched it): the vocabulary comes from it, the loss falls, the checkpoint
 * carries the tokenizer (same ids for the same text), and the checkpoint is
 * a llama model file whose logits through lm_llama equal the training
 * graph's. */
static void test_gguf_tokenizer(void) {
    FILE *probe = fopen(TNN_MODEL_FILE, "rb");
    if (!probe) {
        printf("skipped: training with a GGUF tokenizer (%s is absent; run make models)\n",
               TNN_MODEL_FILE);
        return;
    }
    fclose(probe);
    char path[64], ck[96];
    CHECK(write_corpus(path, 3000) != NULL, "corpus");
    snprintf(ck, sizeof ck, "/tmp/tnn-test-tokck-%d.gguf", (int)getpid());
    const char *files[1] = {path};
    lm_train_opts o = short_run(files);
    o.tokenizer = TNN_MODEL_FILE;
    o.model.seq_len = 16;
    o.steps = 60;
    o.eval_every = 60;
    o.checkpoint = ck;
    lm_train_result r;
    CHECK(lm_train(&o, &r) == 0, "training with the tokenizer failed");
    CHECK(r.first_val > 9.0 && r.last_val < r.first_val - 2.0,
          "validation loss %.3f -> %.3f (ln 49152 = 10.8 at the start; want a fall of 2)",
          r.first_val, r.last_val);
    printf("GGUF tokenizer run: validation loss %.3f -> %.3f\n", r.first_val, r.last_val);

    lm_tokenizer *t0 = NULL, *t1 = NULL;
    tnn_gguf *g0 = NULL, *g1 = NULL;
    CHECK_OK(lm_tokenizer_open(TNN_MODEL_FILE, &t0, &g0));
    CHECK_OK(lm_tokenizer_open(ck, &t1, &g1));
    CHECK(t0 && t1, "the checkpoint has no tokenizer");
    if (t0 && t1) {
        const char *text = "Cats sleep 16 hours a day; naïve café — 東京!";
        int32_t a[64], b[64];
        int32_t na = lm_tokenize(t0, text, strlen(text), 0, 0, a, 64);
        int32_t nb = lm_tokenize(t1, text, strlen(text), 0, 0, b, 64);
        CHECK(na > 0 && na == nb && memcmp(a, b, sizeof(int32_t) * (size_t)na) == 0,
              "the checkpoint's tokenizer gives other ids (%d vs %d tokens)", na, nb);
    }
    lm_tokenizer_free(t0), lm_tokenizer_free(t1);
    tnn_gguf_close(g0), tnn_gguf_close(g1);

    /* the checkpoint as a model: lm_llama against the training graph */
    lm_config cfg;
    CHECK_OK(lm_checkpoint_read_config(ck, &cfg, NULL));
    lm_graph g;
    CHECK_OK(lm_graph_build(&g, &cfg, 1, cfg.seq_len, false, NULL, lm_cuda()));
    CHECK_OK(lm_checkpoint_load(ck, &g, false, LM_LOAD_ALL));
    lm_llama *m = lm_llama_load(ck, 64, TNN_F32, lm_cuda());
    CHECK(m != NULL, "the checkpoint does not load as a llama model: %s", tnn_last_error());
    if (m) {
        const int n = 11, V = cfg.vocab, T = cfg.seq_len;
        int32_t ids[16];
        int64_t tok[16] = {0};
        for (int i = 0; i < n; i++) ids[i] = tok[i] = 100 + 37 * i;
        float *lg = malloc(sizeof(float) * (size_t)V), *all = malloc(sizeof(float) * (size_t)T * V);
        CHECK_OK(lm_llama_eval(m, ids, n, lg));
        CHECK_OK(tnn_upload_from_int_array(g.s, g.tokens, tok, (size_t)T));
        CHECK_OK(tnn_compute(g.s));
        CHECK_OK(tnn_download_f32(g.s, g.logits, all, (size_t)T * V));
        double worst = 0;
        for (int v = 0; v < V; v++) {
            double e = fabs(lg[v] - all[(size_t)(n - 1) * V + v]) / (1e-4 + 1e-4 * fabs(lg[v]));
            if (e > worst) worst = e;
        }
        CHECK(worst <= 1.0, "lm_llama and the training graph differ: %.3g of the bound", worst);
        free(lg), free(all);
        lm_llama_free(m);
    }
    lm_graph_free(&g);
    fclose(o.out);
    unlink(ck);
    unlink(path);
}

/* Mixed precision (--bf16): the products on bf16 copies of the weights,
 * f32 masters. The model must learn the corpus as the f32 run does, follow
 * the f32 run's loss closely (not exactly: the products round), and give
 * the same bits with 1 and 2 threads. */
static void test_bf16_training(void) {
    char path[64];
    CHECK(write_corpus(path, 3000) != NULL, "corpus");
    const char *files[1] = {path};
    lm_train_opts o = short_run(files);
    lm_train_result f, m, m1;
    CHECK_OK(tnn_set_num_threads(2));
    CHECK(lm_train(&o, &f) == 0, "f32 run failed");
    o.optim.bf16 = true;
    CHECK(lm_train(&o, &m) == 0, "bf16 run failed");
    printf("mixed precision: validation loss %.3f -> %.3f (f32: %.3f -> %.3f), training loss "
           "%.4f (f32 %.4f)\n",
           m.first_val, m.last_val, f.first_val, f.last_val, m.last_loss, f.last_loss);
    CHECK(m.last_val < 0.5, "bf16: validation loss after %d steps: %.3f (bound 0.5)",
          m.steps_done, m.last_val);
    CHECK(fabs(m.first_loss - f.first_loss) < 0.01 * f.first_loss && m.first_loss != f.first_loss,
          "bf16 first loss %.9g vs f32 %.9g: want close, not equal", m.first_loss, f.first_loss);
    CHECK(fabs(m.last_val - f.last_val) < 0.1, "bf16 validation %.4f vs f32 %.4f", m.last_val,
          f.last_val);
    o.steps = 30;
    CHECK(lm_train(&o, &m) == 0, "bf16 run, 2 threads");
    CHECK_OK(tnn_set_num_threads(1));
    CHECK(lm_train(&o, &m1) == 0, "bf16 run, 1 thread");
    CHECK_OK(tnn_set_num_threads(2));
    CHECK(m.last_loss == m1.last_loss && m.last_val == m1.last_val,
          "bf16, 1 vs 2 threads: %.9g/%.9g vs %.9g/%.9g", m1.last_loss, m1.last_val, m.last_loss,
          m.last_val);
    /* resumed from its middle, a mixed-precision run stays one (the
     * checkpoint says so) and ends with the same loss */
    char pattern[96], mid[96], end[96];
    snprintf(pattern, sizeof pattern, "/tmp/tnn-test-bf-%d-{step}.gguf", (int)getpid());
    snprintf(mid, sizeof mid, "/tmp/tnn-test-bf-%d-15.gguf", (int)getpid());
    snprintf(end, sizeof end, "/tmp/tnn-test-bf-%d-30.gguf", (int)getpid());
    o.checkpoint = pattern;
    o.checkpoint_every = 15;
    CHECK(lm_train(&o, &m) == 0, "bf16 run with checkpoints");
    lm_train_opts r = o;
    r.resume = mid;
    r.checkpoint = NULL;
    r.optim.bf16 = false; /* the checkpoint's choice counts */
    CHECK(lm_train(&r, &m1) == 0, "resumed bf16 run");
    CHECK(m1.first_step == 16 && m1.last_loss == m.last_loss,
          "resumed bf16 run: loss %.9g vs %.9g", m1.last_loss, m.last_loss);
    unlink(mid), unlink(end);
    fclose(o.out);
    remove(path);
}

/* LoRA in mixed precision with its frozen projections held as bf16
 * (frozen_bf16, what tnn train --lora --bf16 builds) computes what the f32
 * frozen weights rounded at every step compute: the same losses and the
 * same factors, bit for bit, over 3 steps; and its arena holds no bf16
 * copies of them. */
typedef struct {
    const lm_graph *src;
    lm_graph *dst;
    tnn_tensor *list[LM_MAX_LAYERS * 30 + 8];
    int n, at;
} pair_ctx;

static int list_one(void *p, const char *name, tnn_tensor *t) {
    pair_ctx *c = p;
    c->list[c->n++] = t;
    return TNN_OK;
}

static int copy_one(void *p, const char *name, tnn_tensor *t) {
    pair_ctx *c = p;
    tnn_tensor *d = c->list[c->at++];
    size_t n = (size_t)tnn_tensor_nelements(t);
    float *v = malloc(n * sizeof *v);
    int rc = tnn_download_f32(c->src->s, t, v, n);
    if (rc == TNN_OK) rc = tnn_upload_f32(c->dst->s, d, v, n);
    free(v);
    return rc;
}

/* Three training steps of both graphs (same shapes) on the same batches:
 * loss[k][step]. */
static void three_steps(lm_graph g[2], double loss[2][3]) {
    int n = g[0].B * g[0].T, V = g[0].cfg.vocab;
    int64_t *tok = malloc((size_t)n * sizeof *tok), *tgt = malloc((size_t)n * sizeof *tgt);
    for (int step = 0; step < 3; step++)
        for (int k = 0; k < 2; k++) {
            for (int i = 0; i < n; i++) tok[i] = (i * 37 + step * 11) % V, tgt[i] = (i * 53 + step) % V;
            CHECK_OK(tnn_upload_from_int_array(g[k].s, g[k].tokens, tok, (size_t)n));
            CHECK_OK(tnn_upload_from_int_array(g[k].s, g[k].targets, tgt, (size_t)n));
            CHECK_OK(tnn_compute(g[k].s));
            CHECK_OK(tnn_download_to_f64_array(g[k].s, g[k].loss, &loss[k][step], 1));
        }
    free(tok);
    free(tgt);
}

static void test_lora_frozen_bf16(void) {
    lm_config cfg = tiny();
    cfg.d_model = 32;
    cfg.d_ff = 48;
    cfg.seq_len = 16;
    cfg.lora_rank = 4;
    cfg.lora_alpha = 8;
    lm_optim opt = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .grad_clip = 1.0,
                    .bf16 = true};
    enum { B = 2, T = 16 };
    lm_graph g[2];
    for (int k = 0; k < 2; k++) {
        lm_config c = cfg;
        c.frozen_bf16 = k == 1;
        CHECK_OK(lm_graph_build(&g[k], &c, B, T, true, &opt, false));
    }
    CHECK(tnn_tensor_dtype(g[1].p.layer[0].wq) == TNN_BF16 &&
              tnn_tensor_dtype(g[0].p.layer[0].wq) == TNN_F32 &&
              tnn_tensor_dtype(g[1].p.tok_emb) == TNN_F32,
          "frozen_bf16: the projections bf16, the embedding f32");
    CHECK_OK(lm_init_weights(&g[0], 5));
    CHECK_OK(lm_init_lora(&g[0], 6));
    pair_ctx c = {.src = &g[0], .dst = &g[1]};
    CHECK_OK(lm_params_each(&g[1], list_one, &c));
    CHECK_OK(lm_params_each(&g[0], copy_one, &c));
    double loss[2][3];
    three_steps(g, loss);
    CHECK(!memcmp(loss[0], loss[1], sizeof loss[0]),
          "frozen bf16 vs rounded each step: losses %.9g %.9g %.9g vs %.9g %.9g %.9g",
          loss[1][0], loss[1][1], loss[1][2], loss[0][0], loss[0][1], loss[0][2]);
    CHECK(loss[0][2] != loss[0][0], "the factors did not train");
    int differ = 0;
    for (int l = 0; l < cfg.n_layer; l++)
        for (int i = 0; i < LM_LORA_N; i++)
            for (int ab = 0; ab < 2; ab++) {
                tnn_tensor *t0 = ab ? g[0].p.layer[l].lora_b[i] : g[0].p.layer[l].lora_a[i];
                tnn_tensor *t1 = ab ? g[1].p.layer[l].lora_b[i] : g[1].p.layer[l].lora_a[i];
                size_t n = (size_t)tnn_tensor_nelements(t0);
                float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
                CHECK_OK(tnn_download_f32(g[0].s, t0, a, n));
                CHECK_OK(tnn_download_f32(g[1].s, t1, b, n));
                differ += memcmp(a, b, n * sizeof *a) != 0;
                free(a);
                free(b);
            }
    CHECK(differ == 0, "%d factors differ after 3 steps", differ);
    size_t a0 = tnn_session_arena_bytes(g[0].s), a1 = tnn_session_arena_bytes(g[1].s);
    CHECK(a1 < a0, "arena with bf16 frozen weights %zu, with per-step copies %zu", a1, a0);
    printf("LoRA with bf16 frozen projections: the same 3 losses and factors as rounding them "
           "each step; arena %zu -> %zu bytes\n", a0, a1);
    lm_graph_free(&g[0]);
    lm_graph_free(&g[1]);
    cfg.lora_rank = 0;
    cfg.frozen_bf16 = true;
    CHECK(lm_config_problem(&cfg) != NULL, "bf16 frozen weights without LoRA accepted");
}

/* QLoRA (frozen_gguf): the frozen embeddings and projections read in
 * place from a file of Q8_0 matrices. With the quantized products forced
 * onto the f32 GEMM (x's gradient too) it computes exactly what LoRA on
 * the dequantized weights as f32 computes: the same losses and factors, bit
 * for bit, over 3 steps, and the same checkpoint bytes (the weights
 * downloaded dequantized, the update merged). With the default kernels
 * (bf16 copies where AMX or vdpbf16ps run them, 8-bit x for few rows) the
 * losses stay close. */
typedef struct {
    tnn_gguf_writer *w;
    const lm_graph *g;
    lm_graph *twin; /* gets the dequantized values */
} qfile_ctx;

static int quantize_one(void *p, const char *name, tnn_tensor *t) {
    qfile_ctx *c = p;
    if (lm_is_lora_name(name)) return TNN_OK;
    int nd = tnn_tensor_ndim(t);
    int64_t shape[2] = {tnn_tensor_dim(t, 0), nd == 2 ? tnn_tensor_dim(t, 1) : 1};
    size_t n = (size_t)tnn_tensor_nelements(t);
    float *v = malloc(n * sizeof *v);
    int rc = tnn_download_f32(c->g->s, t, v, n);
    if (rc == TNN_OK && nd == 1) {
        rc = tnn_gguf_writer_add_tensor(c->w, name, TNN_GGML_F32, 1, shape, v, n * 4);
        free(v);
        return rc;
    }
    int64_t rb = tnn__qtype_row_bytes(TNN_GGML_Q8_0, shape[1]);
    unsigned char *q = malloc((size_t)(rb * shape[0]));
    for (int64_t r = 0; r < shape[0] && rc == TNN_OK; r++) {
        rc = tnn__quantize_row(TNN_GGML_Q8_0, v + r * shape[1], q + r * rb, shape[1]);
        if (rc == TNN_OK) rc = tnn__dequantize_row(TNN_GGML_Q8_0, q + r * rb, v + r * shape[1], shape[1]);
    }
    if (rc == TNN_OK)
        rc = tnn_gguf_writer_add_tensor(c->w, name, TNN_GGML_Q8_0, 2, shape, q,
                                        (size_t)(rb * shape[0]));
    if (rc == TNN_OK) rc = tnn_upload_f32(c->g->s, t, v, n); /* the twin holds the values */
    free(q);
    free(v);
    return rc;
}

static int copy_lora(void *p, const char *name, tnn_tensor *t) {
    if (lm_is_lora_name(name)) return copy_one(p, name, t);
    ((pair_ctx *)p)->at++;
    return TNN_OK;
}

static void test_qlora(void) {
    lm_config cfg = tiny();
    cfg.d_model = 32, cfg.d_ff = 64, cfg.seq_len = 16, cfg.lora_rank = 4, cfg.lora_alpha = 8;
    lm_optim opt = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .grad_clip = 1.0};
    enum { B = 2, T = 16 };
    char path[64], ck[2][64];
    snprintf(path, sizeof path, "/tmp/tnn-test-qlora-%d.gguf", (int)getpid());
    for (int k = 0; k < 2; k++)
        snprintf(ck[k], sizeof ck[k], "/tmp/tnn-test-qlora-ck%d-%d.gguf", k, (int)getpid());
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0: the quantized products on the f32 GEMM; 1: the defaults */
        tnn__qmm_set_rows(pass == 0 ? 0 : -1);
        tnn__qmm_set_bf16(pass == 1);
        lm_graph g[2];
        CHECK_OK(lm_graph_build(&g[0], &cfg, B, T, true, &opt, false));
        CHECK_OK(lm_init_weights(&g[0], 5));
        CHECK_OK(lm_init_lora(&g[0], 6));
        qfile_ctx qc = {.w = tnn_gguf_writer_new(), .g = &g[0]};
        CHECK_OK(lm_params_each(&g[0], quantize_one, &qc));
        CHECK_OK(tnn_gguf_writer_write(qc.w, path));
        tnn_gguf_writer_free(qc.w);
        tnn_gguf *f = tnn_gguf_open(path);
        lm_config qcfg = cfg;
        qcfg.frozen_gguf = f;
        CHECK_OK(lm_graph_build(&g[1], &qcfg, B, T, true, &opt, false));
        CHECK(tnn_tensor_dtype(g[1].p.layer[1].w_down) == TNN_GGML &&
                  tnn_tensor_dtype(g[1].p.tok_emb) == TNN_GGML &&
                  tnn_tensor_dtype(g[1].p.layer[0].attn_norm) == TNN_F32,
              "QLoRA: the matrices are the file's Q8_0 tensors, the norms f32");
        CHECK_OK(lm_checkpoint_load(path, &g[1], false, LM_LOAD_BASE)); /* the norms */
        pair_ctx c = {.src = &g[0], .dst = &g[1]};
        CHECK_OK(lm_params_each(&g[1], list_one, &c));
        CHECK_OK(lm_params_each(&g[0], copy_lora, &c));
        double loss[2][3];
        three_steps(g, loss);
        printf("QLoRA (%s): losses %.9g %.9g %.9g, LoRA on the dequantized weights %.9g %.9g "
               "%.9g\n", pass ? "default kernels" : "f32 GEMM", loss[1][0], loss[1][1],
               loss[1][2], loss[0][0], loss[0][1], loss[0][2]);
        CHECK(loss[0][2] < loss[0][0], "the factors did not train");
        for (int k = 0; k < 2; k++) CHECK_OK(lm_checkpoint_save(ck[k], &g[k], NULL, NULL));
        if (pass == 0) {
            CHECK(!memcmp(loss[0], loss[1], sizeof loss[0]), "QLoRA's losses differ");
            CHECK(th_same_file(ck[0], ck[1]), "QLoRA's merged checkpoint differs from LoRA's");
        } else {
            for (int step = 0; step < 3; step++)
                CHECK(fabs(loss[1][step] - loss[0][step]) < 2e-3 * loss[0][step],
                      "step %d: QLoRA loss %.6f vs %.6f", step, loss[1][step], loss[0][step]);
        }
        if (pass == 1) { /* a sampling graph reads the same file, and the factors shared */
            lm_graph gen;
            CHECK_OK(lm_graph_build(&gen, &qcfg, 1, T, false, NULL, false));
            CHECK_OK(lm_share_weights(&gen, &g[1]));
            int64_t tok[T];
            for (int i = 0; i < T; i++) tok[i] = (i * 37 + 11) % cfg.vocab;
            CHECK_OK(tnn_upload_from_int_array(gen.s, gen.tokens, tok, T));
            CHECK_OK(tnn_compute(gen.s));
            static float lg[T * 256];
            CHECK_OK(tnn_download_f32(gen.s, gen.logits, lg, (size_t)T * cfg.vocab));
            bool finite = true;
            for (int i = 0; i < T * cfg.vocab; i++) finite = finite && isfinite(lg[i]);
            CHECK(finite, "the sampling graph's logits");
            lm_graph_free(&gen);
        }
        lm_graph_free(&g[0]);
        lm_graph_free(&g[1]);
        tnn_gguf_close(f);
    }
    tnn__qmm_set_rows(-1);
    tnn__qmm_set_bf16(true);
    /* refusals: no LoRA, bf16 and file both, a file of other shapes */
    lm_config bad = cfg;
    bad.frozen_gguf = (const tnn_gguf *)&bad; /* not read: refused first */
    bad.lora_rank = 0;
    CHECK(lm_config_problem(&bad) != NULL, "frozen file weights without LoRA accepted");
    bad.lora_rank = 4, bad.frozen_bf16 = true;
    CHECK(lm_config_problem(&bad) != NULL, "bf16 and file frozen weights accepted");
    tnn_gguf *f = tnn_gguf_open(path);
    bad = cfg;
    bad.d_ff = 96;
    bad.frozen_gguf = f;
    lm_graph gb;
    CHECK_ERR(lm_graph_build(&gb, &bad, B, T, true, &opt, false), TNN_ERR_FORMAT,
              "ffn_down.weight of the frozen model is not (32, 96)");
    tnn_gguf_close(f);
    unlink(path);
    unlink(ck[0]);
    unlink(ck[1]);
}

int main(void) {
    test_model_gradients();
    test_training_run();
    test_bf16_training();
    test_lora_frozen_bf16();
    test_qlora();
    test_gguf_tokenizer();
    return th_finish("test_train");
}
