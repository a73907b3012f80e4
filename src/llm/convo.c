/* convo.c - conversations (JSON Lines) as scored training tokens.
 *
 * The JSON reader is strict (RFC 8259: no comments, no trailing commas, no
 * leading zeros, no raw control characters in strings, lone surrogates
 * refused) but keeps only what a conversation needs: the "messages" array's
 * roles and contents; every other value is checked and skipped.
 */
#include "convo.h"

#include "chat.h"

#include "../core/internal.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* JSON                                                                     */
/* ------------------------------------------------------------------------ */

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *s, *p, *end;
    int depth;
    int rc;         /* TNN_OK until the first failure */
    char why[160];  /* the first failure */
} json;

static bool fail(json *j, const char *what) {
    if (j->rc == TNN_OK) {
        j->rc = TNN_ERR_FORMAT;
        snprintf(j->why, sizeof j->why, "byte %lld: %s", (long long)(j->p - j->s), what);
    }
    return false;
}

static void ws(json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static bool eat(json *j, char c) {
    ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return true;
    }
    return false;
}

static int hex4(const char *p) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* A string at j->p (its opening quote); decoded into *out (malloc'd,
 * NUL-terminated) when out is non-NULL. The decoded text is never longer
 * than its escaped form, so one buffer of that size holds it. */
static bool string(json *j, char **out) {
    ws(j);
    if (j->p >= j->end || *j->p != '"') return fail(j, "a string was expected");
    const char *start = ++j->p;
    const char *close = start;
    while (close < j->end && *close != '"') close += *close == '\\' && close + 1 < j->end ? 2 : 1;
    if (close >= j->end) return fail(j, "a string has no closing quote");
    char *buf = out ? malloc((size_t)(close - start) + 1) : NULL;
    if (out && !buf) {
        j->rc = TNN_ERR_NOMEM;
        snprintf(j->why, sizeof j->why, "out of memory");
        return false;
    }
    size_t n = 0;
    while (j->p < close) {
        unsigned char c = (unsigned char)*j->p;
        if (c < 0x20) {
            free(buf);
            return fail(j, "a control character in a string (write it escaped)");
        }
        if (c != '\\') {
            if (buf) buf[n] = (char)c;
            n++;
            j->p++;
            continue;
        }
        char e = j->p[1];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char to[] = "\"\\/\b\f\n\r\t";
            if (buf) buf[n] = to[simple - "\"\\/bfnrt"];
            n++;
            j->p += 2;
            continue;
        }
        if (e != 'u' || close - j->p < 6) {
            free(buf);
            return fail(j, "a bad escape in a string");
        }
        int cp = hex4(j->p + 2);
        j->p += 6;
        if (cp >= 0xDC00 && cp <= 0xDFFF) cp = -2;
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a pair: \uD8xx\uDCxx */
            int lo = close - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u' ? hex4(j->p + 2) : -1;
            if (lo < 0xDC00 || lo > 0xDFFF) cp = -2;
            else cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00), j->p += 6;
        }
        if (cp < 0) {
            free(buf);
            return fail(j, cp == -1 ? "a bad \\u escape" : "a lone UTF-16 surrogate in a \\u escape");
        }
        if (cp == 0) {
            free(buf);
            return fail(j, "a NUL character (\\u0000) in a string");
        }
        char tmp[4];
        size_t k = (size_t)lm_utf8_put((uint32_t)cp, tmp);
        if (buf) memcpy(buf + n, tmp, k);
        n += k;
    }
    j->p = close + 1;
    if (out) {
        buf[n] = 0;
        *out = buf;
    }
    return true;
}

static bool value(json *j);

static bool digits(json *j) {
    const char *p0 = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    return j->p > p0;
}

static bool number(json *j) {
    if (j->p < j->end && *j->p == '-') j->p++;
    if (j->p < j->end && *j->p == '0') j->p++;
    else if (!digits(j)) return fail(j, "a bad number");
    if (j->p < j->end && *j->p == '.' && (j->p++, !digits(j))) return fail(j, "a bad number");
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (!digits(j)) return fail(j, "a bad number");
    }
    return true;
}

static bool literal(json *j, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n)) return fail(j, "not a JSON value");
    j->p += n;
    return true;
}

/* Members of an object (after its '{') or elements of an array (after its
 * '['), each handed to fn (key NULL for an array). */
static bool items(json *j, bool object, bool (*fn)(json *, const char *key, void *), void *ctx) {
    if (++j->depth > JSON_MAX_DEPTH) return fail(j, "nesting deeper than 64");
    char close = object ? '}' : ']';
    bool ok = true;
    if (!eat(j, close)) {
        do {
            char *key = NULL;
            if (object && !(string(j, &key) && (eat(j, ':') || fail(j, "':' was expected")))) {
                free(key);
                return false;
            }
            ok = fn(j, key, ctx);
            free(key);
            if (!ok) return false;
        } while (eat(j, ','));
        if (!eat(j, close)) return fail(j, object ? "',' or '}' was expected" : "',' or ']' was expected");
    }
    j->depth--;
    return true;
}

