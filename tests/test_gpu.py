"""GPU checks (``bash tools/test.sh -m gpu`` on a CUDA machine; they fail — never skip — without one)."""
from __future__ import annotations

import pytest
import torch

from ibot.loss import iBOTLoss
from ibot.model import build_student_teacher
from ibot.optim import param_groups
from ibot.schedules import cosine_scheduler
from ibot.train_step import iBOTTrainStep
from pretrain.gpu_augment import BatchedMultiCrop

pytestmark = pytest.mark.gpu


def _step(device: str, amp: torch.dtype | None):
    torch.manual_seed(0)
    student, teacher = build_student_teacher(
        "vit_small", patch_size=8, img_size=32, drop_path_rate=0.0, out_dim=128, patch_out_dim=128,
        shared_head=True, head_hidden_dim=64, head_bottleneck_dim=32,
        vit_overrides=dict(embed_dim=64, depth=2, num_heads=2))
    student, teacher = student.to(device), teacher.to(device)
    loss = iBOTLoss(128, 128, 2, 2, 0.04, 0.07, 0.04, 0.07, 1, 4).to(device)
    sched = cosine_scheduler(5e-4, 1e-6, 4, 2)
    opt = torch.optim.AdamW(param_groups(student), **({"fused": True} if device == "cuda" else {}))
    step = iBOTTrainStep(student, teacher, loss, opt, sched, sched, cosine_scheduler(0.996, 1, 4, 2),
                         max_masked=8, autocast_dtype=amp)
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)] + \
            [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)]
    masks = [torch.rand(4, 4, 4, generator=g) < 0.3 for _ in range(2)]
    out = step([c.to(device) for c in crops], [m.to(device) for m in masks], epoch=1, it=2)
    return {k: float(v) for k, v in out.items()}, teacher


def test_train_step_cuda_matches_cpu_fp32() -> None:
    cpu, t_cpu = _step("cpu", None)
    gpu, t_gpu = _step("cuda", None)
    for k in cpu:
        assert abs(cpu[k] - gpu[k]) <= 1e-4 * max(1.0, abs(cpu[k])), (k, cpu[k], gpu[k])
    for (n, a), b in zip(t_cpu.state_dict().items(), t_gpu.state_dict().values()):
        assert torch.allclose(a, b.cpu(), rtol=1e-4, atol=1e-5), n


def test_train_step_bf16_autocast_is_finite_and_close() -> None:
    fp32, _ = _step("cuda", None)
    bf16, _ = _step("cuda", torch.bfloat16)
    assert all(torch.isfinite(torch.tensor(v)) for v in bf16.values())
    assert abs(bf16["loss"] - fp32["loss"]) <= 0.05 * abs(fp32["loss"])


def test_device_augmentation_on_cuda() -> None:
    aug = BatchedMultiCrop(global_crop_size=64, local_crop_size=32, local_crops_number=3).cuda()
    imgs = torch.randint(0, 256, (8, 3, 73, 73), dtype=torch.uint8, device="cuda")
    out = aug(imgs, seed=3)
    again = aug(imgs, seed=3)
    assert [tuple(o.shape) for o in out] == [(8, 3, 64, 64)] * 2 + [(8, 3, 32, 32)] * 3
    assert all(o.is_cuda and torch.equal(o, a) for o, a in zip(out, again))


def test_mmcv_ops_cuda() -> None:
    from mmcv.ops import nms

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], device="cuda")
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7], device="cuda"), 0.5)
    assert keep.tolist() == [0, 2]


@pytest.mark.slow
def test_learning_check_on_cifar10(tmp_path) -> None:
    """The pretraining issue's learning check (≤ 10 minutes of pretraining on one H100): k-NN of the teacher on the
    held-out split beats the same ViT at random initialisation by ≥ 10 points. ``-m "gpu and slow"``."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "learning_check.py"
    spec = importlib.util.spec_from_file_location("learning_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    result = check.main(["--work-dir", str(tmp_path)])
    assert result["pretrain_minutes"] <= 10.0, result
    assert result["gain_points"] >= 10.0, result
