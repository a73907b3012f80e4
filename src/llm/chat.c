/* chat.c - conversations as instruct models' prompt text (see chat.h). */
#include "chat.h"

#include "../core/internal.h"

#include <string.h>
#include <time.h>

static const char *const kind_names[LM_CHAT_KIND_COUNT] = {"chatml", "llama3", "zephyr",
                                                           "llama2"};

const char *lm_chat_kind_name(int kind) {
    return kind >= 0 && kind < LM_CHAT_KIND_COUNT ? kind_names[kind] : "unknown";
}

int lm_chat_kind_of(const char *tmpl) {
    if (!tmpl) return -1;
    for (int k = 0; k < LM_CHAT_KIND_COUNT; k++)
        if (!strcmp(tmpl, kind_names[k])) return k;
    if (strstr(tmpl, "<|im_start|>")) return LM_CHAT_CHATML;
    if (strstr(tmpl, "<|start_header_id|>")) return LM_CHAT_LLAMA3;
    if (strstr(tmpl, "<|user|>") && strstr(tmpl, "<|assistant|>")) return LM_CHAT_ZEPHYR;
    if (strstr(tmpl, "[INST]")) return LM_CHAT_LLAMA2;
    return -1;
}

void lm_text_put(lm_text *w, const char *s, size_t n) {
    if (w->len < w->cap) {
        size_t room = w->cap - w->len;
        memcpy(w->out + w->len, s, n < room ? n : room);
    }
    w->len += n;
}


static void put(lm_text *w, const char *s) { lm_text_put(w, s, strlen(s)); }

/* Jinja's trim: ASCII white space off both ends (or only the end). */
static void put_trim(lm_text *w, const char *s, bool left) {
    size_t a = 0, b = strlen(s);
    while (left && a < b && strchr(" \t\n\r\v\f", s[a])) a++;
    while (b > a && strchr(" \t\n\r\v\f", s[b - 1])) b--;
    lm_text_put(w, s + a, b - a);
}

static void put_trimmed(lm_text *w, const char *s) { put_trim(w, s, true); }

/* The literal after `marker` (then a newline, real or written \n) up to
 * `end` in a template: a default the template writes itself. NULL when
 * there is none, or what follows is not plain text (an expression). */
static const char *template_literal(const char *tmpl, const char *marker, const char *end,
                                    size_t *len) {
    size_t ml = strlen(marker);
    for (const char *p = tmpl ? strstr(tmpl, marker) : NULL; p; p = strstr(p + 1, marker)) {
        const char *q = p + ml;
        if (*q == '\n') q++;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        const char *e = strstr(q, end);
        if (!e || e == q) continue;
        size_t n = (size_t)(e - q);
        bool plain = true;
        for (size_t i = 0; i < n && plain; i++) plain = !strchr("'\"{}+\\", q[i]);
        if (plain) {
            *len = n;
            return q;
        }
    }
    return NULL;
}

static bool role_ok(const char *r) {
    return !strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant");
}

static void chatml(lm_text *w, const char *tmpl, const char *const *roles,
                   const char *const *contents, int32_t n, int add_assistant) {
    size_t dl = 0;
    const char *def = template_literal(tmpl, "<|im_start|>system", "<|im_end|>", &dl);
    if (def && strcmp(roles[0], "system")) {
        put(w, "<|im_start|>system\n");
        lm_text_put(w, def, dl);
        put(w, "<|im_end|>\n");
    }
    for (int32_t i = 0; i < n; i++) {
        put(w, "<|im_start|>");
        put(w, roles[i]);
        put(w, "\n");
        put(w, contents[i]);
        put(w, "<|im_end|>\n");
    }
    if (add_assistant) put(w, "<|im_start|>assistant\n");
}

static void llama3_header(lm_text *w, const char *role) {
    put(w, "<|start_header_id|>");
    put(w, role);
    put(w, "<|end_header_id|>\n\n");
}

