/* convo.h - conversations as training data. A JSON Lines file holds one
 * conversation a line:
 *
 *   {"messages": [{"role": "user", "content": "..."},
 *                 {"role": "assistant", "content": "..."}, ...]}
 *
 * (the layout of OpenAI's and Hugging Face's chat fine-tuning sets; other
 * keys are skipped). Each conversation is written in the model's chat
 * template (chat.h) and tokenized as the model sees a chat prompt; the
 * assistant's turns, with the end-of-turn marker the template writes after
 * them, are the tokens the loss scores, the rest is their context.
 */
#ifndef TNN_LLM_CONVO_H
#define TNN_LLM_CONVO_H

#include "tokenizer.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t n;              /* messages */
    char **role, **content; /* n each, NUL-terminated */
} lm_messages;

/* Parses one JSON text (a line of the file) into m (zeroed first; free with
 * lm_messages_free, also after a failure). TNN_OK, or TNN_ERR_FORMAT with
 * a message naming the byte offset and what is wrong (not JSON, no
 * "messages" array, a message without a string role or content, a NUL
 * character in a string, nesting deeper than 64), TNN_ERR_NOMEM. */
int lm_messages_parse(const char *s, size_t n, lm_messages *m);
void lm_messages_free(lm_messages *m);

/* Tokens with, for each, whether the loss scores it as a target. */
typedef struct {
    int32_t *ids;
    uint8_t *scored;
    size_t n, cap;
} lm_token_stream;

void lm_token_stream_free(lm_token_stream *st);

/* Appends the conversations of a JSON Lines text (blank lines skipped) to
 * st, each written in chat family `kind` (chat.h; tmpl, the model's
 * template text, for its defaults) and tokenized by tk: the text up to each
 * assistant turn, each assistant turn and the rest separately, special
 * tokens parsed, the model's BOS first when it adds one. *n_convos counts
 * them. TNN_OK, or a status with a message naming path and the line
 * (TNN_ERR_FORMAT for a line that is not a conversation; TNN_ERR_UNSUPPORTED
 * when the template does not write a turn as a prefix of the whole
 * conversation, so the answer's tokens cannot be told apart). */
int lm_convo_append(const char *path, const char *text, size_t len, const lm_tokenizer *tk,
                    int kind, const char *tmpl, lm_token_stream *st, int64_t *n_convos);

#endif
