"""The item-level next-event model: vocabulary and network (network.py), sequences (data.py),
training (train.py), session baselines (baselines.py), the next-click protocol (protocol.py)
and `clickscore evaluate next-click` (cli.py)."""