static bool skip_item(json *j, const char *key, void *ctx) { return value(j); }

static bool value(json *j) {
    ws(j);
    if (j->p >= j->end) return fail(j, "the text ends where a value was expected");
    switch (*j->p) {
    case '{': j->p++; return items(j, true, skip_item, NULL);
    case '[': j->p++; return items(j, false, skip_item, NULL);
    case '"': return string(j, NULL);
    case 't': return literal(j, "true");
    case 'f': return literal(j, "false");
    case 'n': return literal(j, "null");
    case '-': return number(j);
    default: return *j->p >= '0' && *j->p <= '9' ? number(j) : fail(j, "not a JSON value");
    }
}

typedef struct {
    lm_messages *m;
    char *role, *content;
} msg_ctx;

static bool message_member(json *j, const char *key, void *p) {
    msg_ctx *c = p;
    char **dst = !strcmp(key, "role") ? &c->role : !strcmp(key, "content") ? &c->content : NULL;
    if (!dst) return value(j);
    if (*dst) return fail(j, "a message has two of one key");
    ws(j);
    if (j->p < j->end && *j->p != '"')
        return fail(j, dst == &c->role ? "a role must be a string" : "a content must be a string");
    return string(j, dst);
}

static bool message(json *j, const char *key, void *p) {
    lm_messages *m = p;
    msg_ctx c = {.m = m};
    if (!eat(j, '{')) return fail(j, "a message must be an object");
    bool ok = items(j, true, message_member, &c);
    if (ok && (!c.role || !c.content)) ok = fail(j, "a message needs a role and a content");
    char **r = ok ? realloc(m->role, (size_t)(m->n + 1) * sizeof *r) : NULL;
    if (r) m->role = r;
    char **t = r ? realloc(m->content, (size_t)(m->n + 1) * sizeof *t) : NULL;
    if (t) m->content = t;
    if (ok && (!r || !t)) {
        j->rc = TNN_ERR_NOMEM;
        snprintf(j->why, sizeof j->why, "out of memory");
        ok = false;
    }
    if (!ok) {
        free(c.role);
        free(c.content);
        return false;
    }
    m->role[m->n] = c.role;
    m->content[m->n++] = c.content;
    return true;
}

typedef struct {
    lm_messages *m;
    bool seen;
} top_ctx;

static bool top_member(json *j, const char *key, void *p) {
    top_ctx *c = p;
    if (strcmp(key, "messages")) return value(j);
    if (c->seen) return fail(j, "two \"messages\" keys");
    c->seen = true;
    if (!eat(j, '[')) return fail(j, "\"messages\" must be an array");
    return items(j, false, message, c->m);
}

int lm_messages_parse(const char *s, size_t n, lm_messages *m) {
    memset(m, 0, sizeof *m);
    if (!s && n) return TNN_ERR(TNN_ERR_ARG, "NULL text");
    json j = {.s = s, .p = s, .end = s + n, .rc = TNN_OK};
    top_ctx c = {.m = m};
    bool ok = (eat(&j, '{') || fail(&j, "a conversation must be a JSON object")) &&
              items(&j, true, top_member, &c);
    if (ok && (ws(&j), j.p != j.end)) ok = fail(&j, "text after the object");
    if (ok && !c.seen) ok = fail(&j, "no \"messages\" array");
    if (ok && m->n == 0) ok = fail(&j, "\"messages\" is empty");
    if (!ok) return tnn__error(j.rc, "JSON", "%s", j.why);
    return TNN_OK;
}

void lm_messages_free(lm_messages *m) {
    for (int32_t i = 0; i < m->n; i++) {
        free(m->role[i]);
        free(m->content[i]);
    }
    free(m->role);
    free(m->content);
    memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------------ */
/* Token streams                                                            */
/* ------------------------------------------------------------------------ */

void lm_token_stream_free(lm_token_stream *st) {
    free(st->ids);
    free(st->scored);
    memset(st, 0, sizeof *st);
}

/* Appends the tokens of text[0..len) (scored or not) to st. */
static int append_tokens(lm_token_stream *st, const lm_tokenizer *tk, const char *text,
                         size_t len, int add_bos, bool scored) {
    int32_t need = lm_tokenize(tk, text, len, add_bos, 1, NULL, 0);
    if (need < 0) return need;
    if (st->n + (size_t)need > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < st->n + (size_t)need) cap *= 2;
        int32_t *ids = realloc(st->ids, cap * sizeof *ids);
        if (ids) st->ids = ids;
        uint8_t *sc = ids ? realloc(st->scored, cap) : NULL;
        if (sc) st->scored = sc;
        if (!ids || !sc) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
        st->cap = cap;
    }
    int32_t got = lm_tokenize(tk, text, len, add_bos, 1, st->ids + st->n, need);
    if (got != need) return got < 0 ? got : TNN_ERR(TNN_ERR_INTERNAL, "token count changed");
    memset(st->scored + st->n, scored ? 1 : 0, (size_t)need);
    st->n += (size_t)need;
    return TNN_OK;
}

