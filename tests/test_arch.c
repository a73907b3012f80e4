/* test_arch.c - the model variants that real llama-family files come in,
 * checked against llama.cpp on tiny random-weight models: qwen2 (Q/K/V
 * biases, NeoX RoPE, separate output matrix, as Qwen2.5), llama with
 * rope_freqs and a large RoPE base (as Llama 3.x), and llama with tied
 * embeddings and a single kv head (multi-query).
 *
 * The models are written here with tinynn's GGUF writer from a fixed RNG, so
 * no binary model is committed; tools/arch_reference.py runs this program
 * with --write DIR and feeds the same files to llama.cpp (llama-cpp-python)
 * once, writing tests/data/llama_arch.txt: per model, the prompt's token
 * ids, the top-10 logits after it and 8 greedy tokens with their margins.
 * The test compares top-10 logits within 0.02 and the greedy tokens wherever
 * llama.cpp's top-2 margin is above 0.05 (its KV cache is f16, as ours is
 * here). The training model read from the same file (what fine-tuning
 * starts from: lm_checkpoint_read_config and lm_checkpoint_load) must give
 * every prompt position the logits of the inference path with an f32 cache,
 * and its last row the same top-10 against llama.cpp; saved as a checkpoint
 * (the architecture's keys, biases, output matrix, RoPE factors, tokenizer)
 * it must read back as the same variant and give the original file's
 * logits bit for bit. A LoRA adapter in llama.cpp's layout (f16 and f32
 * factors, a projection without one, the embeddings, the output matrix where
 * the model has one), applied at run time, must give the
 * logits of the model with it merged into the weights, prompt and decoding;
 * adapters that do not fit the model are refused and leave it as it was.
 * Merged by tnn quantize --lora (lm_quantize_file), the f32 file must give
 * the logits of the adapter at run time and the Q8_0 file those of the f32
 * merge quantized, bit for bit; adapters that do not fit write nothing.
 * LoRA training on the model quantized to Q8_0 with its matrices read in
 * place (QLoRA) must follow LoRA on the dequantized weights.
 */
#include "harness.h"

#include "llm/checkpoint.h"
#include "llm/llama.h"
#include "llm/model.h"
#include "llm/quantize.h"
#include "ops/kernels.h"
#include "quant/quant.h"

#include <unistd.h>

typedef struct {
    const char *name, *arch;
    uint64_t seed;
    int n_kv;
    bool bias, rope_freqs, tied;
    double base;
} variant;

static const variant variants[] = {
    {"qwen2", "qwen2", 11, 2, true, false, false, 1000000.0},
    {"llama3", "llama", 12, 2, false, true, false, 500000.0},
    {"llama_tied_mqa", "llama", 13, 1, false, false, true, 10000.0},
};
#define N_VARIANTS ((int)(sizeof variants / sizeof variants[0]))

enum { VOCAB = 259, D = 64, LAYERS = 2, HEADS = 4, FF = 128 };

static int add_f32(tnn_gguf_writer *w, const char *name, int ndim, int64_t d0, int64_t d1,
                   double scale, double offset) {
    int64_t n = ndim == 1 ? d0 : d0 * d1, shape[2] = {d0, d1};
    float *v = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) v[i] = (float)(offset + th_sym(scale));
    int rc = tnn_gguf_writer_add_tensor(w, name, TNN_GGML_F32, ndim, shape, v,
                                        sizeof(float) * (size_t)n);
    free(v);
    return rc;
}

/* A tiny model of variant v with a SentencePiece-style vocabulary of
 * <unk>, <s>, </s> and the 256 byte tokens. */
static int write_model(const variant *v, const char *path) {
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    int rc = TNN_OK, hd = D / HEADS;
    char k[96];
#define KEY(suffix) (snprintf(k, sizeof k, "%s.%s", v->arch, suffix), k)
#define ADD(call)                                                                             \
    do {                                                                                      \
        if (rc == TNN_OK) rc = (call);                                                        \
    } while (0)
    ADD(tnn_gguf_writer_add_str(w, "general.architecture", v->arch));
    ADD(tnn_gguf_writer_add_u32(w, KEY("context_length"), 256));
    ADD(tnn_gguf_writer_add_u32(w, KEY("embedding_length"), D));
    ADD(tnn_gguf_writer_add_u32(w, KEY("block_count"), LAYERS));
    ADD(tnn_gguf_writer_add_u32(w, KEY("feed_forward_length"), FF));
    ADD(tnn_gguf_writer_add_u32(w, KEY("attention.head_count"), HEADS));
    ADD(tnn_gguf_writer_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)v->n_kv));
    ADD(tnn_gguf_writer_add_f32(w, KEY("rope.freq_base"), (float)v->base));
    ADD(tnn_gguf_writer_add_u32(w, KEY("rope.dimension_count"), (uint32_t)hd));
    ADD(tnn_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f));
    char names[VOCAB][8];
    const char *toks[VOCAB];
    float scores[VOCAB];
    int32_t types[VOCAB];
    for (int i = 0; i < VOCAB; i++) {
        if (i < 3)
            snprintf(names[i], sizeof names[i], "%s", i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>");
        else
            snprintf(names[i], sizeof names[i], "<0x%02X>", i - 3);
        toks[i] = names[i];
        scores[i] = 0.0f;
        types[i] = i == 0 ? 2 : i < 3 ? 3 : 6; /* unknown, control, byte */
    }
    ADD(tnn_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama"));
    ADD(tnn_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, VOCAB));
    ADD(tnn_gguf_writer_add_arr(w, "tokenizer.ggml.scores", TNN_GGUF_FLOAT32, scores, VOCAB));
    ADD(tnn_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", TNN_GGUF_INT32, types, VOCAB));
    ADD(tnn_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1));
    ADD(tnn_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2));
    ADD(tnn_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0));
