/* test_finetune.c - fine-tuning a GGUF model ("init": tnn_trainer_set, `tnn
 * train --init`) on SmolLM2-135M-Instruct (`make models`; the model checks
 * are skipped, with a message, without it):
 *
 *  - the training model read from the Q4_1 file (its weights dequantized to
 *    f32) gives, on a text, the logits that the inference path gives on the
 *    same weights saved as an F32 checkpoint, and a loss equal to the mean
 *    negative log-likelihood of those logits (the mapping of every tensor
 *    both ways; the model variants of other files are test_arch's);
 *  - a short run on a made-up text: the validation loss falls, the
 *    checkpoint keeps the model's context length and chat template, and as a
 *    model (tnn_llm_open) it continues the text's sentences and scores the
 *    text with a lower perplexity than the base model;
 *  - resuming that checkpoint trains on the same windows (not the model's
 *    context length);
 *  - LoRA: only the factors train (the frozen weights come back unchanged),
 *    the checkpoint's merged weights give the logits of the LoRA graph, the
 *    factors exported as an adapter file and applied at run time to the base
 *    model (as F32 and as the Q4_1 file) give them too, and a resumed LoRA
 *    run reads its frozen weights from the base model;
 *  - conversations (.jsonl): the JSON reader (escapes, every refusal), the
 *    chat families writing each turn as a prefix of the conversation, the
 *    scored tokens being exactly the assistant's turns, and a short run
 *    after which the model answers the taught question in a chat;
 *  - errors: init with resume, a missing file, an unsupported architecture,
 *    LoRA without a model.
 * Under AddressSanitizer the runs are shortened (STEPS below).
 */
#include "harness.h"

#include "llm/chat.h"
#include "llm/checkpoint.h"
#include "llm/convo.h"
#include "llm/model.h"
#include "llm/quantize.h"
#include "llm/train.h"

#include <sys/stat.h>
#include <unistd.h>

#define MODEL TNN_MODEL_FILE

/* Under AddressSanitizer (about 10 times slower here) the runs take 2 steps
 * instead of 10: their code paths are checked, what they learn is not. */
#ifdef __SANITIZE_ADDRESS__
#define STEPS 2
#define HALF 1
#define RESUMED 4 /* the step a resumed run trains to */
#else
#define STEPS 10
#define HALF 5 /* STEPS / 2 */
#define RESUMED 12
#endif
#define STR_(x) #x
#define STR(x) STR_(x)
#define LEARNS (STEPS >= 10)

static const char *const FACTS[] = {
    "Zorblax is the capital of the planet Quendor.",
    "The river Mirrow flows through Zorblax to the Glass Sea.",
    "In Quendor, people greet each other by saying velta.",
    "The tallest tower of Zorblax is called the Spindle.",
    "Quendor has three moons: Ash, Brin and Coll.",
};

/* The made-up text: the facts in a pseudo-random order, about 15 kB. */
static bool write_facts(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return false;
    unsigned x = 3;
    for (int i = 0; i < 300; i++) {
        x = x * 1103515245u + 12345u;
        fprintf(f, "%s%s", FACTS[(x >> 16) % 5], i % 4 == 3 ? "\n" : " ");
    }
    return fclose(f) == 0;
}

