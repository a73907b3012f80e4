/* test_parity.c - PyTorch parity of the transformer: the golden file written once by
 * tools/torch_reference.py (tests/data/parity_tiny.bin) gives logits, loss, every parameter
 * gradient, 5 AdamW losses and the parameters after them; the same model here must match.
 */
#include "harness.h"

#include "llm/model.h"

#ifndef TNN_DATA_DIR
#define TNN_DATA_DIR "tests/data"
#endif

/* The config, batch and optimizer of tools/torch_reference.py (see its header). */
enum { VOCAB = 256, DM = 64, NL = 2, NH = 4, NKV = 2, DFF = 172, T = 32, B = 2, N = B * T };
enum { N_PARAMS = 2 + 9 * NL, N_STEPS = 5 };
static const double LR = 1e-3, BETA1 = 0.9, BETA2 = 0.95, ADAM_EPS = 1e-8, WD = 0.1, CLIP = 1.0;

/* Tolerances, each a small factor above the errors measured against torch 2.15.0 (CPU,
 * f32) on x86-64 (AVX-512 machine), 1 and 2 threads; measured values in parentheses:
 *   logits:  max |err| / max |logit| (11.7)                    <= 3e-6  (6.9e-7)
 *   loss:    |err| / loss (8.476)                               <= 1e-6  (0; 1 ulp is 1.1e-7)
 *   grads:   per tensor max |err| / max |grad|, worst tensor    <= 1e-5  (1.8e-6, blk.1.attn_q)
 *   losses of the 5 AdamW steps: |err| / loss                   <= 2e-6  (4.2e-7)
 *   params after the 5 steps, per tensor max |err| / max |update|, update = final - initial
 *   (about 5 lr = 5e-3; weight decay alone moves a weight by 2.5e-4, 5% of that):
 *     elements whose initial gradient is >= 1e-3 of the tensor's max |grad|
 *                                                                <= 2e-3  (4.6e-4)
 *     the others (about 3%)                                      <= 0.1   (1.8e-2)
 *   The second group is looser because Adam normalises the step: for a gradient near 0
 *   (the worst has |g| = 1.6e-7, 1e-6 of its tensor's max, at the f32 rounding level of the
 *   gradient itself) m / sqrt(v) depends on rounding, and so does the update. */
static const double TOL_LOGITS = 3e-6, TOL_LOSS = 1e-6, TOL_GRAD = 1e-5, TOL_STEP_LOSS = 2e-6,
                    TOL_PARAMS = 2e-3, TOL_PARAMS_SMALL_GRAD = 0.1, SMALL_GRAD = 1e-3;

static lm_config parity_config(void) {
    lm_config c = {.vocab = VOCAB, .d_model = DM, .n_layer = NL, .n_head = NH, .n_kv_head = NKV,
                   .d_ff = DFF, .seq_len = T, .rope_base = 10000.0, .norm_eps = 1e-5};
    return c;
}

/* murmur3's fmix32 of i + 0x9E3779B9 (p+1), mod 2^32. */
static uint32_t mix32(uint32_t i, uint32_t p) {
    uint32_t x = i + 0x9E3779B9u * (p + 1u);
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

static void make_batch(int64_t *tok, int64_t *tgt) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            tok[b * T + t] = mix32((uint32_t)t, 1000u + (uint32_t)b) % VOCAB;
            tgt[b * T + t] = mix32((uint32_t)t + 1u, 1000u + (uint32_t)b) % VOCAB;
        }
}

/* ------------------------------------------------------------------------ */
/* The golden file                                                          */
/* ------------------------------------------------------------------------ */

typedef struct {
    int32_t nelem[N_PARAMS], tokens[N], targets[N];
    int64_t total; /* sum of nelem */
    float *logits, loss, *grads, losses[N_STEPS], *params;
} golden;

static unsigned char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n > 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            }
            *len = (size_t)n;
        }
    }
    fclose(f);
    return buf;
}

typedef struct {
    const unsigned char *p;
    size_t left;
    bool ok;
} reader;

static void take(reader *r, void *dst, size_t n) {
    if (!r->ok || n > r->left) {
        r->ok = false;
        return;
    }
    memcpy(dst, r->p, n);
    r->p += n;
    r->left -= n;
}

