"""The output contract both sides obey: storage (the only I/O entry point, over fsspec), the layout of
every object name, shards, row keys, the job's schema and its Hugging Face features.

May import: turbobatch.errors, turbobatch.spec.
"""
