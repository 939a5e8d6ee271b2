"""Where a shard's images go, one sink per ``--format``: a WebDataset tar, one file per image, or a
data Parquet; one encode function for all of them.

May import: turbobatch.spec, turbobatch.output.
"""
