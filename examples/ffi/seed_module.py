#!/usr/bin/env python3
"""seed_module.py - the seed's TinyNN module, run from Python through ctypes.

The Ruby module TinyNN (shared/seed/000_15ba5a1455d23023.txt) drives a C
library through FFI. This file binds libtinynn with nothing but the Python
standard library and transliterates each of the module's methods call for
call: same C functions, same order, same arguments, including the
ggml-style tnn_matmul layout and the element-by-element scratch staging.
It then checks every method

  * against a plain double-precision Python reference (f32-level tolerance),
  * against the library's one-call tnn_mat_* function for the same job
    (which must give exactly the same numbers),

and shows that bad input comes back through FFI as an error code or NULL
plus a message from tnn_last_error(), never as a crash.

Usage:  python3 examples/ffi/seed_module.py path/to/libtinynn.so

Prints one line per failed check, then "ffi_python: N passed, N failed";
the exit status is non-zero when a check failed. CI runs it as the ctest
test `ffi_python`.

To bind tinynn in your own code, copy SIGNATURES and load_library(): with
argtypes set, ctypes passes handles as full 64-bit pointers (without them
it would pass Python ints as 32-bit C ints). Note that the seed module
ignores the status codes the library returns; code of your own should
check them and read tnn_last_error() when one is negative.
"""

import ctypes
import math
import random
import struct
import sys
from collections import namedtuple
from ctypes import POINTER, c_char_p, c_double, c_int, c_int64, c_size_t, c_void_p

# --------------------------------------------------------------------------
# Bindings: the argument types of shared/guide/seed-abi.md
# --------------------------------------------------------------------------

PTR = c_void_p  # every handle: a session or a tensor
F64 = POINTER(c_double)  # a host array of doubles
I64 = POINTER(c_int64)  # a host array of int64 (indices, targets)

SIGNATURES = {
    # name: (return type, argument types)
    "tnn_version": (c_char_p, []),
    "tnn_status_name": (c_char_p, [c_int]),
    "tnn_last_error": (c_char_p, []),
    "tnn_last_status": (c_int, []),
    "tnn_clear_error": (None, []),
    # sessions and tensors
    "tnn_session_new": (PTR, [c_int]),
    "tnn_session_free": (None, [PTR]),
    "tnn_input_2d_f32": (PTR, [PTR, c_int, c_int]),
    "tnn_input_1d_f32": (PTR, [PTR, c_int]),
    "tnn_input_1d_i32": (PTR, [PTR, c_int]),
    # ops
    "tnn_matmul": (PTR, [PTR, PTR, PTR]),
    "tnn_add": (PTR, [PTR, PTR, PTR]),
    "tnn_mul": (PTR, [PTR, PTR, PTR]),
    "tnn_scale": (PTR, [PTR, PTR, c_double]),
    "tnn_gelu": (PTR, [PTR, PTR]),
    "tnn_silu": (PTR, [PTR, PTR]),
    "tnn_softmax": (PTR, [PTR, PTR]),
    "tnn_transpose": (PTR, [PTR, PTR]),
    "tnn_rms_norm": (PTR, [PTR, PTR, PTR, c_double]),
    "tnn_get_rows": (PTR, [PTR, PTR, PTR]),
    "tnn_get_rows_back": (PTR, [PTR, PTR, PTR, PTR]),
    "tnn_rms_norm_back": (PTR, [PTR, PTR, PTR, c_double]),
    "tnn_softmax_back": (PTR, [PTR, PTR, PTR]),
    "tnn_silu_back": (PTR, [PTR, PTR, PTR]),
    # graph control
    "tnn_realize": (c_int, [PTR, PTR]),
    "tnn_compute": (c_int, [PTR]),
    "tnn_set_output": (None, [PTR]),
    "tnn_set_param": (None, [PTR]),
    # moving data
    "tnn_scratch_set": (None, [PTR, c_int, c_double]),
    "tnn_scratch_get": (c_double, [PTR, c_int]),
    "tnn_scratch_set_i32": (None, [PTR, c_int, c_int]),
    "tnn_scratch_get_i32": (c_int, [PTR, c_int]),
    "tnn_upload": (c_int, [PTR, PTR]),
    "tnn_download": (c_int, [PTR, PTR]),
    "tnn_upload_from_float_array": (c_int, [PTR, PTR, F64, c_size_t]),
    "tnn_upload_from_int_array": (c_int, [PTR, PTR, I64, c_size_t]),
    "tnn_upload_transposed_f64": (c_int, [PTR, PTR, F64, c_int, c_int]),
    "tnn_download_to_f64_array": (c_int, [PTR, PTR, F64, c_size_t]),
    # host-side kernels on the scratch
    "tnn_gelu_back_scratch": (None, [PTR, c_int]),
    "tnn_adam_step_scratch": (None, [PTR, c_int] + [c_double] * 6),
    # one-call functions on caller-owned row-major f64 matrices
    "tnn_mat_matmul": (c_int, [F64, c_int, c_int, F64, c_int, c_int, F64]),
    "tnn_mat_matmul_t": (c_int, [F64, c_int, c_int, F64, c_int, c_int, F64]),
    "tnn_mat_t_matmul": (c_int, [F64, c_int, c_int, F64, c_int, c_int, F64]),
    "tnn_mat_add": (c_int, [F64, F64, c_int, c_int, F64]),
    "tnn_mat_mul": (c_int, [F64, F64, c_int, c_int, F64]),
    "tnn_mat_scale": (c_int, [F64, c_int, c_int, c_double, F64]),
    "tnn_mat_gelu": (c_int, [F64, c_int, c_int, F64]),
    "tnn_mat_silu": (c_int, [F64, c_int, c_int, F64]),
    "tnn_mat_softmax": (c_int, [F64, c_int, c_int, F64]),
    "tnn_mat_transpose": (c_int, [F64, c_int, c_int, F64]),
    "tnn_mat_rms_norm": (c_int, [F64, c_int, c_int, F64, c_double, F64]),
    "tnn_mat_gelu_back": (c_int, [F64, F64, c_int, c_int, F64]),
    "tnn_mat_silu_back": (c_int, [F64, F64, c_int, c_int, F64]),
    "tnn_mat_softmax_back": (c_int, [F64, F64, c_int, c_int, F64]),
    "tnn_mat_rms_norm_back": (c_int, [F64, F64, c_int, c_int, c_double, F64]),
    "tnn_mat_cross_entropy_grad": (c_int, [F64, c_int, c_int, I64, c_int, F64]),
    "tnn_mat_embed_lookup": (c_int, [F64, c_int, c_int, I64, c_int, F64]),
    "tnn_mat_embed_back": (c_int, [F64, c_int, c_int, I64, c_int, F64]),
    "tnn_mat_adam_step": (c_int, [F64, F64, F64, F64, c_int, c_int] + [c_double] * 6),
    "tnn_mat_sgd_step": (c_int, [F64, F64, c_int, c_int, c_double, F64]),
    "tnn_mat_ffn_pipeline": (c_int, [F64, c_int, c_int, F64, c_int, F64, c_int, F64]),
}

