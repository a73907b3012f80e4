/* tnn.c - the command-line tool: `tnn demo` trains the small demo model and
 * generates text from it; `tnn train` trains on given text files.
 */
#include "tinynn.h"

#include "../src/llm/checkpoint.h"
#include "../src/llm/llama.h"
#include "../src/llm/quantize.h"
#include "../src/llm/tokenizer.h"
#include "../src/llm/train.h"

#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: tnn COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  demo                 train the small demo model on a built-in corpus, then\n"
            "                       generate text (about two minutes on 2 cores)\n"
            "  train FILE...        train a transformer on text files (bytes or --tokenizer)\n"
            "  sample -m CKPT       continue a prompt with a trained checkpoint\n"
            "  info FILE.gguf       print a GGUF file's metadata and tensor table\n"
            "  generate -m MODEL.gguf -p PROMPT   run a llama/qwen2 GGUF model\n"
            "  chat -m MODEL.gguf   talk with an instruct model, one line a turn\n"
            "  perplexity -m MODEL.gguf -f TEXT   the text's perplexity (llama.cpp's method;\n"
            "                       --chunk N tokens (512), --chunks N (0: all),\n"
            "                       --lora ADAPTER.gguf)\n"
            "  quantize IN.gguf OUT.gguf TYPE     convert weight matrices (q8_0, q4_0, q4_1,\n"
            "                       q5_0, q5_1, f16, bf16, f32); a checkpoint becomes a model\n"
            "                       for inference (no optimizer state; llama.cpp reads it);\n"
            "                       --lora ADAPTER.gguf [--lora-scale X] merges an adapter\n"
            "                       into the weights (llama.cpp's layout, as --lora reads)\n"
            "  lora-export CKPT.gguf OUT.gguf    a LoRA run's factors as an adapter file\n"
            "                       (llama.cpp's layout: llama-cli -m BASE --lora OUT)\n"
            "  version              print the library version\n"
            "\n"
            "  --cuda (with any command): run the model on the GPU (CUDA builds)\n"
            "\n"
            "train/demo options:\n"
            "  --steps N            optimizer steps (600; demo: 1200)\n"
            "  --batch N            sequences per step (16)\n"
            "  --seq N              context length in tokens (64)\n"
            "  --layers N --dim N --heads N --kv-heads N --ff N   model shape (4 128 4 2 352)\n"
            "  --lr X               peak learning rate (3e-3); warm-up then cosine\n"
            "  --warmup N           warm-up steps (30)\n"
            "  --bf16               mixed precision: products on bf16 copies of the weights\n"
            "                       (with --cuda: of the activations too, and --tf32 for\n"
            "                       attention unless TNN_CUDA_TF32=0), f32 master weights,\n"
            "                       gradients and AdamW; with --lora the frozen weights\n"
            "                       of the projections are kept in bf16 (half the memory)\n"
            "  --tf32               with --cuda: f32 products on the tensor cores with TF32\n"
            "                       inputs (TNN_CUDA_TF32=1; faster, about 1e-3 relative)\n"
            "  --seed N             initialisation and batch seed (1337)\n"
            "  --threads N          worker threads (default: TNN_THREADS or all cores)\n"
            "  --eval-every N       validation every N steps (100; demo: 200)\n"
            "  --sample-every N     print a sample every N steps (0: only at the end)\n"
            "  --sample-len N       tokens to generate (demo: 400)\n"
            "  --prompt TEXT        start of the generated text\n"
            "  --temp X --top-k N --top-p X   sampling (0.8 40 0.95; temp 0 = greedy)\n"
            "  --log FILE.csv --svg FILE.svg  loss log and loss-curve picture\n"
            "  --checkpoint FILE    write a GGUF checkpoint (weights, AdamW state, step, RNG);\n"
            "                       \"{step}\" in FILE is replaced by the step number\n"
            "  --checkpoint-every N   ... every N steps as well as at the end\n"
            "  --resume FILE        continue a run from its checkpoint (same data files);\n"
            "                       --steps then sets the new total\n"
            "  --tokenizer MODEL.gguf   tokens from that model's tokenizer (its vocabulary)\n"
            "                       instead of bytes; checkpoints carry it\n"
            "  --init MODEL.gguf    fine-tune a llama/qwen2 model (any tensor type): its\n"
            "                       weights (as f32), shape and tokenizer; --lr 1e-4 unless\n"
            "                       given; --seq is the training window\n"
            "  --lora N             with --init: LoRA of rank N (the weights frozen, a low-\n"
            "                       rank update of each projection trained; --lr 1e-3 unless\n"
            "                       given); --lora-alpha X scales it by X/N (2N)\n"
            "  --qlora              with --lora: the frozen weights as the file stores them\n"
            "                       (quantized ones stay quantized, read in place, not\n"
            "                       copied): QLoRA, a fraction of the memory\n"
            "  --lora-only          with --lora: checkpoints hold the factors and their\n"
            "                       optimizer state only, not the merged model (MBs, not\n"
            "                       GBs; --resume reads the rest from --init again, tnn\n"
            "                       lora-export makes the adapter to run)\n"
            "  FILE.jsonl           conversations, {\"messages\": [{\"role\": ..., \"content\":\n"
            "                       ...}, ...]} a line, in the model's chat template; the loss\n"
            "                       scores the assistant's turns only\n"
            "\n"
            "sample options: -m CKPT, --prompt TEXT, -n N (tokens, 200), --temp, --top-k,\n"
            "  --top-p, --seed\n"
            "\n"
            "generate options: -m MODEL.gguf, -p PROMPT, -n N (tokens, 128), --temp X (0 =\n"
            "  greedy; 0.8), --top-k N (40), --top-p X (0.95), --min-p X (0.05),\n"
            "  --repeat-penalty X (1.0), --seed N, --ctx N, --kv f16|f32 (cache type, f16),\n"
            "  --chat (the prompt is a user message in the model's chat template: chatml,\n"
            "  llama3, zephyr or llama2), --system TEXT (with --chat: the system message),\n"
            "  --lora ADAPTER.gguf (applied at run time, as llama.cpp's --lora; tnn\n"
            "  lora-export writes one), --lora-scale X (1.0)\n"
            "chat options: those of generate, but -p and --chat\n");
}