/* The first k messages of m in the template (add: the assistant's start
 * after them) into *buf (grown as needed); the length, or a status. */
static int64_t render(const lm_messages *m, int32_t k, int add, int kind, const char *tmpl,
                      const char *bos, const char *eos, char **buf, size_t *cap) {
    const char *const *roles = (const char *const *)m->role;
    const char *const *texts = (const char *const *)m->content;
    int64_t need = lm_chat_format(kind, tmpl, bos, eos, roles, texts, k, add, NULL, 0);
    if (need < 0) return need;
    if ((size_t)need + 1 > *cap) {
        char *b = realloc(*buf, (size_t)need + 1);
        if (!b) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
        *buf = b;
        *cap = (size_t)need + 1;
    }
    return lm_chat_format(kind, tmpl, bos, eos, roles, texts, k, add, *buf, *cap);
}

/* One conversation: the whole text, cut before and after each assistant
 * turn; the turns scored. */
static int append_convo(lm_token_stream *st, const lm_tokenizer *tk, const lm_messages *m,
                        int kind, const char *tmpl, const char **why_turn) {
    const char *bos = lm_tokenizer_bos(tk) >= 0 ? lm_token_text(tk, lm_tokenizer_bos(tk), NULL) : NULL;
    const char *eos = lm_tokenizer_eos(tk) >= 0 ? lm_token_text(tk, lm_tokenizer_eos(tk), NULL) : NULL;
    char *all = NULL, *part = NULL;
    size_t all_cap = 0, part_cap = 0;
    int64_t len = render(m, m->n, 0, kind, tmpl, bos, eos, &all, &all_cap);
    int rc = len < 0 ? (int)len : TNN_OK;
    int64_t at = 0; /* the text before `at` is appended */
    int add_bos = lm_tokenizer_add_bos(tk) ? 1 : 0;
    for (int32_t i = 0; i < m->n && rc == TNN_OK; i++) {
        if (strcmp(m->role[i], "assistant")) continue;
        if (i == 0) {
            *why_turn = "the conversation starts with the assistant: there is nothing it answers";
            rc = TNN_ERR_FORMAT;
            break;
        }
        int64_t a = render(m, i, 1, kind, tmpl, bos, eos, &part, &part_cap);
        if (a < 0) {
            rc = (int)a;
            break;
        }
        bool prefix = a >= at && a <= len && !memcmp(part, all, (size_t)a);
        int64_t b = prefix ? render(m, i + 1, 0, kind, tmpl, bos, eos, &part, &part_cap) : 0;
        if (b < 0) {
            rc = (int)b;
            break;
        }
        prefix = prefix && b >= a && b <= len && !memcmp(part, all, (size_t)b);
        if (!prefix) {
            *why_turn = "the chat template does not write each turn as a prefix of the whole "
                        "conversation, so the answer's tokens cannot be told apart";
            rc = TNN_ERR_UNSUPPORTED;
            break;
        }
        if (a > at) rc = append_tokens(st, tk, all + at, (size_t)(a - at), at ? 0 : add_bos, false);
        if (rc == TNN_OK && b > a)
            rc = append_tokens(st, tk, all + a, (size_t)(b - a), a ? 0 : add_bos, true);
        at = b;
    }
    if (rc == TNN_OK && len > at)
        rc = append_tokens(st, tk, all + at, (size_t)(len - at), at ? 0 : add_bos, false);
    free(all);
    free(part);
    return rc;
}

int lm_convo_append(const char *path, const char *text, size_t len, const lm_tokenizer *tk,
                    int kind, const char *tmpl, lm_token_stream *st, int64_t *n_convos) {
    if (!tk || (!text && len) || !st || !n_convos) return TNN_ERR(TNN_ERR_ARG, "bad arguments");
    int64_t line = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len, n = end - pos;
        line++;
        size_t k = 0;
        while (k < n && (text[pos + k] == ' ' || text[pos + k] == '\t' || text[pos + k] == '\r')) k++;
        if (k < n) { /* not a blank line */
            lm_messages m;
            int rc = lm_messages_parse(text + pos, n, &m);
            const char *why_turn = NULL;
            if (rc == TNN_OK) rc = append_convo(st, tk, &m, kind, tmpl, &why_turn);
            lm_messages_free(&m);
            if (rc != TNN_OK) {
                char msg[300];
                snprintf(msg, sizeof msg, "%s", why_turn ? why_turn : tnn_last_error());
                return tnn__error(rc, path, "line %lld: %s", (long long)line, msg);
            }
            ++*n_convos;
        }
        pos = end + 1;
    }
    return TNN_OK;
}
