/* chat.h - a conversation as the prompt text an instruct model was trained
 * on. Not a Jinja interpreter: the families llama-family instruct models
 * use are written out here, and a model's template (tokenizer.chat_template)
 * is recognised by the markers it writes:
 *
 *   chatml  <|im_start|>ROLE\nCONTENT<|im_end|>\n ...   <|im_start|>assistant\n
 *           (SmolLM2, Qwen2.5; the system message the template writes when
 *           the conversation has none is taken from the template's text)
 *   llama3  <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|> ...
 *           (Llama 3.x; 3.1 on: the "Cutting Knowledge Date" system block,
 *           with the template's date, or today's where it asks strftime_now)
 *   zephyr  <|ROLE|>\nCONTENT</s>\n ...                  <|assistant|>\n
 *           (TinyLlama-Chat; </s> is the model's EOS text)
 *   llama2  [INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ANSWER </s><s>[INST] ...
 *
 * The text leaves out the BOS the conversation starts with: tokenizing
 * with the model's BOS flag adds it (BOS texts inside, as llama2's later
 * turns, are kept and become the BOS token when special tokens are parsed).
 */
#ifndef TNN_LLM_CHAT_H
#define TNN_LLM_CHAT_H

#include <stddef.h>
#include <stdint.h>

/* Text built like snprintf: every byte counted, what fits written (to
 * out[0..cap)). */
typedef struct {
    char *out;
    size_t cap, len;
} lm_text;

void lm_text_put(lm_text *w, const char *s, size_t n);

typedef enum lm_chat_kind {
    LM_CHAT_CHATML = 0,
    LM_CHAT_LLAMA3 = 1,
    LM_CHAT_ZEPHYR = 2,
    LM_CHAT_LLAMA2 = 3,
    LM_CHAT_KIND_COUNT
} lm_chat_kind;

#define LM_CHAT_SUPPORTED "chatml, llama3, zephyr, llama2"

/* The family of `tmpl`: one of the names above, or a template's text
 * recognised by its markers; -1 if neither. */
int lm_chat_kind_of(const char *tmpl);
const char *lm_chat_kind_name(int kind); /* "chatml", ...; "unknown" */

/* Writes the conversation (n >= 1 messages, roles "system", "user",
 * "assistant"; chatml takes any role) in family `kind`, then, when
 * add_assistant, the start of the assistant's answer. `tmpl` (may be NULL)
 * is the model's template text, read for defaults (chatml's system message,
 * llama3's date); bos and eos are the model's texts (NULL: "<s>", "</s>").
 * Returns the length of the text and writes min(that, cap) bytes, plus a
 * NUL when it fits (as snprintf); negative status on bad arguments
 * (TNN_ERR_ARG, with the message set). */
int64_t lm_chat_format(int kind, const char *tmpl, const char *bos, const char *eos,
                       const char *const *roles, const char *const *contents, int32_t n,
                       int add_assistant, char *out, size_t cap);

#endif