static bool parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

static bool parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end) return false;
    *out = v;
    return true;
}

/* Sets the train/demo options on t (tnn_trainer_set: the option's name
 * without the dashes); other arguments are data files, counted in *nfiles.
 * Returns false (after a message) on a bad option. */
static bool parse_opts(int argc, char **argv, tnn_trainer *t, int *nfiles, int *threads,
                       const char **log_csv, const char **log_svg) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--bf16")) {
            tnn_trainer_set(t, "bf16", "1");
            /* the f32 products left on a GPU (attention's) in TF32, unless
             * TNN_CUDA_TF32 says otherwise: still finer than bf16 */
            setenv("TNN_CUDA_TF32", "1", 0);
            continue;
        }
        if (!strcmp(a, "--qlora") || !strcmp(a, "--lora-only")) {
            tnn_trainer_set(t, a + 2, "1");
            continue;
        }
        if (!strcmp(a, "--tf32")) {
            setenv("TNN_CUDA_TF32", "1", 1);
            continue;
        }
        if (a[0] != '-' || !a[1]) {
            if (tnn_trainer_set(t, "data", a) != TNN_OK) {
                fprintf(stderr, "tnn: %s\n", tnn_last_error());
                return false;
            }
            (*nfiles)++;
            continue;
        }
        if (!v) {
            fprintf(stderr, "tnn: %s wants a value\n", a);
            return false;
        }
        i++;
        if (!strcmp(a, "--threads")) {
            if (!parse_int(v, 1, 256, threads)) {
                fprintf(stderr, "tnn: --threads wants an integer in 1..256\n");
                return false;
            }
            continue;
        }
        if (!strncmp(a, "--", 2) && tnn_trainer_set(t, a + 2, v) == TNN_OK) {
            if (!strcmp(a, "--log")) *log_csv = v;
            if (!strcmp(a, "--svg")) *log_svg = v;
            continue;
        }
        fprintf(stderr, "tnn: %s%s\n", strncmp(a, "--", 2) ? "unknown option: " : "",
                strncmp(a, "--", 2) ? a : tnn_last_error());
        return false;
    }
    return true;
}

