/* trainer.c - the public training functions (tnn_trainer_*): `tnn train`'s
 * options set by name, lm_train run with its progress lines handed to a
 * callback. The CLI sets its options through the same table.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fopencookie */
#endif

#include "checkpoint.h"
#include "train.h"

#include "../core/internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRAINER_MAGIC 0x54524e31u /* "TRN1" */
#define MAX_FILES 1024
#define MAX_STRS (MAX_FILES + 64)

struct tnn_trainer {
    uint32_t magic;
    lm_train_opts o;
    const char *files[MAX_FILES];
    int n_files;
    char *strs[MAX_STRS]; /* copies of the string values (the latest of each kept) */
    int n_strs;
    lm_train_result res;
    bool have_res;
    bool lr_set; /* "lr" was set (else fine-tuning takes LM_FINETUNE_LR) */
};

/* The peak learning rate of a fine-tuning run ("init") that sets none: the
 * default of 3e-3 is for a model trained from scratch; LoRA's factors take
 * a larger one. */
#define LM_FINETUNE_LR 1e-4
#define LM_LORA_LR 1e-3

static int check_trainer(const tnn_trainer *t, const char *func) {
    if (!t || t->magic != TRAINER_MAGIC)
        return tnn__error(TNN_ERR_ARG, func, "trainer is NULL or freed");
    return TNN_OK;
}

tnn_trainer *tnn_trainer_new(void) {
    tnn_trainer *t = calloc(1, sizeof *t);
    if (!t) return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory");
    t->magic = TRAINER_MAGIC;
    t->o = lm_train_defaults();
    return t;
}

void tnn_trainer_free(tnn_trainer *t) {
    if (!t || check_trainer(t, __func__)) return;
    t->magic = 0;
    for (int i = 0; i < t->n_strs; i++) free(t->strs[i]);
    free(t);
}

static int parse_num(const char *key, const char *v, double lo, double hi, bool integer,
                     double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi) || (integer && x != floor(x)))
        return tnn__error(TNN_ERR_ARG, "tnn_trainer_set", "%s = '%s': want %s in %.17g..%.17g",
                          key, v, integer ? "an integer" : "a number", lo, hi);
    *out = x;
    return TNN_OK;
}

/* A copy of v that lives as long as the trainer. */
static const char *keep_str(tnn_trainer *t, const char *v) {
    if (t->n_strs == MAX_STRS) {
        tnn__error(TNN_ERR_RANGE, "tnn_trainer_set", "more than %d text values set on one trainer",
                   MAX_STRS);
        return NULL;
    }
    char *c = strdup(v);
    if (!c) {
        tnn__error(TNN_ERR_NOMEM, "tnn_trainer_set", "out of memory");
        return NULL;
    }
    return t->strs[t->n_strs++] = c;
}

typedef struct {
    const char *key;
    char kind;      /* 'i' integer, 'd' number, 's' text, 'b' 0 or 1 */
    double lo, hi;  /* numbers' range */
} opt_desc;

static const opt_desc opts[] = {
    {"data", 's', 0, 0},           {"steps", 'i', 1, 1e8},         {"batch", 'i', 1, 65536},
    {"seq", 'i', 2, 65536},        {"layers", 'i', 1, LM_MAX_LAYERS}, {"dim", 'i', 2, 65536},
    {"heads", 'i', 1, 1024},       {"kv-heads", 'i', 1, 1024},     {"ff", 'i', 1, 1 << 20},
    {"lr", 'd', 0, 10},            {"warmup", 'i', 0, 1e8},        {"seed", 'i', 0, 9007199254740992.0},
    {"bf16", 'b', 0, 1},           {"eval-every", 'i', 0, 1e8},    {"sample-every", 'i', 0, 1e8},
    {"sample-len", 'i', 0, 1e6},   {"prompt", 's', 0, 0},          {"temp", 'd', 0, 1e6},
    {"top-k", 'i', 0, 1e6},        {"top-p", 'd', 1e-9, 1},        {"log", 's', 0, 0},
    {"svg", 's', 0, 0},            {"checkpoint", 's', 0, 0},      {"checkpoint-every", 'i', 0, 1e8},
    {"resume", 's', 0, 0},         {"tokenizer", 's', 0, 0},       {"cuda", 'b', 0, 1},
    {"init", 's', 0, 0},           {"lora", 'i', 0, 4096},         {"lora-alpha", 'd', 1e-6, 1e6},
    {"qlora", 'b', 0, 1},          {"lora-only", 'b', 0, 1},
};

