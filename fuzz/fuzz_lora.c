/* fuzz_lora.c - libFuzzer target for LoRA adapters applied at run time:
 * any bytes, read as a GGUF file (tnn_gguf_open_memory), offered as an
 * adapter to a tiny llama model (lm_llama_add_lora_gguf). An adapter taken
 * must run (a 3-token prompt and a decoding step); one refused must leave
 * the model giving exactly the logits it gave before (traps otherwise).
 * The model is written once, at start, to a temporary file. Build and run:
 * fuzz/run.sh [SECONDS]; `fuzz_lora --write-seed FILE` writes the seed
 * adapter (fuzz/corpus/lora/, by fuzz/run.sh --make-corpus).
 */
#include "tinynn.h"

#include "llm/llama.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROMISE(cond)                                                                         \
    do {                                                                                      \
        if (!(cond)) __builtin_trap();                                                        \
    } while (0)

enum { VOCAB = 12, D = 16, LAYERS = 2, HEADS = 2, KV = 1, FF = 32, RANK = 2 };

static char model_path[64];
static float base_logits[3][VOCAB];
static const int32_t prompt[3] = {1, 5, 7};

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 - 0.5);
}

static int add_rand(tnn_gguf_writer *w, const char *name, int64_t d0, int64_t d1, float off) {
    int64_t n = d1 ? d0 * d1 : d0, shape[2] = {d0, d1};
    float v[FF * D];
    for (int64_t i = 0; i < n; i++) v[i] = off + rnd();
    return tnn_gguf_writer_add_tensor(w, name, TNN_GGML_F32, d1 ? 2 : 1, shape, v,
                                      sizeof(float) * (size_t)n);
}

static const char *const projs[7] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                     "ffn_gate", "ffn_up", "ffn_down"};
static const int64_t outs[7] = {D, KV * (D / HEADS), KV * (D / HEADS), D, FF, FF, D};
static const int64_t ins[7] = {D, D, D, D, D, D, FF};

#define ADD(call)                                                                             \
    do {                                                                                      \
        if (rc == TNN_OK) rc = (call);                                                        \
    } while (0)

static int write_model(const char *path) {
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    int rc = TNN_OK;
    ADD(tnn_gguf_writer_add_str(w, "general.architecture", "llama"));
    ADD(tnn_gguf_writer_add_u32(w, "llama.context_length", 32));
    ADD(tnn_gguf_writer_add_u32(w, "llama.embedding_length", D));
    ADD(tnn_gguf_writer_add_u32(w, "llama.block_count", LAYERS));
    ADD(tnn_gguf_writer_add_u32(w, "llama.feed_forward_length", FF));
    ADD(tnn_gguf_writer_add_u32(w, "llama.attention.head_count", HEADS));
    ADD(tnn_gguf_writer_add_u32(w, "llama.attention.head_count_kv", KV));
    ADD(tnn_gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f));
    ADD(add_rand(w, "token_embd.weight", VOCAB, D, 0));
    ADD(add_rand(w, "output_norm.weight", D, 0, 1));
    char n[64];
    for (int l = 0; l < LAYERS; l++) {
        snprintf(n, sizeof n, "blk.%d.attn_norm.weight", l);
        ADD(add_rand(w, n, D, 0, 1));
        snprintf(n, sizeof n, "blk.%d.ffn_norm.weight", l);
        ADD(add_rand(w, n, D, 0, 1));
        for (int p = 0; p < 7; p++) {
            snprintf(n, sizeof n, "blk.%d.%s.weight", l, projs[p]);
            ADD(add_rand(w, n, outs[p], ins[p], 0));
        }
    }
    if (rc == TNN_OK) rc = tnn_gguf_writer_write(w, path);
    tnn_gguf_writer_free(w);
    return rc;
}

/* A valid adapter for the model: every projection of layer 0, the gate of
 * layer 1 and the embeddings (A a row a token, as llama.cpp lays it out). */
static int write_seed(const char *path) {
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    int rc = TNN_OK;
    ADD(tnn_gguf_writer_add_str(w, "general.architecture", "llama"));
    ADD(tnn_gguf_writer_add_str(w, "general.type", "adapter"));
    ADD(tnn_gguf_writer_add_str(w, "adapter.type", "lora"));
    ADD(tnn_gguf_writer_add_f32(w, "adapter.lora.alpha", 4.0f));
    char n[64];
    for (int k = 0; k < 8; k++) {
        int l = k < 7 ? 0 : 1, p = k < 7 ? k : 4;
        snprintf(n, sizeof n, "blk.%d.%s.weight.lora_a", l, projs[p]);
        ADD(add_rand(w, n, RANK, ins[p], 0));
        snprintf(n, sizeof n, "blk.%d.%s.weight.lora_b", l, projs[p]);
        ADD(add_rand(w, n, outs[p], RANK, 0));
    }
    ADD(add_rand(w, "token_embd.weight.lora_a", VOCAB, RANK, 0));
    ADD(add_rand(w, "token_embd.weight.lora_b", D, RANK, 0));
    if (rc == TNN_OK) rc = tnn_gguf_writer_write(w, path);
    tnn_gguf_writer_free(w);
    return rc;
}

/* The prompt's last logits, then one decoding step's: out[0], out[1]. */
static int run(lm_llama *m, float out[3][VOCAB]) {
    int rc = lm_llama_eval(m, prompt, 3, out[0]);
    if (rc == TNN_OK) rc = lm_llama_eval(m, &prompt[1], 1, out[1]);
    return rc;
}

static long n_inputs, n_taken; /* GGUF files offered, adapters taken */

static void remove_model(void) {
    unlink(model_path);
    if (n_inputs)
        fprintf(stderr, "fuzz_lora: %ld of %ld GGUF inputs taken as adapters\n", n_taken,
                n_inputs);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    tnn_set_log_level(TNN_LOG_NONE);
    if (*argc == 3 && !strcmp((*argv)[1], "--write-seed")) {
        int rc = write_seed((*argv)[2]);
        if (rc) fprintf(stderr, "fuzz_lora: %s\n", tnn_last_error());
        exit(rc ? 1 : 0);
    }
    snprintf(model_path, sizeof model_path, "/tmp/tnn-fuzz-lora-%d.gguf", (int)getpid());
    atexit(remove_model);
    lm_llama *m = write_model(model_path) == TNN_OK ? lm_llama_load(model_path, 16, TNN_F32, false)
                                                    : NULL;
    if (!m || run(m, base_logits) != TNN_OK) {
        fprintf(stderr, "fuzz_lora: the model: %s\n", tnn_last_error());
        exit(1);
    }
    lm_llama_free(m);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tnn_gguf *a = tnn_gguf_open_memory(data, size);
    if (!a) return 0;
    lm_llama *m = lm_llama_load(model_path, 16, TNN_F32, false);
    PROMISE(m != NULL);
    float out[3][VOCAB];
    int rc = lm_llama_add_lora_gguf(m, a, 1.0);
    n_inputs++;
    if (rc == TNN_OK) {
        n_taken++;
        PROMISE(lm_llama_pos(m) == 0);
        PROMISE(run(m, out) == TNN_OK);
        PROMISE(lm_llama_add_lora_gguf(m, a, 1.0) == TNN_ERR_STATE); /* one adapter a model */
    } else {
        PROMISE(tnn_last_error()[0] != '\0');
        PROMISE(run(m, out) == TNN_OK);
        PROMISE(!memcmp(out[0], base_logits[0], sizeof out[0]) &&
                !memcmp(out[1], base_logits[1], sizeof out[1]));
    }
    tnn_gguf_close(a);
    lm_llama_free(m);
    return 0;
}