static float *take_f32(reader *r, int64_t n) {
    float *a = malloc((size_t)n * sizeof *a);
    if (!a) {
        r->ok = false;
        return NULL;
    }
    take(r, a, (size_t)n * sizeof *a);
    return a;
}

/* Reads the file (little-endian, as written by the script; this test assumes a
 * little-endian host). Returns false (with checks failed) if it is missing or wrong. */
static bool load_golden(const char *path, golden *gd) {
    size_t len = 0;
    unsigned char *buf = read_all(path, &len);
    CHECK(buf != NULL, "golden file %s is missing or unreadable (it is committed; "
                       "tools/torch_reference.py writes it)", path);
    if (!buf) return false;
    reader r = {.p = buf, .left = len, .ok = true};
    char magic[8];
    int32_t h[12];
    take(&r, magic, 8);
    take(&r, h, sizeof h);
    const int32_t want[12] = {1, VOCAB, DM, NL, NH, NKV, DFF, T, B, N_PARAMS, N_STEPS, 1};
    bool hdr = r.ok && memcmp(magic, "TNNPAR01", 8) == 0 && memcmp(h, want, sizeof h) == 0;
    CHECK(hdr, "golden file %s: wrong magic or header (config)", path);
    if (hdr) {
        take(&r, gd->nelem, sizeof gd->nelem);
        take(&r, gd->tokens, sizeof gd->tokens);
        take(&r, gd->targets, sizeof gd->targets);
        gd->total = 0;
        for (int i = 0; i < N_PARAMS && r.ok; i++) gd->total += gd->nelem[i];
        gd->logits = take_f32(&r, (int64_t)N * VOCAB);
        take(&r, &gd->loss, sizeof gd->loss);
        gd->grads = take_f32(&r, gd->total);
        take(&r, gd->losses, sizeof gd->losses);
        gd->params = take_f32(&r, gd->total);
        CHECK(r.ok && r.left == 0, "golden file %s: truncated or too long (%zu bytes)", path,
              len);
        hdr = r.ok && r.left == 0;
    }
    free(buf);
    return hdr;
}

/* ------------------------------------------------------------------------ */
/* The model                                                                */
/* ------------------------------------------------------------------------ */

typedef struct {
    tnn_session *s;
    int index;
    int64_t offset;
    const golden *gd;
    float *buf; /* room for the largest parameter */
    /* comparison results */
    double worst, worst_small; /* worst_small: params, elements with a small gradient */
    const char *worst_name, *worst_small_name;
    char worst_buf[64], worst_small_buf[64];
    float *initial; /* the initial values of all parameters, concatenated (mode 0 fills it) */
    int mode; /* 0 upload the initial weights, 1 compare gradients, 2 compare params */
    int64_t n_small; /* params: elements in the small-gradient group */
} walk_ctx;

static float initial_value(int p, const char *name, int64_t i) {
    double s = (double)(mix32((uint32_t)i, (uint32_t)p) >> 8) / 8388608.0 - 1.0;
    if (strstr(name, "norm")) return (float)(1.0 + 0.125 * s);
    if (strncmp(name, "token_embd", 10) == 0) return (float)(0.5 * s);
    if (strstr(name, "ffn_down")) return (float)(0.125 * s);
    return (float)(0.25 * s);
}

