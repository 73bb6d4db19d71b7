"""tinytrain: fine-tune CNNs the way a microcontroller would, with every training byte in one arena."""

import os

# Batch-1 matrix products are small: OpenBLAS threads gain nothing on them, and while they spin-wait they starve the
# Numba workers of the same cores (MobileNetV2 forward at 128x128 on 2 cores: 156 ms with two BLAS threads, 8 ms with
# one; see README, Speed). Set before the BLAS that Numba's np.dot binds (SciPy's) is loaded; a user's setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
