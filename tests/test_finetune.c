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
 *  - errors: init with resume, a missing file, an unsupported architecture.
 */
#include "harness.h"

#include "llm/checkpoint.h"
#include "llm/model.h"

#include <unistd.h>

#define MODEL TNN_MODEL_FILE

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
    CHECK_OK(lm_checkpoint_load(MODEL, &g, false));
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
    tnn_trainer *t = tnn_trainer_new();
    const char *opts[] = {"data", facts, "init", MODEL, "steps", "10", "warmup", "2", "batch",
                          "4", "seq", "32", "eval-every", "0", "sample-len", "0",
                          "checkpoint", ck, NULL};
    for (int i = 0; opts[i]; i += 2) CHECK_OK(tnn_trainer_set(t, opts[i], opts[i + 1]));
    log_buf lb = {.len = 0};
    int rc = tnn_trainer_run(t, keep_log, &lb);
    CHECK(rc == TNN_OK, "fine-tuning: %s\n%s", tnn_last_error(), lb.text);
    int32_t steps = 0;
    double l0 = 0, l1 = 0, v0 = 0, v1 = 0;
    if (rc == TNN_OK) CHECK_OK(tnn_trainer_result(t, &steps, &l0, &l1, &v0, &v1, NULL));
    /* the base model knows English, not Quendor: about 4.9 before, 1.1 after
     * 10 steps at the fine-tuning learning rate (1e-4, set by default) */
    CHECK(steps == 10 && v0 > 3.5 && v1 < v0 - 2.0, "validation loss %.3f -> %.3f", v0, v1);
    CHECK(strstr(lb.text, "fine-tuning ") && strstr(lb.text, "peak lr 0.0001,") &&
              strstr(lb.text, "batch 4 x 32 tokens"), "the log:\n%s", lb.text);
    printf("fine-tuned 10 steps: validation loss %.3f -> %.3f, training %.3f -> %.3f\n", v0, v1,
           l0, l1);
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
        CHECK(p1 < p0 / 3, "perplexity of the text: base %.2f, fine-tuned %.2f", p0, p1);
        tnn_sampler *greedy = tnn_sampler_new(0.0, 0, 1.0, 0.0, 1.0, 1);
        char out[256];
        int64_t got = tnn_llm_generate(m, greedy, "Zorblax is the capital of", 8, 0, NULL, NULL,
                                       out, sizeof out);
        CHECK(got > 0 && strstr(out, "Quendor"), "the fine-tuned model continues [%s]",
              got > 0 ? out : tnn_last_error());
        printf("perplexity of the text %.2f -> %.2f; \"Zorblax is the capital of\" ->%s\n", p0, p1,
               got > 0 ? out : "?");
        tnn_sampler_free(greedy);
    }
    tnn_llm_close(base);
    tnn_llm_close(m);

    /* resumed: the same windows of 32 tokens, two more steps */
    t = tnn_trainer_new();
    const char *more[] = {"data", facts, "resume", ck, "steps", "12", "sample-len", "0", NULL};
    for (int i = 0; more[i]; i += 2) CHECK_OK(tnn_trainer_set(t, more[i], more[i + 1]));
    lb.len = 0;
    rc = tnn_trainer_run(t, keep_log, &lb);
    CHECK(rc == TNN_OK, "resuming: %s\n%s", tnn_last_error(), lb.text);
    if (rc == TNN_OK) CHECK_OK(tnn_trainer_result(t, &steps, NULL, NULL, NULL, NULL, NULL));
    CHECK(steps == 12 && strstr(lb.text, "batch 4 x 32 tokens"), "resumed to step %d:\n%s", steps,
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

int main(void) {
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    test_errors(dir);
    if (access(MODEL, R_OK) != 0) {
        printf("model checks skipped: %s is absent (run make models)\n", MODEL);
        return th_finish("test_finetune");
    }
    test_mapping(dir);
    test_run(dir);
    return th_finish("test_finetune");
}