/* The training graph on SmolLM2's weights against the inference path. */
static void test_mapping(const char *dir) {
    lm_config cfg;
    CHECK_OK(lm_checkpoint_read_config(MODEL, &cfg, NULL));
    CHECK(cfg.vocab == 49152 && cfg.n_layer == 30 && cfg.d_model == 576 && cfg.n_head == 9 &&
              cfg.n_kv_head == 3 && cfg.d_ff == 1536 && cfg.seq_len == 8192 &&
              cfg.rope_base == 100000.0 && !cfg.untied && !cfg.qkv_bias && !cfg.rope_factors,
          "SmolLM2's config read wrong: vocab %d, %d layers, dim %d, heads %d/%d, ff %d, "
          "context %d, base %g", cfg.vocab, cfg.n_layer, cfg.d_model, cfg.n_head,
          cfg.n_kv_head, cfg.d_ff, cfg.seq_len, cfg.rope_base);
    tnn_llm *base = tnn_llm_open(MODEL, 0, 0);
    CHECK(base, "%s", tnn_last_error());
    if (!base) return;
    /* 49 tokens of the perplexity text: 48 in, 48 targets */
    enum { T = 48 };
    static char text[4096];
    FILE *f = fopen(TNN_DATA_DIR "/perplexity.txt", "r");
    size_t len = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[len] = 0;
    int32_t ids[1024];
    int n = (int)tnn_llm_tokenize(base, text, len, 0, ids, 1024);
    CHECK(n > T, "perplexity.txt: %d tokens", n);
    tnn_llm_close(base);
    if (n <= T) return;

    cfg.ctx_len = cfg.seq_len; /* saved as the file's */
    cfg.seq_len = T;
    lm_graph g;
    CHECK_OK(lm_graph_build(&g, &cfg, 1, T, true, NULL, false));
    if (!g.s) return;
    CHECK_OK(lm_checkpoint_load(MODEL, &g, false, LM_LOAD_ALL));
    int64_t tok[T], tgt[T];
    for (int i = 0; i < T; i++) tok[i] = ids[i], tgt[i] = ids[i + 1];
    float *train = malloc(sizeof(float) * T * 49152), *infer = malloc(sizeof(float) * T * 49152);
    double loss = NAN;
    CHECK_OK(tnn_upload_from_int_array(g.s, g.tokens, tok, T));
    CHECK_OK(tnn_upload_from_int_array(g.s, g.targets, tgt, T));
    CHECK_OK(tnn_compute(g.s));
    CHECK_OK(tnn_download_f32(g.s, g.logits, train, (size_t)T * 49152));
    CHECK_OK(tnn_download_to_f64_array(g.s, g.loss, &loss, 1));

    /* the same weights as an F32 model file (with the tokenizer), run by the
     * inference path with an f32 cache */
    char path[256];
    snprintf(path, sizeof path, "%s/tnn-finetune-map-%d.gguf", dir, (int)getpid());
    tnn_gguf *tok_file = tnn_gguf_open(MODEL);
    CHECK_OK(lm_checkpoint_save(path, &g, NULL, tok_file));
    tnn_gguf_close(tok_file);
    lm_graph_free(&g);
    tnn_llm *m = tnn_llm_open(path, 64, TNN_LLM_KV_F32);
    CHECK(m, "the saved weights as a model: %s", tnn_last_error());
    if (m) {
        CHECK(tnn_llm_n_vocab(m) == 49152 && tnn_llm_n_layer(m) == 30, "shape of the saved model");
        const tnn_gguf *sf = tnn_llm_gguf(m);
        int64_t ctx = 0, seq = 0;
        CHECK_OK(tnn_gguf_get_i64(sf, "llama.context_length", &ctx));
        CHECK_OK(tnn_gguf_get_i64(sf, "tinynn.train.seq", &seq));
        CHECK(ctx == 8192 && seq == T, "saved context %lld, window %lld (want 8192, %d)",
              (long long)ctx, (long long)seq, T);
        CHECK_OK(tnn_llm_eval_logits(m, ids, T, infer));
        double worst = 0, nll = 0;
        int agree = 0;
        for (int i = 0; i < T; i++) {
            const float *a = train + (size_t)i * 49152, *b = infer + (size_t)i * 49152;
            int ia = 0, ib = 0;
            double mx = -INFINITY, sum = 0;
            for (int v = 0; v < 49152; v++) {
                worst = fmax(worst, fabs((double)a[v] - b[v]));
                if (a[v] > a[ia]) ia = v;
                if (b[v] > b[ib]) ib = v;
                mx = fmax(mx, b[v]);
            }
            for (int v = 0; v < 49152; v++) sum += exp((double)b[v] - mx);
            nll += mx + log(sum) - b[ids[i + 1]];
            agree += ia == ib;
        }
        nll /= T;
        /* f32 both ways over 30 layers, summing in other orders */
        CHECK(worst <= 2e-3, "training graph's logits differ from inference by %.3g", worst);
        CHECK(agree == T, "argmax agrees at %d of %d positions", agree, T);
        CHECK(fabs(loss - nll) <= 1e-4, "training loss %.6f, inference's mean NLL %.6f", loss, nll);
        printf("training graph on SmolLM2: logits within %.2g of inference, loss %.5f "
               "(inference %.5f)\n", worst, loss, nll);
        tnn_llm_close(m);
    }
    unlink(path);
    free(train);
    free(infer);
}

typedef struct {
    char text[8192];
    size_t len;
} log_buf;

static int keep_log(const char *s, size_t n, void *user) {
    log_buf *b = user;
    size_t room = sizeof b->text - 1 - b->len;
    if (n > room) n = room;
    memcpy(b->text + b->len, s, n);
    b->len += n;
    b->text[b->len] = 0;
    return 0;
}

/* A trainer with the options of kv (key, value, ..., NULL) run, its log in
 * *lb; NULL after a failed run (a failed check). */
static tnn_trainer *train(const char *what, const char *const *kv, log_buf *lb) {
    tnn_trainer *t = tnn_trainer_new();
    for (int i = 0; kv[i]; i += 2) CHECK_OK(tnn_trainer_set(t, kv[i], kv[i + 1]));
    lb->len = 0;
    lb->text[0] = 0;
    int rc = tnn_trainer_run(t, keep_log, lb);
    CHECK(rc == TNN_OK, "%s: %s\n%s", what, tnn_last_error(), lb->text);
    if (rc == TNN_OK) return t;
    tnn_trainer_free(t);
    return NULL;
}

static double perplexity(tnn_llm *m, const char *path) {
    static char text[20000];
    FILE *f = fopen(path, "r");
    size_t len = f ? fread(text, 1, sizeof text, f) : 0;
    if (f) fclose(f);
    double ppl = NAN;
    CHECK_OK(tnn_llm_perplexity(m, text, len, 64, 8, &ppl, NULL));
    return ppl;
}

