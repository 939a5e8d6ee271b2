"""``--speedups``: each speed change one named function (registry), and the module rewrites they use
(norm fusion with our GroupNorm kernel, the decoder's fold and layout).

May import: turbobatch.kernels, turbobatch.models.
"""