static int walk(void *p, const char *name, tnn_tensor *t) {
    walk_ctx *c = p;
    int64_t n = tnn_tensor_nelements(t);
    if (c->index >= N_PARAMS || n != c->gd->nelem[c->index]) {
        CHECK(0, "parameter %d (%s): %lld elements, golden file says %d", c->index, name,
              (long long)n, c->index < N_PARAMS ? c->gd->nelem[c->index] : -1);
        return TNN_ERR_SHAPE;
    }
    int rc = TNN_OK;
    double err = 0.0;
    if (c->mode == 0) {
        float *w = c->initial + c->offset;
        for (int64_t i = 0; i < n; i++) w[i] = initial_value(c->index, name, i);
        rc = tnn_upload_f32(c->s, t, w, (size_t)n);
    } else if (c->mode == 1) {
        /* max |err| / max |grad| over this tensor */
        rc = tnn_download_f32(c->s, tnn_grad(c->s, t), c->buf, (size_t)n);
        const float *ref = c->gd->grads + c->offset;
        double emax = 0.0, rmax = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double e = fabs((double)c->buf[i] - ref[i]);
            emax = e > emax || isnan(e) ? e : emax;
            rmax = fmax(rmax, fabs((double)ref[i]));
        }
        err = rmax > 0 ? emax / rmax : emax;
    } else {
        /* max |err| / max |final - initial| over this tensor, apart from the elements
         * whose initial gradient is small */
        rc = tnn_download_f32(c->s, t, c->buf, (size_t)n);
        const float *ref = c->gd->params + c->offset, *p0 = c->initial + c->offset;
        const float *g0 = c->gd->grads + c->offset;
        double emax = 0.0, esmall = 0.0, umax = 0.0, gmax = 0.0;
        for (int64_t i = 0; i < n; i++) {
            umax = fmax(umax, fabs((double)ref[i] - p0[i]));
            gmax = fmax(gmax, fabs((double)g0[i]));
        }
        for (int64_t i = 0; i < n; i++) {
            double e = fabs((double)c->buf[i] - ref[i]);
            if (isnan(e)) e = INFINITY;
            if (fabs((double)g0[i]) >= SMALL_GRAD * gmax)
                emax = fmax(emax, e);
            else
                esmall = fmax(esmall, e), c->n_small++;
        }
        err = umax > 0 ? emax / umax : emax;
        esmall = umax > 0 ? esmall / umax : esmall;
        if (esmall > c->worst_small) {
            c->worst_small = esmall;
            snprintf(c->worst_small_buf, sizeof c->worst_small_buf, "%s", name);
            c->worst_small_name = c->worst_small_buf;
        }
    }
    if (c->mode && (err > c->worst || isnan(err))) {
        c->worst = isnan(err) ? INFINITY : err;
        snprintf(c->worst_buf, sizeof c->worst_buf, "%s", name);
        c->worst_name = c->worst_buf;
    }
    c->offset += n;
    c->index++;
    return rc;
}

static int walk_params(lm_graph *g, walk_ctx *c, int mode) {
    c->s = g->s;
    c->mode = mode;
    c->index = 0;
    c->offset = 0;
    c->worst = c->worst_small = 0.0;
    c->worst_name = c->worst_small_name = "-";
    c->n_small = 0;
    return lm_params_each(g, walk, c);
}

static bool setup(lm_graph *g, const lm_optim *opt, walk_ctx *c, const int64_t *tok,
                  const int64_t *tgt) {
    lm_config cfg = parity_config();
    int rc = lm_graph_build(g, &cfg, B, T, true, opt, lm_cuda());
    CHECK(rc == TNN_OK, "lm_graph_build: %s", tnn_status_name(rc));
    if (rc) return false;
    CHECK_OK(walk_params(g, c, 0));
    CHECK_OK(tnn_upload_from_int_array(g->s, g->tokens, tok, N));
    CHECK_OK(tnn_upload_from_int_array(g->s, g->targets, tgt, N));
    return true;
}

/* Forward and backward at the initial weights (an lr 0 optimizer leaves them alone):
 * logits, loss and every gradient against the golden file. */