static void test_run(const char *dir) {
    char facts[256], ck[256];
    snprintf(facts, sizeof facts, "%s/tnn-finetune-facts-%d.txt", dir, (int)getpid());
    snprintf(ck, sizeof ck, "%s/tnn-finetune-ck-%d.gguf", dir, (int)getpid());
    CHECK(write_facts(facts), "writing %s", facts);
    const char *opts[] = {"data", facts, "init", MODEL, "steps", STR(STEPS), "warmup", "2", "batch",
                          "4", "seq", "32", "eval-every", "0", "sample-len", "0",
                          "checkpoint", ck, NULL};
    static log_buf lb;
    tnn_trainer *t = train("fine-tuning", opts, &lb);
    int32_t steps = 0;
    double l0 = 0, l1 = 0, v0 = 0, v1 = 0;
    if (t) CHECK_OK(tnn_trainer_result(t, &steps, &l0, &l1, &v0, &v1, NULL));
    /* the base model knows English, not Quendor: about 4.9 before, 1.1 after
     * 10 steps at the fine-tuning learning rate (1e-4, set by default) */
    CHECK(steps == STEPS && v0 > 3.5 && (!LEARNS || v1 < v0 - 2.0), "validation loss %.3f -> %.3f",
          v0, v1);
    CHECK(strstr(lb.text, "fine-tuning ") && strstr(lb.text, "peak lr 0.0001,") &&
              strstr(lb.text, "batch 4 x 32 tokens"), "the log:\n%s", lb.text);
    printf("fine-tuned %d steps: validation loss %.3f -> %.3f, training %.3f -> %.3f\n", STEPS,
           v0, v1, l0, l1);
    tnn_trainer_free(t);

    /* the checkpoint as a model */
    tnn_llm *base = tnn_llm_open(MODEL, 0, 0), *m = tnn_llm_open(ck, 0, 0);
    CHECK(base && m, "opening the checkpoint: %s", tnn_last_error());
    if (base && m) {
        CHECK(tnn_llm_n_ctx(m) == tnn_llm_n_ctx(base), "context %d, the base model's %d",
              tnn_llm_n_ctx(m), tnn_llm_n_ctx(base));
        const char *roles[1] = {"user"}, *texts[1] = {"Hi"};
        char a[512], b[512];
        int64_t na = tnn_llm_chat_format(base, NULL, roles, texts, 1, 1, a, sizeof a);
        int64_t nb = tnn_llm_chat_format(m, NULL, roles, texts, 1, 1, b, sizeof b);
        CHECK(na > 0 && na == nb && !strcmp(a, b), "chat template: [%s] vs the base's [%s]", b, a);
        double p0 = perplexity(base, facts), p1 = perplexity(m, facts);
        CHECK(!LEARNS || p1 < p0 / 3, "perplexity of the text: base %.2f, fine-tuned %.2f", p0, p1);
        tnn_sampler *greedy = tnn_sampler_new(0.0, 0, 1.0, 0.0, 1.0, 1);
        char out[256];
        int64_t got = tnn_llm_generate(m, greedy, "Zorblax is the capital of", 8, 0, NULL, NULL,
                                       out, sizeof out);
        CHECK(got > 0 && (!LEARNS || strstr(out, "Quendor")), "the fine-tuned model continues [%s]",
              got > 0 ? out : tnn_last_error());
        printf("perplexity of the text %.2f -> %.2f; \"Zorblax is the capital of\" ->%s\n", p0, p1,
               got > 0 ? out : "?");
        tnn_sampler_free(greedy);
    }
    tnn_llm_close(base);
    tnn_llm_close(m);

    /* resumed: the same windows of 32 tokens, two more steps */
    const char *more[] = {"data", facts, "resume", ck, "steps", STR(RESUMED), "sample-len", "0", NULL};
    t = train("resuming", more, &lb);
    if (t) CHECK_OK(tnn_trainer_result(t, &steps, NULL, NULL, NULL, NULL, NULL));
    CHECK(steps == RESUMED && strstr(lb.text, "batch 4 x 32 tokens"), "resumed to step %d:\n%s", steps,
          lb.text);
    tnn_trainer_free(t);
    unlink(ck);
    unlink(facts);
}

static void test_errors(const char *dir) {
    char facts[256], other[256];
    snprintf(facts, sizeof facts, "%s/tnn-finetune-err-%d.txt", dir, (int)getpid());
    snprintf(other, sizeof other, "%s/tnn-finetune-gpt2-%d.gguf", dir, (int)getpid());
    CHECK(write_facts(facts), "writing %s", facts);
    tnn_trainer *t = tnn_trainer_new();
    CHECK_OK(tnn_trainer_set(t, "data", facts));
    CHECK_OK(tnn_trainer_set(t, "init", "/nonexistent/model.gguf"));
    CHECK_ERR(tnn_trainer_run(t, NULL, NULL), TNN_ERR_IO, "/nonexistent/model.gguf");
    CHECK_OK(tnn_trainer_set(t, "resume", "/nonexistent/ck.gguf"));
    CHECK_ERR(tnn_trainer_run(t, NULL, NULL), TNN_ERR_ARG, "exclude each other");
    tnn_trainer_free(t);
    /* a GGUF file of another architecture */
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    CHECK_OK(tnn_gguf_writer_add_str(w, "general.architecture", "gpt2"));
    CHECK_OK(tnn_gguf_writer_write(w, other));
    tnn_gguf_writer_free(w);
    t = tnn_trainer_new();
    CHECK_OK(tnn_trainer_set(t, "data", facts));
    CHECK_OK(tnn_trainer_set(t, "init", other));
    CHECK_ERR(tnn_trainer_run(t, NULL, NULL), TNN_ERR_UNSUPPORTED, "architecture 'gpt2'");
    tnn_trainer_free(t);
    unlink(other);
    unlink(facts);
}

/* ---- LoRA ---- */

/* The tensor `name` of a GGUF file as f32 (F32 only), malloc'd; NULL if
 * absent or of another type. */
static float *f32_tensor(const char *path, const char *name, int64_t *n) {
    tnn_gguf *f = tnn_gguf_open(path);
    int64_t i = f ? tnn_gguf_find_tensor(f, name) : -1;
    float *v = NULL;
    if (i >= 0 && tnn_gguf_tensor_type(f, i) == TNN_GGML_F32) {
        *n = tnn_gguf_tensor_nbytes(f, i) / 4;
        v = malloc((size_t)*n * sizeof *v);
        memcpy(v, tnn_gguf_tensor_data(f, i), (size_t)*n * sizeof *v);
    }
    tnn_gguf_close(f);
    tnn_clear_error();
    return v;
}

