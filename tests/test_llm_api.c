/* test_llm_api.c - the public language-model functions (tnn_llm_*,
 * tnn_sampler_*): chat formatting against Jinja's rendering of the real
 * templates, and, on SmolLM2-135M-Instruct (`make models`; those checks are
 * skipped, with a message, without it), tokenization and greedy text
 * against llama.cpp's (tests/data/llama_smollm2.txt), the cache's reuse and
 * rewinding, and every argument and range error.
 *
 * The expected chat texts are what jinja2 3.1.6 renders (as Hugging Face's
 * apply_chat_template: trim_blocks, lstrip_blocks) from the templates of
 * SmolLM2-135M-Instruct (chatml, its GGUF's), TinyLlama-1.1B-Chat (zephyr),
 * Meta-Llama-3-8B-Instruct (llama3), Llama-3.2-3B-Instruct without tools
 * (llama3 with the date block, date_string fixed) and Llama-2-chat
 * (llama2), with the leading BOS the tokenizer adds taken off.
 */
#define _POSIX_C_SOURCE 200809L /* localtime_r */

#include "harness.h"
#include "llama_golden.h"

#include <time.h>
#include <unistd.h>

#define MODEL TNN_MODEL_FILE

/* The twin built with TNN_TEST_CUDA (tests/CMakeLists.txt) opens its models
 * on the CUDA backend: the GPU, or the CPU emulator build. */
#ifdef TNN_TEST_CUDA
#define LLM_FLAGS TNN_LLM_CUDA
#define N_GREEDY 8 /* the emulator runs a token in about 0.1 s: fewer of them */
#define N_PROMPTS 2
#define SIZE_STEP 12
#else
#define LLM_FLAGS 0
#define N_GREEDY 32
#define N_PROMPTS 8
#define SIZE_STEP 3
#endif

static const char *const SYS_ROLES[4] = {"system", "user", "assistant", "user"};
static const char *const SYS_TEXTS[4] = {"You are terse. ", "Hello", "  Hi there  ",
                                         " Who are you?\n"};
static const char *const ROLES[3] = {"user", "assistant", "user"};
static const char *const TEXTS[3] = {"Hello", "Hi there", "Bye"};

/* tnn_llm_chat_format's text, or NULL after a failed check. */
static char *chat(const tnn_llm *m, const char *tmpl, const char *const *roles,
                  const char *const *texts, int n, int add) {
    int64_t need = tnn_llm_chat_format(m, tmpl, roles, texts, n, add, NULL, 0);
    CHECK(need >= 0, "%s: %s", tmpl ? tmpl : "model's", tnn_last_error());
    if (need < 0) return NULL;
    char *out = malloc((size_t)need + 1);
    int64_t again = tnn_llm_chat_format(m, tmpl, roles, texts, n, add, out, (size_t)need + 1);
    CHECK(again == need && out[need] == 0, "%lld then %lld", (long long)need, (long long)again);
    return out;
}

static void check_chat(const tnn_llm *m, const char *tmpl, bool sys, const char *want) {
    char *got = sys ? chat(m, tmpl, SYS_ROLES, SYS_TEXTS, 4, 1) : chat(m, tmpl, ROLES, TEXTS, 3, 1);
    CHECK(got && !strcmp(got, want), "%s (%s):\n got  [%s]\n want [%s]", tmpl ? tmpl : "model's",
          sys ? "with system" : "no system", got ? got : "", want);
    free(got);
}

/* A Llama 3.1-style template's text: the markers the formatter reads. */
#define L31_TMPL                                                                              \
    "{%- set date_string = \"26 Jul 2024\" %}{{- \"<|start_header_id|>system<|end_header_id|>" \
    "\\n\\n\" }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}"

