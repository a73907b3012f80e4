/* registry.c - the op table: name, number of sources and forward kernel of
 * every op, indexed by tnn_op. Every entry must be filled in; a test
 * walks the table to make sure. */
#include "common.h"

int tnn__fwd_add(tnn_tensor *t);
int tnn__fwd_sub(tnn_tensor *t);
int tnn__fwd_mul(tnn_tensor *t);
int tnn__fwd_scale(tnn_tensor *t);
int tnn__fwd_gelu(tnn_tensor *t);
int tnn__fwd_silu(tnn_tensor *t);
int tnn__fwd_gelu_back(tnn_tensor *t);
int tnn__fwd_silu_back(tnn_tensor *t);
int tnn__fwd_softmax(tnn_tensor *t);
int tnn__fwd_softmax_back(tnn_tensor *t);
int tnn__fwd_rms_norm(tnn_tensor *t);
int tnn__fwd_rms_norm_back(tnn_tensor *t);
int tnn__fwd_matmul(tnn_tensor *t);
int tnn__fwd_transpose(tnn_tensor *t);
int tnn__fwd_get_rows(tnn_tensor *t);
int tnn__fwd_get_rows_back(tnn_tensor *t);
int tnn__fwd_sum(tnn_tensor *t);
int tnn__fwd_mean(tnn_tensor *t);
int tnn__fwd_reshape(tnn_tensor *t);
int tnn__fwd_expand(tnn_tensor *t);
int tnn__fwd_reduce_to(tnn_tensor *t);
int tnn__fwd_fill(tnn_tensor *t);
int tnn__fwd_cross_entropy(tnn_tensor *t);
int tnn__fwd_cross_entropy_back(tnn_tensor *t);
int tnn__fwd_rope(tnn_tensor *t);
int tnn__fwd_attention(tnn_tensor *t);
int tnn__fwd_attention_back(tnn_tensor *t);
int tnn__fwd_view(tnn_tensor *t);
int tnn__fwd_kv_write(tnn_tensor *t);
int tnn__fwd_attention_cached(tnn_tensor *t);
int tnn__fwd_layer_norm(tnn_tensor *t);
int tnn__fwd_layer_norm_back(tnn_tensor *t);
int tnn__fwd_permute(tnn_tensor *t);
int tnn__fwd_concat(tnn_tensor *t);
int tnn__fwd_narrow(tnn_tensor *t);
int tnn__fwd_to_bf16(tnn_tensor *t);
int tnn__fwd_rms_norm_gain(tnn_tensor *t);
int tnn__fwd_swiglu(tnn_tensor *t);
int tnn__fwd_swiglu_back(tnn_tensor *t);

#define BWD(name)                                                                             \
    int tnn__bwd_##name(tnn_session *s, tnn_tensor *t, tnn_tensor *dt, const bool *need,      \
                        tnn_tensor **dsrc);
BWD(add) BWD(sub) BWD(mul) BWD(scale) BWD(gelu) BWD(silu) BWD(softmax) BWD(rms_norm)
BWD(matmul) BWD(transpose) BWD(get_rows) BWD(get_rows_back) BWD(sum) BWD(mean) BWD(reshape)
BWD(expand) BWD(reduce_to) BWD(cross_entropy) BWD(rope) BWD(attention)
BWD(layer_norm) BWD(permute) BWD(concat) BWD(narrow) BWD(to_bf16) BWD(swiglu)
#undef BWD