int tnn_trainer_set(tnn_trainer *t, const char *key, const char *value) {
    int rc = check_trainer(t, __func__);
    if (rc) return rc;
    if (!key || !value) return TNN_ERR(TNN_ERR_ARG, "key or value is NULL");
    const opt_desc *d = NULL;
    for (size_t i = 0; i < sizeof opts / sizeof opts[0] && !d; i++)
        if (!strcmp(opts[i].key, key)) d = &opts[i];
    if (!d) return TNN_ERR(TNN_ERR_ARG, "unknown option '%s' (the options of tnn train, without "
                                        "the dashes; 'data' adds a text file)", key);
    double x = 0;
    const char *s = NULL;
    if (d->kind == 's') {
        if (!strcmp(key, "data") && t->n_files == MAX_FILES)
            return TNN_ERR(TNN_ERR_RANGE, "more than %d data files", MAX_FILES);
        s = keep_str(t, value);
        if (!s) return tnn_last_status();
    } else {
        rc = parse_num(key, value, d->lo, d->hi, d->kind != 'd', &x);
        if (rc) return rc;
    }
    lm_train_opts *o = &t->o;
    int n = (int)x;
    if (!strcmp(key, "data")) t->files[t->n_files++] = s;
    else if (!strcmp(key, "steps")) o->steps = o->steps_override = n;
    else if (!strcmp(key, "batch")) o->batch = n;
    else if (!strcmp(key, "seq")) o->model.seq_len = n;
    else if (!strcmp(key, "layers")) o->model.n_layer = n;
    else if (!strcmp(key, "dim")) o->model.d_model = n;
    else if (!strcmp(key, "heads")) o->model.n_head = n;
    else if (!strcmp(key, "kv-heads")) o->model.n_kv_head = n;
    else if (!strcmp(key, "ff")) o->model.d_ff = n;
    else if (!strcmp(key, "lr")) o->lr = o->optim.lr = x, t->lr_set = true;
    else if (!strcmp(key, "warmup")) o->warmup = n;
    else if (!strcmp(key, "seed")) o->seed = o->sampler.seed = (uint64_t)x;
    else if (!strcmp(key, "bf16")) o->optim.bf16 = n != 0;
    else if (!strcmp(key, "eval-every")) o->eval_every = n;
    else if (!strcmp(key, "sample-every")) o->sample_every = n;
    else if (!strcmp(key, "sample-len")) o->sample_len = n;
    else if (!strcmp(key, "prompt")) o->sample_prompt = s;
    else if (!strcmp(key, "temp")) o->sampler.temperature = x;
    else if (!strcmp(key, "top-k")) o->sampler.top_k = n;
    else if (!strcmp(key, "top-p")) o->sampler.top_p = x;
    else if (!strcmp(key, "log")) o->log_csv = s;
    else if (!strcmp(key, "svg")) o->log_svg = s;
    else if (!strcmp(key, "checkpoint")) o->checkpoint = s;
    else if (!strcmp(key, "checkpoint-every")) o->checkpoint_every = n;
    else if (!strcmp(key, "resume")) o->resume = s;
    else if (!strcmp(key, "tokenizer")) o->tokenizer = s;
    else if (!strcmp(key, "init")) o->init = s;
    else if (!strcmp(key, "lora")) o->lora_rank = n;
    else if (!strcmp(key, "lora-alpha")) o->lora_alpha = x;
    else if (!strcmp(key, "qlora")) o->qlora = n != 0;
    else if (!strcmp(key, "lora-only")) o->lora_only = n != 0;
    else if (!strcmp(key, "cuda")) o->cuda = n != 0;
    else return TNN_ERR(TNN_ERR_INTERNAL, "option '%s' has no field", key);
    return TNN_OK;
}

