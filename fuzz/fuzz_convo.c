/* fuzz_convo.c - libFuzzer target for the conversation reader (src/llm/convo.c,
 * lm_messages_parse) and the chat families' texts (src/llm/chat.c): random
 * bytes are read as one JSON Lines record; a conversation it accepts has at
 * least one message and NUL-free strings, and every chat family that writes
 * it (roles outside a family's set are refused, not a failure) writes the
 * text up to each assistant turn and through it as prefixes of the whole
 * conversation, which is what scoring the answers' tokens relies on (traps
 * if a promise breaks). Build and run: fuzz/run.sh [SECONDS].
 */
#include "llm/chat.h"
#include "llm/convo.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PROMISE(cond)                                                                         \
    do {                                                                                      \
        if (!(cond)) __builtin_trap();                                                        \
    } while (0)

/* m's first k messages in family kind (add: the assistant's start after
 * them), malloc'd; NULL when the family refuses them. */
static char *render(const lm_messages *m, int32_t k, int add, int kind, int64_t *len) {
    const char *const *r = (const char *const *)m->role, *const *c = (const char *const *)m->content;
    int64_t need = lm_chat_format(kind, NULL, "<s>", "</s>", r, c, k, add, NULL, 0);
    if (need < 0) return NULL;
    char *out = malloc((size_t)need + 1);
    PROMISE(out);
    int64_t again = lm_chat_format(kind, NULL, "<s>", "</s>", r, c, k, add, out, (size_t)need + 1);
    PROMISE(again == need && out[need] == 0);
    *len = need;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lm_messages m;
    int rc = lm_messages_parse((const char *)data, size, &m);
    if (rc != 0) {
        PROMISE(m.n == 0 || m.role); /* freed below either way */
        lm_messages_free(&m);
        return 0;
    }
    PROMISE(m.n >= 1);
    for (int32_t i = 0; i < m.n; i++) PROMISE(m.role[i] && m.content[i]);
    for (int kind = 0; kind < LM_CHAT_KIND_COUNT && m.n <= 16; kind++) {
        int64_t len = 0;
        char *all = render(&m, m.n, 0, kind, &len);
        if (!all) continue;
        for (int32_t i = 1; i < m.n; i++) {
            if (strcmp(m.role[i], "assistant")) continue;
            int64_t a = 0, b = 0;
            char *before = render(&m, i, 1, kind, &a), *through = render(&m, i + 1, 0, kind, &b);
            PROMISE(before && through);
            PROMISE(a <= b && b <= len && !memcmp(before, all, (size_t)a) &&
                    !memcmp(through, all, (size_t)b));
            free(before);
            free(through);
        }
        free(all);
    }
    lm_messages_free(&m);
    return 0;
}