/* The demo corpus: fortunes from Debian's `fortunes` package (installed by
 * `make demo`), else the licence texts every Debian system has. */
static int demo_corpus(const char **files, int max, glob_t *g) {
    static const char *fortunes[] = {"fortunes", "wisdom", "literature", "people", "science",
                                     "humorists", "platitudes", "art", "work"};
    static char paths[9][128];
    int n = 0;
    for (int i = 0; i < 9 && n < max; i++) {
        snprintf(paths[i], sizeof paths[i], "/usr/share/games/fortunes/%s", fortunes[i]);
        struct stat st;
        if (stat(paths[i], &st) == 0 && S_ISREG(st.st_mode)) files[n++] = paths[i];
    }
    if (n > 0) return n;
    if (glob("/usr/share/common-licenses/*", 0, NULL, g) == 0)
        for (size_t i = 0; i < g->gl_pathc && n < max; i++) {
            struct stat st;
            if (stat(g->gl_pathv[i], &st) == 0 && S_ISREG(st.st_mode)) files[n++] = g->gl_pathv[i];
        }
    return n;
}

static int print_log(const char *text, size_t len, void *user) {
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static int cmd_train(int argc, char **argv, bool demo) {
    tnn_trainer *t = tnn_trainer_new();
    if (!t) {
        fprintf(stderr, "tnn: %s\n", tnn_last_error());
        return 1;
    }
    const char *log_csv = NULL, *log_svg = NULL;
    if (demo) {
        tnn_trainer_set(t, "steps", "1200"); /* about a minute and a half on 2 idle cores */
        tnn_trainer_set(t, "eval-every", "200");
        tnn_trainer_set(t, "sample-len", "400");
        tnn_trainer_set(t, "log", log_csv = "tnn-demo-loss.csv");
        tnn_trainer_set(t, "svg", log_svg = "tnn-demo-loss.svg");
    }
    int nfiles = 0, threads = 0, rc = 2;
    glob_t g = {0};
    if (!parse_opts(argc, argv, t, &nfiles, &threads, &log_csv, &log_svg)) goto done;
    if (nfiles == 0 && demo) {
        const char *files[64];
        nfiles = demo_corpus(files, 64, &g);
        if (nfiles == 0) {
            fprintf(stderr, "tnn demo: no corpus found (install Debian's fortunes package)\n");
            rc = 1;
            goto done;
        }
        for (int i = 0; i < nfiles; i++) tnn_trainer_set(t, "data", files[i]);
        printf("corpus: %s%s (%d files)\n", files[0],
               strstr(files[0], "fortunes") ? " and more fortune files" : " and more", nfiles);
    }
    if (nfiles == 0) {
        fprintf(stderr, "tnn train: give one or more text files%s\n",
                " (--resume needs the same text files as the run it continues)");
        goto done;
    }
    if (threads > 0 && tnn_set_num_threads(threads) != TNN_OK) {
        fprintf(stderr, "tnn: %s\n", tnn_last_error());
        goto done;
    }
    rc = tnn_trainer_run(t, print_log, NULL) == TNN_OK ? 0 : 1;
    int32_t steps;
    double l0, l1, v0, v1, tps;
    if (rc == 0 && tnn_trainer_result(t, &steps, &l0, &l1, &v0, &v1, &tps) == TNN_OK) {
        printf("done: %d steps, training loss %.3f -> %.3f, validation loss %.3f -> %.3f, "
               "%.0f tokens/s\n", steps, l0, l1, v0, v1, tps);
        if (log_csv) printf("loss log: %s, loss curve: %s\n", log_csv, log_svg ? log_svg : "-");
    }
done:
    globfree(&g);
    tnn_trainer_free(t);
    return rc;
}

/* `tnn info FILE.gguf`: metadata and tensor table. */
static void print_value(const tnn_gguf *g, const char *key) {
    int type = tnn_gguf_kv_type(g, key);
    const char *str;
    int64_t iv;
    double dv;
    int b;
    if (type == TNN_GGUF_STRING && tnn_gguf_get_str(g, key, &str, NULL) == TNN_OK) {
        int n = 0;
        putchar('"');
        for (const char *p = str; *p && n < 60; p++, n++) putchar(*p == '\n' ? ' ' : *p);
        printf(strlen(str) > 60 ? "...\"" : "\"");
    } else if (type == TNN_GGUF_BOOL && tnn_gguf_get_bool(g, key, &b) == TNN_OK) {
        printf("%s", b ? "true" : "false");
    } else if (type == TNN_GGUF_ARRAY) {
        int64_t n = tnn_gguf_arr_len(g, key);
        printf("[%s x %lld]", tnn_gguf_value_type_name(tnn_gguf_arr_type(g, key)), (long long)n);
    } else if (tnn_gguf_get_i64(g, key, &iv) == TNN_OK) {
        printf("%lld", (long long)iv);
    } else if (tnn_gguf_get_f64(g, key, &dv) == TNN_OK) {
        printf("%g", dv);
    } else {
        printf("(%s)", tnn_gguf_value_type_name(type));
    }
    putchar('\n');
}

static int cmd_info(int argc, char **argv) {
    if (argc != 1) {
        fprintf(stderr, "usage: tnn info FILE.gguf\n");
        return 2;
    }
    tnn_gguf *g = tnn_gguf_open(argv[0]);
    if (!g) {
        fprintf(stderr, "tnn info: %s\n", tnn_last_error());
        return 1;
    }
    printf("GGUF version %d, alignment %lld, %lld keys, %lld tensors\n", tnn_gguf_version(g),
           (long long)tnn_gguf_alignment(g), (long long)tnn_gguf_n_kv(g),
           (long long)tnn_gguf_n_tensors(g));
    for (int64_t i = 0; i < tnn_gguf_n_kv(g); i++) {
        const char *key = tnn_gguf_key(g, i);
        printf("  %-44s ", key);
        print_value(g, key);
    }
    int64_t total = 0;
    printf("tensors:\n");
    for (int64_t i = 0; i < tnn_gguf_n_tensors(g); i++) {
        int64_t shape[4];
        int nd = tnn_gguf_tensor_shape(g, i, shape);
        char dims[64] = "";
        size_t off = 0;
        for (int k = 0; k < nd; k++)
            off += (size_t)snprintf(dims + off, sizeof dims - off, k ? " x %lld" : "%lld",
                                    (long long)shape[k]);
        printf("  %-36s %-6s %-18s %10lld bytes\n", tnn_gguf_tensor_name(g, i),
               tnn_ggml_type_name(tnn_gguf_tensor_type(g, i)), dims,
               (long long)tnn_gguf_tensor_nbytes(g, i));
        total += tnn_gguf_tensor_nbytes(g, i);
    }
    printf("%lld bytes of tensor data\n", (long long)total);
    tnn_gguf_close(g);
    return 0;
}

static int cmd_lora_export(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: tnn lora-export CHECKPOINT.gguf ADAPTER.gguf\n");
        return 2;
    }
    if (tnn_lora_export(argv[0], argv[1]) != TNN_OK) {
        fprintf(stderr, "tnn lora-export: %s\n", tnn_last_error());
        return 1;
    }
    printf("wrote %s\n", argv[1]);
    return 0;
}

