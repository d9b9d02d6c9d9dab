"""PAD-Net for dense modalities, with PartAL's ground-truth substitution and MTAL-WACV's pairwise committee.

Data flow (h, w = input / 8)::

    images [B,3,H,W] -> ResNet trunk -> c2..c5 -> MultiScaleFusion (stride 8) -> X [B,C,h,w]
    initial head t:   X -> F_t [B,C,h,w], initial_t (upsampled to H, W)
    (given labels:    F_a := LabelEncoder_a(GT_a) for the samples where a is present)
    distillation:     F'_t = F_t + sum_{a != t} SA_{t<-a}(F_a),  SA(x) = conv(x) * sigmoid(conv(x))
    final head t:     F'_t -> G_t [B,C,h,w] (head features), final_t (upsampled to H, W)
    committee k<-j:   refined[k][j] = final_head_k(F_k + SA^pair_{k<-j}(F_j))

Design choices:

- Heads are light (one 3x3 conv block + Dropout2d + 1x1 prediction; SA convs are 1x1, one per source) so
  that MC-dropout, which repeats only the heads, costs little next to the trunk.
- Depth goes through softplus (metres, always > 0, matches the "<= 0 = invalid" label convention);
  normals are L2-normalised; segmentation/binary stay logits. Initial, final and refined outputs share
  these formats, so ``spec.loss`` applies to all of them.
- Committee (MTAL-WACV §3.1.1): the paper adds two-task MMD blocks "only utilized for selection" and
  keeps the original PAD-Net layers for inference, so the pair blocks are separate modules while the
  refined prediction reuses the final head of task k. The committee members are then predictions of
  the same head from different evidence, and the extra parameters are only the pair SA blocks.
- Label encoders only mean something once training has substituted labels through them
  (``substitution_prob`` > 0). The buffer ``encoders_trained`` (bool [K], saved with the weights) records
  per modality whether a training forward (train mode, gradients on) has passed ground truth through its
  encoder. Outside training, a ``given`` label whose encoder was never trained is **ignored** (the
  prediction is unconditioned for that modality) and a warning is logged once per modality:
  conditioning through random encoders biased PartAL towards completing partly labelled images
  (semantic entropy 0.726 conditioned against 0.597 unconditioned on depth-only images).
  ``conditionable`` lists the modalities whose encoders are trained. Weights saved before the buffer
  existed load with every encoder marked untrained; the next training round marks them.
- ``losses`` averages the refined losses over j (one committee term per modality, whatever K is) and
  does not apply ``spec.weight`` (w_t): the training loop combines modalities.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtal_models.modalities import ModalitySpec
from mtal_models.nets.backbone import MultiScaleFusion, build_backbone, check_images
from mtal_models.nets.base import Labels, MultiTaskNet, MultiTaskOutput
from mtal_models.nets.blocks import LabelEncoder, MultiModalDistillation, TaskHead, format_predictions, label_to_map
from mtal_models.nets.config import NetConfig, get_config
from mtal_models.nets.losses import masked_mean
from mtal_models.nets.mc import MCSamples

__all__ = ["PADNet"]

log = logging.getLogger(__name__)

_FUSION_INDEX = 1  # fuse at the stride-8 map (c3)
_MC_IMAGES_PER_PASS = 4  # MC-dropout: run the heads on about this many images (copies x batch) at once


class PADNet(MultiTaskNet):
    """PAD-Net over dense modalities (segmentation, binary, depth, normals); see the module docstring."""

    def __init__(
        self, modalities: Mapping[str, ModalitySpec], config: str | NetConfig | Mapping[str, Any] = "default"
    ) -> None:
        super().__init__(modalities)
        if not self.modalities:
            raise ValueError("PADNet needs at least one modality")
        for name, spec in self.modalities.items():
            if not spec.dense:
                raise ValueError(
                    f"modality {name!r} is {spec.kind}: PADNet handles dense modalities only; "
                    'use the "detseg" network for detection'
                )
        self.config = get_config(config)
        cfg = self.config
        names = list(self.modalities)
        ch = cfg.head_channels
        self.backbone = build_backbone(cfg)
        self.fusion = MultiScaleFusion(self.backbone.out_channels, ch, target=_FUSION_INDEX)
        # per-modality modules live in lists (modality order), so any name works (ModuleDict keys may not
        # contain "." or shadow attributes); self._index maps a name to its position
        self._index = {name: i for i, name in enumerate(names)}
        self.substitutable = tuple(names)  # every modality has a label encoder
        specs = list(self.modalities.values())
        self.initial_heads = nn.ModuleList(TaskHead(ch, ch, s.channels, cfg.dropout) for s in specs)
        self.distillation = MultiModalDistillation(names, ch)
        self.final_heads = nn.ModuleList(TaskHead(ch, ch, s.channels, cfg.dropout) for s in specs)
        self.label_encoders = nn.ModuleList(LabelEncoder(s, ch) for s in specs)
        self.register_buffer("encoders_trained", torch.zeros(len(names), dtype=torch.bool))
        self.register_load_state_dict_pre_hook(_default_encoders_trained)
        self._warned: set[str] = set()
        self.committee_blocks = MultiModalDistillation(names, ch)

    @property
    def conditionable(self) -> tuple[str, ...]:
        """Modalities whose label encoder has been trained (``given`` labels of the others are ignored)."""
        return tuple(n for n, i in self._index.items() if bool(self.encoders_trained[i]))

    # ---- helpers --------------------------------------------------------------------------------
    def _initial_blocks(self, fused: Tensor) -> dict[str, Tensor]:
        """The initial heads' deterministic conv blocks on fused features: name -> [B, C, h, w]."""
        return {name: self.initial_heads[i].block(fused) for name, i in self._index.items()}

    def _encode_given(self, given: Labels | None, batch: int, size: torch.Size) -> dict[str, tuple[Tensor, Tensor]]:
        """name -> (mask bool [B], encoded GT [B, C, h, w], zero where absent) for given modalities."""
        if given is None:
            return {}
        out: dict[str, tuple[Tensor, Tensor]] = {}
        device = next(self.parameters()).device
        for name, target in given.values.items():
            if name not in self.modalities:
                raise ValueError(f"given label for unknown modality {name!r}; this network has {list(self.modalities)}")
            if name not in given.present:
                raise ValueError(f"given modality {name!r} has values but no present flags")
            present = given.present[name]
            if not isinstance(present, Tensor) or tuple(present.shape) != (batch,):
                shape = tuple(present.shape) if isinstance(present, Tensor) else type(present).__name__
                raise ValueError(f"given modality {name!r}: present must be bool [B]={batch}, got {shape}")
            mask = present.to(device=device, dtype=torch.bool)
            idx = mask.nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            if not isinstance(target, Tensor) or target.dim() < 3 or target.shape[0] != batch:
                shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
                raise ValueError(f"given modality {name!r}: label must be a tensor with batch {batch}, got {shape}")
            label_map = label_to_map(self.modalities[name], target.to(device)[idx], size)  # validates too
            i = self._index[name]
            if self.training and torch.is_grad_enabled():
                self.encoders_trained[i] = True
            elif not bool(self.encoders_trained[i]):
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning("PAD-Net: the label encoder of %r was never trained (substitution_prob 0); "
                                "its given labels are ignored and predictions stay unconditioned", name)
                continue
            encoded = self.label_encoders[i](label_map)
            full = encoded.new_zeros((batch, *encoded.shape[1:])).index_put((idx,), encoded)
            out[name] = (mask, full)
        return out

    def _heads(
        self,
        blocks: dict[str, Tensor],
        encoded: dict[str, tuple[Tensor, Tensor]],
        size: tuple[int, int] | None,
        *,
        initial: bool,
        committee: bool,
        mc: bool,
        repeat: int = 1,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, dict[str, Tensor]], Tensor | None]:
        """Heads from the initial heads' conv-block outputs ``blocks`` (name -> [B, C, h, w]); with
        ``repeat`` = n > 1 everything after those deterministic blocks runs on n stacked copies
        (N = n * B, copy-major).

        Returns (initial, final, refined, head_features [N, K*C, h, w], or None when ``mc``); with
        ``size`` None, ``final`` holds the raw low-resolution outputs [N, C, h, w]."""
        feats: dict[str, Tensor] = {}
        initial_raw: dict[str, Tensor] = {}
        for name, block in blocks.items():
            rep = block.repeat(repeat, 1, 1, 1) if repeat > 1 else block
            f, raw = self.initial_heads[self._index[name]].finish(rep, mc=mc, predict=initial)
            if raw is not None:
                initial_raw[name] = raw
            if name in encoded:
                mask, enc = encoded[name]
                f = torch.where(mask.repeat(repeat).view(-1, 1, 1, 1), enc.repeat(repeat, 1, 1, 1), f)
            feats[name] = f
        distilled = self.distillation(feats)
        final_raw: dict[str, Tensor] = {}
        head_feats = []
        for name in self.modalities:
            g, final_raw[name] = self.final_heads[self._index[name]](distilled[name], mc=mc)
            if not mc:
                head_feats.append(g)
        refined: dict[str, dict[str, Tensor]] = {}
        if committee:
            refined_raw: dict[str, dict[str, Tensor]] = {}
            for (k, j), msg in self.committee_blocks.messages(feats).items():
                refined_raw.setdefault(k, {})[j] = self.final_heads[self._index[k]](feats[k] + msg, mc=mc)[1]
            for k, by_j in refined_raw.items():
                refined[k] = format_predictions({j: self.modalities[k] for j in by_j}, by_j, size)
        return (
            format_predictions(self.modalities, initial_raw, size),
            format_predictions(self.modalities, final_raw, size) if size is not None else final_raw,
            refined,
            torch.cat(head_feats, dim=1) if head_feats else None,
        )

    # ---- the contract ---------------------------------------------------------------------------
    def forward(self, images: Tensor, given: Labels | None = None, committee: bool = False) -> MultiTaskOutput:
        """images [B, 3, H, W] in [0, 1] -> initial/final (and refined) predictions at [H, W].

        ``given``: labels substituted (through the label encoders) for the initial features of the
        modalities present, per sample. ``committee=True`` also fills ``refined[k][j]``.
        head_features: [B, K * head_channels, H/8, W/8]; pooled: [B, c5 channels].
        """
        return self._forward(images, given, committee)[0]

    @torch.no_grad()
    def forward_and_mc(self, images: Tensor, n: int, given: Labels | None = None,
                       committee: bool = False) -> tuple[MultiTaskOutput, MCSamples]:
        """``forward(images, given, committee)`` and ``mc_samples(images, n, given)`` on one trunk pass (the
        trunk, fusion and initial blocks are deterministic: the same values as the two calls, for one
        backbone pass less). No grad; use eval mode."""
        _check_n(n)
        out, blocks, encoded = self._forward(images, given, committee)
        return out, self._mc(blocks, encoded, n, (images.shape[-2], images.shape[-1]))

    def _forward(self, images: Tensor, given: Labels | None, committee: bool
                 ) -> tuple[MultiTaskOutput, dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
        """(the forward's output, the initial heads' blocks, the encoded given labels)."""
        check_images(images)
        batch, size = images.shape[0], (images.shape[-2], images.shape[-1])
        feats = self.backbone(images)
        fused = self.fusion(feats)
        encoded = self._encode_given(given, batch, fused.shape[-2:])
        blocks = self._initial_blocks(fused)
        initial, final, refined, head_features = self._heads(
            blocks, encoded, size, initial=True, committee=committee, mc=False
        )
        out = MultiTaskOutput(
            final=final,
            initial=initial,
            refined=refined,
            head_features=head_features,
            pooled=feats[-1].mean(dim=(2, 3)),
        )
        return out, blocks, encoded

    def losses(
        self, out: MultiTaskOutput, labels: Labels, weights: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Per modality: masked mean over present samples of L(initial) + L(final) (+ mean_j L(refined_j)).

        ``weights``: optional per-sample weights [B] per modality, multiplied in. Modalities absent
        from ``labels`` (or absent for every sample) give 0. w_t (spec.weight) is not applied.
        """
        losses: dict[str, Tensor] = {}
        for name, spec in self.modalities.items():
            if name not in out.final:
                raise ValueError(f"modality {name!r}: missing from the network output")
            final = out.final[name]
            batch = final.shape[0]
            present = labels.is_present(name, batch).to(final.device)
            if tuple(present.shape) != (batch,):
                raise ValueError(f"modality {name!r}: present must be [B]={batch}, got {tuple(present.shape)}")
            target = labels.values.get(name, final)
            w = None if weights is None else weights.get(name)
            total = masked_mean(spec.loss(final, target, present), present, w)
            if name in out.initial:
                total = total + masked_mean(spec.loss(out.initial[name], target, present), present, w)
            refined = out.refined.get(name, {})
            if refined:
                terms = [masked_mean(spec.loss(r, target, present), present, w) for r in refined.values()]
                total = total + torch.stack(terms).mean()
            losses[name] = total
        return losses

    @torch.no_grad()
    def trunk(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> fused trunk features [B, C, H/8, W/8] (eval mode)."""
        check_images(images)
        with self._eval_mode():
            return self.fusion(self.backbone(images))

    @torch.no_grad()
    def heads(self, trunk: Tensor, size: tuple[int, int], given: Labels | None = None) -> dict[str, Tensor]:
        """Fused features [B, C, h, w] -> ``predict``'s activated final outputs at ``size`` (eval mode)."""
        with self._eval_mode():
            encoded = self._encode_given(given, trunk.shape[0], trunk.shape[-2:])
            _, final, _, _ = self._heads(self._initial_blocks(trunk), encoded, tuple(size), initial=False,
                                         committee=False, mc=False)
            return self._activated(final)

    @torch.no_grad()
    def mc_samples(self, images: Tensor, n: int, given: Labels | None = None) -> MCSamples:
        """MC-dropout: trunk + fusion once, heads ``n`` times (batched) with dropout on, even in eval mode.

        The initial heads' conv blocks come before their dropout, so they are computed once and their
        output repeated: the same samples as n full head passes, for less work.

        Returns name -> final outputs [B, n, C, H, W] (same formats as ``forward``'s ``final``), as an
        :class:`~mtal_models.nets.mc.MCSamples` mapping: brought to the input size when read, whole or one
        image at a time (:meth:`~mtal_models.nets.mc.MCSamples.image`, what the MC scores use: a photo batch's
        full-size samples are never held at once).
        BatchNorm follows the module's mode (use eval mode for inference).
        """
        _check_n(n)
        check_images(images)
        fused = self.fusion(self.backbone(images))
        encoded = self._encode_given(given, images.shape[0], fused.shape[-2:])
        return self._mc(self._initial_blocks(fused), encoded, n, (images.shape[-2], images.shape[-1]))

    def _mc(self, blocks: dict[str, Tensor], encoded: dict[str, tuple[Tensor, Tensor]], n: int,
            size: tuple[int, int]) -> MCSamples:
        """MC samples from the initial heads' blocks (name -> [B, C, h, w]) and the encoded given labels."""
        batch = next(iter(blocks.values())).shape[0]
        # a few copies per pass: batching all n copies is slower on CPU (the distillation's large
        # intermediate tensors fall out of cache), one copy per pass wastes small-batch efficiency
        per_pass = max(1, min(n, _MC_IMAGES_PER_PASS // batch))
        raw: dict[str, list[Tensor]] = {k: [] for k in self.modalities}
        for start in range(0, n, per_pass):
            copies = min(per_pass, n - start)
            _, final, _, _ = self._heads(blocks, encoded, None, initial=False, committee=False, mc=True, repeat=copies)
            for k, v in final.items():
                raw[k].append(v.view(copies, batch, *v.shape[1:]))
        # order sample-major at low resolution (cheap), so the full-size outputs need no further copy
        low = {k: torch.cat(v).transpose(0, 1).contiguous() for k, v in raw.items()}
        return MCSamples(self.modalities, low, size)


def _check_n(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"mc_samples: n must be a positive int, got {n!r}")


def _default_encoders_trained(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Weights saved before ``encoders_trained`` existed: load them with every encoder untrained."""
    key = prefix + "encoders_trained"
    if key not in state_dict and isinstance(module, PADNet):
        state_dict[key] = torch.zeros_like(module.encoders_trained)
