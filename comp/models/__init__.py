"""Models: built, loaded and run over many images.

- ``factory``: ``create_model`` (timm names plus comp's own nets), pretrained weights from a
  file or the hub, ``best.pt`` checkpoints (reads and writes them).
- ``nets``: nets of comp's own (``mlp``, ``simple_cnn``, the ``airnet`` family for small images).
- ``inference``: probabilities and pooled features over many images.
"""
