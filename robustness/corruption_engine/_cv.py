"""The OpenCV operations imagecorruptions' ``spatter`` and ``frost`` use, re-implemented as batched torch ops with
OpenCV's integer / fixed-point arithmetic so the results agree bit for bit (checked against cv2 in the tests).

Single-channel images are ``(B, H, W)``. OpenCV's default border (``BORDER_REFLECT_101``) is ``mirror`` in
:func:`~robustness.corruption_engine._common.pad_index`.
"""
from __future__ import annotations

from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import pad

__all__ = [
    "box3_float", "box3_uint8", "canny", "chamfer5_distance", "cubic_resize_uint8", "equalize_hist", "filter2d_uint8",
]

_TG22: Final = 13573  # round(tan(22.5 deg) * 2^15), canny.cpp
# distransform.cpp: DIST_L2 with DIST_MASK_5 is the chamfer metric (1, 1.4, 2.1969). OpenCV's own code sums it in
# 16-bit fixed point, but the opencv-python wheels run Intel IPP's ippiDistanceTransform_5x5_8u32f_C1R, which sums
# the float32 constants (distances come out as 1.4 and 2.1969, not 91750 / 65536): so the float32 values, summed in
# float64 (exact for these few terms; IPP's float32 sums differ by an ulp at most).
_HV: Final = 1.0
_DIAG: Final = float(torch.tensor(1.4, dtype=torch.float32))
_LONG: Final = float(torch.tensor(2.1969, dtype=torch.float32))
_DIST_MAX: Final = 1e30


def _pad2(x: Tensor, r: int, mode: str) -> Tensor:
    h, w = x.shape[-2:]
    return pad(pad(x, -2, r, mode), -1, r, mode)


def canny(img: Tensor, low: int, high: int) -> Tensor:
    """``cv2.Canny(img, low, high)`` (aperture 3, L1 gradient) for uint8 ``(B, H, W)``; bool edge map ``(B, H, W)``.

    As canny.cpp: 3x3 Sobel with replicated borders, ``|dx| + |dy|``, non-maximum suppression along the direction
    quantised with the fixed-point ``tan(22.5)`` test (zero magnitude outside the image), ``> low`` candidates,
    ``> high`` seeds, then hysteresis: candidates 8-connected to a seed (:func:`_hysteresis`).
    """
    p = _pad2(img.to(torch.int32), 1, "nearest")
    dx = (p[:, :-2, 2:] - p[:, :-2, :-2]) + 2 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) + (p[:, 2:, 2:] - p[:, 2:, :-2])
    dy = (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, :-2, 1:-1] + p[:, :-2, 2:])
    mag = dx.abs() + dy.abs()
    mp = F.pad(mag, (1, 1, 1, 1))
    m = mag
    left, right = mp[:, 1:-1, :-2], mp[:, 1:-1, 2:]
    up, down = mp[:, :-2, 1:-1], mp[:, 2:, 1:-1]
    ax = dx.abs()
    ay = dy.abs() << 15
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << 16)
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg67x)
    same_sign = (dx ^ dy) >= 0  # s = 1: compare up-left and down-right; s = -1: up-right and down-left
    diag = torch.where(same_sign, (m > mp[:, :-2, :-2]) & (m > mp[:, 2:, 2:]),
                       (m > mp[:, :-2, 2:]) & (m > mp[:, 2:, :-2]))
    nms = torch.where(horizontal, (m > left) & (m >= right), torch.where(vertical, (m > up) & (m >= down), diag))
    candidates = (m > low) & nms
    return _hysteresis(candidates, candidates & (m > high))


