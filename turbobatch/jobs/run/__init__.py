"""The run: join or start Ray, resolve what depends on the cluster, keep the render actors (pool) fed
with shards (scheduler), retry and stall rules, the progress bar, and the recipe (render.py).

May import: turbobatch.jobs.prepare, .jobs.inspect, .jobs.card and every package below jobs.
"""
