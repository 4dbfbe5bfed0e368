"""The competition's data, from the folder Kaggle ships to arrays a model reads.

- ``workspace``: ``comp init`` and ``comp download``'s staging: finds the labels table,
  image folders and sample submission of a Kaggle or ImageFolder layout; writes
  ``comp.yaml`` and the workspace folders (and a held-back test set with ``--holdout``).
- ``demo``: ``comp demo``: scikit-learn's digits written as a Kaggle competition.
- ``competition``: the labels table, the train and test image files, the sample submission.
- ``images``: one image file to one RGB array (any mode, EXIF, transparency).
- ``subject``: cropping an image to its subject (``--centre``).
- ``cache``: every image decoded once into ``cache/images/<key>.npy``, memory-mapped.
- ``transforms``: albumentations presets, TTA views, the dataset a loader reads.
- ``batches``: whole batches from the in-memory images, augmented in torch on the device.
"""
