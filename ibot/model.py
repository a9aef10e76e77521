"""Student and teacher networks: ViT backbone + iBOT head, with official key names."""
from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch import Tensor, nn

from ibot.checkpoint import map_weight_norm_keys
from ibot.head import iBOTHead
from ibot.vit import ARCHS, build_vit, iBOTViT

log = logging.getLogger(__name__)


class iBOTModel(nn.Module):
    """``backbone`` + ``head`` (state-dict keys ``backbone.*`` / ``head.*`` as the official wrapper)."""

    def __init__(self, backbone: iBOTViT, head: iBOTHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[Tensor], masks: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Official ``MultiCropWrapper``: returns ([CLS] logits (C·B, K), patch logits (C·B, N, Kp));
        the patch logits exist only when all crops share one size."""
        return self.head(self.tokens(crops, masks))  # type: ignore[return-value]

    def tokens(self, crops: list[Tensor], masks: list[Tensor] | None = None) -> Tensor:
        """Final-norm tokens (C·B, 1 + N, D) of crops (B, 3, H_i, W_i), crop-major; consecutive crops
        of equal width share one backbone pass, as the official ``MultiCropWrapper``."""
        tokens = []
        start = 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            mask = torch.cat(masks[start:end]) if masks is not None else None
            tokens.append(self.backbone(torch.cat(crops[start:end]), mask=mask, return_all_tokens=True))
            start = end
        return torch.cat(tokens) if len(tokens) > 1 else tokens[0]


def build_student_teacher(
    arch: str = "vit_small",
    patch_size: int = 16,
    img_size: int = 224,
    drop_path_rate: float = 0.1,
    out_dim: int = 8192,
    patch_out_dim: int = 8192,
    shared_head: bool = False,
    shared_head_teacher: bool = True,
    norm_last_layer: bool = True,
    grad_checkpointing: bool = False,
    head_hidden_dim: int = 2048,
    head_bottleneck_dim: int = 256,
    vit_overrides: Mapping[str, int] | None = None,
) -> tuple[iBOTModel, iBOTModel]:
    """Student (mask token, drop path, ``norm_last_layer`` as given) and teacher (no mask token,
    no drop path, ``norm_last_layer=True``, no gradients) initialised from the student as in the
    official ``train_ibot``. Defaults are the official argparse defaults; ``vit_overrides`` (e.g.
    ``dict(embed_dim=32, depth=2, num_heads=2)``) changes the ViT size for tests."""
    over = dict(vit_overrides or {})

    def vit(**kw) -> iBOTViT:
        return build_vit(arch, patch_size=patch_size, img_size=img_size, **over, **kw)

    s_bb = vit(drop_path_rate=drop_path_rate, masked_im_modeling=True, grad_checkpointing=grad_checkpointing)
    dim = s_bb.embed_dim
    head = dict(hidden_dim=head_hidden_dim, bottleneck_dim=head_bottleneck_dim)
    student = iBOTModel(s_bb, iBOTHead(dim, out_dim, patch_out_dim, norm_last_layer=norm_last_layer,
                                       shared_head=shared_head, **head))
    teacher_patch_dim = out_dim if shared_head_teacher else patch_out_dim
    teacher = iBOTModel(vit(drop_path_rate=0.0), iBOTHead(dim, out_dim, teacher_patch_dim, norm_last_layer=True,
                                                          shared_head=shared_head_teacher, **head))
    # Official: teacher.load_state_dict(student.state_dict(), strict=False); the only extra student
    # key is backbone.masked_embed. With a shared teacher head both names are loaded in order, so an
    # unshared student's last_layer2 ends up in the teacher's shared layer, as in the official code.
    load_model_state(teacher, student.state_dict(), ignore_unexpected=("backbone.masked_embed",))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def load_model_state(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    ignore_unexpected: tuple[str, ...] = (),
    ignore_missing: tuple[str, ...] = (),
) -> None:
    """Load a full (backbone + head) state dict; ``module.`` prefixes are stripped.

    Missing or unexpected keys raise, except those starting with an ``ignore_*`` prefix, which are
    logged. Old/new weight-norm names (``weight_g``/``parametrizations.weight.original0``) are mapped.
    """
    sd = map_weight_norm_keys(_strip(state_dict))
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad_missing = [k for k in missing if not k.startswith(ignore_missing)]
    bad_unexpected = [k for k in unexpected if not k.startswith(ignore_unexpected)]
    if bad_missing or bad_unexpected:
        raise KeyError(f"state dict does not fit {type(model).__name__}: missing {bad_missing}, "
                       f"unexpected {bad_unexpected}")
    if missing or unexpected:
        log.info("loading %s: ignored missing %s, unexpected %s", type(model).__name__, missing, unexpected)
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    # Keys allowed to be missing keep the model's own values; a shared head stores one tensor under
    # two names and the name loaded last wins (last_layer2 after last_layer, as the official load).
    model.load_state_dict({**own, **{k: v for k, v in sd.items() if k in own}}, strict=True)


def _strip(sd: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def infer_model_config(state_dict: Mapping[str, Tensor]) -> dict:
    """Architecture of an official-format ``backbone.* / head.*`` state dict.

    Returns ``dict(arch, patch_size, img_size, out_dim, patch_out_dim, shared_head, vit_overrides,
    head_hidden_dim, head_bottleneck_dim)``; ``arch`` is None for a non-standard width/depth (then
    ``vit_overrides`` holds them). A shared head is recognised by ``last_layer2`` holding the same
    values as ``last_layer``.
    """
    sd = map_weight_norm_keys(_strip(state_dict))
    try:
        pos, proj = sd["backbone.pos_embed"], sd["backbone.patch_embed.proj.weight"]
        v1 = sd["head.last_layer.weight_v"]
        first = sd["head.mlp.0.weight"] if "head.mlp.0.weight" in sd else sd["head.mlp.weight"]
    except KeyError as e:
        raise KeyError(f"not an iBOT student/teacher state dict: no {e.args[0]!r} "
                       f"(keys start with {sorted({k.split('.')[0] for k in sd})})") from None
    dim, patch = pos.shape[-1], proj.shape[-1]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("backbone.blocks."))
    arch = next((a for a, c in ARCHS.items() if c["embed_dim"] == dim and c["depth"] == depth), None)
    # A non-standard size keeps its width/depth; the head count is not recoverable from weights.
    overrides = {} if arch else dict(embed_dim=dim, depth=depth)
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    v2 = sd.get("head.last_layer2.weight_v", v1)
    shared = v2.shape == v1.shape and (v2.data_ptr() == v1.data_ptr() or torch.equal(v2, v1))
    bottleneck, hidden = v1.shape[1], first.shape[0]
    return dict(arch=arch, patch_size=patch, img_size=grid * patch, out_dim=v1.shape[0],
                patch_out_dim=v2.shape[0], shared_head=shared, vit_overrides=overrides,
                head_hidden_dim=hidden, head_bottleneck_dim=bottleneck)


def student_teacher_from_state(
    student_state: Mapping[str, Tensor],
    teacher_state: Mapping[str, Tensor],
    norm_last_layer: bool = True,
    drop_path_rate: float = 0.1,
    num_heads: int | None = None,
) -> tuple[iBOTModel, iBOTModel]:
    """Build a student/teacher pair from official-format state dicts (``module.`` prefixes allowed),
    e.g. ``ckpt['student']`` and ``ckpt['teacher']`` of an official full checkpoint.

    ``norm_last_layer`` is not stored in checkpoints: pass the value the run used (official
    ViT-S/16: False). ``num_heads`` is needed only for non-standard ViT sizes. Every key must
    match (errors list the offending keys).
    """
    s_cfg, t_cfg = infer_model_config(student_state), infer_model_config(teacher_state)
    over = dict(s_cfg["vit_overrides"])
    if over:
        if num_heads is None:
            raise ValueError(f"non-standard ViT (width {over['embed_dim']}, depth {over['depth']}): "
                             "pass num_heads")
        over["num_heads"] = num_heads
    student, teacher = build_student_teacher(
        s_cfg["arch"] or "vit_small", patch_size=s_cfg["patch_size"], img_size=s_cfg["img_size"],
        drop_path_rate=drop_path_rate, out_dim=s_cfg["out_dim"], patch_out_dim=s_cfg["patch_out_dim"],
        shared_head=s_cfg["shared_head"], shared_head_teacher=t_cfg["shared_head"],
        norm_last_layer=norm_last_layer, head_hidden_dim=s_cfg["head_hidden_dim"],
        head_bottleneck_dim=s_cfg["head_bottleneck_dim"], vit_overrides=over)
    load_model_state(student, student_state)
    load_model_state(teacher, teacher_state)
    return student, teacher