#undef KEY
    th_seed(v->seed);
    int kvw = v->n_kv * hd;
    ADD(add_f32(w, "token_embd.weight", 2, VOCAB, D, 1.0, 0.0));
    ADD(add_f32(w, "output_norm.weight", 1, D, 0, 0.1, 1.0));
    if (!v->tied) ADD(add_f32(w, "output.weight", 2, VOCAB, D, 0.2, 0.0));
    if (v->rope_freqs) ADD(add_f32(w, "rope_freqs.weight", 1, hd / 2, 0, 1.5, 2.5));
    for (int l = 0; l < LAYERS && rc == TNN_OK; l++) {
        char n[64];
#define T(what, nd, a, b, sc, off) \
    (snprintf(n, sizeof n, "blk.%d.%s", l, what), add_f32(w, n, nd, a, b, sc, off))
        ADD(T("attn_norm.weight", 1, D, 0, 0.1, 1.0));
        ADD(T("attn_q.weight", 2, D, D, 0.2, 0.0));
        ADD(T("attn_k.weight", 2, kvw, D, 0.2, 0.0));
        ADD(T("attn_v.weight", 2, kvw, D, 0.2, 0.0));
        if (v->bias) {
            ADD(T("attn_q.bias", 1, D, 0, 0.2, 0.0));
            ADD(T("attn_k.bias", 1, kvw, 0, 0.2, 0.0));
            ADD(T("attn_v.bias", 1, kvw, 0, 0.2, 0.0));
        }
        ADD(T("attn_output.weight", 2, D, D, 0.2, 0.0));
        ADD(T("ffn_norm.weight", 1, D, 0, 0.1, 1.0));
        ADD(T("ffn_gate.weight", 2, FF, D, 0.2, 0.0));
        ADD(T("ffn_up.weight", 2, FF, D, 0.2, 0.0));
        ADD(T("ffn_down.weight", 2, D, FF, 0.2, 0.0));
#undef T
    }
#undef ADD
    if (rc == TNN_OK) rc = tnn_gguf_writer_write(w, path);
    tnn_gguf_writer_free(w);
    return rc;
}

/* One record of the golden file. */
typedef struct {
    char name[32];
    int n_tok, tok[32];
    int top_id[10];
    double top_logit[10];
    int greedy[8];
    double margin[8];
} record;

static int read_records(const char *path, record *rec, int max) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[4096];
    int n = -1;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model ", 6) && n + 1 < max) {
            n++;
            memset(&rec[n], 0, sizeof rec[n]);
            sscanf(line + 6, "%31s", rec[n].name);
        } else if (n >= 0 && !strncmp(line, "tokens ", 7)) {
            char *p = line + 7;
            rec[n].n_tok = (int)strtol(p, &p, 10);
            for (int i = 0; i < rec[n].n_tok && i < 32; i++) rec[n].tok[i] = (int)strtol(p, &p, 10);
        } else if (n >= 0 && !strncmp(line, "top10 ", 6)) {
            char *p = line + 6;
            for (int i = 0; i < 10; i++) {
                rec[n].top_id[i] = (int)strtol(p, &p, 10);
                p++; /* ':' */
                rec[n].top_logit[i] = strtod(p, &p);
            }
        } else if (n >= 0 && !strncmp(line, "greedy ", 7)) {
            char *p = line + 7;
            for (int i = 0; i < 8; i++) rec[n].greedy[i] = (int)strtol(p, &p, 10);
        } else if (n >= 0 && !strncmp(line, "margin ", 7)) {
            char *p = line + 7;
            for (int i = 0; i < 8; i++) rec[n].margin[i] = strtod(p, &p);
        }
    }
    fclose(f);
    return n + 1;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* The training graph of the model in `path` (its config and weights as
 * fine-tuning reads them) on the n tokens of tok: its logits against the
 * inference path's for every position, and the last row's top-10 against
 * llama.cpp's (rec). */