const tnn_op_def tnn__ops[TNN_OP_COUNT] = {
    [TNN_OP_NONE] = {"leaf", 0, NULL, NULL},
    [TNN_OP_ADD] = {"tnn_add", 2, tnn__fwd_add, tnn__bwd_add},
    [TNN_OP_SUB] = {"tnn_sub", 2, tnn__fwd_sub, tnn__bwd_sub},
    [TNN_OP_MUL] = {"tnn_mul", 2, tnn__fwd_mul, tnn__bwd_mul},
    [TNN_OP_SCALE] = {"tnn_scale", 1, tnn__fwd_scale, tnn__bwd_scale},
    [TNN_OP_GELU] = {"tnn_gelu", 1, tnn__fwd_gelu, tnn__bwd_gelu},
    [TNN_OP_SILU] = {"tnn_silu", 1, tnn__fwd_silu, tnn__bwd_silu},
    [TNN_OP_GELU_BACK] = {"tnn_gelu_back", 2, tnn__fwd_gelu_back, NULL},
    [TNN_OP_SILU_BACK] = {"tnn_silu_back", 2, tnn__fwd_silu_back, NULL},
    [TNN_OP_SOFTMAX] = {"tnn_softmax", 1, tnn__fwd_softmax, tnn__bwd_softmax},
    [TNN_OP_SOFTMAX_BACK] = {"tnn_softmax_back", 2, tnn__fwd_softmax_back, NULL},
    [TNN_OP_RMS_NORM] = {"tnn_rms_norm", 2, tnn__fwd_rms_norm, tnn__bwd_rms_norm},
    [TNN_OP_RMS_NORM_BACK] = {"tnn_rms_norm_back", 2, tnn__fwd_rms_norm_back, NULL},
    [TNN_OP_MATMUL] = {"tnn_matmul", 2, tnn__fwd_matmul, tnn__bwd_matmul},
    [TNN_OP_TRANSPOSE] = {"tnn_transpose", 1, tnn__fwd_transpose, tnn__bwd_transpose},
    [TNN_OP_GET_ROWS] = {"tnn_get_rows", 2, tnn__fwd_get_rows, tnn__bwd_get_rows},
    [TNN_OP_GET_ROWS_BACK] = {"tnn_get_rows_back", 3, tnn__fwd_get_rows_back,
                              tnn__bwd_get_rows_back},
    [TNN_OP_SUM] = {"tnn_sum", 1, tnn__fwd_sum, tnn__bwd_sum},
    [TNN_OP_MEAN] = {"tnn_mean", 1, tnn__fwd_mean, tnn__bwd_mean},
    [TNN_OP_RESHAPE] = {"tnn_reshape", 1, tnn__fwd_reshape, tnn__bwd_reshape},
    [TNN_OP_EXPAND] = {"expand", 1, tnn__fwd_expand, tnn__bwd_expand},
    [TNN_OP_REDUCE_TO] = {"reduce_to", 1, tnn__fwd_reduce_to, tnn__bwd_reduce_to},
    [TNN_OP_FILL] = {"fill", 0, tnn__fwd_fill, NULL},
    [TNN_OP_CROSS_ENTROPY] = {"tnn_cross_entropy", 2, tnn__fwd_cross_entropy,
                              tnn__bwd_cross_entropy},
    [TNN_OP_CROSS_ENTROPY_BACK] = {"cross_entropy_back", 3, tnn__fwd_cross_entropy_back, NULL},
    [TNN_OP_ROPE] = {"tnn_rope", 3, tnn__fwd_rope, tnn__bwd_rope},
    [TNN_OP_ATTENTION] = {"tnn_attention", 3, tnn__fwd_attention, tnn__bwd_attention},
    [TNN_OP_ATTENTION_BACK] = {"attention_back", 5, tnn__fwd_attention_back, NULL},
    [TNN_OP_VIEW] = {"view", 1, tnn__fwd_view, NULL},
    [TNN_OP_KV_WRITE] = {"tnn_kv_write", 3, tnn__fwd_kv_write, NULL},
    [TNN_OP_ATTENTION_CACHED] = {"tnn_attention_cached", 4, tnn__fwd_attention_cached, NULL},
    [TNN_OP_LAYER_NORM] = {"tnn_layer_norm", 3, tnn__fwd_layer_norm, tnn__bwd_layer_norm},
    [TNN_OP_LAYER_NORM_BACK] = {"layer_norm_back", 2, tnn__fwd_layer_norm_back, NULL},
    [TNN_OP_PERMUTE] = {"tnn_permute", 1, tnn__fwd_permute, tnn__bwd_permute},
    [TNN_OP_CONCAT] = {"tnn_concat", 2, tnn__fwd_concat, tnn__bwd_concat},
    [TNN_OP_NARROW] = {"tnn_narrow", 1, tnn__fwd_narrow, tnn__bwd_narrow},
    [TNN_OP_TO_BF16] = {"tnn_to_bf16", 1, tnn__fwd_to_bf16, tnn__bwd_to_bf16},
    [TNN_OP_RMS_NORM_GAIN] = {"rms_norm_gain", 2, tnn__fwd_rms_norm_gain, NULL},
    [TNN_OP_SWIGLU] = {"tnn_swiglu", 2, tnn__fwd_swiglu, tnn__bwd_swiglu},
    [TNN_OP_SWIGLU_BACK] = {"swiglu_back", 3, tnn__fwd_swiglu_back, NULL},
};
