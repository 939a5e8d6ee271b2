"""Planning a run: the dry run (the recipe's checks, writing nothing; --calibrate measures one worker)
and the estimate of time and cost from the throughput table (throughput.json).

May import: turbobatch.jobs.prepare, .jobs.run and every package below jobs.
"""