static void check_training_graph(const variant *v, const char *path, const record *rec) {
    lm_config cfg;
    CHECK_OK(lm_checkpoint_read_config(path, &cfg, NULL));
    CHECK(cfg.qkv_bias == v->bias && cfg.rope_mode == (v->bias ? 1 : 0) &&
              cfg.untied == !v->tied && cfg.rope_factors == v->rope_freqs &&
              cfg.n_kv_head == v->n_kv && cfg.vocab == VOCAB && cfg.seq_len == 256 &&
              cfg.ctx_len == 0,
          "%s: training config read wrong", v->name);
    int n = rec->n_tok;
    cfg.ctx_len = cfg.seq_len; /* as fine-tuning keeps it, the window n */
    cfg.seq_len = n;
    lm_graph g;
    int rc = lm_graph_build(&g, &cfg, 1, n, false, NULL, lm_cuda());
    CHECK(rc == TNN_OK, "%s: training graph: %s", v->name, tnn_last_error());
    if (rc != TNN_OK) return;
    CHECK_OK(lm_checkpoint_load(path, &g, false, LM_LOAD_ALL));
    int64_t tok[32];
    int32_t tok32[32];
    for (int i = 0; i < n; i++) tok[i] = tok32[i] = rec->tok[i];
    float *train = malloc(sizeof(float) * (size_t)n * VOCAB);
    float *infer = malloc(sizeof(float) * (size_t)n * VOCAB);
    CHECK_OK(tnn_upload_from_int_array(g.s, g.tokens, tok, (size_t)n));
    CHECK_OK(tnn_compute(g.s));
    CHECK_OK(tnn_download_f32(g.s, g.logits, train, (size_t)n * VOCAB));
    lm_llama *m = lm_llama_load(path, 64, TNN_F32, lm_cuda());
    CHECK(m != NULL, "%s: %s", v->name, tnn_last_error());
    bool have_infer = m && lm_llama_eval_all(m, tok32, n, infer) == TNN_OK;
    CHECK(have_infer, "%s: inference: %s", v->name, tnn_last_error());
    double worst = 0, top = 0;
    for (int64_t i = 0; have_infer && i < (int64_t)n * VOCAB; i++)
        worst = fmax(worst, fabs((double)train[i] - infer[i]));
    const float *last = train + (size_t)(n - 1) * VOCAB;
    for (int i = 0; i < 10; i++) top = fmax(top, fabs(last[rec->top_id[i]] - rec->top_logit[i]));
    /* both f32 throughout, summing in other orders */
    CHECK(worst <= 1e-4, "%s: training graph's logits differ from inference by %.3g", v->name,
          worst);
    CHECK(top <= 0.02, "%s: training graph's top-10 differ from llama.cpp by %.4f", v->name, top);
    printf("%s: training graph within %.2g of inference, top-10 within %.4f of llama.cpp\n",
           v->name, worst, top);
    lm_llama_free(m);
    /* the graph saved as a checkpoint (its architecture's keys, biases, output
     * matrix, RoPE factors and the tokenizer) runs as the file it was read from */
    char saved[128];
    snprintf(saved, sizeof saved, "%s.saved.gguf", path);
    tnn_gguf *vocab = tnn_gguf_open(path);
    CHECK_OK(lm_checkpoint_save(saved, &g, NULL, vocab));
    tnn_gguf_close(vocab);
    lm_llama *again = lm_llama_load(saved, 64, TNN_F32, lm_cuda());
    CHECK(again != NULL, "%s saved: %s", v->name, tnn_last_error());
    if (again) {
        const lm_llama_hparams *hp = lm_llama_hparams_of(again);
        CHECK(!strcmp(hp->arch, v->arch) && hp->qkv_bias == v->bias &&
                  hp->rope_factors == v->rope_freqs && hp->tied_output == v->tied &&
                  hp->n_ctx_train == 256,
              "%s saved: read back as %s (bias %d, factors %d, tied %d, context %d)", v->name,
              hp->arch, hp->qkv_bias, hp->rope_factors, hp->tied_output, hp->n_ctx_train);
        CHECK_OK(lm_llama_eval_all(again, tok32, n, train));
        CHECK(have_infer && !memcmp(train, infer, sizeof(float) * (size_t)n * VOCAB),
              "%s saved: its logits are not the original file's", v->name);
        lm_llama_free(again);
    }
    unlink(saved);
    free(train);
    free(infer);
    lm_graph_free(&g);
}

/* ---- LoRA adapters at run time ---- */

enum { RANK = 4 };
static const char *const projs[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                     "ffn_gate", "ffn_up", "ffn_down"};

