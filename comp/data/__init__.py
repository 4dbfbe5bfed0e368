"""The competition's data, from the folder Kaggle ships to arrays a model reads.

Reads the competition's files; imports no later stage (the workspace that ``comp init``
writes around them is ``comp.workspace``'s).

- ``competition``: the labels table, the train and test image files, the sample submission.
- ``images``: one image file to one RGB array (any mode, EXIF, transparency); sizes and
  modes from the headers of many.
- ``subject``: cropping an image to its subject (``--centre``).
- ``cache``: every image decoded once into ``cache/images/<key>.npy``, memory-mapped.
- ``transforms``: albumentations presets, TTA views, the dataset a loader reads.
- ``batches``: whole batches from the in-memory images, augmented in torch on the device.
- ``demo``: ``comp demo``: scikit-learn's digits written as a Kaggle competition.
"""
