"""turbobatch: render Parquet prompt datasets into image datasets with turbo diffusion models on Ray.

One import name for the whole project (Hugging Face's ``kernels`` arrives with transformers >= 5.25,
so a top-level package of ours by that name would shadow it). Packages import in one direction,
bottom to top: errors, faults, metrics <- kernels (stands alone) <- spec <- output <- models <-
workers <- jobs (tests/unit/test_layout.py checks it, lazy imports included).
"""