/* (out, in) of projection p of variant v. */
static void proj_dims(const variant *v, int p, int64_t *out, int64_t *in) {
    int64_t kvw = (int64_t)v->n_kv * (D / HEADS);
    static const int64_t outs[7] = {D, -1, -1, D, FF, FF, D};
    *out = outs[p] < 0 ? kvw : outs[p];
    *in = p == 6 ? FF : D;
}

/* Random values in (-0.4, 0.4) for an adapter's factor of n values: f32
 * in *f, and where h is not NULL f16 in *h with *f the values it holds. */
static void random_factor(int64_t n, float **f, uint16_t **h) {
    *f = malloc(sizeof(float) * (size_t)n);
    if (h) *h = malloc(sizeof(uint16_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        (*f)[i] = (float)th_sym(0.4);
        if (h) {
            (*h)[i] = tnn__f32_to_f16((*f)[i]);
            (*f)[i] = tnn__f16_to_f32((*h)[i]);
        }
    }
}

/* An adapter in llama.cpp's layout: random A (RANK, in) and B (out, RANK)
 * for every projection of every layer (B of the attention output left out:
 * an adapter need not cover them all), the embeddings' A (VOCAB, RANK) and
 * B (D, RANK) (llama.cpp's layout for them: A a row a token), and with
 * output the output matrix's A (RANK, D) and B (VOCAB, RANK). The
 * factors' type: F32, or F16 for the first layer's. */
static int write_adapter(const variant *v, const char *arch, const char *path, double alpha,
                         bool output) {
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    int rc = TNN_OK;
#define ADD(call)                                                                             \
    do {                                                                                      \
        if (rc == TNN_OK) rc = (call);                                                        \
    } while (0)
    ADD(tnn_gguf_writer_add_str(w, "general.architecture", arch));
    ADD(tnn_gguf_writer_add_str(w, "general.type", "adapter"));
    ADD(tnn_gguf_writer_add_str(w, "adapter.type", "lora"));
    ADD(tnn_gguf_writer_add_f32(w, "adapter.lora.alpha", (float)alpha));
    th_seed(v->seed * 7 + 1);
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < 7; p++) {
            if (p == 3) continue;
            int64_t out, in;
            proj_dims(v, p, &out, &in);
            for (int ab = 0; ab < 2; ab++) {
                int64_t sh[2] = {ab ? out : RANK, ab ? RANK : in}, n = sh[0] * sh[1];
                float *f;
                uint16_t *h = NULL;
                random_factor(n, &f, l == 0 ? &h : NULL);
                char name[96];
                snprintf(name, sizeof name, "blk.%d.%s.weight.lora_%c", l, projs[p], ab ? 'b' : 'a');
                ADD(l == 0 ? tnn_gguf_writer_add_tensor(w, name, TNN_GGML_F16, 2, sh, h,
                                                        sizeof(uint16_t) * (size_t)n)
                           : tnn_gguf_writer_add_tensor(w, name, TNN_GGML_F32, 2, sh, f,
                                                        sizeof(float) * (size_t)n));
                free(f);
                free(h);
            }
        }
    static const char *const whole[4] = {"token_embd.weight.lora_a", "token_embd.weight.lora_b",
                                         "output.weight.lora_a", "output.weight.lora_b"};
    const int64_t dims[4][2] = {{VOCAB, RANK}, {D, RANK}, {RANK, D}, {VOCAB, RANK}};
    for (int k = 0; k < (output ? 4 : 2); k++) {
        float *f;
        random_factor(dims[k][0] * dims[k][1], &f, NULL);
        ADD(tnn_gguf_writer_add_tensor(w, whole[k], TNN_GGML_F32, 2, dims[k], f,
                                       sizeof(float) * (size_t)(dims[k][0] * dims[k][1])));
        free(f);
    }
#undef ADD
    if (rc == TNN_OK) rc = tnn_gguf_writer_write(w, path);
    tnn_gguf_writer_free(w);
    return rc;
}

/* The model with the adapter merged in (w + scale alpha/RANK B A, in
 * double; the embeddings' rows + scale alpha/RANK A B^T, and where they are
 * the output matrix too, an output matrix of the embeddings as they were),
 * every other key and tensor as they are. */
