"""Dataset-level semantic-segmentation metric with MMSegmentation ``IoUMetric`` semantics.

Reference: ``docs/dataset_notes.md``, 'The metric' and 'Distributed evaluation'.

Definition (per image, over the pixels where ``target != ignore_index``; only the GT decides
what is ignored, predictions on ignored pixels are dropped whatever they are)::

    I[c] = #(pred == target == c)      P[c] = #(pred == c)      L[c] = #(target == c)

``I``, ``P`` and ``L`` are summed over **all images of the split and all ranks** (nothing is
averaged per image), then ``U = P + L - I`` and::

    IoU_c = I_c / U_c   (NaN when U_c == 0)      Acc_c = I_c / L_c   (NaN when L_c == 0)
    mIoU  = nanmean(IoU) * 100                    mAcc  = nanmean(Acc) * 100
    aAcc  = sum(I) / sum(L) * 100

Why a custom metric instead of torchmetrics' built-ins (docs/dataset_notes.md, 'Why not the
torchmetrics built-ins'):

* ``torchmetrics.segmentation.MeanIoU`` averages *per-image* IoUs and has no ignore index: it is
  a different metric.
* ``MulticlassJaccardIndex(average="macro")`` matches mIoU only under conditions we would rather
  not depend on; with ``average="none"`` it reports 0/1 instead of NaN for absent classes; it
  silently miscounts predictions ``>= C`` (the flat confusion-matrix index spills into the next
  row); and under ``torch.use_deterministic_algorithms`` its bincount builds an
  ``N_pixels x C^2`` mesh (~70 GB for one COCO-Stuff image).
* ``MulticlassAccuracy(average="macro")`` is *not* mAcc (it scores a predicted-but-absent class
  as 0 instead of excluding it).

Here the three per-class counts are plain ``torch.bincount`` calls without weights (cheap,
deterministic, allowed in deterministic mode), kept as int64 states so that the cross-rank
``sum`` reduction is exact, and all ratios are taken in float64 at ``compute`` time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from .iou import format_indices, image_counts, metrics_from_areas, results_from_states

__all__ = ["SegmentationIoU", "metrics_from_areas"]


class SegmentationIoU(Metric):
    """Dataset-level mIoU / mAcc / aAcc with MMSegmentation ``IoUMetric`` semantics.

    States (all int64, all ``dist_reduce_fx="sum"``, living on the metric's device):

    * ``intersect``, ``pred_area``, ``label_area``: ``[num_classes]`` per-class pixel counts;
    * ``num_images``: scalar, number of images passed to :meth:`update`;
    * ``seen`` (only when ``num_samples`` is given): ``[num_samples]``, how many times each
      dataset index was evaluated. :meth:`compute` requires it to be exactly 1 everywhere, which
      catches both the duplicates a padding ``DistributedSampler`` introduces and missing
      samples (docs/dataset_notes.md, 'Distributed evaluation').

    Nothing is synchronised per step (``update`` issues no collectives); the cross-rank sum
    happens once, inside :meth:`compute`, which every rank must call (it is a collective).

    Args:
        num_classes: ``C``, number of scored classes; valid labels are ``[0, C)``.
        num_samples: ``N``, size of the evaluated split; enables the ``seen`` uniqueness /
            completeness check. When given, every :meth:`update` must pass ``index``.
        ignore_index: GT value whose pixels are excluded (default 255). Must lie outside
            ``[0, C)``: ignoring a real class is a relabelling bug (docs/dataset_notes.md, 'Metric
            inputs') -- except under
            ``mmseg_histc``, which reproduces the published arithmetic that does exactly that.
        mmseg_histc: reproduce MMSegmentation ``intersect_and_union`` for labels outside the class
            range: its ``torch.histc(bins=C, min=0, max=C-1)`` drops GT values outside ``[0, C-1]``
            from the label (and intersection) histogram, while the predictions at those pixels still
            count in the prediction area (so they inflate the unions). ADE-847 / PC-459 store
            unlabeled pixels as 65535 and are scored with ``ignore_index=255``: that is their
            published protocol. ``ignore_index`` may then lie inside ``[0, C)`` (that class's
            pixels are dropped entirely, as mmseg's mask does). Default ``False``: such labels raise.
        confusion: also keep ``confusion`` (``[C, C]`` int64, rows = ground truth, columns =
            prediction, the pixels counted in ``intersect`` / ``label_area``) and ``unlabeled_pred``
            (``[C]``: predictions at scored pixels whose GT lies outside ``[0, C)``, non-zero only under
            ``mmseg_histc``). Then ``intersect = diag``, ``label_area = rows``, ``pred_area = columns +
            unlabeled_pred`` exactly.
        **kwargs: forwarded to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).

    Input validation (decision, docs/dataset_notes.md, 'Class ranges and the histc quirk'): MMSeg
    silently drops out-of-range values; we do not. Predictions must be in ``[0, C)`` on **every**
    pixel (they are argmax indices by construction; a "no prediction" sentinel such as 255 or -1
    is a bug), and GT values must be in ``[0, C) ∪ {ignore_index}``. Anything else raises
    ``ValueError``. The check costs one host-device sync per ``update`` (no collective).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    intersect: Tensor
    pred_area: Tensor
    label_area: Tensor
    num_images: Tensor
    seen: Tensor

    def __init__(
        self,
        num_classes: int,
        num_samples: int | None = None,
        ignore_index: int = 255,
        mmseg_histc: bool = False,
        confusion: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
            raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
        if 0 <= ignore_index < num_classes and not mmseg_histc:
            raise ValueError(
                f"ignore_index={ignore_index} lies inside the class range [0, {num_classes}); "
                "relabel ignored pixels to a value >= num_classes (e.g. 255) instead"
            )
        self.num_classes = num_classes
        self.num_samples = num_samples
        self.ignore_index = ignore_index
        self.mmseg_histc = bool(mmseg_histc)
        self.track_confusion = bool(confusion)

        zeros_c = torch.zeros(num_classes, dtype=torch.int64)
        self.add_state("intersect", default=zeros_c.clone(), dist_reduce_fx="sum")
        self.add_state("pred_area", default=zeros_c.clone(), dist_reduce_fx="sum")
        self.add_state("label_area", default=zeros_c.clone(), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        if num_samples is not None:
            self.add_state("seen", default=torch.zeros(num_samples, dtype=torch.int64), dist_reduce_fx="sum")
        if self.track_confusion:
            self.add_state("confusion", default=torch.zeros(num_classes, num_classes, dtype=torch.int64),
                           dist_reduce_fx="sum")
            self.add_state("unlabeled_pred", default=zeros_c.clone(), dist_reduce_fx="sum")

    # ------------------------------------------------------------------ update
    def _check_inputs(self, pred: Tensor, target: Tensor) -> None:
        if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
            raise TypeError("pred and target must be torch.Tensor")
        for name, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {t.dtype}")
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        if pred.dim() not in (2, 3):
            raise ValueError(f"expected [H, W] or [B, H, W] inputs, got shape {tuple(pred.shape)}")

    def _check_index(self, index: int | Sequence[int] | Tensor | None, batch: int | None) -> Tensor | None:
        """Return dataset indices as a 1-D int64 tensor on the metric device (or None)."""
        if index is None:
            if self.num_samples is not None:
                raise ValueError("this metric tracks `seen` (num_samples given): update() needs `index`")
            return None
        idx = torch.as_tensor(index, dtype=torch.int64, device=self.device).reshape(-1)
        expected = 1 if batch is None else batch
        if idx.numel() != expected:
            raise ValueError(f"expected {expected} dataset index(es), got {idx.numel()}")
        if self.num_samples is not None:
            bad = (idx < 0) | (idx >= self.num_samples)
            if bool(bad.any()):
                raise ValueError(
                    f"dataset index out of range [0, {self.num_samples}): {format_indices(idx[bad].cpu())}"
                )
        return idx

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        index: int | Sequence[int] | Tensor | None = None,
    ) -> None:
        """Accumulate one image (``[H, W]``) or a batch of same-size images (``[B, H, W]``).

        Args:
            pred: integer class indices in ``[0, C)``, same shape as ``target``, at the GT's
                resolution (resize logits, never labels).
            target: integer GT in ``[0, C) ∪ {ignore_index}`` (any int dtype, uint8 is fine).
            index: dataset index of the image (an int / 0-d tensor for ``[H, W]``, a sequence or
                1-D tensor of length ``B`` for ``[B, H, W]``). Required when ``num_samples`` was
                given; ignored otherwise (apart from a length check).

        Raises:
            TypeError: non-integer inputs.
            ValueError: shape mismatch, a prediction outside ``[0, C)``, a GT value outside
                ``[0, C) ∪ {ignore_index}``, or a bad / missing ``index``.
        """
        self._check_inputs(pred, target)
        batch = pred.shape[0] if pred.dim() == 3 else None
        idx = self._check_index(index, batch)

        num_classes = self.num_classes
        pred = pred.to(self.device)
        target = target.to(self.device)
        valid = target != self.ignore_index

        # Range checks, combined so that only one host-device sync happens in the common case.
        bad_pred = (pred < 0) | (pred >= num_classes)
        bad_target = valid & ((target < 0) | (target >= num_classes))
        if self.mmseg_histc:  # out-of-range GT is part of the protocol (dropped from the label histogram)
            bad_target = torch.zeros_like(bad_target)
        if bool(bad_pred.any() | bad_target.any()):
            msgs = []
            if bool(bad_pred.any()):
                vals = torch.unique(pred[bad_pred]).cpu()
                msgs.append(
                    f"{int(bad_pred.sum())} prediction(s) outside [0, {num_classes}), values {format_indices(vals)}"
                )
            if bool(bad_target.any()):
                vals = torch.unique(target[bad_target]).cpu()
                msgs.append(
                    f"{int(bad_target.sum())} target value(s) outside [0, {num_classes}) and != "
                    f"ignore_index={self.ignore_index}, values {format_indices(vals)}"
                )
            raise ValueError("SegmentationIoU.update: " + "; ".join(msgs))

        counts = image_counts(pred, target, num_classes, self.ignore_index, self.mmseg_histc, self.track_confusion)
        for name, value in counts.items():
            getattr(self, name).add_(value)
        self.num_images += 1 if batch is None else batch
        if idx is not None and self.num_samples is not None:
            # bincount (not index_add_/index_put_) so duplicates within one batch also count
            # and the op is deterministic on CUDA.
            self.seen += torch.bincount(idx, minlength=self.num_samples)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """``metric(pred, target, index)`` == :meth:`update`; returns ``None``.

        torchmetrics' default ``forward`` would also compute a per-batch value, which is
        meaningless here (mIoU is a dataset-level quantity) and would trip the ``seen`` check.
        """
        self.update(*args, **kwargs)

    # ----------------------------------------------------------------- compute
    def compute(self) -> dict[str, Any]:
        """Dataset-level metrics (after the cross-rank sum torchmetrics performs around this call).

        Returns:
            dict with keys

            * ``"mIoU"``, ``"mAcc"``, ``"aAcc"``: Python floats, percent in ``[0, 100]`` rounded
              to 2 decimals. NaN when undefined: ``mIoU`` if every class has zero union,
              ``mAcc`` / ``aAcc`` if no non-ignored pixel was seen.
            * ``"per_class_iou"``, ``"per_class_acc"``: ``list[float | None]`` of length C,
              percent rounded to 2 decimals, ``None`` where the value is NaN (zero union / zero
              label area).
            * ``"iou"``, ``"acc"``: unrounded float64 CPU tensors ``[C]``, fractions in
              ``[0, 1]``, NaN as above (for exact comparisons and further processing).
            * ``"num_images"``: ``int``, total number of images accumulated (all ranks).

        Raises:
            RuntimeError: when ``num_samples`` was given and some dataset index was seen zero
                times (missing) or more than once (duplicated, e.g. by a padding
                ``DistributedSampler``).
        """
        return results_from_states(self.states(), self.num_samples)

    # ------------------------------------------------------------------ states
    def state_names(self) -> tuple[str, ...]:
        """The names of the int64, sum-reduced states (those a record stores and a resumed run adds)."""
        names = ["intersect", "pred_area", "label_area", "num_images"]
        names += ["seen"] if self.num_samples is not None else []
        names += ["confusion", "unlabeled_pred"] if self.track_confusion else []
        return tuple(names)

    def states(self) -> dict[str, Tensor]:
        """Copies of every state (:meth:`state_names`)."""
        return {name: getattr(self, name).clone() for name in self.state_names()}

    def add_states(self, states: Mapping[str, Tensor]) -> None:
        """Add summed increments (e.g. a resumed run's records) to the states, as updates would have."""
        for name, value in states.items():
            if name not in self.state_names():
                raise ValueError(f"SegmentationIoU has no state {name!r}; states: {', '.join(self.state_names())}")
            state = getattr(self, name)
            state += value.to(state.device)
