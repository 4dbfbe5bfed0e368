"""What the machine offers: processes and precision.

- ``precision``: DataLoader workers, mixed precision (bf16/fp16) by device and measurement.
- ``distributed``: torchrun's process group, sharded batches, gathering across processes.

Reads and writes nothing.
"""