TNN_OK, TNN_ERR_ARG, TNN_ERR_SHAPE, TNN_ERR_RANGE, TNN_ERR_STATE = 0, -1, -2, -3, -4


def load_library(path):
    """Opens libtinynn and declares the types of every function used here."""
    lib = ctypes.CDLL(path)
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def f64_array(values):
    """A C double[] holding `values` (what FFI hosts pass for a Float array)."""
    return (c_double * len(values))(*values)


def i64_array(values):
    """A C int64_t[] holding `values` (what FFI hosts pass for an Int array)."""
    return (c_int64 * len(values))(*values)


def last_error(lib):
    return lib.tnn_last_error().decode("utf-8", "replace")


# --------------------------------------------------------------------------
# The module: Mat and the TinyNN methods, call for call
# --------------------------------------------------------------------------


class Mat:
    """The project's matrix: nrows x ncols doubles, row-major in `flat`."""

    def __init__(self, nrows, ncols, flat=None):
        self.nrows = nrows
        self.ncols = ncols
        self.flat = list(flat) if flat is not None else [0.0] * (nrows * ncols)


AdamStepResult = namedtuple("AdamStepResult", "param m v")


class TinyNN:
    """The seed module's methods over a loaded libtinynn (self.lib)."""

    def __init__(self, lib):
        self.lib = lib

    # ---- one-shot methods: a session per call --------------------------

    def matmul(self, a, b):
        """a @ b. b is uploaded transposed: tnn_matmul computes A·Bᵀ."""
        L = self.lib
        sess = L.tnn_session_new(0)
        ta = L.tnn_input_2d_f32(sess, a.nrows, a.ncols)
        tb_t = L.tnn_input_2d_f32(sess, b.ncols, b.nrows)
        tc = L.tnn_matmul(sess, ta, tb_t)
        L.tnn_realize(sess, tc)
        for i in range(a.nrows * a.ncols):
            L.tnn_scratch_set(sess, i, a.flat[i])
        L.tnn_upload(sess, ta)
        br, bc = b.nrows, b.ncols
        for i in range(br):
            for j in range(bc):
                L.tnn_scratch_set(sess, j * br + i, b.flat[i * bc + j])
        L.tnn_upload(sess, tb_t)
        L.tnn_compute(sess)
        L.tnn_download(sess, tc)
        out = Mat(a.nrows, b.ncols)
        m, n = a.nrows, b.ncols
        for i in range(m):
            for j in range(n):
                out.flat[i * n + j] = L.tnn_scratch_get(sess, j * m + i)
        L.tnn_session_free(sess)
        return out

    def matmul_t(self, a, b):
        """a @ bᵀ, natively."""
        L = self.lib
        sess = L.tnn_session_new(0)
        ta = L.tnn_input_2d_f32(sess, a.nrows, a.ncols)
        tb = L.tnn_input_2d_f32(sess, b.nrows, b.ncols)
        tc = L.tnn_matmul(sess, ta, tb)
        L.tnn_realize(sess, tc)
        self.stage_row_major_and_upload(sess, ta, a)
        self.stage_row_major_and_upload(sess, tb, b)
        L.tnn_compute(sess)
        L.tnn_download(sess, tc)
        out = Mat(a.nrows, b.nrows)
        m, n = a.nrows, b.nrows
        for i in range(m):
            for j in range(n):
                out.flat[i * n + j] = L.tnn_scratch_get(sess, j * m + i)
        L.tnn_session_free(sess)
        return out

    def t_matmul(self, a, b):
        """aᵀ @ b: both operands uploaded transposed."""
        L = self.lib
        sess = L.tnn_session_new(0)
        ta_t = L.tnn_input_2d_f32(sess, a.ncols, a.nrows)
        tb_t = L.tnn_input_2d_f32(sess, b.ncols, b.nrows)
        tc = L.tnn_matmul(sess, ta_t, tb_t)
        L.tnn_realize(sess, tc)
        self.stage_transposed_and_upload(sess, ta_t, a)
        self.stage_transposed_and_upload(sess, tb_t, b)
        L.tnn_compute(sess)
        L.tnn_download(sess, tc)
        out = Mat(a.ncols, b.ncols)
        m, n = a.ncols, b.ncols
        for i in range(m):
            for j in range(n):
                out.flat[i * n + j] = L.tnn_scratch_get(sess, j * m + i)
        L.tnn_session_free(sess)
        return out

    def _elementwise2(self, build, a, b):
        """add and mul: the same sequence around a different op."""
        L = self.lib
        sess = L.tnn_session_new(0)
        ta = L.tnn_input_2d_f32(sess, a.nrows, a.ncols)
        tb = L.tnn_input_2d_f32(sess, b.nrows, b.ncols)
        tc = build(sess, ta, tb)
        L.tnn_realize(sess, tc)
        n = a.nrows * a.ncols
        for i in range(n):
            L.tnn_scratch_set(sess, i, a.flat[i])
        L.tnn_upload(sess, ta)
        for i in range(n):
            L.tnn_scratch_set(sess, i, b.flat[i])
        L.tnn_upload(sess, tb)
        L.tnn_compute(sess)
        L.tnn_download(sess, tc)
        out = Mat(a.nrows, a.ncols)
        for i in range(n):
            out.flat[i] = L.tnn_scratch_get(sess, i)
        L.tnn_session_free(sess)
        return out

    def add(self, a, b):
        return self._elementwise2(self.lib.tnn_add, a, b)

    def mul(self, a, b):
        return self._elementwise2(self.lib.tnn_mul, a, b)

    def _elementwise1(self, build, a, out_rows, out_cols):
        """scale, gelu, silu, softmax, transpose: one input, one output."""
        L = self.lib
        sess = L.tnn_session_new(0)
        ta = L.tnn_input_2d_f32(sess, a.nrows, a.ncols)
        tc = build(sess, ta)
        L.tnn_realize(sess, tc)
        n = a.nrows * a.ncols
        for i in range(n):
            L.tnn_scratch_set(sess, i, a.flat[i])
        L.tnn_upload(sess, ta)
        L.tnn_compute(sess)
        L.tnn_download(sess, tc)
        out = Mat(out_rows, out_cols)
        for i in range(n):
            out.flat[i] = L.tnn_scratch_get(sess, i)
        L.tnn_session_free(sess)
        return out

    def scale(self, a, s):
        return self._elementwise1(lambda sess, ta: self.lib.tnn_scale(sess, ta, s),
                                  a, a.nrows, a.ncols)

    def gelu(self, a):
        return self._elementwise1(self.lib.tnn_gelu, a, a.nrows, a.ncols)

    def silu(self, a):
        return self._elementwise1(self.lib.tnn_silu, a, a.nrows, a.ncols)

    def softmax(self, a):
        return self._elementwise1(self.lib.tnn_softmax, a, a.nrows, a.ncols)

    def transpose(self, a):
        # The result is (ncols x nrows) and contiguous: row-major readout.
        return self._elementwise1(self.lib.tnn_transpose, a, a.ncols, a.nrows)

    def rms_norm(self, x, gamma, eps):
        """RMSNorm(x) * gamma; gamma is a list of x.ncols values."""
        L = self.lib
        sess = L.tnn_session_new(0)
        tx = L.tnn_input_2d_f32(sess, x.nrows, x.ncols)
        tg = L.tnn_input_2d_f32(sess, 1, x.ncols)
        tc = L.tnn_rms_norm(sess, tx, tg, eps)
        L.tnn_realize(sess, tc)
        nx = x.nrows * x.ncols
        for i in range(nx):
            L.tnn_scratch_set(sess, i, x.flat[i])
        L.tnn_upload(sess, tx)
        for i in range(x.ncols):
            L.tnn_scratch_set(sess, i, gamma[i])
        L.tnn_upload(sess, tg)
        L.tnn_compute(sess)
        L.tnn_download(sess, tc)
        out = Mat(x.nrows, x.ncols)
        for i in range(nx):
            out.flat[i] = L.tnn_scratch_get(sess, i)
        L.tnn_session_free(sess)
        return out

    def gelu_back(self, x, dh):
        """dx = dh * gelu'(x), on the scratch only (no graph)."""
        L = self.lib
        sess = L.tnn_session_new(0)
        n = x.nrows * x.ncols
        for i in range(n):
            L.tnn_scratch_set(sess, i, x.flat[i])
        for i in range(n):
            L.tnn_scratch_set(sess, n + i, dh.flat[i])
        L.tnn_gelu_back_scratch(sess, n)
        out = Mat(x.nrows, x.ncols)
        for i in range(n):
            out.flat[i] = L.tnn_scratch_get(sess, 2 * n + i)
        L.tnn_session_free(sess)
        return out

    def _backward2(self, build, first, second, like):
        """silu_back, softmax_back, rms_norm_back: two staged inputs."""
        L = self.lib
        sess = L.tnn_session_new(0)
        t1 = L.tnn_input_2d_f32(sess, first.nrows, first.ncols)
        t2 = L.tnn_input_2d_f32(sess, second.nrows, second.ncols)
        tc = build(sess, t1, t2)
        L.tnn_realize(sess, tc)
        self.stage_row_major_and_upload(sess, t1, first)
        self.stage_row_major_and_upload(sess, t2, second)
        L.tnn_compute(sess)
        L.tnn_download(sess, tc)
        out = Mat(like.nrows, like.ncols)
        n = like.nrows * like.ncols
        for i in range(n):
            out.flat[i] = L.tnn_scratch_get(sess, i)
        L.tnn_session_free(sess)
        return out

    def silu_back(self, x, dy):
        # forward input first, then the gradient
        return self._backward2(self.lib.tnn_silu_back, x, dy, x)

    def softmax_back(self, a_softmax, dy):
        # gradient first, then the softmax output
        return self._backward2(self.lib.tnn_softmax_back, dy, a_softmax, a_softmax)

    def rms_norm_back(self, x, dy, eps):
        # gradient first, then the forward input
        return self._backward2(lambda s, tdy, tx: self.lib.tnn_rms_norm_back(s, tdy, tx, eps),
                               dy, x, x)

    def cross_entropy_grad(self, logits, targets, n_pred):
        """(softmax(logits) - one_hot(targets)) / n_pred, composed from ops."""
        oh = Mat(logits.nrows, logits.ncols)
        for i in range(n_pred):
            oh.flat[i * logits.ncols + targets[i]] = 1.0
        sm = self.softmax(logits)
        inv_n = 1.0 / float(n_pred)
        sm_s = self.scale(sm, inv_n)
        oh_s = self.scale(oh, -inv_n)
        return self.add(sm_s, oh_s)

    def adam_step(self, param, grad, m, v, lr, b1, b2, eps, omc1, omc2):
        """One Adam step on the scratch; returns new (param, m, v)."""
        L = self.lib
        sess = L.tnn_session_new(0)
        n = param.nrows * param.ncols
        for i in range(n):
            L.tnn_scratch_set(sess, i, param.flat[i])
        for i in range(n):
            L.tnn_scratch_set(sess, n + i, grad.flat[i])
        for i in range(n):
            L.tnn_scratch_set(sess, 2 * n + i, m.flat[i])
        for i in range(n):
            L.tnn_scratch_set(sess, 3 * n + i, v.flat[i])
        L.tnn_adam_step_scratch(sess, n, lr, b1, b2, eps, omc1, omc2)
        new_param = Mat(param.nrows, param.ncols)
        new_m = Mat(param.nrows, param.ncols)
        new_v = Mat(param.nrows, param.ncols)
        for i in range(n):
            new_param.flat[i] = L.tnn_scratch_get(sess, i)
            new_m.flat[i] = L.tnn_scratch_get(sess, 2 * n + i)
            new_v.flat[i] = L.tnn_scratch_get(sess, 3 * n + i)
        L.tnn_session_free(sess)
        return AdamStepResult(new_param, new_m, new_v)

    def sgd_step(self, param, grad, lr):
        return self.add(param, self.scale(grad, -lr))

    def embed_lookup(self, table, indices):
        """Row i of the result is table[indices[i]]."""
        L = self.lib
        n_idx = len(indices)
        sess = L.tnn_session_new(0)
        ttab = L.tnn_input_2d_f32(sess, table.nrows, table.ncols)
        tidx = L.tnn_input_1d_i32(sess, n_idx)
        tout = L.tnn_get_rows(sess, ttab, tidx)
        L.tnn_realize(sess, tout)
        self.stage_row_major_and_upload(sess, ttab, table)
        for i in range(n_idx):
            L.tnn_scratch_set_i32(sess, i, indices[i])
        L.tnn_upload(sess, tidx)
        L.tnn_compute(sess)
        L.tnn_download(sess, tout)
        out = Mat(n_idx, table.ncols)
        for i in range(n_idx * table.ncols):
            out.flat[i] = L.tnn_scratch_get(sess, i)
        L.tnn_session_free(sess)
        return out

    def embed_back(self, d_out, indices, vocab_size):
        """Scatter-add: out[indices[i]] += d_out[i], out (vocab_size x d)."""
        L = self.lib
        n_idx = len(indices)
        sess = L.tnn_session_new(0)
        td = L.tnn_input_2d_f32(sess, d_out.nrows, d_out.ncols)
        tidx = L.tnn_input_1d_i32(sess, n_idx)
        tshape = L.tnn_input_2d_f32(sess, vocab_size, d_out.ncols)
        tout = L.tnn_get_rows_back(sess, td, tidx, tshape)
        L.tnn_realize(sess, tout)
        self.stage_row_major_and_upload(sess, td, d_out)
        for i in range(n_idx):
            L.tnn_scratch_set_i32(sess, i, indices[i])
        L.tnn_upload(sess, tidx)
        L.tnn_compute(sess)
        L.tnn_download(sess, tout)
        out = Mat(vocab_size, d_out.ncols)
        for i in range(vocab_size * d_out.ncols):
            out.flat[i] = L.tnn_scratch_get(sess, i)
        L.tnn_session_free(sess)
        return out

    def ffn_pipeline(self, h, w1, w2):
        """gelu(h @ w1) @ w2 as three one-shot calls."""
        pre = self.matmul(h, w1)
        hidden = self.gelu(pre)
        return self.matmul(hidden, w2)

    # ---- persistent sessions: build once, run many times ---------------

    def persistent_new(self, prefer_cuda):
        return self.lib.tnn_session_new(prefer_cuda)

    def persistent_free(self, sess):
        self.lib.tnn_session_free(sess)

    def alloc_2d(self, sess, rows, cols):
        return self.lib.tnn_input_2d_f32(sess, rows, cols)

    def alloc_1d_i32(self, sess, n):
        return self.lib.tnn_input_1d_i32(sess, n)

    def build_matmul(self, sess, ta, tb):
        return self.lib.tnn_matmul(sess, ta, tb)

    def build_add(self, sess, ta, tb):
        return self.lib.tnn_add(sess, ta, tb)

    def build_gelu(self, sess, ta):
        return self.lib.tnn_gelu(sess, ta)

    def build_softmax(self, sess, ta):
        return self.lib.tnn_softmax(sess, ta)

    def build_scale(self, sess, ta, s):
        return self.lib.tnn_scale(sess, ta, s)

    def build_rms_norm(self, sess, tx, tgamma, eps):
        return self.lib.tnn_rms_norm(sess, tx, tgamma, eps)

    def realize(self, sess, result):
        return self.lib.tnn_realize(sess, result)

    def compute(self, sess):
        return self.lib.tnn_compute(sess)

    def upload_row_major(self, sess, tensor, mat):
        """One call: the Mat's own storage goes across as a double array."""
        return self.lib.tnn_upload_from_float_array(sess, tensor, f64_array(mat.flat),
                                                    mat.nrows * mat.ncols)

    def upload_int_array(self, sess, tensor, indices):
        return self.lib.tnn_upload_from_int_array(sess, tensor, i64_array(indices),
                                                  len(indices))

    def upload_transposed(self, sess, tensor, mat):
        """Stage mat transposed into the scratch, then one upload."""
        L = self.lib
        br, bc = mat.nrows, mat.ncols
        for i in range(br):
            for j in range(bc):
                L.tnn_scratch_set(sess, j * br + i, mat.flat[i * bc + j])
        return L.tnn_upload(sess, tensor)

    def stage_row_major_and_upload(self, sess, target, m):
        L = self.lib
        for i in range(m.nrows * m.ncols):
            L.tnn_scratch_set(sess, i, m.flat[i])
        return L.tnn_upload(sess, target)

    def stage_transposed_and_upload(self, sess, target, b):
        return self.lib.tnn_upload_transposed_f64(sess, target, f64_array(b.flat),
                                                  b.nrows, b.ncols)

    def download_row_major(self, sess, dl_handle, rows, cols):
        L = self.lib
        L.tnn_download(sess, dl_handle)
        out = Mat(rows, cols)
        for i in range(rows * cols):
            out.flat[i] = L.tnn_scratch_get(sess, i)
        return out

    def download_to_mat(self, sess, dl_handle, rows, cols):
        out = Mat(rows, cols)
        buf = (c_double * (rows * cols))()
        self.lib.tnn_download_to_f64_array(sess, dl_handle, buf, rows * cols)
        out.flat = list(buf)
        return out

    def download_matmul(self, sess, tensor, m, n):
        """A tnn_matmul result holds (i, j) at scratch[j*m + i]."""
        L = self.lib
        L.tnn_download(sess, tensor)
        out = Mat(m, n)
        for i in range(m):
            for j in range(n):
                out.flat[i * n + j] = L.tnn_scratch_get(sess, j * m + i)
        return out