static int cmd_quantize(int argc, char **argv) {
    const char *adapter = NULL;
    double scale = 1.0;
    int pos = 0;
    bool bad = false;
    for (int i = 0; i < argc; i++) { /* the options may come anywhere after the command */
        if (!strcmp(argv[i], "--lora") && i + 1 < argc)
            adapter = argv[++i];
        else if (!strcmp(argv[i], "--lora-scale") && i + 1 < argc &&
                 parse_double(argv[i + 1], &scale))
            i++;
        else if (argv[i][0] == '-' && argv[i][1] == '-')
            bad = true; /* an unknown option, or one without its value */
        else
            argv[pos++] = argv[i]; /* pos <= i: the operands moved to the front */
    }
    argc = pos;
    if (bad || argc != 3) {
        fprintf(stderr, "usage: tnn quantize IN.gguf OUT.gguf TYPE (q8_0 q4_0 q4_1 q5_0 q5_1 f16 "
                "bf16 f32) [--lora ADAPTER.gguf [--lora-scale X]]\n");
        return 2;
    }
    int type = lm_quant_type_from_name(argv[2]);
    if (type < 0) {
        fprintf(stderr, "tnn quantize: unknown type '%s'\n", argv[2]);
        return 2;
    }
    int n = 0;
    if (lm_quantize_file(argv[0], argv[1], type, adapter, scale, &n) != TNN_OK) {
        fprintf(stderr, "tnn quantize: %s\n", tnn_last_error());
        return 1;
    }
    printf("%s: %d weight matrices converted to %s%s%s\n", argv[1], n, tnn_ggml_type_name(type),
           adapter ? ", the adapter merged from " : "", adapter ? adapter : "");
    return 0;
}

