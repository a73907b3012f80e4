/* quantize.h - rewriting a GGUF model with its weight matrices in another
 * tensor type (tnn quantize).
 */
#ifndef TNN_LLM_QUANTIZE_H
#define TNN_LLM_QUANTIZE_H

#include "tinynn.h"

/* Copies every metadata key of `in` to `out` and every tensor: 2-D tensors
 * whose rows fit the target's block are converted to `type` (a GGML type
 * id: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), others (norms, biases)
 * are copied unchanged. general.file_type is set to match.
 * With `adapter` (a LoRA adapter file in llama.cpp's layout, as
 * lm_llama_add_lora takes; NULL for none) each adapted matrix is written
 * with the update merged, w + scale (alpha / rank) B A (the embeddings' rows
 * + scale (alpha / rank) A[token] B^T, and where they are the output matrix
 * too, an output.weight of the embeddings as they were: the adapter's
 * meaning at run time), in `type`, or f32 where its rows do not fit the
 * type's block; an adapter tensor that adapts no matrix of the model, or
 * factors of other shapes, is TNN_ERR_FORMAT and nothing is written.
 * Returns TNN_OK or a status with the message in tnn_last_error();
 * *converted (may be NULL) gets the number of tensors converted. */
int lm_quantize_file(const char *in, const char *out, int type, const char *adapter,
                     double scale, int *converted);

/* Copies the key `key` of g (any value type, arrays of strings and numbers
 * included) to w. TNN_OK or a status with the message set. */
int lm_gguf_copy_kv(const tnn_gguf *g, tnn_gguf_writer *w, const char *key);

/* The GGML type id for a name such as "q8_0" or "Q4_1"; -1 if unknown. */
int lm_quant_type_from_name(const char *name);

#endif
