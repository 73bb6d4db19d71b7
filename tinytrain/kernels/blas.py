"""out (= or +=) a @ b and out (= or +=) a.T @ b through BLAS sgemm, for Numba kernels, on row-major views (rows
further apart than their width, such as a block of columns): np.dot always overwrites its output, and would copy
such a view first.

A product into a single column (a 1x1 plane: the last blocks at 32x32) is a matrix-vector product, and sgemm packs
its operands for it as for any other: 40 to 140 us for the late layers' matrices, where one pass over the matrix's
rows takes 6 to 18. Those products run as such a pass instead.

The sgemm is SciPy's (scipy.linalg.cython_blas, the BLAS that Numba's np.dot calls too). Its address is registered
with LLVM under a name, and the kernels call that name: a kernel holding a ctypes pointer instead could not be cached.
"""

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic, overload, register_jitable

SGEMM_SYMBOL = "tinytrain_cython_blas_sgemm"
NO_TRANSPOSE, TRANSPOSE = 78, 84  # the characters 'N' and 'T' that sgemm reads
llvm.add_symbol(SGEMM_SYMBOL, get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))


@intrinsic
def _sgemm(typingctx, transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Fortran sgemm: c (m x n, column-major) = 1 * op(a) @ op(b) + beta * c; transa/transb are the characters 'N'
    or 'T' as integers; a, b, c float32 arrays whose data pointers start the matrices; every argument by pointer."""
    signature = types.void(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, arguments):
        transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc = arguments
        char, integer, single = ir.IntType(8), ir.IntType(32), ir.FloatType()
        pointer = ir.PointerType

        def by_pointer(value, llvm_type):
            return cgutils.alloca_once_value(builder, value if value.type == llvm_type
                                             else builder.trunc(value, llvm_type))

        def data(array_type, value):
            return context.make_array(array_type)(context, builder, value).data

        function_type = ir.FunctionType(ir.VoidType(), [pointer(char)] * 2 + [pointer(integer)] * 3
                                        + [pointer(single), pointer(single), pointer(integer), pointer(single),
                                           pointer(integer), pointer(single), pointer(single), pointer(integer)])
        sgemm = cgutils.get_or_insert_function(builder.module, function_type, SGEMM_SYMBOL)
        one = cgutils.alloca_once_value(builder, ir.Constant(single, 1.0))
        beta = context.cast(builder, beta, signature.args[9], types.float32)
        array_types = signature.args
        builder.call(sgemm, [by_pointer(transa, char), by_pointer(transb, char), by_pointer(m, integer),
                             by_pointer(n, integer), by_pointer(k, integer), one, data(array_types[5], a),
                             by_pointer(lda, integer), data(array_types[7], b), by_pointer(ldb, integer),
                             cgutils.alloca_once_value(builder, beta), data(array_types[10], c),
                             by_pointer(ldc, integer)])
        return context.get_dummy_value()

    return signature, codegen


@register_jitable
def is_row_major(matrix, itemsize):
    """Whether BLAS can read `matrix` as row-major: contiguous rows, each starting a whole row after the last."""
    return matrix.strides[1] == itemsize and matrix.strides[0] >= matrix.shape[1] * itemsize


def transposed_product(out, a, b, accumulate):
    """out (M, N) (= or +=) a.T @ b, a (K, M), b (K, N). Plain Python: NumPy (it allocates; the jitted kernels do
    not)."""
    if accumulate:
        out += a.T @ b
    else:
        out[...] = a.T @ b


@register_jitable
def transposed_product_loop(out, a, b, accumulate):
    """The same product as a loop: rows of `out` and `b` contiguous innermost, so LLVM vectorises it."""
    n_inner, n_rows = a.shape
    if not accumulate:
        for row in range(n_rows):
            for column in range(out.shape[1]):
                out[row, column] = 0.0
    for row in range(n_rows):
        for inner in range(n_inner):
            weight = a[inner, row]
            for column in range(out.shape[1]):
                out[row, column] += weight * b[inner, column]


@register_jitable(fastmath={"contract"})
def transposed_column_product(out, a, b, accumulate):
    """transposed_product into one column, out (M, 1), b (K, 1): out += b[k] * a[k] for each row k of a, so the
    inner loop runs along a's contiguous rows (vectorised); each out[m] sums its terms in k order."""
    n_inner, n_rows = a.shape
    if not accumulate:
        for row in range(n_rows):
            out[row, 0] = 0.0
    for inner in range(n_inner):
        scale = b[inner, 0]
        for row in range(n_rows):
            out[row, 0] += a[inner, row] * scale


@overload(transposed_product)
def _transposed_product_jitted(out, a, b, accumulate):
    if not all(isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 2
               for array in (out, a, b)):
        return transposed_product_loop

    def blas_or_loop(out, a, b, accumulate):
        if out.size == 0:
            return
        if out.shape[1] == 1:
            transposed_column_product(out, a, b, accumulate)
            return
        itemsize = 4
        if a.shape[0] == 0 or not (is_row_major(out, itemsize) and is_row_major(a, itemsize)
                                   and is_row_major(b, itemsize)):
            transposed_product_loop(out, a, b, accumulate)
            return
        # Row-major out = a.T @ b is column-major out.T = b.T @ a: b's rows are columns of b.T (no transpose),
        # and a row-major (K, M) read column-major is a.T, transposed back by 'T'.
        n_inner = a.shape[0]
        _sgemm(NO_TRANSPOSE, TRANSPOSE, out.shape[1], out.shape[0], n_inner, b, b.strides[0] // itemsize, a,
               a.strides[0] // itemsize, np.float32(1.0 if accumulate else 0.0), out, out.strides[0] // itemsize)

    return blas_or_loop


def product(out, a, b, accumulate):
    """out (M, N) (= or +=) a @ b, a (M, K), b (K, N). Plain Python: NumPy (it allocates; the jitted kernels do
    not)."""
    if accumulate:
        out += a @ b
    else:
        out[...] = a @ b


@register_jitable
def product_loop(out, a, b, accumulate):
    """The same product as a loop: rows of `out` and `b` contiguous innermost, so LLVM vectorises it."""
    n_rows, n_inner = a.shape
    for row in range(n_rows):
        if not accumulate:
            for column in range(out.shape[1]):
                out[row, column] = 0.0
        for inner in range(n_inner):
            weight = a[row, inner]
            for column in range(out.shape[1]):
                out[row, column] += weight * b[inner, column]


@register_jitable(fastmath={"reassoc", "contract"})
def column_product(out, a, b, accumulate):
    """product into one column, out (M, 1), b (K, 1): a dot product along each contiguous row of a. fastmath
    "reassoc" (this sum only) lets LLVM split it over vector lanes, as sgemm splits its sums."""
    n_rows, n_inner = a.shape
    for row in range(n_rows):
        total = np.float32(0.0)
        for inner in range(n_inner):
            total += a[row, inner] * b[inner, 0]
        out[row, 0] = out[row, 0] + total if accumulate else total


def product_transposed(out, a, b):
    """out (M, N) = a @ b.T, a (M, K), b (N, K). Plain Python: NumPy (it allocates; the jitted kernels do not)."""
    out[...] = a @ b.T


@register_jitable
def product_transposed_loop(out, a, b):
    """The same product as a loop: each output a dot product of two contiguous rows."""
    for row in range(out.shape[0]):
        for column in range(out.shape[1]):
            total = np.float32(0.0)
            for inner in range(a.shape[1]):
                total += a[row, inner] * b[column, inner]
            out[row, column] = total


@overload(product_transposed)
def _product_transposed_jitted(out, a, b):
    if not all(isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 2
               for array in (out, a, b)):
        return product_transposed_loop

    def blas_or_loop(out, a, b):
        if out.size == 0:
            return
        itemsize = 4
        if a.shape[1] == 0 or not (is_row_major(out, itemsize) and is_row_major(a, itemsize)
                                   and is_row_major(b, itemsize)):
            product_transposed_loop(out, a, b)
            return
        # Row-major out = a @ b.T is column-major out.T = b @ a.T: b read column-major is b.T, transposed back by
        # 'T'; a read column-major is a.T, as it is.
        _sgemm(TRANSPOSE, NO_TRANSPOSE, out.shape[1], out.shape[0], a.shape[1], b, b.strides[0] // itemsize, a,
               a.strides[0] // itemsize, np.float32(0.0), out, out.strides[0] // itemsize)

    return blas_or_loop


@overload(product)
def _product_jitted(out, a, b, accumulate):
    if not all(isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 2
               for array in (out, a, b)):
        return product_loop

    def blas_or_loop(out, a, b, accumulate):
        if out.size == 0:
            return
        if out.shape[1] == 1:
            column_product(out, a, b, accumulate)
            return
        itemsize = 4
        if a.shape[1] == 0 or not (is_row_major(out, itemsize) and is_row_major(a, itemsize)
                                   and is_row_major(b, itemsize)):
            product_loop(out, a, b, accumulate)
            return
        # Row-major out = a @ b is column-major out.T = b.T @ a.T, and a row-major matrix read column-major is its
        # transpose: neither operand is transposed.
        _sgemm(NO_TRANSPOSE, NO_TRANSPOSE, out.shape[1], out.shape[0], a.shape[1], b, b.strides[0] // itemsize, a,
               a.strides[0] // itemsize, np.float32(1.0 if accumulate else 0.0), out, out.strides[0] // itemsize)

    return blas_or_loop