static int cmd_sample(int argc, char **argv) {
    const char *model = NULL, *prompt = "\n";
    int n = 200;
    lm_sampler_params sp = lm_sampler_defaults();
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
        if (!v) {
            fprintf(stderr, "tnn sample: %s wants a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "-m")) model = v;
        else if (!strcmp(a, "--prompt") || !strcmp(a, "-p")) prompt = v;
        else if (!strcmp(a, "-n") && parse_int(v, 0, 1000000, &n)) continue;
        else if (!strcmp(a, "--temp") && parse_double(v, &sp.temperature)) continue;
        else if (!strcmp(a, "--top-k") && parse_int(v, 0, 1000000, &sp.top_k)) continue;
        else if (!strcmp(a, "--top-p") && parse_double(v, &sp.top_p)) continue;
        else if (!strcmp(a, "--seed") && parse_double(v, &x) && x >= 0) sp.seed = (uint64_t)x;
        else {
            fprintf(stderr, "tnn sample: bad option %s %s (tnn help)\n", a, v);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "tnn sample: give a checkpoint with -m\n");
        return 2;
    }
    lm_config cfg;
    lm_graph g;
    lm_sampler sm;
    const char *why;
    if (lm_checkpoint_read_config(model, &cfg, NULL) != TNN_OK) {
        fprintf(stderr, "tnn sample: %s\n", tnn_last_error());
        return 1;
    }
    if (lm_graph_build(&g, &cfg, 1, cfg.seq_len, false, NULL, lm_cuda()) != TNN_OK) {
        fprintf(stderr, "tnn sample: %s\n", tnn_last_error());
        return 1;
    }
    int rc = lm_checkpoint_load(model, &g, false, LM_LOAD_ALL);
    if (rc != TNN_OK) {
        fprintf(stderr, "tnn sample: %s\n", tnn_last_error());
    } else if (lm_sampler_init(&sm, &sp, cfg.vocab, &why)) {
        fprintf(stderr, "tnn sample: %s\n", why);
        rc = 1;
    } else {
        /* a checkpoint trained with a GGUF tokenizer carries it */
        lm_tokenizer *tk = NULL;
        tnn_gguf *tf = NULL;
        rc = lm_tokenizer_open(model, &tk, &tf);
        if (rc != TNN_OK) {
            fprintf(stderr, "tnn sample: tokenizer: %s\n", tnn_last_error());
        } else {
            fputs(prompt, stdout);
            rc = lm_generate(&g, &sm, tk, prompt, strlen(prompt), n, stdout);
            fputc('\n', stdout);
        }
        lm_tokenizer_free(tk);
        tnn_gguf_close(tf);
        lm_sampler_free(&sm);
    }
    lm_graph_free(&g);
    return rc == TNN_OK ? 0 : 1;
}

/* Options of `tnn generate` and `tnn chat`. */
typedef struct {
    const char *model, *prompt, *system;
    const char *lora;
    int n, n_ctx, chat, kv_f32;
    double temp, top_k, top_p, min_p, repeat_penalty, seed, lora_scale;
} gen_opts;

static bool parse_gen_opts(const char *cmd, int argc, char **argv, gen_opts *o) {
    *o = (gen_opts){.n = 128, .temp = 0.8, .top_k = 40, .top_p = 0.95, .min_p = 0.05,
                    .repeat_penalty = 1.0, .seed = 1, .lora_scale = 1.0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--chat")) {
            o->chat = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "tnn %s: %s wants a value\n", cmd, a);
            return false;
        }
        i++;
        if (!strcmp(a, "-m")) o->model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "--system")) o->system = v;
        else if (!strcmp(a, "--lora")) o->lora = v;
        else if (!strcmp(a, "--lora-scale") && parse_double(v, &o->lora_scale)) continue;
        else if (!strcmp(a, "-n") && parse_int(v, 1, 1000000, &o->n)) continue;
        else if (!strcmp(a, "--ctx") && parse_int(v, 16, 1 << 20, &o->n_ctx)) continue;
        else if (!strcmp(a, "--kv") && (!strcmp(v, "f16") || !strcmp(v, "f32")))
            o->kv_f32 = !strcmp(v, "f32");
        else if (!strcmp(a, "--temp") && parse_double(v, &o->temp)) continue;
        else if (!strcmp(a, "--top-k") && parse_double(v, &o->top_k) && o->top_k >= 0 &&
                 o->top_k <= 1e6 && o->top_k == (int)o->top_k)
            continue;
        else if (!strcmp(a, "--top-p") && parse_double(v, &o->top_p)) continue;
        else if (!strcmp(a, "--min-p") && parse_double(v, &o->min_p)) continue;
        else if (!strcmp(a, "--repeat-penalty") && parse_double(v, &o->repeat_penalty)) continue;
        else if (!strcmp(a, "--seed") && parse_double(v, &o->seed) && o->seed >= 0) continue;
        else {
            fprintf(stderr, "tnn %s: bad option %s %s (tnn help)\n", cmd, a, v);
            return false;
        }
    }
    if (!o->model) {
        fprintf(stderr, "usage: tnn %s -m MODEL.gguf%s [options] (tnn help)\n", cmd,
                strcmp(cmd, "chat") ? " -p PROMPT" : "");
        return false;
    }
    return true;
}

