"""What was asked: the job (its flags and YAML, validated), sampling parameters, prompt templates,
sweeps and the expansion of a row into images. Pure: no I/O, no Ray, no torch.

May import: turbobatch.errors.
"""
