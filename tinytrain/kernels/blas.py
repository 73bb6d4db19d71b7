"""out += a.T @ b through BLAS sgemm with beta = 1, for Numba kernels: np.dot always overwrites its output (beta = 0).

The sgemm is SciPy's (scipy.linalg.cython_blas, the BLAS that Numba's np.dot calls too). Its address is registered
with LLVM under a name, and the kernels call that name: a kernel holding a ctypes pointer instead could not be cached.
"""

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic, overload, register_jitable

SGEMM_SYMBOL = "tinytrain_cython_blas_sgemm"
NO_TRANSPOSE, TRANSPOSE = 78, 84  # the characters 'N' and 'T' that sgemm reads
llvm.add_symbol(SGEMM_SYMBOL, get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))


@intrinsic
def _sgemm(typingctx, transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
    """Fortran sgemm: c (m x n, column-major) = 1 * op(a) @ op(b) + 1 * c; transa/transb are the characters 'N' or
    'T' as integers; a, b, c float32 arrays whose data pointers start the matrices; every argument by pointer."""
    signature = types.void(transa, transb, m, n, k, a, lda, b, ldb, c, ldc)

    def codegen(context, builder, signature, arguments):
        transa, transb, m, n, k, a, lda, b, ldb, c, ldc = arguments
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
        array_types = signature.args
        builder.call(sgemm, [by_pointer(transa, char), by_pointer(transb, char), by_pointer(m, integer),
                             by_pointer(n, integer), by_pointer(k, integer), one, data(array_types[5], a),
                             by_pointer(lda, integer), data(array_types[7], b), by_pointer(ldb, integer), one,
                             data(array_types[9], c), by_pointer(ldc, integer)])
        return context.get_dummy_value()

    return signature, codegen


@register_jitable
def is_row_major(matrix, itemsize):
    """Whether BLAS can read `matrix` as row-major: contiguous rows, each starting a whole row after the last."""
    return matrix.strides[1] == itemsize and matrix.strides[0] >= matrix.shape[1] * itemsize


def add_transposed_product(out, a, b):
    """out (M, N) += a.T @ b, a (K, M), b (K, N). Plain Python: NumPy (it allocates; the jitted kernels do not)."""
    out += a.T @ b


@register_jitable
def add_transposed_product_loop(out, a, b):
    """The same sum as a loop: rows of `out` and `b` contiguous innermost, so LLVM vectorises it."""
    n_inner, n_rows = a.shape
    for row in range(n_rows):
        for inner in range(n_inner):
            weight = a[inner, row]
            for column in range(out.shape[1]):
                out[row, column] += weight * b[inner, column]


@overload(add_transposed_product)
def _add_transposed_product_jitted(out, a, b):
    if not all(isinstance(array, types.Array) and array.dtype == types.float32 and array.ndim == 2
               for array in (out, a, b)):
        return add_transposed_product_loop

    def blas_or_loop(out, a, b):
        if out.size == 0 or a.shape[0] == 0:
            return
        itemsize = 4
        if not (is_row_major(out, itemsize) and is_row_major(a, itemsize) and is_row_major(b, itemsize)):
            add_transposed_product_loop(out, a, b)
            return
        # Row-major out = a.T @ b is column-major out.T = b.T @ a: b's rows are columns of b.T (no transpose),
        # and a row-major (K, M) read column-major is a.T, transposed back by 'T'.
        n_inner = a.shape[0]
        _sgemm(NO_TRANSPOSE, TRANSPOSE, out.shape[1], out.shape[0], n_inner, b, b.strides[0] // itemsize, a,
               a.strides[0] // itemsize, out, out.strides[0] // itemsize)

    return blas_or_loop