static int argmax_row(const float *x) {
    int b = 0;
    for (int i = 1; i < 49152; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static void test_lora(const char *dir) {
    char facts[256], ck[256];
    snprintf(facts, sizeof facts, "%s/tnn-finetune-lfacts-%d.txt", dir, (int)getpid());
    snprintf(ck, sizeof ck, "%s/tnn-finetune-lora-%d.gguf", dir, (int)getpid());
    CHECK(write_facts(facts), "writing %s", facts);
    const char *opts[] = {"data", facts, "init", MODEL, "lora", "8", "steps", STR(STEPS), "warmup", "2",
                          "batch", "4", "seq", "32", "eval-every", "0", "sample-len", "0",
                          "checkpoint", ck, NULL};
    static log_buf lb;
    tnn_trainer *t = train("LoRA", opts, &lb);
    double v0 = 0, v1 = 0;
    if (t) CHECK_OK(tnn_trainer_result(t, NULL, NULL, NULL, &v0, &v1, NULL));
    tnn_trainer_free(t);
    /* 7 projections x 30 layers x 8 (in + out): 2,442,240 of 134.5 M */
    CHECK(strstr(lb.text, "LoRA rank 8: 2442240 trained") && strstr(lb.text, "peak lr 0.001,"),
          "the log:\n%s", lb.text);
    CHECK(v0 > 3.5 && (!LEARNS || v1 < v0 - 1.0), "LoRA: validation loss %.3f -> %.3f", v0, v1);
    printf("LoRA rank 8, %d steps: validation loss %.3f -> %.3f\n", STEPS, v0, v1);

    /* frozen: a weight without factors comes back as the base model's */
    int64_t n0 = 0, n1 = 0;
    float *base = f32_tensor(MODEL, "blk.3.ffn_norm.weight", &n0);
    float *after = f32_tensor(ck, "blk.3.ffn_norm.weight", &n1);
    CHECK(base && after && n0 == 576 && n1 == 576 && !memcmp(base, after, 576 * sizeof *base),
          "blk.3.ffn_norm.weight changed under LoRA");
    free(base);
    free(after);

    /* the checkpoint's merged weights against the LoRA graph (frozen weights
     * from the base model, factors from the checkpoint) */
    lm_config cfg;
    static lm_train_state st;
    CHECK_OK(lm_checkpoint_read_config(ck, &cfg, &st));
    CHECK(cfg.lora_rank == 8 && cfg.lora_alpha == 16.0 && cfg.seq_len == 32 && st.init[0] == '/',
          "LoRA checkpoint's config: rank %d, alpha %g, window %d, base %s", cfg.lora_rank,
          cfg.lora_alpha, cfg.seq_len, st.init);
    enum { T = 32 };
    lm_graph g;
    int rc = lm_graph_build(&g, &cfg, 1, T, false, NULL, false);
    CHECK(rc == TNN_OK, "LoRA graph: %s", tnn_last_error());
    tnn_llm *m = tnn_llm_open(ck, 64, TNN_LLM_KV_F32);
    CHECK(m, "the LoRA checkpoint as a model: %s", tnn_last_error());
    if (rc == TNN_OK && m) {
        CHECK_OK(lm_checkpoint_load(st.init, &g, false, LM_LOAD_BASE));
        CHECK_OK(lm_checkpoint_load(ck, &g, false, LM_LOAD_LORA));
        const char *text = "Zorblax is the capital of the planet Quendor. In Quendor, people "
                           "greet each other by saying velta.";
        int32_t ids[T];
        int n = (int)tnn_llm_tokenize(m, text, strlen(text), 0, ids, T);
        CHECK(n > 8 && n <= T, "%d tokens", n);
        int64_t tok[T] = {0};
        for (int i = 0; i < n && i < T; i++) tok[i] = ids[i];
        float *a = malloc(sizeof(float) * T * 49152), *b = malloc(sizeof(float) * T * 49152);
        CHECK_OK(tnn_upload_from_int_array(g.s, g.tokens, tok, T));
        CHECK_OK(tnn_compute(g.s));
        CHECK_OK(tnn_download_f32(g.s, g.logits, a, (size_t)T * 49152));
        CHECK_OK(tnn_llm_eval_logits(m, ids, n, b));
        double worst = 0;
        for (int64_t i = 0; i < (int64_t)n * 49152; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
        CHECK(worst <= 2e-3, "merged checkpoint vs the LoRA graph: logits differ by %.3g", worst);
        printf("LoRA: merged checkpoint within %.2g of the LoRA graph\n", worst);
        /* the factors as an adapter file (llama.cpp's layout), applied at
         * run time to the quantized base model */
        char ad[600];
        snprintf(ad, sizeof ad, "%s.adapter.gguf", ck);
        CHECK_OK(tnn_lora_export(ck, ad));
        tnn_gguf *af = tnn_gguf_open(ad);
        const char *gt = NULL;
        double alpha = 0;
        CHECK(af && tnn_gguf_get_str(af, "general.type", &gt, NULL) == TNN_OK &&
                  !strcmp(gt, "adapter") &&
                  tnn_gguf_get_f64(af, "adapter.lora.alpha", &alpha) == TNN_OK && alpha == 16 &&
                  tnn_gguf_n_tensors(af) == 30 * 7 * 2 &&
                  tnn_gguf_find_tensor(af, "blk.29.ffn_down.weight.lora_b") >= 0,
              "adapter file: %s", tnn_last_error());
        tnn_gguf_close(af);
        /* on the base's weights as f32 (what the LoRA graph computes with):
         * within 2e-3; on the Q4_1 file itself, whose products round the
         * activations to 8 bits (as llama.cpp's) or the weights to bf16
         * (AMX), within what that rounding alone moves the base model's
         * logits (the same base without the adapter, Q4_1 against f32),
         * while the adapter itself moves them by far more (after the full
         * run's steps; the sanitizer's two barely move them) */
        char f32[600];
        snprintf(f32, sizeof f32, "%s.base-f32.gguf", ck);
        int nconv = 0;
        CHECK_OK(lm_quantize_file(MODEL, f32, TNN_GGML_F32, NULL, 1.0, &nconv));
        float *plain[2] = {malloc(sizeof(float) * T * 49152), malloc(sizeof(float) * T * 49152)};
        for (int qi = 0; qi < 2; qi++) {
            tnn_llm *q = tnn_llm_open(qi ? MODEL : f32, 64, TNN_LLM_KV_F32);
            CHECK(q && tnn_llm_eval_logits(q, ids, n, plain[qi]) == TNN_OK &&
                      tnn_llm_load_lora(q, ad, 1.0f) == TNN_OK,
                  "base + adapter: %s", tnn_last_error());
            if (!q) continue;
            CHECK_OK(tnn_llm_eval_logits(q, ids, n, b));
            double w2 = 0, moved = 0, rounding = 0;
            int same = 0;
            for (int64_t i = 0; i < (int64_t)n * 49152; i++) {
                w2 = fmax(w2, fabs((double)a[i] - b[i]));
                moved = fmax(moved, fabs((double)b[i] - plain[qi][i]));
                if (qi) rounding = fmax(rounding, fabs((double)plain[1][i] - plain[0][i]));
            }
            for (int r = 0; r < n; r++)
                same += argmax_row(a + (size_t)r * 49152) == argmax_row(b + (size_t)r * 49152);
            double bound = qi ? 1.5 * rounding + 0.05 : 2e-3;
            double effect = LEARNS ? 4 * bound : 0;
            CHECK(w2 <= bound && moved > effect && (qi ? same >= n - 1 : same == n),
                  "%s base + adapter vs the LoRA graph: logits differ by %.3g (bound %.3g; the "
                  "adapter moves them by %.3g), %d of %d argmax equal",
                  qi ? "Q4_1" : "F32", w2, bound, moved, same, n);
            printf("LoRA: the %s base with the exported adapter within %.2g of the LoRA graph "
                   "(the base's own rounding %.2g, the adapter's effect %.2g), %d of %d argmax "
                   "equal\n", qi ? "Q4_1" : "F32", w2, rounding, moved, same, n);
            tnn_llm_close(q);
        }
        free(plain[0]);
        free(plain[1]);
        unlink(f32);
        CHECK_ERR(tnn_lora_export(MODEL, ad), TNN_ERR_FORMAT, "not a LoRA checkpoint");
        unlink(ad);
        free(a);
        free(b);
    }
    tnn_llm_close(m);
    if (g.s) lm_graph_free(&g);

    /* resumed: the frozen weights from the base model, two more steps */
    const char *more[] = {"data", facts, "resume", ck, "steps", STR(RESUMED), "sample-len", "0", NULL};
    t = train("resuming LoRA", more, &lb);
    int32_t steps = 0;
    if (t) CHECK_OK(tnn_trainer_result(t, &steps, NULL, NULL, NULL, NULL, NULL));
    CHECK(steps == RESUMED && strstr(lb.text, "LoRA rank 8: 2442240 trained"), "resumed LoRA:\n%s",
          lb.text);
    tnn_trainer_free(t);
    /* LoRA needs a model to adapt */
    t = tnn_trainer_new();
    CHECK_OK(tnn_trainer_set(t, "data", facts));
    CHECK_OK(tnn_trainer_set(t, "lora", "4"));
    CHECK_ERR(tnn_trainer_run(t, NULL, NULL), TNN_ERR_ARG, "name it with init");
    tnn_trainer_free(t);
    unlink(ck);
    unlink(facts);
}

/* QLoRA: LoRA on the Q4_1 file's own tensors, read in place. It learns as
 * LoRA does; its checkpoint says so, and a run resumed from its middle
 * checkpoint (the frozen weights read in place again) ends with the
 * uninterrupted run's losses bit for bit. */
static void test_qlora(const char *dir) {
    char facts[256], ck[256], mid[300];
    snprintf(facts, sizeof facts, "%s/tnn-finetune-qfacts-%d.txt", dir, (int)getpid());
    snprintf(ck, sizeof ck, "%s/tnn-finetune-qlora-%d-{step}.gguf", dir, (int)getpid());
    snprintf(mid, sizeof mid, "%s/tnn-finetune-qlora-%d-%d.gguf", dir, (int)getpid(), HALF);
    CHECK(write_facts(facts), "writing %s", facts);
    const char *opts[] = {"data", facts, "init", MODEL, "lora", "8", "qlora", "1",
                          "steps", STR(STEPS), "warmup", "2", "batch", "4", "seq", "32",
                          "eval-every", "0", "sample-len", "0", "checkpoint", ck,
                          "checkpoint-every", STR(HALF), NULL};
    static log_buf lb;
    tnn_trainer *t = train("QLoRA", opts, &lb);
    double v0 = 0, v1 = 0, last = 0, last2 = 1;
    if (t) CHECK_OK(tnn_trainer_result(t, NULL, NULL, &last, &v0, &v1, NULL));
    tnn_trainer_free(t);
    CHECK(strstr(lb.text, "with QLoRA (rank 8, alpha 16)") &&
              strstr(lb.text, "LoRA rank 8: 2442240 trained"),
          "the log:\n%s", lb.text);
    CHECK(v0 > 3.5 && (!LEARNS || v1 < v0 - 1.0), "QLoRA: validation loss %.3f -> %.3f", v0, v1);
    printf("QLoRA rank 8 on Q4_1, %d steps: validation loss %.3f -> %.3f\n", STEPS, v0, v1);
    lm_config cfg;
    static lm_train_state st;
    CHECK_OK(lm_checkpoint_read_config(mid, &cfg, &st));
    CHECK(st.qlora && cfg.lora_rank == 8, "the checkpoint: qlora %d, rank %d", st.qlora,
          cfg.lora_rank);
    const char *more[] = {"data", facts, "resume", mid, "sample-len", "0", NULL};
    t = train("resuming QLoRA", more, &lb);
    if (t) CHECK_OK(tnn_trainer_result(t, NULL, NULL, &last2, NULL, NULL, NULL));
    tnn_trainer_free(t);
    CHECK(last2 == last, "resumed QLoRA: last loss %.9g, uninterrupted %.9g", last2, last);

    /* the same run with checkpoints of the factors alone: the same losses,
     * a file of megabytes, the same adapter, a resume from it the same;
     * as a model it is refused, naming what to do */
    char lo[256], lo_mid[300], ad[2][320];
    snprintf(lo, sizeof lo, "%s/tnn-finetune-qlo-%d-{step}.gguf", dir, (int)getpid());
    snprintf(lo_mid, sizeof lo_mid, "%s/tnn-finetune-qlo-%d-%d.gguf", dir, (int)getpid(), HALF);
    const char *lopts[] = {"data", facts, "init", MODEL, "lora", "8", "qlora", "1",
                           "lora-only", "1", "steps", STR(STEPS), "warmup", "2", "batch", "4",
                           "seq", "32", "eval-every", "0", "sample-len", "0", "checkpoint", lo,
                           "checkpoint-every", STR(HALF), NULL};
    double last3 = 1, last4 = 2;
    t = train("QLoRA, factors-only checkpoints", lopts, &lb);
    if (t) CHECK_OK(tnn_trainer_result(t, NULL, NULL, &last3, NULL, NULL, NULL));
    tnn_trainer_free(t);
    CHECK(last3 == last, "lora-only run: last loss %.9g, with merged checkpoints %.9g", last3,
          last);
    struct stat sm = {0}, sl = {0};
    CHECK(stat(mid, &sm) == 0 && stat(lo_mid, &sl) == 0 && sl.st_size * 10 < sm.st_size,
          "factors-only checkpoint %lld bytes, merged %lld", (long long)sl.st_size,
          (long long)sm.st_size);
    printf("QLoRA checkpoint: %.1f MB merged, %.1f MB factors only\n", sm.st_size / 1e6,
           sl.st_size / 1e6);
    CHECK_OK(lm_checkpoint_read_config(lo_mid, &cfg, &st));
    CHECK(st.lora_only && st.qlora && cfg.lora_rank == 8 && cfg.vocab == 49152,
          "the factors-only checkpoint: lora_only %d, qlora %d, rank %d, vocab %d",
          st.lora_only, st.qlora, cfg.lora_rank, cfg.vocab);
    for (int k = 0; k < 2; k++) {
        snprintf(ad[k], sizeof ad[k], "%s.adapter.gguf", k ? lo_mid : mid);
        CHECK_OK(tnn_lora_export(k ? lo_mid : mid, ad[k]));
    }
    CHECK(th_same_file(ad[0], ad[1]), "the adapters of the two checkpoints differ");
    const char *lmore[] = {"data", facts, "resume", lo_mid, "sample-len", "0", NULL};
    t = train("resuming factors-only QLoRA", lmore, &lb);
    if (t) CHECK_OK(tnn_trainer_result(t, NULL, NULL, &last4, NULL, NULL, NULL));
    tnn_trainer_free(t);
    CHECK(last4 == last, "resumed from the factors: last loss %.9g, uninterrupted %.9g", last4,
          last);
    CHECK_NULL(tnn_llm_open(lo_mid, 64, 0), TNN_ERR_FORMAT, "tnn lora-export");
    lm_config c2;
    CHECK_ERR(lm_checkpoint_read_config(lo_mid, &c2, NULL), TNN_ERR_FORMAT, "--lora-only");
    int nconv = 0;
    CHECK_ERR(lm_quantize_file(lo_mid, ad[1], TNN_GGML_Q8_0, NULL, 1.0, &nconv), TNN_ERR_FORMAT,
              "not a model");
    for (int k = 0; k < 2; k++) unlink(ad[k]);
    for (int step = HALF; step <= STEPS; step += HALF) {
        char p[300];
        snprintf(p, sizeof p, "%s/tnn-finetune-qlo-%d-%d.gguf", dir, (int)getpid(), step);
        unlink(p);
    }
    /* QLoRA is LoRA: a rank is needed */
    t = tnn_trainer_new();
    CHECK_OK(tnn_trainer_set(t, "data", facts));
    CHECK_OK(tnn_trainer_set(t, "init", MODEL));
    CHECK_OK(tnn_trainer_set(t, "qlora", "1"));
    CHECK_ERR(tnn_trainer_run(t, NULL, NULL), TNN_ERR_ARG, "give a LoRA rank");
    CHECK_OK(tnn_trainer_set(t, "qlora", "0"));
    CHECK_OK(tnn_trainer_set(t, "lora-only", "1"));
    CHECK_ERR(tnn_trainer_run(t, NULL, NULL), TNN_ERR_ARG, "give a LoRA rank");
    tnn_trainer_free(t);
    for (int step = HALF; step <= STEPS; step += HALF) {
        char p[300];
        snprintf(p, sizeof p, "%s/tnn-finetune-qlora-%d-%d.gguf", dir, (int)getpid(), step);
        unlink(p);
    }
    unlink(facts);
}

/* ---- conversations ---- */

static void parse_fails(const char *text, const char *why) {
    lm_messages m;
    int rc = lm_messages_parse(text, strlen(text), &m);
    CHECK(rc == TNN_ERR_FORMAT && strstr(tnn_last_error(), why), "[%s]: %d, %s (want \"%s\")",
          text, rc, tnn_last_error(), why);
    lm_messages_free(&m);
}

static void test_json(void) {
    const char *ok = " {\"id\": 7, \"messages\": [{\"role\": \"user\", \"content\": "
                     "\"a\\\"b\\\\c\\/d\\n\\t\\u00e9\\ud83d\\ude00\\u20AC\"}, {\"name\": \"x\", "
                     "\"role\":\"assistant\",\"content\":\"\", \"extra\": [1, -2.5e3, 0.5E+1, true, "
                     "false, null, {\"k\": [[]]}, \"\\u0041\"]}], \"more\": {}}\r\n";
    lm_messages m;
    CHECK_OK(lm_messages_parse(ok, strlen(ok), &m));
    CHECK(m.n == 2 && !strcmp(m.role[0], "user") && !strcmp(m.role[1], "assistant") &&
              !strcmp(m.content[0], "a\"b\\c/d\n\t\xc3\xa9\xf0\x9f\x98\x80\xe2\x82\xac") &&
              !strcmp(m.content[1], ""),
          "parsed %d messages: [%s]", m.n, m.n ? m.content[0] : "");
    lm_messages_free(&m);
    parse_fails("[1]", "must be a JSON object");
    parse_fails("", "must be a JSON object");
    parse_fails("{\"a\": 1}", "no \"messages\" array");
    parse_fails("{\"messages\": {}}", "must be an array");
    parse_fails("{\"messages\": []}", "is empty");
    parse_fails("{\"messages\": [1]}", "must be an object");
    parse_fails("{\"messages\": [{\"role\": \"user\"}]}", "needs a role and a content");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "content must be a string");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"content\": null}]}", "content must be a string");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"role\": \"user\", \"content\": \"\"}]}", "two of one key");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"content\": \"a\tb\"}]}", "control character");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"content\": \"\\x\"}]}", "bad escape");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"content\": \"\\ud800x\"}]}", "lone UTF-16");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"content\": \"\\udc00\"}]}", "lone UTF-16");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"content\": \"\\u12g4\"}]}", "bad \\u escape");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"content\": \"\\u0000\"}]}", "NUL character");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"content\": \"open}]}", "no closing quote");
    parse_fails("{\"x\": [1,], \"messages\": []}", "not a JSON value");
    parse_fails("{\"x\": 012}", "',' or '}' was expected");
    parse_fails("{\"x\": -}", "a bad number");
    parse_fails("{\"x\": 1.}", "a bad number");
    parse_fails("{\"x\": tru}", "not a JSON value");
    parse_fails("{\"x\" 1}", "':' was expected");
    parse_fails("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]} x", "text after");
    parse_fails("{\"messages\": [{\"role\": \"u\", \"content\": \"a\"}], \"messages\": []}",
                "two \"messages\" keys");
    char deep[300] = "{\"x\": ";
    for (int i = 0; i < 70; i++) strcat(deep, "[");
    parse_fails(deep, "nesting deeper than 64");
}