def _hysteresis(candidates: Tensor, seeds: Tensor) -> Tensor:
    """Candidates 8-connected (through candidates) to a seed, for bool ``(B, H, W)`` maps.

    OpenCV grows the seeds with a stack, one pixel at a time. Here the candidates (a thin edge set, a few % of the
    pixels) become a graph with an edge per adjacent pair, whose connected components come from a parallel
    union-find (hooking roots, pointer jumping; a handful of rounds over the candidate list); a component is kept
    when it holds a seed.
    """
    b, h, w = candidates.shape
    dev = candidates.device
    index = candidates.reshape(-1).nonzero().squeeze(1)
    k = index.numel()
    if k == 0:
        return candidates.clone()
    slot = torch.full((b * h * w,), -1, dtype=torch.int64, device=dev)
    slot[index] = torch.arange(k, device=dev)
    yy = index.remainder(h * w).div(w, rounding_mode="floor")
    xx = index.remainder(w)
    ends = ([], [])
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # every 8-neighbour pair once
        inside = (yy + dy < h) & (xx + dx >= 0) & (xx + dx < w)
        other = slot[torch.where(inside, index + dy * w + dx, 0)]
        keep = inside & (other >= 0)
        ends[0].append(keep.nonzero().squeeze(1))
        ends[1].append(other[keep])
    u, v = torch.cat(ends[0]), torch.cat(ends[1])
    # union-find in rounds: compress every node onto its root, then hook each root onto the smallest root it shares
    # an edge with (parents only ever point to smaller indices, so no cycles); the forests merge in a few rounds
    label = torch.arange(k, device=dev)
    while True:
        while True:
            jumped = label[label]
            if torch.equal(jumped, label):
                break
            label = jumped
        ru, rv = label[u], label[v]
        split = ru != rv
        if not bool(split.any()):
            break
        ru, rv = ru[split], rv[split]
        label = label.scatter_reduce(0, torch.maximum(ru, rv), torch.minimum(ru, rv), reduce="amin")
    seeded = torch.zeros(k, dtype=torch.bool, device=dev)
    seeded[label[seeds.reshape(-1)[index]]] = True
    out = torch.zeros(b * h * w, dtype=torch.bool, device=dev)
    out[index] = seeded[label]
    return out.view(b, h, w)


def chamfer5_distance(img: Tensor) -> Tensor:
    """``cv2.distanceTransform(img, cv2.DIST_L2, 5)`` for uint8 ``(B, H, W)``: float32 distance of each pixel to the
    nearest zero pixel under the 5x5 chamfer metric (1, 1.4, 2.1969) as distransform.cpp computes it: a forward and
    a backward raster pass, out-of-image cells at ``DIST_MAX`` (see ``_DIAG`` for the arithmetic).

    Each pass is sequential along rows only through the left (right) neighbour term ``t[j] = min(a[j], t[j-1] + 1)``,
    which is a running minimum: ``t[j] = j + cummin_k(a[k] - k)``. So every row is a handful of vectorised ops over
    the batch and the columns; the loop runs over rows (2 H steps).
    """
    b, h, w = img.shape
    dev = img.device
    big = torch.full((b, h + 4, w + 4), _DIST_MAX, dtype=torch.float64, device=dev)
    zero = img == 0
    cols = torch.arange(w, device=dev, dtype=torch.float64) * _HV
    # the mask's cells in the two rows before (after) the current one: (row offset, column offset) and weight
    reach = ((2, -1, _LONG), (2, 1, _LONG), (1, -2, _LONG), (1, -1, _DIAG), (1, 0, _HV), (1, 1, _DIAG), (1, 2, _LONG))
    weights = torch.tensor([c for _, _, c in reach], dtype=torch.float64, device=dev).view(-1, 1, 1)

    def from_rows(r: int, sign: int) -> Tensor:
        """min over the mask cells in rows r - sign, r - 2 sign of (distance + weight), ``(B, W)``."""
        cells = torch.stack([big[:, r - sign * dr, 2 + dc:2 + dc + w] for dr, dc, _ in reach])
        return cells.add_(weights).amin(0)

    for i in range(h):  # forward pass: rows above, then the running minimum from the left
        r = i + 2
        a = torch.where(zero[:, i], 0.0, from_rows(r, 1))
        big[:, r, 2:w + 2] = (torch.cummin(a - cols, dim=1).values + cols).clamp_(max=_DIST_MAX)
    for i in range(h - 1, -1, -1):  # backward pass: rows below (mirrored mask), then the running minimum from the right
        r = i + 2
        a = torch.minimum(big[:, r, 2:w + 2], from_rows(r, -1))
        big[:, r, 2:w + 2] = (torch.cummin(a.flip(1) - cols, dim=1).values + cols).flip(1)
    return big[:, 2:h + 2, 2:w + 2].to(torch.float32)


def box3_float(x: Tensor) -> Tensor:
    """``cv2.blur(x, (3, 3))`` for float32 ``(B, H, W)``: 3x3 sums in double (exact here: the inputs are chamfer
    distances, multiples of 2^-16), times ``1/9`` in double, stored as float32; mirror border."""
    xp = _pad2(x.to(torch.float64), 1, "mirror")
    s = xp[:, :, :-2] + xp[:, :, 1:-1] + xp[:, :, 2:]
    s = s[:, :-2] + s[:, 1:-1] + s[:, 2:]
    return (s * (1.0 / 9)).to(torch.float32)


