"""Image ops on decoded VAE output and the norms of VAE decoders and DiT blocks, as PyCUDA
kernels with plain torch references.

Each op runs the CUDA kernel from kernels/*.cu on CUDA tensors when pycuda (the ``cuda``
extra) and a libcuda are usable, else the torch reference (kernels/reference.py), which has
diffusers' exact semantics and is the kernels' test oracle. ``BACKEND`` says which one CUDA
tensors get in this process and ``BACKEND_REASON`` why. Importing this package never needs
pycuda, libcuda or nvcc. It stands alone: it imports no other package of turbobatch.
"""

from turbobatch.kernels.ops import (
    canny,
    cuda_status,
    dhash64,
    gated_residual,
    group_norm,
    image_stats,
    modulated_norm,
    postprocess_uint8,
    postprocess_with_stats,
)
from turbobatch.kernels.reference import hamming64
from turbobatch.kernels.stats import ImageStats

_ok, BACKEND_REASON = cuda_status()
BACKEND = "pycuda" if _ok else "torch-reference"

__all__ = [
    "BACKEND",
    "BACKEND_REASON",
    "ImageStats",
    "canny",
    "dhash64",
    "gated_residual",
    "group_norm",
    "hamming64",
    "image_stats",
    "modulated_norm",
    "postprocess_uint8",
    "postprocess_with_stats",
]
