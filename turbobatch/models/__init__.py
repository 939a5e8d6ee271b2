"""Models: resolve them on the driver (listings and configs only, variants, the files each node
fetches) and load them on an actor (the node cache, from_pretrained); the tiny and random-weight twins.

May import: turbobatch.errors, turbobatch.faults, turbobatch.spec, turbobatch.output.
"""