def box3_uint8(x: Tensor) -> Tensor:
    """``cv2.blur(x, (3, 3))`` for uint8 ``(B, H, W)``: the 3x3 sum divided by 9, rounded (a ninth is never a tie)."""
    xp = _pad2(x.to(torch.int32), 1, "mirror")
    s = xp[:, :, :-2] + xp[:, :, 1:-1] + xp[:, :, 2:]
    s = s[:, :-2] + s[:, 1:-1] + s[:, 2:]
    return torch.round(s.to(torch.float64) * (1.0 / 9)).to(torch.uint8)


def equalize_hist(x: Tensor) -> Tensor:
    """``cv2.equalizeHist`` per image of uint8 ``(B, H, W)``: LUT ``round(cum * (255 / (N - hist[first])))`` in
    float32 over the counts after the first occupied level (which maps to 0); a one-level image stays as it is."""
    b = x.shape[0]
    flat = x.reshape(b, -1).long()
    n = flat.shape[1]
    hist = torch.zeros(b, 256, dtype=torch.int64, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    first = (hist > 0).to(torch.int32).argmax(1, keepdim=True)
    h_first = hist.gather(1, first)
    cum = hist.cumsum(1)
    since = (cum - cum.gather(1, first)).to(torch.float32)  # sum of hist[first + 1 .. i]
    scale = torch.tensor(255.0, dtype=torch.float32, device=x.device) / (n - h_first).clamp(min=1).to(torch.float32)
    lut = torch.round(since * scale).clamp(0, 255)
    lut = torch.where(h_first == n, first.to(torch.float32).expand(-1, 256), lut)  # one level: dst.setTo(i)
    return lut.to(torch.uint8).gather(1, flat).view_as(x)


def filter2d_uint8(x: Tensor, kernel: Tensor) -> Tensor:
    """``cv2.filter2D(x, cv2.CV_8U, kernel)`` for uint8 ``(B, H, W)`` and a small integer kernel (correlation, anchor
    at the centre, mirror border): exact integer sums, saturated to [0, 255]."""
    k = kernel.shape[-1]
    r = k // 2
    h, w = x.shape[-2:]
    xp = _pad2(x.to(torch.int32), r, "mirror")
    out = torch.zeros(x.shape, dtype=torch.int32, device=x.device)
    for i in range(k):
        for j in range(k):
            weight = int(kernel[i, j])
            if weight:
                out += weight * xp[:, i:i + h, j:j + w]
    return out.clamp(0, 255).to(torch.uint8)


def _cubic_plan(src: int, dst: int) -> tuple[Tensor, Tensor]:
    """Source taps ``(dst, 4)`` (clamped: the edge repeats) and float64 weights ``(dst, 4)`` of bicubic resampling
    along one axis as ``cv2.resize(..., INTER_CUBIC)`` does it: half-pixel centres, Keys kernel with A = -0.75."""
    pos = (torch.arange(dst, dtype=torch.float64) + 0.5) * (src / dst) - 0.5
    base = torch.floor(pos)
    x = pos - base
    a = -0.75
    c0 = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    c1 = ((a + 2) * x - (a + 3)) * x * x + 1
    c2 = ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1
    c3 = 1 - c0 - c1 - c2
    taps = (base.to(torch.int64).unsqueeze(1) + torch.arange(-1, 3)).clamp(0, src - 1)
    return taps, torch.stack((c0, c1, c2, c3), 1)


def cubic_resize_uint8(img: Tensor, out_h: int, out_w: int) -> Tensor:
    """``cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_CUBIC)`` for uint8 ``(C, H, W)``.

    OpenCV's own 8-bit code uses 11-bit fixed-point weights, but the opencv-python wheels hand this call to Intel
    IPP, whose result is the float computation: separable bicubic in float64 here, rounded and saturated. Checked
    against cv2 on the frost textures: all but ~10 of 500k values agree, those by 1 (float32 ties inside IPP).
    """
    _, h, w = img.shape
    ty, wy = _cubic_plan(h, out_h)
    tx, wx = _cubic_plan(w, out_w)
    src = img.to(torch.float64)
    rows = (src[:, :, tx] * wx).sum(-1)  # (C, H, out_w)
    out = (rows[:, ty] * wy.view(1, out_h, 4, 1)).sum(2)
    return torch.round(out).clamp(0, 255).to(torch.uint8)