/* ---- the progress lines, to the caller's function ---- */

typedef struct {
    tnn_llm_text_fn fn;
    void *user;
    char error[512]; /* the last "error: " line lm_train wrote */
    char line[512];  /* the line being written, for spotting errors */
    size_t line_len;
} log_sink;

static ssize_t sink_write(void *cookie, const char *buf, size_t n) {
    log_sink *k = cookie;
    if (k->fn && n) k->fn(buf, n, k->user);
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            k->line[k->line_len] = 0;
            if (!strncmp(k->line, "error: ", 7)) snprintf(k->error, sizeof k->error, "%s", k->line + 7);
            k->line_len = 0;
        } else if (k->line_len + 1 < sizeof k->line) {
            k->line[k->line_len++] = buf[i];
        }
    }
    return (ssize_t)n;
}

int tnn_trainer_run(tnn_trainer *t, tnn_llm_text_fn on_log, void *user) {
    int rc = check_trainer(t, __func__);
    if (rc) return rc;
    const char *why = lm_config_problem(&t->o.model);
    if (t->n_files == 0) rc = TNN_ERR(TNN_ERR_ARG, "no training text: set 'data' to a file");
    else if (why) rc = TNN_ERR(TNN_ERR_ARG, "model shape: %s", why);
    if (rc) { /* in the log too, as lm_train's own errors are */
        char line[600];
        int n = snprintf(line, sizeof line, "error: %s\n", tnn_last_error());
        if (on_log && n > 0) on_log(line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1, user);
        return rc;
    }
    log_sink k = {.fn = on_log, .user = user};
    cookie_io_functions_t io = {.write = sink_write};
    FILE *out = fopencookie(&k, "w", io);
    if (!out) return TNN_ERR(TNN_ERR_NOMEM, "cannot open the progress stream");
    setvbuf(out, NULL, _IOLBF, 0);
    lm_train_opts o = t->o;
    o.data_files = t->files;
    o.n_data_files = t->n_files;
    o.out = out;
    if (o.init && !t->lr_set) o.lr = o.optim.lr = o.lora_rank > 0 ? LM_LORA_LR : LM_FINETUNE_LR;
    tnn_clear_error();
    t->have_res = false;
    int failed = lm_train(&o, &t->res);
    fclose(out);
    if (!failed) {
        t->have_res = true;
        tnn_clear_error(); /* optional keys looked for along the way */
        return TNN_OK;
    }
    int status = tnn_last_status() ? tnn_last_status() : TNN_ERR_ARG;
    return tnn__error(status, __func__, "%s", k.error[0] ? k.error : "training failed");
}

int tnn_trainer_result(const tnn_trainer *t, int32_t *steps, double *first_loss,
                       double *last_loss, double *first_val_loss, double *val_loss,
                       double *tokens_per_s) {
    int rc = check_trainer(t, __func__);
    if (rc) return rc;
    if (!t->have_res) return TNN_ERR(TNN_ERR_STATE, "no finished run");
    if (steps) *steps = t->res.steps_done;
    if (first_loss) *first_loss = t->res.first_loss;
    if (last_loss) *last_loss = t->res.last_loss;
    if (first_val_loss) *first_val_loss = t->res.first_val;
    if (val_loss) *val_loss = t->res.last_val;
    if (tokens_per_s) *tokens_per_s = t->res.tokens_per_s;
    return TNN_OK;
}

int tnn_lora_export(const char *checkpoint, const char *adapter_path) {
    return lm_lora_export(checkpoint, adapter_path);
}
