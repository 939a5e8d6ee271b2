"""turbobatch: render Parquet prompt datasets into image datasets with turbo diffusion models on Ray.

One import name for the whole project (Hugging Face's ``kernels`` arrives with transformers >= 5.25,
so a top-level package of ours by that name would shadow it). Its parts: ``jobs`` (the driver),
``workers`` (the actors) and ``kernels`` (PyCUDA kernels with torch references).
"""