/* Opens the model and its sampler; false after a message. */
static bool open_gen(const char *cmd, const gen_opts *o, tnn_llm **m, tnn_sampler **sm) {
    *m = tnn_llm_open(o->model, o->n_ctx,
                      (lm_cuda() ? TNN_LLM_CUDA : 0) | (o->kv_f32 ? TNN_LLM_KV_F32 : 0));
    if (*m && o->lora && tnn_llm_load_lora(*m, o->lora, (float)o->lora_scale) != TNN_OK) {
        fprintf(stderr, "tnn %s: %s\n", cmd, tnn_last_error());
        tnn_llm_close(*m);
        return false;
    }
    *sm = *m ? tnn_sampler_new(o->temp, (int32_t)o->top_k, o->top_p, o->min_p,
                               o->repeat_penalty, (uint64_t)o->seed)
             : NULL;
    if (*sm) return true;
    fprintf(stderr, "tnn %s: %s\n", cmd, tnn_last_error());
    tnn_llm_close(*m);
    return false;
}

/* Generated text to stdout as it comes; in chat, also kept for the next
 * turn's conversation. */
typedef struct {
    char *text;
    size_t len, cap;
    bool keep;
} gen_sink;

static int print_text(const char *text, size_t len, void *user) {
    gen_sink *k = user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    if (k->keep) {
        if (k->len + len + 1 > k->cap) {
            size_t cap = (k->len + len + 1) * 2;
            char *t = realloc(k->text, cap);
            if (!t) return 1; /* stop: the answer could not be kept */
            k->text = t;
            k->cap = cap;
        }
        memcpy(k->text + k->len, text, len);
        k->len += len;
        k->text[k->len] = 0;
    }
    return 0;
}

static void print_stats(const tnn_llm *m) {
    int32_t np, ng;
    double ps, gs;
    tnn_llm_last_stats(m, &np, &ng, &ps, &gs);
    fprintf(stderr, "prompt: %d tokens, %.1f tokens/s; generation: %d tokens, %.1f tokens/s\n",
            np, np / (ps > 0 ? ps : 1e-9), ng, ng / (gs > 0 ? gs : 1e-9));
}