static int write_merged(const char *model, const char *adapter, double scale, const char *out) {
    tnn_gguf *g = tnn_gguf_open(model), *a = tnn_gguf_open(adapter);
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    int rc = g && a && w ? TNN_OK : TNN_ERR_IO;
    double alpha = 0;
    if (rc == TNN_OK) rc = tnn_gguf_get_f64(a, "adapter.lora.alpha", &alpha);
    for (int64_t i = 0; rc == TNN_OK && i < tnn_gguf_n_kv(g); i++)
        rc = lm_gguf_copy_kv(g, w, tnn_gguf_key(g, i));
    for (int64_t i = 0; rc == TNN_OK && i < tnn_gguf_n_tensors(g); i++) {
        const char *name = tnn_gguf_tensor_name(g, i);
        int64_t sh[4], n = tnn_gguf_tensor_nelements(g, i);
        int nd = tnn_gguf_tensor_shape(g, i, sh);
        float *v = malloc(sizeof(float) * (size_t)n);
        memcpy(v, tnn_gguf_tensor_data(g, i), sizeof(float) * (size_t)n);
        char an[96], bn[96];
        snprintf(an, sizeof an, "%s.lora_a", name);
        snprintf(bn, sizeof bn, "%s.lora_b", name);
        int64_t ia = tnn_gguf_find_tensor(a, an), ib = tnn_gguf_find_tensor(a, bn);
        tnn_clear_error();
        bool embd = !strcmp(name, "token_embd.weight");
        if (embd && ia >= 0 && tnn_gguf_find_tensor(g, "output.weight") < 0) {
            tnn_clear_error(); /* tied: the output keeps the embeddings as they were */
            rc = tnn_gguf_writer_add_tensor(w, "output.weight", TNN_GGML_F32, nd, sh, v,
                                            sizeof(float) * (size_t)n);
        }
        if (embd && ia >= 0 && ib >= 0) { /* A (VOCAB, RANK) a row a token, B (D, RANK) */
            const float *fa = tnn_gguf_tensor_data(a, ia), *fb = tnn_gguf_tensor_data(a, ib);
            for (int64_t t = 0; t < sh[0]; t++)
                for (int64_t e = 0; e < sh[1]; e++) {
                    double d = 0;
                    for (int r = 0; r < RANK; r++) d += (double)fa[t * RANK + r] * fb[e * RANK + r];
                    v[t * sh[1] + e] = (float)(v[t * sh[1] + e] + scale * alpha / RANK * d);
                }
        } else if (ia >= 0 && ib >= 0) {
            int64_t out = sh[0], in = sh[1];
            float *fa = malloc(sizeof(float) * (size_t)(RANK * in)),
                  *fb = malloc(sizeof(float) * (size_t)(out * RANK));
            tnn__dequantize_row(tnn_gguf_tensor_type(a, ia), tnn_gguf_tensor_data(a, ia), fa,
                                RANK * in);
            tnn__dequantize_row(tnn_gguf_tensor_type(a, ib), tnn_gguf_tensor_data(a, ib), fb,
                                out * RANK);
            for (int64_t o = 0; o < out; o++)
                for (int64_t k = 0; k < in; k++) {
                    double d = 0;
                    for (int r = 0; r < RANK; r++) d += (double)fb[o * RANK + r] * fa[r * in + k];
                    v[o * in + k] = (float)(v[o * in + k] + scale * alpha / RANK * d);
                }
            free(fa);
            free(fb);
        }
        if (rc == TNN_OK)
            rc = tnn_gguf_writer_add_tensor(w, name, TNN_GGML_F32, nd, sh, v,
                                            sizeof(float) * (size_t)n);
        free(v);
    }
    if (rc == TNN_OK) rc = tnn_gguf_writer_write(w, out);
    tnn_gguf_writer_free(w);
    tnn_gguf_close(g);
    tnn_gguf_close(a);
    return rc;
}

/* n prompt tokens (every position's logits), then 3 decoding steps. */
static int run_tokens(lm_llama *m, const int32_t *tok, int n, float *lg) {
    int rc = lm_llama_eval_all(m, tok, n, lg);
    for (int s = 0; s < 3 && rc == TNN_OK; s++)
        rc = lm_llama_eval(m, &tok[s], 1, lg + (size_t)(n + s) * VOCAB);
    return rc;
}

/* The logits of run_tokens on the model in file f (NULL on failure). */
static float *file_logits(const variant *v, const char *f, const int32_t *tok, int n) {
    float *lg = malloc(sizeof(float) * (size_t)(n + 3) * VOCAB);
    lm_llama *m = lm_llama_load(f, 64, TNN_F32, lm_cuda());
    CHECK(m != NULL, "%s: %s: %s", v->name, f, tnn_last_error());
    int rc = m ? run_tokens(m, tok, n, lg) : TNN_ERR_IO;
    CHECK(!m || !lm_llama_hparams_of(m)->tied_output, "%s: %s: the output is tied", v->name, f);
    lm_llama_free(m);
    if (rc != TNN_OK) {
        free(lg);
        return NULL;
    }
    return lg;
}

/* tnn quantize --lora (lm_quantize_file with an adapter): the f32 file it
 * writes gives the logits of the adapter at run time (`with`, scale 0.5);
 * written in Q8_0, the logits of that f32 file quantized to Q8_0, bit for
 * bit; an adapter of another model, or a file that is none, is refused
 * and nothing is written. */
