"""Batch preparation for the MONAI engines (the ``prepare_batch`` argument of ``SupervisedTrainer``).

Fine-tuning and evaluation use MONAI's ``default_prepare_batch``: ``batch["image"]`` [B, C, *S] and
``batch["label"]`` [B, 1]. Contrastive pre-training needs several views of each sample stacked on a view axis,
which :class:`ContrastiveBatch` builds from keys the dataset transform produced (e.g. ``"image"`` and
``"image_1"``, two random augmentations of one scan made by MONAI transforms in the loader workers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import copy

import torch
from monai.engines import default_prepare_batch
from monai.transforms import Compose, CopyItemsd, MapTransform
from monai.utils import convert_to_tensor

from supremix_med.losses.mixsupcon import mix_with_partners, mixup_partners

__all__ = ["AugmentedBatch", "ContrastiveBatch", "multi_view_transform"]


def multi_view_transform(augmentation: Sequence[MapTransform], view_keys: Sequence[str] = ("image", "image_1"),
                         seed: int = 0) -> Compose:
    """Dictionary transform making V independently augmented views of ``view_keys[0]``.

    ``view_keys[0]`` (e.g. ``"image"``) is copied to the other keys, then every view gets its own copy of
    ``augmentation`` (MONAI dictionary transforms written for ``view_keys[0]``), re-keyed and seeded apart so
    the views differ. With one view key this is just ``augmentation``.

    Args:
        augmentation: dictionary transforms acting on ``view_keys[0]`` only.
        view_keys: keys of the V views; ``ContrastiveBatch(view_keys)`` stacks them.
        seed: base seed of the views' random states (MONAI's DataLoader re-seeds workers from it).
    """
    if not view_keys:
        raise ValueError("multi_view_transform needs at least one view key.")
    source, others = view_keys[0], list(view_keys[1:])
    for transform in augmentation:
        if tuple(getattr(transform, "keys", (source,))) != (source,):
            raise ValueError(f"multi_view_transform: augmentation {type(transform).__name__} must act on "
                             f"{source!r} only, got keys {getattr(transform, 'keys', None)}.")
    steps: list = [CopyItemsd(keys=source, times=len(others), names=others)] if others else []
    for key in view_keys:
        for transform in augmentation:
            view = copy.deepcopy(transform)
            view.keys = (key,)
            steps.append(view)
    return Compose(steps).set_random_state(seed=seed)


class ContrastiveBatch:
    """Stack views into [B, V, C, *S] on the device and return the labels [B] for a contrastive loss.

    Args:
        view_keys: batch keys holding the V views of every sample, each [B, C, *S]. A key may repeat when
            ``augmentation`` is given: the views are then made on the device from one transfer of that key.
        label_key: batch key of the regression target, [B] or [B, 1].
        mixup_alpha: when set (MixSupCon), mix every view with a random partner sample before the encoder
            (lambda ~ Beta(alpha, alpha)) and return the mixed labels (see ``losses.mixsupcon.mixup_batch``).
            The same partner and lambda are used for all views of a sample. Inputs that cannot be mixed (integer
            token ids) are returned as they are, with the mixed labels and the network keyword argument
            ``mixup=(lambda [B], partners [B])``: :class:`~supremix_med.networks.MultiViewProjector` then mixes
            the encoder's features instead (manifold mixup).
        augmentation: a callable applied on the device to the stacked views [B, V, C, *S], every view with its
            own random parameters (e.g. :class:`~supremix_med.engines.BatchAugmentation`), before any mixup:
            the loader then only reads the cache. ``ContrastiveBatch(("image", "image"), augmentation=aug)``
            gives two independently augmented views of one transferred image.

    Each distinct view key is moved to the device on its own (``non_blocking`` as the trainer asks; with a
    DataLoader's ``pin_memory=True`` the copies are asynchronous) and the views are stacked there, so the
    host never copies the batch a second time.
    """

    def __init__(self, view_keys: Sequence[str] = ("image",), label_key: str = "label",
                 mixup_alpha: float | None = None, augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 ) -> None:
        if not view_keys:
            raise ValueError("ContrastiveBatch needs at least one view key, got an empty sequence.")
        if len(set(view_keys)) < len(view_keys) and augmentation is None:
            raise ValueError(f"ContrastiveBatch: view keys {list(view_keys)} repeat without an augmentation, which "
                             f"would give identical views.")
        self.view_keys = tuple(view_keys)
        self.label_key = label_key
        self.mixup_alpha = mixup_alpha
        self.augmentation = augmentation

    def __call__(self, batchdata: Mapping[str, Any], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple:
        """Return ``(views [B, V, C, *S], labels [B])`` on ``device``, or for feature-level mixup
        ``(views, mixed labels, (), {"mixup": (lambda, partners)})`` (MONAI's inputs, targets, args, kwargs).

        ``kwargs`` (MONAI's ``to_kwargs``, e.g. a memory format) are not applied: the view stack is 6-D, and
        the network flattens it to [B * V, C, *S] itself.
        """
        missing = [k for k in (*self.view_keys, self.label_key) if k not in batchdata]
        if missing:
            raise KeyError(f"ContrastiveBatch: batch has no key(s) {missing}; it has {sorted(batchdata)}.")
        # plain tensors: MONAI MetaTensors carry per-view metadata that cannot be stacked or sliced together
        moved = {k: convert_to_tensor(batchdata[k], track_meta=False).to(device=device, non_blocking=non_blocking)
                 for k in dict.fromkeys(self.view_keys)}
        views = torch.stack([moved[k] for k in self.view_keys], dim=1)
        if self.augmentation is not None:
            views = self.augmentation(views)
        labels = convert_to_tensor(batchdata[self.label_key], track_meta=False).reshape(views.shape[0], -1)[:, 0].float()
        mixup = None
        if self.mixup_alpha is not None:
            lam, perm = mixup_partners(views.shape[0], self.mixup_alpha)
            labels = mix_with_partners(labels, lam, perm)
            if views.is_floating_point():
                views = mix_with_partners(views, lam, perm)
            else:
                mixup = (lam.to(device=device), perm.to(device=device))
        labels = labels.to(device=device, non_blocking=non_blocking)
        return (views, labels) if mixup is None else (views, labels, (), {"mixup": mixup})


class AugmentedBatch:
    """Another ``prepare_batch`` followed by an augmentation of its inputs on the device (e.g. fine-tuning on
    images augmented by :class:`~supremix_med.engines.BatchAugmentation` instead of in the loader workers).

    Args:
        prepare_batch: the batch preparation to wrap (MONAI's ``default_prepare_batch``,
            ``PrepareBatchExtraInput``, ...); its first output, the network's inputs [B, C, *S], is augmented.
        augmentation: callable applied to those inputs, on their device.
    """

    def __init__(self, augmentation: Callable[[torch.Tensor], torch.Tensor],
                 prepare_batch: Callable[..., Any] = default_prepare_batch) -> None:
        self.augmentation = augmentation
        self.prepare_batch = prepare_batch

    def __call__(self, batchdata: Mapping[str, Any], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple:
        """The wrapped preparation's output with its inputs augmented."""
        inputs, *rest = self.prepare_batch(batchdata, device, non_blocking, **kwargs)
        return (self.augmentation(inputs), *rest)
