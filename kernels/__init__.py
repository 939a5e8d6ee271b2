"""Image ops on decoded VAE output.

Each op has a plain torch reference with diffusers' exact semantics; it runs on CPU and CUDA
and is the oracle for the PyCUDA kernels (see DESIGN.md, section Kernels). Only the torch
reference backend exists so far.
"""

from kernels.reference import postprocess_uint8

BACKEND = "torch-reference"

__all__ = ["BACKEND", "postprocess_uint8"]