# --------------------------------------------------------------------------
# Plain double-precision references
# --------------------------------------------------------------------------

GELU_C = math.sqrt(2.0 / math.pi)


def f32(x):
    """x rounded to the nearest float32, so references see the library's inputs."""
    return struct.unpack("f", struct.pack("f", x))[0]


def rand_mat(rng, rows, cols, r=2.0):
    return Mat(rows, cols, [f32(rng.uniform(-r, r)) for _ in range(rows * cols)])


def rows_of(a):
    return [a.flat[i * a.ncols:(i + 1) * a.ncols] for i in range(a.nrows)]


def ref_matmul(a, b):
    return [sum(a.flat[i * a.ncols + k] * b.flat[k * b.ncols + j] for k in range(a.ncols))
            for i in range(a.nrows) for j in range(b.ncols)]


def ref_transpose(a):
    return [a.flat[i * a.ncols + j] for j in range(a.ncols) for i in range(a.nrows)]


def ref_gelu(x):
    return 0.5 * x * (1.0 + math.tanh(GELU_C * (x + 0.044715 * x ** 3)))


def ref_gelu_grad(x):
    t = math.tanh(GELU_C * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_C * (1 + 3 * 0.044715 * x * x)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def ref_softmax(a):
    out = []
    for row in rows_of(a):
        mx = max(row)
        e = [math.exp(v - mx) for v in row]
        s = sum(e)
        out += [v / s for v in e]
    return out


def ref_softmax_back(y, dy):
    out = []
    for yr, dr in zip(rows_of(y), rows_of(dy)):
        dot = sum(p * q for p, q in zip(yr, dr))
        out += [p * (q - dot) for p, q in zip(yr, dr)]
    return out


def ref_rms_norm(x, gamma, eps):
    out = []
    for row in rows_of(x):
        r = 1.0 / math.sqrt(sum(v * v for v in row) / len(row) + eps)
        out += [v * r * g for v, g in zip(row, gamma)]
    return out


def ref_rms_norm_back(x, dy, eps):
    out = []
    for xr, dr in zip(rows_of(x), rows_of(dy)):
        n = len(xr)
        r = 1.0 / math.sqrt(sum(v * v for v in xr) / n + eps)
        dot = sum(p * q for p, q in zip(xr, dr))
        out += [r * d - r ** 3 * v * dot / n for v, d in zip(xr, dr)]
    return out


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


class Checks:
    """Counts checks; prints one line per failure."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL " + what)

    def close(self, what, got, want, atol=1e-5, rtol=1e-5):
        """f32-level agreement with the double reference."""
        if len(got) != len(want):
            self.check(False, "%s: %d values, want %d" % (what, len(got), len(want)))
            return
        worst, at = 0.0, 0
        for i, (g, w) in enumerate(zip(got, want)):
            e = abs(g - w) / (atol + rtol * abs(w))
            if not e <= worst:  # NaN counts as worst
                worst, at = (e if e == e else float("inf")), i
        self.check(worst <= 1.0, "%s: off by %.3g tolerances at [%d]: got %r, want %r"
                   % (what, worst, at, got[at], want[at]))

    def same(self, what, got, want):
        """Exact equality with the one-call function's result."""
        diff = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
        self.check(len(got) == len(want) and not diff,
                   "%s: differs from the tnn_mat_* result at %s" % (what, diff[:5]))


def mat_call(lib, name, n_out, *args):
    """Runs tnn_mat_<name> with `args` (lists become C arrays) into a fresh
    output of n_out doubles; returns (status, output list)."""
    out = (c_double * n_out)()
    conv = []
    for a in args:
        if isinstance(a, list) and a and isinstance(a[0], int):
            conv.append(i64_array(a))
        elif isinstance(a, list):
            conv.append(f64_array(a))
        else:
            conv.append(a)
    rc = getattr(lib, "tnn_mat_" + name)(*conv, out)
    return rc, list(out)


def check_methods(nn, lib, ck, rng):
    shapes = [(1, 1, 1), (3, 4, 5), (7, 3, 2)]  # (m, k, n)
    for m, k, n in shapes:
        tag = "(%d,%d,%d)" % (m, k, n)
        a, b = rand_mat(rng, m, k), rand_mat(rng, k, n)
        got = nn.matmul(a, b)
        ck.check((got.nrows, got.ncols) == (m, n), "matmul %s: shape" % tag)
        ck.close("matmul " + tag, got.flat, ref_matmul(a, b))
        rc, want = mat_call(lib, "matmul", m * n, a.flat, m, k, b.flat, k, n)
        ck.check(rc == TNN_OK, "tnn_mat_matmul %s -> %d" % (tag, rc))
        ck.same("matmul " + tag, got.flat, want)

        bt = rand_mat(rng, n, k)  # a @ btᵀ
        got = nn.matmul_t(a, bt)
        ck.close("matmul_t " + tag, got.flat,
                 ref_matmul(a, Mat(k, n, ref_transpose(bt))))
        rc, want = mat_call(lib, "matmul_t", m * n, a.flat, m, k, bt.flat, n, k)
        ck.same("matmul_t " + tag, got.flat, want)

        at = rand_mat(rng, k, m)  # atᵀ @ b
        got = nn.t_matmul(at, b)
        ck.close("t_matmul " + tag, got.flat,
                 ref_matmul(Mat(m, k, ref_transpose(at)), b))
        rc, want = mat_call(lib, "t_matmul", m * n, at.flat, k, m, b.flat, k, n)
        ck.same("t_matmul " + tag, got.flat, want)

    for r, c in [(1, 1), (2, 3), (5, 7)]:
        tag = "(%d,%d)" % (r, c)
        nel = r * c
        x, y = rand_mat(rng, r, c), rand_mat(rng, r, c)

        got = nn.add(x, y)
        ck.close("add " + tag, got.flat, [p + q for p, q in zip(x.flat, y.flat)])
        ck.same("add " + tag, got.flat, mat_call(lib, "add", nel, x.flat, y.flat, r, c)[1])
        got = nn.mul(x, y)
        ck.close("mul " + tag, got.flat, [p * q for p, q in zip(x.flat, y.flat)])
        ck.same("mul " + tag, got.flat, mat_call(lib, "mul", nel, x.flat, y.flat, r, c)[1])
        got = nn.scale(x, -0.3)
        ck.close("scale " + tag, got.flat, [p * -0.3 for p in x.flat])
        ck.same("scale " + tag, got.flat, mat_call(lib, "scale", nel, x.flat, r, c, -0.3)[1])
        got = nn.gelu(x)
        ck.close("gelu " + tag, got.flat, [ref_gelu(p) for p in x.flat])
        ck.same("gelu " + tag, got.flat, mat_call(lib, "gelu", nel, x.flat, r, c)[1])
        got = nn.silu(x)
        ck.close("silu " + tag, got.flat, [p * sigmoid(p) for p in x.flat])
        ck.same("silu " + tag, got.flat, mat_call(lib, "silu", nel, x.flat, r, c)[1])
        got = nn.softmax(x)
        ck.close("softmax " + tag, got.flat, ref_softmax(x))
        ck.same("softmax " + tag, got.flat, mat_call(lib, "softmax", nel, x.flat, r, c)[1])
        got = nn.transpose(x)
        ck.check((got.nrows, got.ncols) == (c, r), "transpose %s: shape" % tag)
        ck.check(got.flat == ref_transpose(x), "transpose %s: values" % tag)
        ck.same("transpose " + tag, got.flat, mat_call(lib, "transpose", nel, x.flat, r, c)[1])

        gamma = [f32(rng.uniform(0.5, 1.5)) for _ in range(c)]
        got = nn.rms_norm(x, gamma, 1e-5)
        ck.close("rms_norm " + tag, got.flat, ref_rms_norm(x, gamma, 1e-5))
        ck.same("rms_norm " + tag, got.flat,
                mat_call(lib, "rms_norm", nel, x.flat, r, c, gamma, 1e-5)[1])

        got = nn.gelu_back(x, y)
        ck.close("gelu_back " + tag, got.flat,
                 [q * ref_gelu_grad(p) for p, q in zip(x.flat, y.flat)])
        ck.same("gelu_back " + tag, got.flat,
                mat_call(lib, "gelu_back", nel, x.flat, y.flat, r, c)[1])
        got = nn.silu_back(x, y)
        ck.close("silu_back " + tag, got.flat,
                 [q * sigmoid(p) * (1 + p * (1 - sigmoid(p))) for p, q in zip(x.flat, y.flat)])
        ck.same("silu_back " + tag, got.flat,
                mat_call(lib, "silu_back", nel, x.flat, y.flat, r, c)[1])
        sm = Mat(r, c, [f32(v) for v in ref_softmax(x)])
        got = nn.softmax_back(sm, y)
        ck.close("softmax_back " + tag, got.flat, ref_softmax_back(sm, y))
        ck.same("softmax_back " + tag, got.flat,
                mat_call(lib, "softmax_back", nel, sm.flat, y.flat, r, c)[1])
        got = nn.rms_norm_back(x, y, 1e-5)
        ck.close("rms_norm_back " + tag, got.flat, ref_rms_norm_back(x, y, 1e-5))
        ck.same("rms_norm_back " + tag, got.flat,
                mat_call(lib, "rms_norm_back", nel, x.flat, y.flat, r, c, 1e-5)[1])

        got = nn.sgd_step(x, y, 0.1)
        ck.close("sgd_step " + tag, got.flat, [p - 0.1 * q for p, q in zip(x.flat, y.flat)])
        ck.same("sgd_step " + tag, got.flat,
                mat_call(lib, "sgd_step", nel, x.flat, y.flat, r, c, 0.1)[1])

        # Adam, step t = 3 of (b1, b2) = (0.9, 0.999)
        mom = rand_mat(rng, r, c, 0.1)
        vel = Mat(r, c, [f32(abs(rng.uniform(0, 0.01))) for _ in range(nel)])
        lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
        omc1, omc2 = 1 - b1 ** 3, 1 - b2 ** 3
        res = nn.adam_step(x, y, mom, vel, lr, b1, b2, eps, omc1, omc2)
        want_m = [b1 * m0 + (1 - b1) * g for m0, g in zip(mom.flat, y.flat)]
        want_v = [b2 * v0 + (1 - b2) * g * g for v0, g in zip(vel.flat, y.flat)]
        want_p = [p - lr * (m1 / omc1) / (math.sqrt(v1 / omc2) + eps)
                  for p, m1, v1 in zip(x.flat, want_m, want_v)]
        ck.close("adam_step param " + tag, res.param.flat, want_p)
        ck.close("adam_step m " + tag, res.m.flat, want_m, atol=1e-7)
        ck.close("adam_step v " + tag, res.v.flat, want_v, atol=1e-8)
        p_arr, m_arr, v_arr = f64_array(x.flat), f64_array(mom.flat), f64_array(vel.flat)
        rc = lib.tnn_mat_adam_step(p_arr, f64_array(y.flat), m_arr, v_arr, r, c,
                                   lr, b1, b2, eps, omc1, omc2)
        ck.check(rc == TNN_OK, "tnn_mat_adam_step %s -> %d" % (tag, rc))
        ck.same("adam_step param " + tag, res.param.flat, list(p_arr))
        ck.same("adam_step m " + tag, res.m.flat, list(m_arr))
        ck.same("adam_step v " + tag, res.v.flat, list(v_arr))

    # cross-entropy gradient: every row predicted, or only the first n_pred
    for rows, vocab, n_pred in [(3, 5, 3), (3, 5, 2), (7, 11, 7), (7, 11, 5)]:
        tag = "%dx%d n_pred=%d" % (rows, vocab, n_pred)
        logits = rand_mat(rng, rows, vocab, 3.0)
        targets = [rng.randrange(vocab) for _ in range(rows)]
        got = nn.cross_entropy_grad(logits, targets, n_pred)
        sm = ref_softmax(logits)
        want = [(sm[i * vocab + v] - (1.0 if i < n_pred and v == targets[i] else 0.0)) / n_pred
                for i in range(rows) for v in range(vocab)]
        ck.close("cross_entropy_grad " + tag, got.flat, want)
        ck.same("cross_entropy_grad " + tag, got.flat,
                mat_call(lib, "cross_entropy_grad", rows * vocab, logits.flat, rows, vocab,
                         targets, n_pred)[1])

    # embeddings, with a repeated index
    table = rand_mat(rng, 5, 3)
    indices = [4, 0, 4, 2]
    got = nn.embed_lookup(table, indices)
    want = sum((table.flat[i * 3:(i + 1) * 3] for i in indices), [])
    ck.check(got.flat == want, "embed_lookup: %r, want %r" % (got.flat, want))
    ck.same("embed_lookup", got.flat,
            mat_call(lib, "embed_lookup", 12, table.flat, 5, 3, indices, 4)[1])
    d_out = rand_mat(rng, 4, 3)
    got = nn.embed_back(d_out, indices, 5)
    want = [0.0] * 15
    for i, row in enumerate(indices):
        for j in range(3):
            want[row * 3 + j] += d_out.flat[i * 3 + j]
    ck.close("embed_back", got.flat, want)
    ck.same("embed_back", got.flat,
            mat_call(lib, "embed_back", 15, d_out.flat, 4, 3, indices, 5)[1])

    # the FFN chain
    h, w1, w2 = rand_mat(rng, 3, 4), rand_mat(rng, 4, 6), rand_mat(rng, 6, 2)
    got = nn.ffn_pipeline(h, w1, w2)
    hidden = Mat(3, 6, [ref_gelu(v) for v in ref_matmul(h, w1)])
    ck.close("ffn_pipeline", got.flat, ref_matmul(hidden, w2))
    ck.same("ffn_pipeline", got.flat,
            mat_call(lib, "ffn_pipeline", 6, h.flat, 3, 4, w1.flat, 6, w2.flat, 2)[1])


def check_persistent(nn, lib, ck, rng):
    """The module's persistent-session workflow: build once, run many times."""
    m, k, n = 3, 4, 5
    sess = nn.persistent_new(0)
    ta = nn.alloc_2d(sess, m, k)
    tw = nn.alloc_2d(sess, n, k)  # holds wᵀ so that tnn_matmul gives x @ w
    tc = nn.build_matmul(sess, ta, tw)
    ck.check(nn.realize(sess, tc) == TNN_OK, "persistent realize: " + last_error(lib))
    w = rand_mat(rng, k, n)
    ck.check(nn.upload_transposed(sess, tw, w) == TNN_OK, "upload_transposed")
    for step in range(3):
        x = rand_mat(rng, m, k)
        ck.check(nn.upload_row_major(sess, ta, x) == TNN_OK, "upload_row_major")
        ck.check(nn.compute(sess) == TNN_OK, "persistent compute: " + last_error(lib))
        got = nn.download_matmul(sess, tc, m, n)
        ck.close("persistent matmul step %d" % step, got.flat, ref_matmul(x, w))
        ck.same("persistent matmul step %d" % step, got.flat,
                mat_call(lib, "matmul", m * n, x.flat, m, k, w.flat, k, n)[1])
    nn.persistent_free(sess)

    # a fused chain: rms_norm(softmax(scale(gelu(a + b), 0.5)), gamma)
    r, c = 4, 6
    sess = nn.persistent_new(0)
    ta, tb, tg = nn.alloc_2d(sess, r, c), nn.alloc_2d(sess, r, c), nn.alloc_2d(sess, 1, c)
    y = nn.build_rms_norm(sess, nn.build_softmax(sess, nn.build_scale(
        sess, nn.build_gelu(sess, nn.build_add(sess, ta, tb)), 0.5)), tg, 1e-5)
    ck.check(y is not None and nn.realize(sess, y) == TNN_OK, "chain: " + last_error(lib))
    a, b, g = rand_mat(rng, r, c), rand_mat(rng, r, c), rand_mat(rng, 1, c)
    nn.stage_row_major_and_upload(sess, ta, a)
    nn.upload_row_major(sess, tb, b)
    nn.upload_row_major(sess, tg, g)
    ck.check(nn.compute(sess) == TNN_OK, "chain compute: " + last_error(lib))
    got = nn.download_row_major(sess, y, r, c)
    got2 = nn.download_to_mat(sess, y, r, c)
    ck.check(got.flat == got2.flat, "download_row_major and download_to_mat differ")
    pre = Mat(r, c, [0.5 * ref_gelu(p + q) for p, q in zip(a.flat, b.flat)])
    ck.close("persistent chain", got.flat, ref_rms_norm(Mat(r, c, ref_softmax(pre)), g.flat, 1e-5))
    step = mat_call(lib, "add", r * c, a.flat, b.flat, r, c)[1]
    step = mat_call(lib, "gelu", r * c, step, r, c)[1]
    step = mat_call(lib, "scale", r * c, step, r, c, 0.5)[1]
    step = mat_call(lib, "softmax", r * c, step, r, c)[1]
    step = mat_call(lib, "rms_norm", r * c, step, r, c, g.flat, 1e-5)[1]
    ck.same("persistent chain", got.flat, step)
    nn.persistent_free(sess)

    # int indices in one call
    sess = nn.persistent_new(0)
    ttab, tidx = nn.alloc_2d(sess, 4, 2), nn.alloc_1d_i32(sess, 3)
    tout = lib.tnn_get_rows(sess, ttab, tidx)
    nn.realize(sess, tout)
    table = rand_mat(rng, 4, 2)
    nn.upload_row_major(sess, ttab, table)
    ck.check(nn.upload_int_array(sess, tidx, [3, 3, 0]) == TNN_OK, "upload_int_array")
    nn.compute(sess)
    got = nn.download_to_mat(sess, tout, 3, 2)
    ck.check(got.flat == table.flat[6:8] * 2 + table.flat[0:2], "get_rows via upload_int_array")
    nn.persistent_free(sess)


def expect_error(lib, ck, what, result, status, *needles):
    """A failed call: `result` is the returned status (an int function) or
    None (a NULL handle); tnn_last_status() must be `status` and
    tnn_last_error() must mention every needle."""
    msg = last_error(lib)
    failed = result is None or result == status  # a live handle is neither
    ok = failed and lib.tnn_last_status() == status and all(n in msg for n in needles)
    ck.check(ok, "%s: got %r, status %s, message %r" % (
        what, result, lib.tnn_status_name(lib.tnn_last_status()).decode(), msg))


def check_bad_input(lib, ck):
    """Bad input comes back as NULL or a negative status plus a message."""
    s = lib.tnn_session_new(0)
    a = lib.tnn_input_2d_f32(s, 2, 3)
    b = lib.tnn_input_2d_f32(s, 4, 5)
    lib.tnn_clear_error()
    expect_error(lib, ck, "tnn_matmul (2,3) x (4,5)", lib.tnn_matmul(s, a, b),
                 TNN_ERR_SHAPE, "tnn_matmul", "inner dimensions")
    ck.check(lib.tnn_status_name(TNN_ERR_SHAPE) == b"TNN_ERR_SHAPE", "tnn_status_name")
    expect_error(lib, ck, "tnn_input_2d_f32 with rows=0", lib.tnn_input_2d_f32(s, 0, 3),
                 TNN_ERR_ARG, "tnn_input_2d_f32")
    expect_error(lib, ck, "tnn_add with a NULL tensor", lib.tnn_add(s, a, None),
                 TNN_ERR_ARG, "tnn_add", "NULL")
    expect_error(lib, ck, "upload before realize",
                 lib.tnn_upload_from_float_array(s, a, f64_array([0.0] * 6), 6),
                 TNN_ERR_STATE, "tnn_realize")
    expect_error(lib, ck, "compute before realize", lib.tnn_compute(s),
                 TNN_ERR_STATE, "tnn_compute")
    expect_error(lib, ck, "tnn_mat_matmul (2,3) x (2,3)",
                 lib.tnn_mat_matmul(f64_array([1.0] * 6), 2, 3, f64_array([1.0] * 6), 2, 3,
                                    (c_double * 9)()),
                 TNN_ERR_SHAPE, "tnn_mat_matmul", "inner")
    expect_error(lib, ck, "tnn_mat_embed_lookup index 5 of 5 rows",
                 lib.tnn_mat_embed_lookup(f64_array([0.0] * 10), 5, 2, i64_array([1, 5]), 2,
                                          (c_double * 4)()),
                 TNN_ERR_RANGE, "tnn_mat_embed_lookup", "indices[1] = 5")

    # Index out of range at compute; fixed, the same session computes.
    table = lib.tnn_input_2d_f32(s, 3, 2)
    idx = lib.tnn_input_1d_i32(s, 2)
    rows = lib.tnn_get_rows(s, table, idx)
    ck.check(lib.tnn_realize(s, rows) == TNN_OK, "realize get_rows: " + last_error(lib))
    lib.tnn_upload_from_float_array(s, table, f64_array([0, 1, 10, 11, 20, 21]), 6)
    expect_error(lib, ck, "int64 beyond int32",
                 lib.tnn_upload_from_int_array(s, idx, i64_array([0, 1 << 40]), 2),
                 TNN_ERR_RANGE, "tnn_upload_from_int_array")
    expect_error(lib, ck, "upload of the wrong length",
                 lib.tnn_upload_from_int_array(s, idx, i64_array([0, 1, 2]), 3),
                 TNN_ERR_SHAPE, "tnn_upload_from_int_array", "n=3")
    lib.tnn_upload_from_int_array(s, idx, i64_array([2, 9]), 2)
    expect_error(lib, ck, "embedding index 9 of 3 rows", lib.tnn_compute(s),
                 TNN_ERR_RANGE, "tnn_get_rows", "idx[1] = 9")
    lib.tnn_upload_from_int_array(s, idx, i64_array([2, 0]), 2)
    ck.check(lib.tnn_compute(s) == TNN_OK, "compute after fixing the index")
    out = (c_double * 4)()
    lib.tnn_download_to_f64_array(s, rows, out, 4)
    ck.check(list(out) == [20.0, 21.0, 0.0, 1.0], "rows after the fix: %r" % list(out))

    # A freed session and its tensors are refused, not dereferenced.
    dead = lib.tnn_session_new(0)
    dead_t = lib.tnn_input_2d_f32(dead, 2, 3)
    lib.tnn_session_free(dead)
    expect_error(lib, ck, "a freed session", lib.tnn_input_2d_f32(dead, 2, 2),
                 TNN_ERR_ARG, "not a live session")
    expect_error(lib, ck, "a tensor of a freed session", lib.tnn_gelu(s, dead_t),
                 TNN_ERR_ARG, "tnn_gelu", "freed")
    lib.tnn_session_free(None)  # a no-op
    lib.tnn_session_free(s)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[0])
        print("usage: python3 %s path/to/libtinynn.so" % argv[0])
        return 2
    lib = load_library(argv[1])
    nn = TinyNN(lib)
    ck = Checks()
    rng = random.Random(20240611)
    check_methods(nn, lib, ck, rng)
    check_persistent(nn, lib, ck, rng)
    check_bad_input(lib, ck)
    print("tinynn %s" % lib.tnn_version().decode())
    print("ffi_python: %d passed, %d failed" % (ck.passed, ck.failed))
    return 1 if ck.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