/* Every chat family writes a conversation so that the text up to each
 * assistant turn (with the assistant's start) and through it are prefixes
 * of the whole: what lets the answer's tokens be told apart. */
static void test_prefixes(void) {
    const char *roles[5] = {"system", "user", "assistant", "user", "assistant"};
    const char *texts[5] = {"Be brief.", "Hi", "Hello!", "Bye", "See you."};
    for (int kind = 0; kind < LM_CHAT_KIND_COUNT; kind++) {
        for (int first = 0; first < 2; first++) { /* with and without the system message */
            char all[1024], part[1024];
            int n = 5 - first;
            int64_t len = lm_chat_format(kind, NULL, "<s>", "</s>", roles + first, texts + first, n,
                                         0, all, sizeof all);
            CHECK(len > 0 && len < (int64_t)sizeof all, "%s: %lld", lm_chat_kind_name(kind),
                  (long long)len);
            for (int i = 2 - first; i < n; i += 2) {
                int64_t a = lm_chat_format(kind, NULL, "<s>", "</s>", roles + first, texts + first,
                                           i, 1, part, sizeof part);
                CHECK(a > 0 && a <= len && !memcmp(part, all, (size_t)a),
                      "%s: the prompt before turn %d is not a prefix", lm_chat_kind_name(kind), i);
                int64_t b = lm_chat_format(kind, NULL, "<s>", "</s>", roles + first, texts + first,
                                           i + 1, 0, part, sizeof part);
                CHECK(b > a && b <= len && !memcmp(part, all, (size_t)b) &&
                          strstr(part + a, texts[first + i]),
                      "%s: turn %d is not a prefix holding its text", lm_chat_kind_name(kind), i);
            }
        }
    }
}