static void llama3(lm_text *w, const char *tmpl, const char *const *roles,
                   const char *const *contents, int32_t n, int add_assistant) {
    int32_t i = 0;
    if (tmpl && strstr(tmpl, "Cutting Knowledge Date")) {
        /* 3.1 on: a system block always, with the knowledge and today's date */
        char date[32] = "26 Jul 2024";
        const char *d = strstr(tmpl, "date_string = \"");
        if (d) {
            d += strlen("date_string = \"");
            const char *e = strchr(d, '"');
            if (e && (size_t)(e - d) < sizeof date) {
                memcpy(date, d, (size_t)(e - d));
                date[e - d] = 0;
            }
        }
        if (strstr(tmpl, "strftime_now")) {
            time_t now = time(NULL);
            struct tm tmv;
            if (localtime_r(&now, &tmv)) strftime(date, sizeof date, "%d %b %Y", &tmv);
        }
        llama3_header(w, "system");
        put(w, "Cutting Knowledge Date: December 2023\nToday Date: ");
        put(w, date);
        put(w, "\n\n");
        if (!strcmp(roles[0], "system")) put_trimmed(w, contents[i++]);
        put(w, "<|eot_id|>");
    }
    for (; i < n; i++) {
        llama3_header(w, roles[i]);
        put_trimmed(w, contents[i]);
        put(w, "<|eot_id|>");
    }
    if (add_assistant) llama3_header(w, "assistant");
}

static void zephyr(lm_text *w, const char *eos, const char *const *roles,
                   const char *const *contents, int32_t n, int add_assistant) {
    for (int32_t i = 0; i < n; i++) {
        put(w, "<|");
        put(w, roles[i]);
        put(w, "|>\n");
        put(w, contents[i]);
        put(w, eos);
        put(w, "\n");
    }
    if (add_assistant) put(w, "<|assistant|>\n");
}

/* Roles must alternate user / assistant after an optional system message. */
static int llama2(lm_text *w, const char *bos, const char *eos, const char *const *roles,
                  const char *const *contents, int32_t n) {
    int32_t first = strcmp(roles[0], "system") ? 0 : 1;
    for (int32_t i = first; i < n; i++) {
        const char *want = (i - first) % 2 ? "assistant" : "user";
        if (strcmp(roles[i], want))
            return TNN_ERR(TNN_ERR_ARG,
                           "llama2 chats alternate user and assistant after an optional "
                           "system message; message %d is '%s'",
                           (int)i, roles[i]);
        if (!strcmp(want, "user")) {
            if (i > first) put(w, bos);
            put(w, "[INST] ");
            if (i == first && first) {
                /* the template strips system block + message as one text */
                put(w, "<<SYS>>\n");
                put(w, contents[0]);
                put(w, "\n<</SYS>>\n\n");
                put_trim(w, contents[i], false);
            } else {
                put_trimmed(w, contents[i]);
            }
            put(w, " [/INST]");
        } else {
            put(w, " ");
            put_trimmed(w, contents[i]);
            put(w, " ");
            put(w, eos);
        }
    }
    return TNN_OK;
}

int64_t lm_chat_format(int kind, const char *tmpl, const char *bos, const char *eos,
                       const char *const *roles, const char *const *contents, int32_t n,
                       int add_assistant, char *out, size_t cap) {
    if (kind < 0 || kind >= LM_CHAT_KIND_COUNT)
        return TNN_ERR(TNN_ERR_ARG, "chat template kind %d: want one of " LM_CHAT_SUPPORTED,
                       kind);
    if (n < 1 || !roles || !contents || (!out && cap))
        return TNN_ERR(TNN_ERR_ARG, "want n >= 1 messages (n=%d), roles and contents, and an "
                                    "output buffer when cap > 0", (int)n);
    for (int32_t i = 0; i < n; i++) {
        if (!roles[i] || !contents[i])
            return TNN_ERR(TNN_ERR_ARG, "message %d has a NULL role or content", (int)i);
        if (kind != LM_CHAT_CHATML && !role_ok(roles[i]))
            return TNN_ERR(TNN_ERR_ARG, "message %d: role '%s' (the %s template knows system, "
                                        "user and assistant)", (int)i, roles[i],
                           kind_names[kind]);
        if (kind == LM_CHAT_CHATML && (!roles[i][0] || strpbrk(roles[i], "\n<")))
            return TNN_ERR(TNN_ERR_ARG, "message %d: role '%s' is not a plain word", (int)i,
                           roles[i]);
    }
    lm_text w = {out, cap, 0};
    int rc = TNN_OK;
    if (kind == LM_CHAT_CHATML) chatml(&w, tmpl, roles, contents, n, add_assistant);
    else if (kind == LM_CHAT_LLAMA3) llama3(&w, tmpl, roles, contents, n, add_assistant);
    else if (kind == LM_CHAT_ZEPHYR) zephyr(&w, eos ? eos : "</s>", roles, contents, n, add_assistant);
    else rc = llama2(&w, bos ? bos : "<s>", eos ? eos : "</s>", roles, contents, n);
    if (rc != TNN_OK) return rc;
    if (w.len < cap) out[w.len] = 0;
    return (int64_t)w.len;
}