static void test_chat_families(void) {
    check_chat(NULL, "chatml", true,
               "<|im_start|>system\nYou are terse. <|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
               "<|im_start|>assistant\n  Hi there  <|im_end|>\n<|im_start|>user\n Who are you?\n"
               "<|im_end|>\n<|im_start|>assistant\n");
    check_chat(NULL, "zephyr", true,
               "<|system|>\nYou are terse. </s>\n<|user|>\nHello</s>\n<|assistant|>\n  Hi there  "
               "</s>\n<|user|>\n Who are you?\n</s>\n<|assistant|>\n");
    check_chat(NULL, "zephyr", false,
               "<|user|>\nHello</s>\n<|assistant|>\nHi there</s>\n<|user|>\nBye</s>\n"
               "<|assistant|>\n");
    check_chat(NULL, "llama3", true,
               "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n");
    check_chat(NULL, "llama3", false,
               "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n");
    check_chat(NULL, L31_TMPL, true,
               "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
               "2023\nToday Date: 26 Jul 2024\n\nYou are terse.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n");
    check_chat(NULL, L31_TMPL, false,
               "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
               "2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n");
    check_chat(NULL, "llama2", true,
               "[INST] <<SYS>>\nYou are terse. \n<</SYS>>\n\nHello [/INST] Hi there </s><s>[INST] "
               "Who are you? [/INST]");
    check_chat(NULL, "llama2", false, "[INST] Hello [/INST] Hi there </s><s>[INST] Bye [/INST]");

    /* Llama 3.2 asks for today's date (strftime_now) */
    char date[32], want[160];
    time_t now = time(NULL);
    struct tm tmv;
    localtime_r(&now, &tmv);
    strftime(date, sizeof date, "%d %b %Y", &tmv);
    snprintf(want, sizeof want, "Today Date: %s\n\n<|eot_id|>", date);
    const char *role = "user", *text = "Hi";
    char *got = chat(NULL, L31_TMPL "{%- set date_string = strftime_now(\"%d %b %Y\") %}", &role,
                     &text, 1, 0);
    CHECK(got && strstr(got, want), "strftime_now: %s", got ? got : "");
    free(got);

    /* templates recognised by their text; chatml's default system message */
    const char *tmpl = "{{ '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{{'<|im_start|>' "
                       "+ message['role'] + '\\n' + message['content']}}";
    got = chat(NULL, tmpl, &role, &text, 1, 1);
    CHECK(got && !strcmp(got, "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nHi"
                              "<|im_end|>\n<|im_start|>assistant\n"),
          "chatml default system: %s", got ? got : "");
    free(got);
    got = chat(NULL, "{{ '<|user|>\\n' }}{{ '<|assistant|>' }}", &role, &text, 1, 1);
    CHECK(got && !strcmp(got, "<|user|>\nHi</s>\n<|assistant|>\n"), "zephyr text: %s",
          got ? got : "");
    free(got);
    got = chat(NULL, "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}", &role, &text, 1,
               1);
    CHECK(got && !strcmp(got, "[INST] Hi [/INST]"), "llama2 text: %s", got ? got : "");
    free(got);

    /* a short buffer gets what fits and no NUL past it */
    char small[8];
    memset(small, 'x', sizeof small);
    int64_t need = tnn_llm_chat_format(NULL, "chatml", &role, &text, 1, 0, small, 5);
    CHECK(need == (int64_t)strlen("<|im_start|>user\nHi<|im_end|>\n") &&
              !memcmp(small, "<|im_", 5) && small[5] == 'x',
          "short buffer: %lld", (long long)need);

    /* errors */
    const char *bad_roles[2] = {"user", "user"}, *two[2] = {"a", "b"};
    CHECK_ERR((int)tnn_llm_chat_format(NULL, "alpaca", &role, &text, 1, 1, NULL, 0),
              TNN_ERR_UNSUPPORTED, "chatml, llama3, zephyr, llama2");
    CHECK_ERR((int)tnn_llm_chat_format(NULL, NULL, &role, &text, 1, 1, NULL, 0), TNN_ERR_ARG,
              "both NULL");
    CHECK_ERR((int)tnn_llm_chat_format(NULL, "chatml", &role, &text, 0, 1, NULL, 0), TNN_ERR_ARG,
              "n >= 1");
    CHECK_ERR((int)tnn_llm_chat_format(NULL, "chatml", &role, &text, 1, 1, NULL, 4), TNN_ERR_ARG,
              "output buffer");
    CHECK_ERR((int)tnn_llm_chat_format(NULL, "llama2", bad_roles, two, 2, 1, NULL, 0), TNN_ERR_ARG,
              "alternate");
    const char *tool = "tool";
    CHECK_ERR((int)tnn_llm_chat_format(NULL, "llama3", &tool, &text, 1, 1, NULL, 0), TNN_ERR_ARG,
              "role 'tool'");
    const char *nul = NULL;
    CHECK_ERR((int)tnn_llm_chat_format(NULL, "zephyr", &role, &nul, 1, 1, NULL, 0), TNN_ERR_ARG,
              "NULL role or content");
}

