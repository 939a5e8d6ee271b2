"""The render actor: read a shard's rows, expand them into images, batch and sample them on the
device, decode, encode and write, then commit the shard (done marker last). Nothing here imports Ray,
so a worker runs (and is tested) without a cluster.

May import: turbobatch.errors, .faults, .metrics, .kernels, .spec, .output, .models.
"""
