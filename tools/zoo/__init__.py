"""The coverage zoo: forty-plus architectures, built from configurations with random weights, run through
every fxpress pipeline (``python -m tools.zoo`` writes the coverage table).

Nothing is downloaded: `transformers` models come from tiny configs (hf.py), the classics are written here
(classic.py). Each architecture is a `ZooEntry` (entry.py); the runner (run.py) takes each through capture,
fp32 compile, int8, prune-channels and sparsify, and records ``ok`` or the fxpress error and its node.
"""