/* ---- on the real model ---- */

typedef struct {
    char text[4096];
    size_t len;
    int calls, stop_after;
} sink;

static int collect(const char *text, size_t len, void *user) {
    sink *k = user;
    if (k->len + len < sizeof k->text) memcpy(k->text + k->len, text, len);
    k->len += len;
    k->text[k->len < sizeof k->text ? k->len : sizeof k->text - 1] = 0;
    return ++k->calls == k->stop_after;
}

static void test_model(void) {
    CHECK_NULL(tnn_llm_open("/nonexistent.gguf", 0, 0), TNN_ERR_IO, "/nonexistent.gguf");
    CHECK_NULL(tnn_llm_open(MODEL, -1, 0), TNN_ERR_ARG, "n_ctx");
    CHECK_NULL(tnn_llm_open(MODEL, 0, 64), TNN_ERR_ARG, "flags");
    tnn_llm *m = tnn_llm_open(MODEL, 256, LLM_FLAGS);
    CHECK(m, "open: %s", tnn_last_error());
    if (!m) return;
    CHECK(tnn_llm_n_vocab(m) == 49152 && tnn_llm_n_ctx(m) == 256 && tnn_llm_n_embd(m) == 576 &&
              tnn_llm_n_layer(m) == 30 && !strcmp(tnn_llm_arch(m), "llama") && tnn_llm_gguf(m),
          "sizes %d %d %d %d", tnn_llm_n_vocab(m), tnn_llm_n_ctx(m), tnn_llm_n_embd(m),
          tnn_llm_n_layer(m));
    CHECK(tnn_llm_token_bos(m) == 1 && tnn_llm_token_eos(m) == 2, "bos %d eos %d",
          tnn_llm_token_bos(m), tnn_llm_token_eos(m));
    CHECK(tnn_llm_token_is_eog(m, 2) == 1 && tnn_llm_token_is_eog(m, 100) == 0, "eog");
    CHECK_ERR(tnn_llm_token_is_eog(m, 49152), TNN_ERR_RANGE, "outside the vocabulary");

    llama_record g[8];
    int ng = read_llama_records(TNN_DATA_DIR "/llama_smollm2.txt", g, 8);
    CHECK(ng >= 4, "golden file: %d records", ng);
    int32_t ids[64];
    for (int r = 0; r < ng && r < N_PROMPTS; r++) {
        /* the prompt's ids, as llama.cpp tokenized it (special texts parsed) */
        int32_t n = tnn_llm_tokenize(m, g[r].text, strlen(g[r].text),
                                     TNN_TOK_ADD_SPECIAL | TNN_TOK_PARSE_SPECIAL, ids, 64);
        bool same = n == g[r].n_tok;
        for (int i = 0; same && i < n; i++) same = ids[i] == g[r].tok[i];
        CHECK(same, "prompt %d tokens: %d ids (want %d)", r, n, g[r].n_tok);
        /* generate = eval, argmax, eval, ... (llama.cpp's greedy ids agree
         * up to its close calls: test_llama) */
        int32_t want_ids[32], ne = 0;
        float *lg = malloc(sizeof(float) * (size_t)tnn_llm_n_vocab(m));
        CHECK_OK(tnn_llm_rewind(m, 0));
        CHECK_OK(tnn_llm_eval(m, ids, n, lg));
        while (ne < N_GREEDY) {
            int32_t t = 0;
            for (int32_t i = 1; i < tnn_llm_n_vocab(m); i++)
                if (lg[i] > lg[t]) t = i;
            if (tnn_llm_token_is_eog(m, t)) break;
            want_ids[ne++] = t;
            if (ne < N_GREEDY) CHECK_OK(tnn_llm_eval(m, &t, 1, lg));
        }
        free(lg);
        char want[1024];
        int64_t wl = tnn_llm_detokenize(m, want_ids, (size_t)ne, 0, want, sizeof want);
        char out[1024];
        sink k = {.stop_after = -1};
        int64_t len = tnn_llm_generate(m, NULL, g[r].text, N_GREEDY, 0, collect, &k, out,
                                       sizeof out);
        CHECK(len == wl && !strcmp(out, want) && !strcmp(k.text, want),
              "prompt %d greedy:\n got  [%s]\n want [%s]", r, out, want);
        int32_t np, ngen;
        tnn_llm_last_stats(m, &np, &ngen, NULL, NULL);
        CHECK(np == g[r].n_tok && ngen == (ne < N_GREEDY ? ne + 1 : N_GREEDY), "stats %d %d",
              np, ngen);
    }

    /* eval + sampler + rewind: the same as generate; the logits of a
     * position do not depend on what the cache held past it */
    int32_t n = tnn_llm_tokenize(m, g[0].text, strlen(g[0].text), TNN_TOK_ADD_SPECIAL, ids, 64);
    int V = tnn_llm_n_vocab(m);
    float *l1 = malloc(sizeof(float) * (size_t)V), *l2 = malloc(sizeof(float) * (size_t)V);
    tnn_sampler *greedy = tnn_sampler_new(0, 0, 1, 0, 1, 7);
    CHECK_OK(tnn_llm_rewind(m, 0));
    CHECK_OK(tnn_llm_eval(m, ids, n, l1));
    int32_t t1 = tnn_sampler_sample(greedy, l1, V, NULL, 0);
    CHECK(t1 == g[0].greedy[0], "sampled %d, want %d", t1, g[0].greedy[0]);
    CHECK_OK(tnn_llm_eval(m, &t1, 1, NULL));
    CHECK(tnn_llm_pos(m) == n + 1, "pos %d", tnn_llm_pos(m));
    CHECK_ERR(tnn_llm_rewind(m, n + 2), TNN_ERR_RANGE, "holds");
    CHECK_OK(tnn_llm_rewind(m, n - 1));
    CHECK_OK(tnn_llm_eval(m, ids + n - 1, 1, l2));
    double d = 0;
    for (int i = 0; i < V; i++) d = fmax(d, fabs((double)l1[i] - l2[i]));
    CHECK(d < 0.3 && tnn_sampler_sample(greedy, l2, V, NULL, 0) == t1,
          "rewound and fed the last token again: max logit difference %g", d);

    /* every token's logits: the last row is the prediction eval gives */
    float *all = malloc(sizeof(float) * (size_t)V * (size_t)n);
    CHECK_OK(tnn_llm_rewind(m, 0));
    CHECK_OK(tnn_llm_eval_logits(m, ids, n, all));
    d = 0;
    for (int i = 0; i < V; i++) d = fmax(d, fabs((double)all[(size_t)(n - 1) * V + i] - l1[i]));
    CHECK(d < 0.3 && tnn_llm_pos(m) == n, "eval_logits' last row: max difference %g", d);
    CHECK_ERR(tnn_llm_eval_logits(m, ids, n, NULL), TNN_ERR_ARG, "logits");
    free(all);

    /* perplexity by llama.cpp's method, against llama.cpp's own on the same
     * text and chunks (tools/perplexity_reference.py, llama-cpp-python
     * 0.3.36: 21.2323 for chunks of 128, 17.8150 for one of 512; tinynn
     * measured 21.303 and 17.760: within 2%, as the logits' rounding
     * differences allow) */
    FILE *tf = fopen(TNN_DATA_DIR "/perplexity.txt", "rb");
    char *text = malloc(8192);
    size_t tl = tf && text ? fread(text, 1, 8191, tf) : 0;
    if (tf) fclose(tf);
    CHECK(tl > 2000, "perplexity.txt: %zu bytes", tl);
    double ppl = 0;
    int32_t scored = 0;
    tnn_llm *big = tnn_llm_open(MODEL, 512, LLM_FLAGS);
    CHECK_OK(tnn_llm_perplexity(big, text, tl, 128, 0, &ppl, &scored));
    CHECK(scored == 252 && fabs(ppl / 21.2323 - 1) < 0.02, "perplexity %.4f over %d tokens", ppl,
          scored);
    CHECK_OK(tnn_llm_perplexity(big, text, tl, 512, 0, &ppl, &scored));
    CHECK(scored == 255 && fabs(ppl / 17.8150 - 1) < 0.02, "perplexity (512) %.4f over %d", ppl,
          scored);
    CHECK_ERR(tnn_llm_perplexity(big, text, 100, 128, 0, &ppl, NULL), TNN_ERR_RANGE,
              "fewer than one chunk");
    CHECK_ERR(tnn_llm_perplexity(big, text, tl, 1024, 0, &ppl, NULL), TNN_ERR_ARG, "chunk");
    tnn_llm_close(big);
    free(text);

    /* errors leave the sequence as it was */
    int32_t pos = tnn_llm_pos(m), bad = 49152;
    CHECK_ERR(tnn_llm_eval(m, &bad, 1, l1), TNN_ERR_RANGE, "outside the vocabulary");
    CHECK_ERR(tnn_llm_eval(m, ids, 0, l1), TNN_ERR_ARG, "n >= 1");
    CHECK_ERR(tnn_llm_eval(m, NULL, 1, l1), TNN_ERR_ARG, "n >= 1");
    CHECK(tnn_llm_pos(m) == pos, "pos after errors %d (was %d)", tnn_llm_pos(m), pos);
    CHECK_ERR(tnn_llm_tokenize(m, "x", 1, 8, NULL, 0), TNN_ERR_ARG, "flags");
    CHECK_ERR(tnn_llm_tokenize(m, NULL, 3, 0, NULL, 0), TNN_ERR_ARG, "");
    CHECK(tnn_llm_tokenize(m, g[1].text, strlen(g[1].text), 0, ids, 2) == g[1].n_tok,
          "a short buffer still counts every token");
    char piece[4] = "zzz";
    CHECK(tnn_llm_token_piece(m, g[0].greedy[0], 0, piece, 2) > 0 && piece[2] == 'z',
          "piece into a short buffer");
    CHECK_ERR(tnn_llm_token_piece(m, -1, 0, piece, 4), TNN_ERR_RANGE, "");
    CHECK_ERR((int)tnn_llm_detokenize(m, &bad, 1, 0, piece, 4), TNN_ERR_RANGE, "");
    CHECK_ERR((int)tnn_llm_generate(m, NULL, "x", 4, 16, NULL, NULL, NULL, 0), TNN_ERR_ARG,
              "flags");
    CHECK_NULL(tnn_sampler_new(0.8, 40, 0, 0.05, 1, 1), TNN_ERR_ARG, "top_p");
    CHECK_ERR(tnn_sampler_sample(greedy, NULL, V, NULL, 0), TNN_ERR_ARG, "logits");

    /* chat: the model's template (SmolLM2's default system message); the
     * answer stops at <|im_end|>; a second turn reusing the cache gives
     * the answer a fresh cache gives. "Which city": asked "What is the
     * capital of France?", the Q4_1 file answers "Paris" or drifts into
     * French ("L'Étoile, la Marseillaise, ..."; llama.cpp's answer on an
     * AVX2 machine) by the last bits of its products' rounding, which
     * differ between the AMX and the 8-bit activation paths */
    sink k1 = {.stop_after = -1}, k2 = {.stop_after = -1}, k3 = {.stop_after = -1};
    int64_t a1 = tnn_llm_generate(m, NULL, "Which city is the capital of France?", 16,
                                  TNN_GEN_CHAT, collect, &k1, NULL, 0);
    CHECK(a1 > 0 && strstr(k1.text, "Paris"), "chat answer: [%s]", k1.text);
    const char *roles[3] = {"user", "assistant", "user"};
    const char *texts[3] = {"Which city is the capital of France?", k1.text, "And of Germany?"};
    char *conv = chat(m, NULL, roles, texts, 3, 1);
    int32_t np1 = 0, np2 = 0;
    int64_t a2 = conv ? tnn_llm_generate(m, NULL, conv, 16, TNN_GEN_REUSE, collect, &k2, NULL, 0)
                      : -1;
    tnn_llm_last_stats(m, &np1, NULL, NULL, NULL);
    int64_t a3 = conv ? tnn_llm_generate(m, NULL, conv, 16, 0, collect, &k3, NULL, 0) : -1;
    tnn_llm_last_stats(m, &np2, NULL, NULL, NULL);
    CHECK(a2 > 0 && a2 == a3 && !strcmp(k2.text, k3.text) && strstr(k2.text, "Berlin"),
          "second turn: reused [%s], fresh [%s]", k2.text, k3.text);
    CHECK(np1 > 0 && np1 < np2 / 3, "reuse computed %d of the prompt's %d tokens", np1, np2);
    free(conv);

    /* a callback that stops; text into a short buffer */
    sink ks = {.stop_after = 2};
    char shortbuf[4];
    int64_t ls = tnn_llm_generate(m, NULL, g[1].text, 8, 0, collect, &ks, shortbuf, 4);
    CHECK(ks.calls == 2 && ls == (int64_t)ks.len && ls >= 4 && !memcmp(shortbuf, ks.text, 4),
          "stopped after %d pieces, %lld bytes", ks.calls, (long long)ls);

    /* sampling is reproducible with the seed */
    tnn_sampler *s1 = tnn_sampler_new(0.9, 40, 0.95, 0.05, 1.1, 42);
    tnn_sampler *s2 = tnn_sampler_new(0.9, 40, 0.95, 0.05, 1.1, 42);
    char o1[1024], o2[1024];
    int64_t r1 = tnn_llm_generate(m, s1, g[1].text, 12, 0, NULL, NULL, o1, sizeof o1);
    int64_t r2 = tnn_llm_generate(m, s2, g[1].text, 12, 0, NULL, NULL, o2, sizeof o2);
    CHECK(r1 > 0 && r1 == r2 && !strcmp(o1, o2), "same seed: [%s] / [%s]", o1, o2);
    tnn_sampler_free(s1);
    tnn_sampler_free(s2);

    /* prompts of many sizes in one model (each new size rebuilds the
     * prompt graph in place) keep giving the first one's answer */
    char base[1024], again[1024];
    tnn_llm_generate(m, NULL, g[0].text, 8, 0, NULL, NULL, base, sizeof base);
    for (int len = 2; len < 40; len += SIZE_STEP) {
        char text[256];
        snprintf(text, sizeof text, "%.*s", len, "A list of words: apple, banana, cherry, grape, "
                                                  "lemon, mango, peach.");
        CHECK(tnn_llm_generate(m, NULL, text, 2, 0, NULL, NULL, NULL, 0) >= 0, "%s",
              tnn_last_error());
    }
    tnn_llm_generate(m, NULL, g[0].text, 8, 0, NULL, NULL, again, sizeof again);
    CHECK(!strcmp(base, again), "after other sizes: [%s] / [%s]", again, base);

    tnn_sampler_free(greedy);
    free(l1);
    free(l2);
    tnn_llm_close(m);

    /* a small context: a prompt that does not fit, and generation that
     * fills it stops there */
    m = tnn_llm_open(MODEL, 16, TNN_LLM_KV_F32 | LLM_FLAGS);
    CHECK(m, "open n_ctx 16: %s", tnn_last_error());
    if (!m) return;
    const char *long_prompt = "one two three four five six seven eight nine ten eleven twelve "
                              "thirteen fourteen fifteen sixteen seventeen";
    CHECK(tnn_llm_tokenize(m, long_prompt, strlen(long_prompt), 0, NULL, 0) > 16, "long prompt");
    CHECK_ERR((int)tnn_llm_generate(m, NULL, long_prompt, 4, 0, NULL, NULL, NULL, 0),
              TNN_ERR_RANGE, "do not fit the context");
    int64_t lf = tnn_llm_generate(m, NULL, g[0].text, 100, 0, NULL, NULL, NULL, 0);
    int32_t ngen = 0;
    tnn_llm_last_stats(m, NULL, &ngen, NULL, NULL);
    CHECK(lf > 0 && tnn_llm_pos(m) == 16 && ngen == 16 - g[0].n_tok + 1,
          "filled the context: pos %d, %d generated", tnn_llm_pos(m), ngen);
    tnn_llm_close(m);
}

