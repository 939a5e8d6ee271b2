"""Steps before any actor starts: list the inputs (footers only) and check them, unique keys, the
plan and its fingerprint, and the output's resume state (one listing of _done/).

May import: turbobatch.errors, .spec, .output, .models.
"""
