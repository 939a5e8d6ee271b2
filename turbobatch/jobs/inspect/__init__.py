"""Reading an output folder alone: status (counts, per node, per device), watch (a running job),
verify (committed objects against their markers), and the start-up report of the markers.

May import: turbobatch.jobs.prepare and every package below jobs.
"""