/* ---- training through tnn_trainer_* ---- */

#ifndef TNN_TEST_CUDA /* the training graphs' CUDA runs: test_parity and test_train */

typedef struct {
    int lines, steps;
} log_count;

static int count_log(const char *text, size_t len, void *user) {
    log_count *c = user;
    for (size_t i = 0; i < len; i++) c->lines += text[i] == '\n';
    for (const char *p = text; (p = strstr(p, "step ")) && p < text + len; p += 5) c->steps++;
    return 0;
}

static void set_all(tnn_trainer *t, const char *const *kv) {
    for (; kv[0]; kv += 2) CHECK_OK(tnn_trainer_set(t, kv[0], kv[1]));
}

static void test_trainer(void) {
    char corpus[64], ck[96];
    snprintf(corpus, sizeof corpus, "/tmp/tnn-llmapi-corpus-%d.txt", (int)getpid());
    snprintf(ck, sizeof ck, "/tmp/tnn-llmapi-ck-%d.gguf", (int)getpid());
    FILE *f = fopen(corpus, "w");
    CHECK(f, "corpus file");
    if (!f) return;
    static const char *phrases[] = {"the cat sat on the mat. ", "a dog ran in the park. ",
                                    "the sun is warm today. ", "we like to read books. "};
    unsigned x = 7;
    for (int i = 0; i < 3000; i++) {
        x = x * 1103515245u + 12345u;
        fputs(phrases[(x >> 16) % 4], f);
    }
    fclose(f);

    tnn_trainer *t = tnn_trainer_new();
    CHECK(t, "tnn_trainer_new: %s", tnn_last_error());
    if (!t) return;
    CHECK_ERR(tnn_trainer_set(t, "bogus", "1"), TNN_ERR_ARG, "unknown option 'bogus'");
    CHECK_ERR(tnn_trainer_set(t, "steps", "0"), TNN_ERR_ARG, "steps = '0'");
    CHECK_ERR(tnn_trainer_set(t, "lr", "fast"), TNN_ERR_ARG, "a number");
    CHECK_ERR(tnn_trainer_set(t, "layers", "2.5"), TNN_ERR_ARG, "an integer");
    CHECK_ERR(tnn_trainer_set(t, NULL, "1"), TNN_ERR_ARG, "NULL");
    CHECK_ERR(tnn_trainer_set(NULL, "steps", "1"), TNN_ERR_ARG, "NULL");
    CHECK_ERR(tnn_trainer_run(t, NULL, NULL), TNN_ERR_ARG, "no training text");
    CHECK_ERR(tnn_trainer_result(t, NULL, NULL, NULL, NULL, NULL, NULL), TNN_ERR_STATE, "no finished");
    CHECK_OK(tnn_trainer_set(t, "data", "/nonexistent-corpus.txt"));
    CHECK_ERR(tnn_trainer_run(t, NULL, NULL), TNN_ERR_ARG, "cannot read the training data");
    tnn_trainer_free(t);

    /* a shape that does not work is refused before training */
    t = tnn_trainer_new();
    const char *bad_shape[] = {"data", corpus, "dim", "30", "heads", "4", NULL};
    set_all(t, bad_shape);
    CHECK_ERR(tnn_trainer_run(t, NULL, NULL), TNN_ERR_ARG, "model shape");
    tnn_trainer_free(t);

    /* on the GPU where there is one (the CPU, logged, elsewhere) */
    t = tnn_trainer_new();
    const char *cuda_run[] = {"data", corpus, "steps", "5", "batch", "2", "seq", "16", "dim", "32",
                              "ff", "64", "layers", "1", "sample-len", "0", "cuda", "1", NULL};
    set_all(t, cuda_run);
    CHECK_ERR(tnn_trainer_set(t, "cuda", "2"), TNN_ERR_ARG, "cuda = '2'");
    CHECK_OK(tnn_trainer_run(t, NULL, NULL));
    tnn_trainer_free(t);

    /* bytes as tokens: the loss falls, the progress comes to the callback */
    t = tnn_trainer_new();
    const char *bytes_run[] = {"data", corpus, "steps", "120", "batch", "8", "seq", "32",
                               "dim", "32", "ff", "64", "layers", "2", "lr", "1e-2",
                               "warmup", "10", "eval-every", "60", "sample-len", "0", NULL};
    set_all(t, bytes_run);
    log_count lc = {0};
    CHECK_OK(tnn_trainer_run(t, count_log, &lc));
    int32_t steps = 0;
    double l0 = 0, l1 = 0, v0 = 0, v1 = 0, tps = 0;
    CHECK_OK(tnn_trainer_result(t, &steps, &l0, &l1, &v0, &v1, &tps));
    CHECK(steps == 120 && v0 > 5.0 && v1 < v0 - 2.5 && l1 < l0 && tps > 0,
          "bytes: %d steps, validation loss %.3f -> %.3f (ln 256 = 5.55 at the start)", steps,
          v0, v1);
    CHECK(lc.lines >= 4 && lc.steps >= 3, "progress: %d lines, %d step lines", lc.lines, lc.steps);
    tnn_trainer_free(t);

    /* with SmolLM2's tokenizer: the checkpoint is a model tnn_llm_open runs */
    FILE *probe = fopen(MODEL, "rb");
    if (!probe) {
        printf("trainer with a tokenizer skipped: %s is absent\n", MODEL);
        unlink(corpus);
        return;
    }
    fclose(probe);
    t = tnn_trainer_new();
    const char *tok_run[] = {"data", corpus, "tokenizer", MODEL, "checkpoint", ck, "steps", "60",
                             "batch", "8", "seq", "16", "dim", "32", "ff", "64", "layers", "2",
                             "lr", "1e-2", "warmup", "10", "eval-every", "60", "sample-len", "0",
                             NULL};
    set_all(t, tok_run);
    CHECK_OK(tnn_trainer_run(t, NULL, NULL));
    CHECK_OK(tnn_trainer_result(t, &steps, NULL, NULL, &v0, &v1, NULL));
    CHECK(v0 > 9.0 && v1 < v0 - 2.0, "tokenizer run: validation loss %.3f -> %.3f", v0, v1);
    tnn_trainer_free(t);
    tnn_llm *m = tnn_llm_open(ck, 64, 0);
    CHECK(m, "the checkpoint as a model: %s", tnn_last_error());
    if (m) {
        char out[512];
        int64_t n = tnn_llm_generate(m, NULL, "the cat sat on", 12, 0, NULL, NULL, out, sizeof out);
        CHECK(n > 0 && (strstr(out, "the") || strstr(out, ".")),
              "the trained model's continuation: [%s]", n > 0 ? out : tnn_last_error());
        printf("trained through tnn_trainer_*: validation loss %.3f -> %.3f; \"the cat sat on\" "
               "->%s\n", v0, v1, out);
        tnn_llm_close(m);
    }
    unlink(ck);
    unlink(corpus);
}
#endif

int main(void) {
    TH_USE_CUDA("test_llm_api");
    test_chat_families();
    CHECK_ERR(tnn_llm_n_vocab(NULL), TNN_ERR_ARG, "NULL");
    CHECK_ERR(tnn_llm_eval(NULL, NULL, 0, NULL), TNN_ERR_ARG, "NULL");
    CHECK(tnn_llm_arch(NULL) == NULL && tnn_llm_gguf(NULL) == NULL, "NULL model");
    tnn_llm_close(NULL);
    tnn_sampler_free(NULL);
#ifndef TNN_TEST_CUDA
    test_trainer();
#endif
    FILE *probe = fopen(MODEL, "rb");
    if (probe) {
        fclose(probe);
        test_model();
    } else {
        printf("model checks skipped: %s is absent (run make models)\n", MODEL);
    }
    return th_finish("test_llm_api");
}