static void check_merge(const variant *v, const char *path, const char *adapter, const char *out,
                        const int32_t *tok, int n, const float *with) {
    size_t nl = (size_t)(n + 3) * VOCAB;
    char q8[160], q8b[160], other[160];
    snprintf(q8, sizeof q8, "%s.q8.gguf", out);
    snprintf(q8b, sizeof q8b, "%s.q8b.gguf", out);
    snprintf(other, sizeof other, "%s.wrong.gguf", out);
    int conv = 0;
    CHECK_OK(lm_quantize_file(path, out, TNN_GGML_F32, adapter, 0.5, &conv));
    CHECK_OK(lm_quantize_file(path, q8, TNN_GGML_Q8_0, adapter, 0.5, NULL));
    CHECK_OK(lm_quantize_file(out, q8b, TNN_GGML_Q8_0, NULL, 1.0, NULL));
    float *f32 = file_logits(v, out, tok, n), *a = file_logits(v, q8, tok, n),
          *b = file_logits(v, q8b, tok, n);
    if (f32 && a && b) {
        double worst = 0;
        for (size_t i = 0; i < nl; i++) worst = fmax(worst, fabs((double)f32[i] - with[i]));
        CHECK(worst <= 1e-4, "%s: the adapter merged into f32 weights: logits %.3g from the "
              "adapter's at run time", v->name, worst);
        CHECK(!memcmp(a, b, sizeof(float) * nl), "%s: merged into Q8_0 weights, not the f32 "
              "merge quantized", v->name);
        printf("%s: adapter merged into the weights (%d matrices): f32 within %.2g of it at run "
               "time, Q8_0 the f32 merge's bits quantized\n", v->name, conv, worst);
    }
    free(f32);
    free(a);
    free(b);
    const variant *wrong = &variants[v->n_kv == 2 ? 2 : 1];
    CHECK_OK(write_adapter(wrong, v->arch, other, 8.0, false));
    unlink(out);
    CHECK_ERR(lm_quantize_file(path, out, TNN_GGML_F32, other, 1.0, NULL), TNN_ERR_FORMAT,
              "do not fit");
    CHECK_ERR(lm_quantize_file(path, out, TNN_GGML_F32, path, 1.0, NULL), TNN_ERR_FORMAT,
              "not a LoRA adapter");
    CHECK(access(out, F_OK) != 0, "%s: a refused merge wrote %s", v->name, out);
    unlink(other);
    unlink(q8);
    unlink(q8b);
    unlink(out);
}

/* An adapter applied at run time (f16 and f32 factors, a projection left
 * out, scale 0.5) gives the logits of the model with it merged into the
 * weights, on a prompt and in decoding; adapters that do not fit are
 * refused and leave the model as it was. */
