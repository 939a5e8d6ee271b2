"""The driver: the CLI, then prepare (inputs, plan, resume), run (the Ray cluster, the actor pool, the
scheduler, progress), inspect (status, watch, verify), estimate (dry run and cost) and the dataset card.

May import every package below it: errors, faults, metrics, spec, output, models, workers.
"""