/* A conversation: roles (static strings) and copies of the texts. Adding
 * says why when it fails. */
typedef struct {
    const char **roles;
    char **texts;
    int n, cap;
} conversation;

static bool conv_add(conversation *c, const char *role, const char *text) {
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 8;
        const char **r = realloc(c->roles, sizeof *r * (size_t)cap);
        if (r) c->roles = r;
        char **t = realloc(c->texts, sizeof *t * (size_t)cap);
        if (t) c->texts = t;
        if (!r || !t) {
            fprintf(stderr, "tnn: out of memory\n");
            return false;
        }
        c->cap = cap;
    }
    char *copy = strdup(text);
    if (!copy) {
        fprintf(stderr, "tnn: out of memory\n");
        return false;
    }
    c->roles[c->n] = role;
    c->texts[c->n++] = copy;
    return true;
}

static void conv_free(conversation *c) {
    for (int i = 0; i < c->n; i++) free(c->texts[i]);
    free(c->roles);
    free(c->texts);
}

/* The conversation in the model's chat template, ready for the assistant's
 * answer (malloc'd), or NULL after a message. */
static char *chat_prompt(const char *cmd, const tnn_llm *m, const conversation *c) {
    const char *const *texts = (const char *const *)c->texts;
    int64_t need = tnn_llm_chat_format(m, NULL, c->roles, texts, c->n, 1, NULL, 0);
    char *text = need >= 0 ? malloc((size_t)need + 1) : NULL;
    if (text) tnn_llm_chat_format(m, NULL, c->roles, texts, c->n, 1, text, (size_t)need + 1);
    else fprintf(stderr, "tnn %s: %s\n", cmd, need < 0 ? tnn_last_error() : "out of memory");
    return text;
}

/* `tnn generate`: prompt in, streamed text out, speeds on stderr. */
static int cmd_generate(int argc, char **argv) {
    gen_opts o;
    tnn_llm *m;
    tnn_sampler *sm;
    if (!parse_gen_opts("generate", argc, argv, &o)) return 2;
    if (!o.prompt) {
        fprintf(stderr, "usage: tnn generate -m MODEL.gguf -p PROMPT [options] (tnn help)\n");
        return 2;
    }
    if (!open_gen("generate", &o, &m, &sm)) return 1;
    char *text = NULL;
    int64_t r = 0;
    if (o.chat && o.system) { /* else the library formats the one user message */
        conversation c = {0};
        if (conv_add(&c, "system", o.system) && conv_add(&c, "user", o.prompt))
            text = chat_prompt("generate", m, &c);
        conv_free(&c);
        if (!text) r = -1;
    }
    if (!r) {
        gen_sink sink = {0};
        if (!o.chat) fputs(o.prompt, stdout);
        int flags = o.chat && !o.system ? TNN_GEN_CHAT : 0;
        r = tnn_llm_generate(m, sm, text ? text : o.prompt, o.n, flags, print_text, &sink, NULL, 0);
        fputc('\n', stdout);
        fflush(stdout);
        if (r < 0) fprintf(stderr, "tnn generate: %s\n", tnn_last_error());
        else print_stats(m);
    }
    free(text);
    tnn_sampler_free(sm);
    tnn_llm_close(m);
    return r < 0 ? 1 : 0;
}

/* `tnn chat`: a conversation on stdin and stdout, one line a turn; the
 * cache keeps what the turns before computed. */