static void test_forward_backward(const golden *gd, walk_ctx *c, const int64_t *tok,
                                  const int64_t *tgt) {
    lm_optim opt = {.lr = 0.0, .beta1 = BETA1, .beta2 = BETA2, .eps = ADAM_EPS,
                    .weight_decay = WD, .grad_clip = CLIP, .keep_logits = true};
    lm_graph g;
    if (!setup(&g, &opt, c, tok, tgt)) return;
    CHECK_OK(tnn_compute(g.s));

    float *logits = malloc((size_t)N * VOCAB * sizeof *logits);
    CHECK(logits != NULL, "memory");
    if (!logits) return;
    CHECK_OK(tnn_download_f32(g.s, g.logits, logits, (size_t)N * VOCAB));
    double emax = 0.0, lmax = 0.0;
    for (int64_t i = 0; i < (int64_t)N * VOCAB; i++) {
        double e = fabs((double)logits[i] - gd->logits[i]);
        emax = e > emax || isnan(e) ? e : emax;
        lmax = fmax(lmax, fabs((double)gd->logits[i]));
    }
    double logit_err = emax / lmax;
    printf("logits: max |err| %.3g, max |logit| %.3g, relative %.3g (tolerance %.1g)\n", emax,
           lmax, logit_err, TOL_LOGITS);
    CHECK(logit_err <= TOL_LOGITS, "logits off by %.3g of their scale", logit_err);
    free(logits);

    float loss = NAN;
    CHECK_OK(tnn_download_f32(g.s, g.loss, &loss, 1));
    double loss_err = fabs((double)loss - gd->loss) / fabs((double)gd->loss);
    printf("loss: %.8f vs torch %.8f, relative %.3g (tolerance %.1g)\n", loss, gd->loss,
           loss_err, TOL_LOSS);
    CHECK(loss_err <= TOL_LOSS, "loss %.8f vs %.8f", loss, gd->loss);

    CHECK_OK(walk_params(&g, c, 1));
    CHECK(c->index == N_PARAMS, "walked %d parameters", c->index);
    printf("gradients: worst max |err| / max |grad| %.3g in %s (tolerance %.1g)\n", c->worst,
           c->worst_name, TOL_GRAD);
    CHECK(c->worst <= TOL_GRAD, "gradient of %s off by %.3g of its scale", c->worst_name,
          c->worst);
    lm_graph_free(&g);
}

/* Five AdamW steps with clipping and decoupled weight decay (none on the gains); with
 * vocab_align 96, the output projection padded to 288 rows (zero rows, outside the loss). */
static void test_adamw_steps(const golden *gd, walk_ctx *c, const int64_t *tok,
                             const int64_t *tgt, int vocab_align) {
    lm_optim opt = {.lr = LR, .beta1 = BETA1, .beta2 = BETA2, .eps = ADAM_EPS,
                    .weight_decay = WD, .grad_clip = CLIP, .vocab_align = vocab_align};
    lm_graph g;
    if (!setup(&g, &opt, c, tok, tgt)) return;
    int64_t rows = vocab_align > 1 ? (VOCAB + vocab_align - 1) / vocab_align * vocab_align : VOCAB;
    CHECK(g.vocab_rows == rows && tnn_tensor_dim(g.logits, 1) == rows,
          "vocab_align %d: %lld rows, logits of %lld", vocab_align, (long long)g.vocab_rows,
          (long long)tnn_tensor_dim(g.logits, 1));
    if (vocab_align > 1) printf("output projection padded to %lld rows\n", (long long)rows);
    double worst = 0.0;
    for (int k = 0; k < N_STEPS; k++) {
        CHECK_OK(tnn_set_lr(g.s, LR)); /* a constant schedule, as a training loop sets it */
        CHECK_OK(tnn_compute(g.s));
        float loss = NAN;
        CHECK_OK(tnn_download_f32(g.s, g.loss, &loss, 1));
        double e = fabs((double)loss - gd->losses[k]) / fabs((double)gd->losses[k]);
        printf("step %d: loss %.8f vs torch %.8f, relative %.3g, grad norm %.4f\n", k + 1, loss,
               gd->losses[k], e, tnn_grad_norm(g.s));
        worst = e > worst || isnan(e) ? e : worst;
    }
    CHECK(tnn_optimizer_steps(g.s) == N_STEPS && tnn_optimizer_skipped(g.s) == 0,
          "steps %lld, skipped %lld", (long long)tnn_optimizer_steps(g.s),
          (long long)tnn_optimizer_skipped(g.s));
    printf("AdamW losses: worst relative error %.3g (tolerance %.1g)\n", worst, TOL_STEP_LOSS);
    CHECK(worst <= TOL_STEP_LOSS, "AdamW losses off by %.3g", worst);

    CHECK_OK(walk_params(&g, c, 2));
    printf("parameters after %d steps: worst max |err| / max |update| %.3g in %s "
           "(tolerance %.1g); %lld elements with a small gradient: %.3g in %s (tolerance %.1g)\n",
           N_STEPS, c->worst, c->worst_name, TOL_PARAMS, (long long)c->n_small, c->worst_small,
           c->worst_small_name, TOL_PARAMS_SMALL_GRAD);
    CHECK(c->worst <= TOL_PARAMS, "parameter %s off by %.3g of its update", c->worst_name,
          c->worst);
    CHECK(c->worst_small <= TOL_PARAMS_SMALL_GRAD && c->n_small < gd->total / 10,
          "parameter %s (small gradients) off by %.3g of its update; %lld such elements",
          c->worst_small_name, c->worst_small, (long long)c->n_small);
    lm_graph_free(&g);
}

