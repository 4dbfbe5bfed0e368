"""timm's classifier interface, as a type: what torch's ``nn.Module`` typing leaves out.

timm's models and comp's own nets (comp.models.nets) share these members, but
``create_model`` and ``load_checkpoint`` return a plain ``nn.Module``, whose other
attributes type as ``Tensor | Module``. ``assert isinstance(model, TimmNet)`` narrows a
model to both, checking at run time that the members are there.
"""

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TimmNet(Protocol):
    num_features: int

    def get_classifier(self) -> nn.Module: ...

    def reset_classifier(self, num_classes: int) -> None: ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...
