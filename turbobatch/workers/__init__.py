"""Actor side of turbobatch: pipeline loading, rendering a shard, writing a shard.

Nothing here imports Ray, so a worker can run (and be tested) without a cluster.
"""