/* Mixed precision (lm_optim.bf16: bf16 copies of the weights, and on a GPU of the
 * activations, in every product): the five AdamW losses follow PyTorch's f32 run to the
 * rounding of the products (measured 3.7e-4 on the CPU, 8.2e-4 in the CUDA emulator, which
 * rounds the activations too), and the first loss is not the f32 one (which is exact); with
 * the output projection padded (to 288 rows), as a GPU pads GPT-2's vocabulary. */
static void test_bf16_steps(const golden *gd, walk_ctx *c, const int64_t *tok,
                            const int64_t *tgt) {
    lm_optim opt = {.lr = LR, .beta1 = BETA1, .beta2 = BETA2, .eps = ADAM_EPS,
                    .weight_decay = WD, .grad_clip = CLIP, .bf16 = true, .vocab_align = 96};
    lm_graph g;
    if (!setup(&g, &opt, c, tok, tgt)) return;
    double worst = 0.0, first = 0.0;
    for (int k = 0; k < N_STEPS; k++) {
        CHECK_OK(tnn_compute(g.s));
        float loss = NAN;
        CHECK_OK(tnn_download_f32(g.s, g.loss, &loss, 1));
        double e = fabs((double)loss - gd->losses[k]) / fabs((double)gd->losses[k]);
        worst = e > worst || isnan(e) ? e : worst;
        if (k == 0) first = e;
    }
    printf("mixed precision (%s activations): AdamW losses within %.3g of PyTorch's f32 "
           "(tolerance 5e-3), first step %.3g\n", g.bf16_acts ? "bf16" : "f32", worst, first);
    CHECK(worst <= 5e-3 && first > 0.0, "mixed precision: losses off by %.3g (first step %.3g)",
          worst, first);
    lm_graph_free(&g);
}

int main(int argc, char **argv) {
    TH_USE_CUDA("test_parity");
    const char *path = argc > 1 ? argv[1] : TNN_DATA_DIR "/parity_tiny.bin";
    golden gd = {0};
    if (load_golden(path, &gd)) {
        int64_t tok[N], tgt[N];
        make_batch(tok, tgt);
        bool same = true;
        for (int i = 0; i < N; i++) same &= tok[i] == gd.tokens[i] && tgt[i] == gd.targets[i];
        CHECK(same, "the regenerated batch differs from the golden file's");
        int32_t most = 0;
        for (int i = 0; i < N_PARAMS; i++) most = gd.nelem[i] > most ? gd.nelem[i] : most;
        walk_ctx c = {.gd = &gd, .buf = malloc((size_t)most * sizeof(float)),
                      .initial = malloc((size_t)gd.total * sizeof(float))};
        CHECK(c.buf && c.initial, "memory");
        if (c.buf && c.initial) {
            for (int threads = 1; threads <= 2; threads++) {
                printf("-- %d thread%s\n", threads, threads > 1 ? "s" : "");
                CHECK_OK(tnn_set_num_threads(threads));
                test_forward_backward(&gd, &c, tok, tgt);
                test_adamw_steps(&gd, &c, tok, tgt, 0);
                test_adamw_steps(&gd, &c, tok, tgt, 96);
                test_bf16_steps(&gd, &c, tok, tgt);
            }
        }
        free(c.buf);
        free(c.initial);
    }
    free(gd.logits);
    free(gd.grads);
    free(gd.params);
    return th_finish("test_parity");
}
