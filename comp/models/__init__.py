"""Models: built, loaded and run over many images.

- ``factory``: ``create_model`` (timm names plus comp's own nets), pretrained weights from a
  file or the hub, ``best.pt`` checkpoints (reads and writes them).
- ``weights``: a weights file fitted onto a timm model, by name or, under another
  implementation's names, tensor for tensor in order; refused where it does not fit.
- ``nets``: nets of comp's own (``mlp``, ``simple_cnn``, the ``airnet`` family for small images).
- ``inference``: probabilities and pooled features over many images.
"""