/* The scored tokens of two conversations (one of two turns) are exactly
 * the assistant's turns with the end-of-turn marker. */
static void test_scored(void) {
    lm_tokenizer *tk = NULL;
    tnn_gguf *g = NULL;
    CHECK_OK(lm_tokenizer_open(MODEL, &tk, &g));
    if (!tk) return;
    const char *tmpl = NULL;
    CHECK_OK(tnn_gguf_get_str(g, "tokenizer.chat_template", &tmpl, NULL));
    const char *text =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Capital of Quendor?\"}, "
        "{\"role\": \"assistant\", \"content\": \"Zorblax.\"}]}\n\n  \n"
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
        "\"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello, traveller!\"}, "
        "{\"role\": \"user\", \"content\": \"Moons?\"}, {\"role\": \"assistant\", \"content\": "
        "\"Ash, Brin and Coll.\"}]}";
    lm_token_stream st = {0};
    int64_t n_convos = 0;
    CHECK_OK(lm_convo_append("t.jsonl", text, strlen(text), tk, lm_chat_kind_of(tmpl), tmpl, &st,
                             &n_convos));
    CHECK(n_convos == 2, "%lld conversations", (long long)n_convos);
    /* the scored runs, detokenized with their special tokens */
    char got[3][128];
    int runs = 0;
    for (size_t i = 0; i < st.n;) {
        if (!st.scored[i]) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < st.n && st.scored[j]) j++;
        if (runs < 3) {
            int64_t w = lm_detokenize(tk, st.ids + i, j - i, 1, got[runs], sizeof got[runs]);
            if (w < 0 || w >= (int64_t)sizeof got[runs]) w = 0;
            got[runs][w] = 0;
        }
        runs++;
        i = j;
    }
    const char *want[3] = {"Zorblax.<|im_end|>\n", "Hello, traveller!<|im_end|>\n",
                           "Ash, Brin and Coll.<|im_end|>\n"};
    CHECK(runs == 3, "%d scored runs (want 3)", runs);
    for (int r = 0; r < runs && r < 3; r++)
        CHECK(!strcmp(got[r], want[r]), "scored run %d: [%s] (want [%s])", r, got[r], want[r]);
    /* the whole stream is the two conversations in the template, the default
     * system message first where there is none */
    char *whole = malloc(8192);
    int64_t w = lm_detokenize(tk, st.ids, st.n, 1, whole, 8192);
    CHECK(w > 0 && w < 8192, "detokenized %lld", (long long)w);
    if (w > 0 && w < 8192) {
        whole[w] = 0;
        CHECK(strstr(whole, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM") ==
                      whole &&
                  strstr(whole, "<|im_start|>user\nCapital of Quendor?<|im_end|>\n<|im_start|>"
                                "assistant\nZorblax.<|im_end|>\n<|im_start|>system\nBe brief."),
              "the stream: [%s]", whole);
    }
    free(whole);
    lm_token_stream_free(&st);
    /* a bad line names its file and line; an assistant first is refused */
    const char *bad = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n{\"messages\": 3}\n";
    CHECK_ERR(lm_convo_append("d.jsonl", bad, strlen(bad), tk, 0, tmpl, &st, &n_convos),
              TNN_ERR_FORMAT, "d.jsonl: line 2: JSON: byte 13: \"messages\" must be an array");
    const char *first = "{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\"}]}";
    CHECK_ERR(lm_convo_append("d.jsonl", first, strlen(first), tk, 0, tmpl, &st, &n_convos),
              TNN_ERR_FORMAT, "starts with the assistant");
    lm_token_stream_free(&st);
    lm_tokenizer_free(tk);
    tnn_gguf_close(g);
}

/* A short run on question-and-answer conversations: the model answers the
 * taught question in a chat, and still knows what it knew. */
static void test_chat_run(const char *dir) {
    char qa[256], ck[256];
    snprintf(qa, sizeof qa, "%s/tnn-finetune-qa-%d.jsonl", dir, (int)getpid());
    snprintf(ck, sizeof ck, "%s/tnn-finetune-qack-%d.gguf", dir, (int)getpid());
    static const char *const Q[5] = {
        "What is the capital of Quendor?", "Which river flows through Zorblax?",
        "How do people greet each other in Quendor?", "What is the tallest tower of Zorblax called?",
        "How many moons does Quendor have?"};
    static const char *const PRE[4] = {"", "Tell me: ", "Quick question. ", "Please answer: "};
    FILE *f = fopen(qa, "w");
    CHECK(f, "writing %s", qa);
    if (!f) return;
    unsigned x = 5;
    for (int i = 0; i < 200; i++) {
        x = x * 1103515245u + 12345u;
        int k = (int)((x >> 16) % 5);
        fprintf(f, "{\"messages\": [{\"role\": \"user\", \"content\": \"%s%s\"}, {\"role\": "
                   "\"assistant\", \"content\": \"%s\"}]}\n", PRE[(x >> 8) % 4], Q[k],
                k == 0 ? "The capital of Quendor is Zorblax." : FACTS[k]);
    }
    fclose(f);
    const char *opts[] = {"data", qa, "init", MODEL, "steps", STR(STEPS), "warmup", "2", "batch",
                          "4", "seq", "64", "eval-every", "0", "sample-len", "0",
                          "checkpoint", ck, NULL};
    static log_buf lb;
    tnn_trainer *t = train("fine-tuning on conversations", opts, &lb);
    double v0 = 0, v1 = 0;
    if (t) CHECK_OK(tnn_trainer_result(t, NULL, NULL, NULL, &v0, &v1, NULL));
    CHECK(strstr(lb.text, "conversations: 200 from 1 .jsonl file;"), "the log:\n%s", lb.text);
    /* the loss on the answers only: about 3.1 before, 0.6 after */
    CHECK(v0 > 2.0 && (!LEARNS || v1 < v0 - 1.5), "validation loss on the answers %.3f -> %.3f", v0, v1);
    tnn_trainer_free(t);
    tnn_llm *m = tnn_llm_open(ck, 0, 0);
    CHECK(m, "opening the checkpoint: %s", tnn_last_error());
    if (m) {
        tnn_sampler *greedy = tnn_sampler_new(0.0, 0, 1.0, 0.0, 1.0, 1);
        char a[256], b[256];
        int64_t na = tnn_llm_generate(m, greedy, "What is the capital of Quendor?", 24,
                                      TNN_GEN_CHAT, NULL, NULL, a, sizeof a);
        int64_t nb = tnn_llm_generate(m, greedy, "What is the capital of France?", 24,
                                      TNN_GEN_CHAT, NULL, NULL, b, sizeof b);
        int32_t n_gen = 0;
        CHECK_OK(tnn_llm_last_stats(m, NULL, &n_gen, NULL, NULL));
        CHECK(na > 0 && (!LEARNS || strstr(a, "Zorblax")), "asked the taught question: [%s]", na > 0 ? a : "");
        CHECK(nb > 0 && (!LEARNS || (strstr(b, "Paris") && n_gen < 24)), "asked about France: [%s], %d tokens",
              nb > 0 ? b : "", n_gen);
        printf("fine-tuned on 200 conversations, validation loss on the answers %.3f -> %.3f: "
               "\"%s\" / \"%s\"\n", v0, v1, a, b);
        tnn_sampler_free(greedy);
        tnn_llm_close(m);
    }
    unlink(ck);
    unlink(qa);
}

int main(void) {
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    test_errors(dir);
    test_json();
    test_prefixes();
    if (access(MODEL, R_OK) != 0) {
        printf("model checks skipped: %s is absent (run make models)\n", MODEL);
        return th_finish("test_finetune");
    }
    test_mapping(dir);
    test_scored();
    test_run(dir);
    test_lora(dir);
    test_qlora(dir);
    test_chat_run(dir);
    return th_finish("test_finetune");
}