static int cmd_chat(int argc, char **argv) {
    gen_opts o;
    tnn_llm *m;
    tnn_sampler *sm;
    if (!parse_gen_opts("chat", argc, argv, &o)) return 2;
    if (!open_gen("chat", &o, &m, &sm)) return 1;
    conversation c = {0};
    gen_sink sink = {.keep = true};
    char line[8192];
    int rc = o.system && !conv_add(&c, "system", o.system);
    fprintf(stderr, "(one line a turn; an empty line or end of input ends the chat)\n");
    while (!rc) {
        fputs("> ", stdout);
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) break;
        size_t len = strlen(line);
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) break;
        char *text = conv_add(&c, "user", line) ? chat_prompt("chat", m, &c) : NULL;
        if (!text) {
            rc = 1;
            break;
        }
        sink.len = 0;
        int64_t r = tnn_llm_generate(m, sm, text, o.n, TNN_GEN_REUSE, print_text, &sink, NULL, 0);
        free(text);
        fputc('\n', stdout);
        if (r < 0) {
            fprintf(stderr, "tnn chat: %s\n", tnn_last_error());
            rc = 1;
            break;
        }
        print_stats(m);
        rc = !conv_add(&c, "assistant", sink.text ? sink.text : "");
    }
    conv_free(&c);
    free(sink.text);
    tnn_sampler_free(sm);
    tnn_llm_close(m);
    return rc;
}

/* `tnn perplexity`: a text file's perplexity under a model, as llama.cpp's
 * perplexity tool measures it. */
static int cmd_perplexity(int argc, char **argv) {
    const char *model = NULL, *file = NULL, *lora = NULL;
    int chunk = 512, chunks = 0;
    for (int i = 0; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "-m")) model = v;
        else if (!strcmp(a, "-f")) file = v;
        else if (!strcmp(a, "--lora")) lora = v;
        else if (!strcmp(a, "--chunk") && parse_int(v, 4, 1 << 20, &chunk)) continue;
        else if (!strcmp(a, "--chunks") && parse_int(v, 0, 1 << 30, &chunks)) continue;
        else {
            fprintf(stderr, "tnn perplexity: bad option %s %s\n", a, v);
            return 2;
        }
    }
    if (!model || !file || argc % 2) {
        fprintf(stderr, "usage: tnn perplexity -m MODEL.gguf -f TEXT [--chunk N (512)] "
                        "[--chunks N (0: all)] [--lora ADAPTER.gguf]\n");
        return 2;
    }
    const char *files[1] = {file}, *why = NULL;
    size_t len = 0;
    unsigned char *text = lm_read_files(files, 1, &len, &why);
    if (!text) {
        fprintf(stderr, "tnn perplexity: %s: %s\n", file, why);
        return 1;
    }
    tnn_llm *m = tnn_llm_open(model, chunk, lm_cuda() ? TNN_LLM_CUDA : 0);
    if (m && lora && tnn_llm_load_lora(m, lora, 1.0f) != TNN_OK) {
        tnn_llm_close(m);
        m = NULL;
    }
    double ppl = 0;
    int32_t scored = 0;
    double t0 = (double)clock();
    int rc = m ? tnn_llm_perplexity(m, (const char *)text, len, chunk, chunks, &ppl, &scored)
               : tnn_last_status();
    if (rc) fprintf(stderr, "tnn perplexity: %s\n", tnn_last_error());
    else
        printf("perplexity %.4f over %d tokens (chunks of %d, second halves scored; %.1f s of "
               "CPU)\n", ppl, scored, chunk, ((double)clock() - t0) / CLOCKS_PER_SEC);
    tnn_llm_close(m);
    free(text);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "version")) {
        printf("tinynn %s\n", tnn_version());
        return 0;
    }
    /* --cuda, anywhere: the models' sessions run on the GPU (the CPU when
     * this build or machine has none; the library logs why). */
    int kept = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cuda"))
            lm_use_cuda(true);
        else
            argv[kept++] = argv[i];
    }
    argc = kept;
    if (!strcmp(argv[1], "demo")) return cmd_train(argc - 2, argv + 2, true);
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 2, argv + 2, false);
    if (!strcmp(argv[1], "sample")) return cmd_sample(argc - 2, argv + 2);
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(argv[1], "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(argv[1], "chat")) return cmd_chat(argc - 2, argv + 2);
    if (!strcmp(argv[1], "perplexity")) return cmd_perplexity(argc - 2, argv + 2);
    if (!strcmp(argv[1], "quantize")) return cmd_quantize(argc - 2, argv + 2);
    if (!strcmp(argv[1], "lora-export")) return cmd_lora_export(argc - 2, argv + 2);
    fprintf(stderr, "tnn: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