static void check_lora(const variant *v, const char *path) {
    char adapter[128], merged[128], other[128];
    snprintf(adapter, sizeof adapter, "%s.lora.gguf", path);
    snprintf(merged, sizeof merged, "%s.merged.gguf", path);
    snprintf(other, sizeof other, "%s.other.gguf", path);
    CHECK_OK(write_adapter(v, v->arch, adapter, 8.0, !v->tied));
    CHECK_OK(write_merged(path, adapter, 0.5, merged));
    enum { N = 9 };
    static const int32_t tok[N] = {1, 40, 77, 3, 200, 9, 121, 58, 64};
    size_t nl = (size_t)(N + 3) * VOCAB;
    float *with = malloc(sizeof(float) * nl), *want = malloc(sizeof(float) * nl),
          *base = malloc(sizeof(float) * nl), *after = malloc(sizeof(float) * nl);
    lm_llama *m = lm_llama_load(path, 64, TNN_F32, lm_cuda());
    lm_llama *mm = lm_llama_load(merged, 64, TNN_F32, lm_cuda());
    CHECK(m && mm, "%s: %s", v->name, tnn_last_error());
    if (!m || !mm) goto done;
    CHECK_OK(run_tokens(m, tok, N, base));
    CHECK_OK(lm_llama_add_lora(m, adapter, 0.5));
    CHECK(lm_llama_pos(m) == 0, "%s: the cache was not emptied", v->name);
    CHECK_OK(run_tokens(m, tok, N, with));
    CHECK_OK(run_tokens(mm, tok, N, want));
    double worst = 0, moved = 0;
    for (size_t i = 0; i < nl; i++) {
        worst = fmax(worst, fabs((double)with[i] - want[i]));
        moved = fmax(moved, fabs((double)base[i] - want[i]));
    }
    CHECK(worst <= 1e-4, "%s: logits with the adapter differ from the merged model's by %.3g",
          v->name, worst);
    CHECK(moved > 0.1, "%s: the adapter moved no logit (%.3g)", v->name, moved);
    printf("%s: LoRA adapter at run time within %.2g of the merged model (it moves logits by "
           "up to %.2f)\n", v->name, worst, moved);
    CHECK_ERR(lm_llama_add_lora(m, adapter, 1.0), TNN_ERR_STATE, "already");
    lm_llama_free(m);
    check_merge(v, path, adapter, other, tok, N, with);

    /* refusals, each leaving the model as it was */
    m = lm_llama_load(path, 64, TNN_F32, lm_cuda());
    const variant *wrong = &variants[v->n_kv == 2 ? 2 : 1]; /* another kv width */
    CHECK_OK(write_adapter(wrong, v->arch, other, 8.0, !v->tied));
    CHECK_ERR(lm_llama_add_lora(m, other, 1.0), TNN_ERR_FORMAT, "another model");
    if (v->tied) {
        CHECK_OK(write_adapter(v, v->arch, other, 8.0, true));
        CHECK_ERR(lm_llama_add_lora(m, other, 1.0), TNN_ERR_FORMAT, "no output matrix");
    }
    CHECK_OK(write_adapter(v, !strcmp(v->arch, "qwen2") ? "llama" : "qwen2", other, 8.0,
                           !v->tied));
    CHECK_ERR(lm_llama_add_lora(m, other, 1.0), TNN_ERR_FORMAT, "architecture");
    CHECK_ERR(lm_llama_add_lora(m, path, 1.0), TNN_ERR_FORMAT, "not a LoRA adapter");
    CHECK_ERR(lm_llama_add_lora(m, "/nonexistent/adapter.gguf", 1.0), TNN_ERR_IO, "adapter");
    CHECK_ERR(lm_llama_add_lora(m, adapter, NAN), TNN_ERR_ARG, "finite");
    CHECK_OK(run_tokens(m, tok, N, after));
    CHECK(!memcmp(after, base, sizeof(float) * nl), "%s: a refused adapter changed the model",
          v->name);
    lm_llama_free(m);
done:
    if (mm) lm_llama_free(mm);
    free(with);
    free(want);
    free(base);
    free(after);
    unlink(adapter);
    unlink(merged);
    unlink(other);
}

/* ---- QLoRA: LoRA on the quantized model's own tensors ---- */

/* LoRA training on the model quantized to Q8_0, its matrices read in place
 * from that file (QLoRA: quantized products, x's gradient through the
 * dequantized panels; on the GPU in the CUDA twins), against LoRA on the
 * same weights dequantized to f32 leaves on the CPU: three steps, the same
 * factors to start. With the CPU's quantized products on the f32 GEMM both
 * compute the same bits; the GPU sums in other orders. */
static void check_qlora(const variant *v, const char *path) {
    char q8[128];
    snprintf(q8, sizeof q8, "%s.q8_0.gguf", path);
    CHECK_OK(lm_quantize_file(path, q8, TNN_GGML_Q8_0, NULL, 1.0, NULL));
    lm_config cfg;
    CHECK_OK(lm_checkpoint_read_config(q8, &cfg, NULL));
    enum { B = 2, T = 12 };
    cfg.ctx_len = cfg.seq_len;
    cfg.seq_len = T;
    cfg.lora_rank = RANK;
    cfg.lora_alpha = 2.0 * RANK;
    lm_optim opt = {.lr = 3e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .grad_clip = 1.0};
    tnn__qmm_set_rows(0);
    tnn__qmm_set_bf16(false);
    tnn_gguf *f = tnn_gguf_open(q8);
    lm_graph g[2];
    for (int k = 0; k < 2; k++) {
        lm_config c = cfg;
        c.frozen_gguf = k ? f : NULL;
        CHECK_OK(lm_graph_build(&g[k], &c, B, T, true, &opt, k ? lm_cuda() : false));
        CHECK_OK(lm_checkpoint_load(q8, &g[k], false, LM_LOAD_BASE));
        CHECK_OK(lm_init_lora(&g[k], 3));
    }
    tnn_tensor *out = v->tied ? g[1].p.tok_emb : g[1].p.output;
    CHECK(tnn_tensor_dtype(out) == TNN_GGML && tnn_tensor_dtype(g[1].p.layer[1].wk) == TNN_GGML,
          "%s: QLoRA's matrices are not the file's", v->name);
    double loss[2][3];
    int64_t tok[B * T], tgt[B * T];
    for (int step = 0; step < 3; step++)
        for (int k = 0; k < 2; k++) {
            for (int i = 0; i < B * T; i++)
                tok[i] = (i * 31 + 7) % VOCAB, tgt[i] = (i * 17 + 3) % VOCAB; /* one batch */
            CHECK_OK(tnn_upload_from_int_array(g[k].s, g[k].tokens, tok, B * T));
            CHECK_OK(tnn_upload_from_int_array(g[k].s, g[k].targets, tgt, B * T));
            CHECK_OK(tnn_compute(g[k].s));
            CHECK_OK(tnn_download_to_f64_array(g[k].s, g[k].loss, &loss[k][step], 1));
        }
    double worst = 0;
    for (int step = 0; step < 3; step++)
        worst = fmax(worst, fabs(loss[1][step] - loss[0][step]) / loss[0][step]);
    CHECK(loss[0][2] < loss[0][0] - 0.01, "%s: LoRA did not train (%.4f -> %.4f)", v->name,
          loss[0][0], loss[0][2]);
    if (lm_cuda())
        CHECK(worst <= 1e-4, "%s: QLoRA's losses differ by %.3g (relative)", v->name, worst);
    else
        CHECK(worst == 0, "%s: QLoRA's losses differ by %.3g (relative)", v->name, worst);
    printf("%s: QLoRA on Q8_0 (%s), 3 steps %.5f -> %.5f, within %.2g of LoRA on f32\n", v->name,
           tnn_session_backend(g[1].s), loss[1][0], loss[1][2], worst);
    lm_graph_free(&g[0]);
    lm_graph_free(&g[1]);
    tnn_gguf_close(f);
    tnn__qmm_set_rows(-1);
    tnn__qmm_set_bf16(true);
    unlink(q8);
}

