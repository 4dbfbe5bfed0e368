"""Experiment trackers (MLflow, W&B, TensorBoard), each through its own client.

- ``trackers``: one run per training, blend or study; params, metrics, artifacts, scores.
"""
