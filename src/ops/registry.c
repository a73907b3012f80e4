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

const tnn_op_def tnn__ops[TNN_OP_COUNT] = {
    [TNN_OP_NONE] = {"leaf", 0, NULL},
    [TNN_OP_ADD] = {"tnn_add", 2, tnn__fwd_add},
    [TNN_OP_SUB] = {"tnn_sub", 2, tnn__fwd_sub},
    [TNN_OP_MUL] = {"tnn_mul", 2, tnn__fwd_mul},
    [TNN_OP_SCALE] = {"tnn_scale", 1, tnn__fwd_scale},
    [TNN_OP_GELU] = {"tnn_gelu", 1, tnn__fwd_gelu},
    [TNN_OP_SILU] = {"tnn_silu", 1, tnn__fwd_silu},
    [TNN_OP_GELU_BACK] = {"tnn_gelu_back", 2, tnn__fwd_gelu_back},
    [TNN_OP_SILU_BACK] = {"tnn_silu_back", 2, tnn__fwd_silu_back},
    [TNN_OP_SOFTMAX] = {"tnn_softmax", 1, tnn__fwd_softmax},
    [TNN_OP_SOFTMAX_BACK] = {"tnn_softmax_back", 2, tnn__fwd_softmax_back},
    [TNN_OP_RMS_NORM] = {"tnn_rms_norm", 2, tnn__fwd_rms_norm},
    [TNN_OP_RMS_NORM_BACK] = {"tnn_rms_norm_back", 2, tnn__fwd_rms_norm_back},
    [TNN_OP_MATMUL] = {"tnn_matmul", 2, tnn__fwd_matmul},
    [TNN_OP_TRANSPOSE] = {"tnn_transpose", 1, tnn__fwd_transpose},
    [TNN_OP_GET_ROWS] = {"tnn_get_rows", 2, tnn__fwd_get_rows},
    [TNN_OP_GET_ROWS_BACK] = {"tnn_get_rows_back", 3, tnn__fwd_get_rows_back},
};