int main(int argc, char **argv) {
    TH_USE_CUDA("test_arch");
    if (argc == 3 && !strcmp(argv[1], "--write")) { /* for tools/arch_reference.py */
        for (int v = 0; v < N_VARIANTS; v++) {
            char path[512];
            snprintf(path, sizeof path, "%s/tiny_%s.gguf", argv[2], variants[v].name);
            if (write_model(&variants[v], path)) {
                fprintf(stderr, "%s: %s\n", path, tnn_last_error());
                return 1;
            }
            printf("%s\n", path);
        }
        return 0;
    }
    record rec[N_VARIANTS];
    int n = read_records(TNN_DATA_DIR "/llama_arch.txt", rec, N_VARIANTS);
    CHECK(n == N_VARIANTS, "golden file: %d records", n);
    for (int r = 0; r < n; r++) {
        const variant *v = NULL;
        for (int i = 0; i < N_VARIANTS; i++)
            if (!strcmp(variants[i].name, rec[r].name)) v = &variants[i];
        CHECK(v != NULL, "golden record for an unknown model %s", rec[r].name);
        if (!v) continue;
        char path[96];
        snprintf(path, sizeof path, "/tmp/tnn-test-arch-%d-%s.gguf", (int)getpid(), v->name);
        CHECK_OK(write_model(v, path));
        lm_llama *m = lm_llama_load(path, 64, TNN_F16, lm_cuda());
        CHECK(m != NULL, "%s: %s", v->name, tnn_last_error());
        if (!m) continue;
        const lm_llama_hparams *hp = lm_llama_hparams_of(m);
        CHECK(hp->qkv_bias == v->bias && hp->rope_factors == v->rope_freqs &&
                  hp->tied_output == v->tied && hp->n_kv_head == v->n_kv,
              "%s: hyper-parameters read wrong", v->name);
        float lg[VOCAB];
        int32_t tok[40];
        for (int i = 0; i < rec[r].n_tok; i++) tok[i] = rec[r].tok[i];
        CHECK_OK(lm_llama_eval(m, tok, rec[r].n_tok, lg));
        double worst = 0;
        for (int i = 0; i < 10; i++) {
            double e = fabs(lg[rec[r].top_id[i]] - rec[r].top_logit[i]);
            if (e > worst) worst = e;
        }
        CHECK(worst <= 0.02, "%s: top-10 logits differ from llama.cpp by %.4f (bound 0.02)",
              v->name, worst);
        int compared = 0, equal = 0;
        for (int s = 0; s < 8; s++) {
            int next = argmax(lg, VOCAB);
            if (rec[r].margin[s] > 0.05) {
                compared++;
                equal += next == rec[r].greedy[s];
            }
            if (next != rec[r].greedy[s]) break; /* the sequences part: stop comparing */
            int32_t t1 = next;
            CHECK_OK(lm_llama_eval(m, &t1, 1, lg));
        }
        CHECK(equal == compared, "%s: greedy tokens: %d of %d equal", v->name, equal, compared);
        printf("%s: top-10 logits within %.4f of llama.cpp; greedy %d of %d equal\n", v->name,
               worst, equal, compared);
        lm_llama_free(m);
        check_training_graph(v, path, &rec[r]);
        check_lora(v, path);
        check_qlora(v, path);
        unlink(path);
    }
    return th_finish("test_arch");
}
