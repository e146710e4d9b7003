"""The adapter's feature intake as one op: probed UNet maps -> adapter tokens.

    maps[l]     (B, C_l, H_l, W_l)   probed features, any float dtype (bf16/fp16 from a half-precision UNet)
    weights[l]  (D, C_l, 1, 1)       1x1 projection of layer l (`adapter.proj[l].weight`); biases[l] (D,) or None
    pos         (h*w, D)             position embedding of the (h, w) token grid
    temb        (B, D)               timestep embedding
    tokens[b, p] = sum_l resize_l(W_l maps[l][b] + bias_l)[:, p] + pos[p] + temb[b]          (B, h*w, D)

`resize_l` is the identity for a map already (h, w), adaptive average pooling for one at least as large on both
sides, and bilinear interpolation (align_corners=False) otherwise, as `DiscriminativeAdapter.forward` has always done.

Three functions:
- `intake_ref`: PyTorch, in the adapter's historical order (1x1 conv, resize, sum, + pos + temb), bit for bit what
  the adapter computed before the kernels existed; `upcast=True` computes in float32.
- `intake_triton`: the Triton kernels behind a `torch.autograd.Function`. A resize is a weighted gather with separable
  taps (`_taps`: per axis, at most K input indices and weights per output index), so the kernel resizes first and
  projects second (the same linear map; pooling and bilinear weights sum to 1, so the bias passes through), with
  float32 accumulation, and adds bias, pos and temb in float32 before a single store in the compute dtype. Several
  maps take one launch each, through a float32 accumulator. Backward: dmaps = the transposed gather (for each input
  index, the outputs that read it) of dtokens @ W_l; dW_l = sum over (batch, grid) of dtokens^T x resized map, in
  per-batch float32 partials; dbias, dpos, dtemb: sums of dtokens.
- `adapter_intake`: the dispatcher the adapter calls (kernel on CUDA with triton installed, else the reference; see
  `discadapt.kernels`).

Example:
    >>> maps = [torch.randn(2, 1280, 32, 32, dtype=torch.bfloat16, device="cuda")]
    >>> weights, biases = [torch.randn(256, 1280, 1, 1, device="cuda")], [torch.zeros(256, device="cuda")]
    >>> pos, temb = torch.zeros(16 * 16, 256, device="cuda"), torch.zeros(2, 256, device="cuda")
    >>> adapter_intake(maps, weights, biases, pos, temb, (16, 16), dtype=torch.float32).shape
    torch.Size([2, 256, 256])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._dispatch import compute_dtype, import_triton, interpreting, launch, use_kernel

__all__ = ["adapter_intake", "intake_ref", "intake_triton", "resize_mode"]


# reference --------------------------------------------------------------------------------------------------------
def resize_mode(in_size: tuple[int, int], size: tuple[int, int]) -> str:
    """How a map of spatial size `in_size` reaches the grid `size`: "identity", "pool" (adaptive average pooling,
    when the map is at least as large on both sides) or "bilinear" (align_corners=False)."""
    if tuple(in_size) == tuple(size):
        return "identity"
    if in_size[0] >= size[0] and in_size[1] >= size[1]:
        return "pool"
    return "bilinear"


def _resize(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    mode = resize_mode(m.shape[-2:], size)
    if mode == "pool":
        return F.adaptive_avg_pool2d(m, size)
    if mode == "bilinear":
        return F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return m


def intake_ref(
    maps: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    pos: torch.Tensor,
    temb: torch.Tensor,
    size: tuple[int, int],
    dtype: torch.dtype | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """PyTorch reference of the intake; differentiable by autograd.

    Args:
        maps (`Sequence[torch.Tensor]`): L maps `(B, C_l, H_l, W_l)`.
        weights (`Sequence[torch.Tensor]`): L 1x1 conv weights `(D, C_l, 1, 1)`.
        biases (`Sequence[torch.Tensor | None]`): L biases `(D,)` or None.
        pos (`torch.Tensor` of shape `(h*w, D)`): position embedding, cast to the tokens' dtype.
        temb (`torch.Tensor` of shape `(B, D)`): timestep embedding, cast to the tokens' dtype.
        size (`tuple[int, int]`): the token grid (h, w).
        dtype (`torch.dtype`, *optional*): the maps are cast to it before the projection (the adapter's dtype);
            defaults to the weights' dtype. An enclosing autocast then picks the compute dtype, as for `nn.Conv2d`.
        upcast (`bool`, defaults to False): compute in float32 (autocast disabled) and return float32.

    Returns:
        `torch.Tensor` of shape `(B, h*w, D)`, in the compute dtype.
    """
    if upcast:
        with torch.autocast(maps[0].device.type, enabled=False):
            f32 = [None if t is None else t.float() for t in (*maps, *weights, *biases)]
            n = len(maps)
            return intake_ref(f32[:n], f32[n : 2 * n], f32[2 * n :], pos.float(), temb.float(), size, torch.float32)
    dtype = dtype or weights[0].dtype
    x = 0
    for m, weight, bias in zip(maps, weights, biases):
        x = x + _resize(F.conv2d(m.to(dtype), weight, bias), size)  # (B, D, h, w)
    tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
    return tokens + pos.to(tokens.dtype) + temb.to(tokens.dtype)[:, None]


# resize as a gather -----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _taps_cpu(n_in: int, n_out: int, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One axis of a resize as taps: output i = sum_k weight[i, k] * input[index[i, k]], and the transpose:
    input j receives sum_k weight_t[j, k] * output[index_t[j, k]]. Unused taps have weight 0 (and a valid index).

    Returns `(index (n_out, K) int32, weight (n_out, K) float32, index_t (n_in, K_t) int32, weight_t (n_in, K_t))`.
    """
    taps: list[list[tuple[int, float]]] = []
    for i in range(n_out):
        if mode == "identity":
            taps.append([(i, 1.0)])
        elif mode == "pool":  # PyTorch's adaptive_avg_pool2d windows
            start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
            taps.append([(j, 1.0 / (end - start)) for j in range(start, end)])
        else:  # bilinear, align_corners=False, PyTorch's source index and clamping
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = int(src)
            i1 = i0 + (1 if i0 < n_in - 1 else 0)
            frac = src - i0
            taps.append([(i0, 1.0 - frac), (i1, frac)] if i1 != i0 else [(i0, 1.0)])
    transposed: list[list[tuple[int, float]]] = [[] for _ in range(n_in)]
    for i, row in enumerate(taps):
        for j, wgt in row:
            transposed[j].append((i, wgt))

    def table(rows):
        k = max(1, max(len(r) for r in rows))
        index = torch.tensor([[j for j, _ in r] + [0] * (k - len(r)) for r in rows], dtype=torch.int32)
        weight = torch.tensor([[w for _, w in r] + [0.0] * (k - len(r)) for r in rows], dtype=torch.float32)
        return index, weight

    return (*table(taps), *table(transposed))


@functools.lru_cache(maxsize=256)
def _taps(n_in: int, n_out: int, mode: str, device: torch.device):
    return tuple(t.to(device) for t in _taps_cpu(n_in, n_out, mode))


# Triton kernels -------------------------------------------------------------------------------------------------------
# Plain functions until `_load_kernels()`, at the first kernel call, imports triton and jit-compiles them in place
# (triton is optional, and the interpreter switch TRITON_INTERPRET is read then). Tiles are (BLOCK_*, BLOCK_*) blocks of
# the operands; masks cover the ragged edges, so any size works.
tl = None  # triton.language once loaded


def gather_tile(
    src_ptr, s_row, s_col, s_ch, offs_out, mask_out, offs_ch, mask_ch, out_w,
    rh_idx, rh_wt, rw_idx, rw_wt, KH: tl.constexpr, KW: tl.constexpr, MODE: tl.constexpr,
    BLOCK_OUT: tl.constexpr, BLOCK_CH: tl.constexpr,
):  # fmt: skip
    """(BLOCK_OUT, BLOCK_CH) float32: for output positions offs_out of a grid `out_w` wide, the weighted sum of
    the source at its taps, channels offs_ch. MODE: TAPS (0), rows rh_idx and columns rw_idx with weights rh_wt and
    rw_wt, (out, K) tables; CONTIGUOUS (1), the identity on a source whose rows follow each other (one load, which
    vectorises); FACTOR (2), average pooling by integer factors KH x KW (no tables)."""
    mask = mask_out[:, None] & mask_ch[None, :]
    if MODE == 1:
        tile = tl.load(src_ptr + offs_out[:, None] * s_col + offs_ch[None, :] * s_ch, mask=mask, other=0.0)
        tile = tile.to(tl.float32)
    else:
        oh = offs_out // out_w
        ow = offs_out % out_w
        tile = tl.zeros((BLOCK_OUT, BLOCK_CH), dtype=tl.float32)
        for kh in tl.static_range(KH):
            if MODE == 2:
                ih = oh * KH + kh
            else:
                ih = tl.load(rh_idx + oh * KH + kh, mask=mask_out, other=0)
                wh = tl.load(rh_wt + oh * KH + kh, mask=mask_out, other=0.0)
            for kw in tl.static_range(KW):
                if MODE == 2:
                    iw = ow * KW + kw
                else:
                    iw = tl.load(rw_idx + ow * KW + kw, mask=mask_out, other=0)
                    ww = tl.load(rw_wt + ow * KW + kw, mask=mask_out, other=0.0)
                ptrs = src_ptr + (ih * s_row + iw * s_col)[:, None] + offs_ch[None, :] * s_ch
                value = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
                if MODE == 2:
                    tile += value
                else:
                    tile += value * (wh * ww)[:, None]
        if MODE == 2:
            tile = tile * (1.0 / (KH * KW))
    return tile


def mma(acc, a, b, DTYPE: tl.constexpr, IEEE: tl.constexpr):
    """acc + a @ b with float32 accumulation, the operands in DTYPE (the compute dtype): on tensor cores (TF32 for
    float32), or in IEEE float32 without rounding the operands first (the interpreter's path: its dot mishandles
    bfloat16 and its float32 -> bfloat16 conversion truncates)."""
    if IEEE:
        return acc + tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a.to(DTYPE), b.to(DTYPE), acc)


def forward_kernel(
    x_ptr, w_ptr, acc_ptr, out_ptr, bias_ptr, pos_ptr, temb_ptr, rh_idx, rh_wt, rw_idx, rw_wt,
    C, D, P, grid_w, sx_b, sx_c, sx_h, sx_w,
    KH: tl.constexpr, KW: tl.constexpr, MODE: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """tokens[b, p-block, d-block] (+)= resize(x[b]) @ W^T, plus bias + pos + temb on the first map."""
    pid_p, pid_d, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_p, mask_d = offs_p < P, offs_d < D
    acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        xr = gather_tile(
            x_ptr + b * sx_b, sx_h, sx_w, sx_c, offs_p, mask_p, offs_c, mask_c, grid_w,
            rh_idx, rh_wt, rw_idx, rw_wt, KH, KW, MODE, BLOCK_P, BLOCK_C,
        )  # fmt: skip
        wt = tl.load(w_ptr + offs_d[None, :] * C + offs_c[:, None], mask=mask_c[:, None] & mask_d[None, :], other=0.0)
        acc = mma(acc, xr, wt, wt.dtype, IEEE)  # (BLOCK_P, BLOCK_D)
    tile = offs_p[:, None] * D + offs_d[None, :]
    mask = mask_p[:, None] & mask_d[None, :]
    if FIRST:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)[None, :]
        acc += tl.load(pos_ptr + tile, mask=mask, other=0.0)
        acc += tl.load(temb_ptr + b * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    else:
        acc += tl.load(acc_ptr + b * P * D + tile, mask=mask, other=0.0)
    if LAST:
        tl.store(out_ptr + b * P * D + tile, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(acc_ptr + b * P * D + tile, acc, mask=mask)


def dmap_kernel(
    g_ptr, w_ptr, dx_ptr, th_idx, th_wt, tw_idx, tw_wt, C, D, HW, in_w, P, grid_w,
    KH: tl.constexpr, KW: tl.constexpr, MODE: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dx[b, c-block, j-block] = (transposed resize of dtokens[b]) @ W, j over the map's pixels: the taps of pixel j
    are the grid positions that read it. FACTOR mode: j over grid positions instead, and each product row is spread
    over its pooling window (windows do not overlap), so the product is taken once per grid position."""
    pid_j, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_j = offs_j < (P if MODE == 2 else HW)
    mask_c = offs_c < C
    acc = tl.zeros((BLOCK_J, BLOCK_C), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        if MODE == 2:
            gr = tl.load(
                g_ptr + b * P * D + offs_j[:, None] * D + offs_d[None, :],
                mask=mask_j[:, None] & mask_d[None, :],
                other=0.0,
            )
        else:
            gr = gather_tile(
                g_ptr + b * P * D, grid_w * D, D, 1, offs_j, mask_j, offs_d, mask_d, in_w,
                th_idx, th_wt, tw_idx, tw_wt, KH, KW, MODE, BLOCK_J, BLOCK_D,
            )  # fmt: skip
        wt = tl.load(w_ptr + offs_d[:, None] * C + offs_c[None, :], mask=mask_d[:, None] & mask_c[None, :], other=0.0)
        acc = mma(acc, gr, wt, wt.dtype, IEEE)  # (BLOCK_J, BLOCK_C)
    mask = mask_j[:, None] & mask_c[None, :]
    if MODE == 2:
        value = (acc * (1.0 / (KH * KW))).to(dx_ptr.dtype.element_ty)
        top_left = (offs_j // grid_w) * KH * in_w + (offs_j % grid_w) * KW  # of the window, in the map
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                pixel = top_left + kh * in_w + kw
                tl.store(dx_ptr + b * C * HW + offs_c[None, :] * HW + pixel[:, None], value, mask=mask)
    else:
        tl.store(
            dx_ptr + b * C * HW + offs_c[None, :] * HW + offs_j[:, None], acc.to(dx_ptr.dtype.element_ty), mask=mask
        )


def dweight_kernel(
    g_ptr, x_ptr, dw_ptr, rh_idx, rh_wt, rw_idx, rw_wt, C, D, P, grid_w, sx_b, sx_c, sx_h, sx_w,
    KH: tl.constexpr, KW: tl.constexpr, MODE: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """dW partial of batch b: dW[b, d-block, c-block] = dtokens[b]^T @ resize(x[b]) over the grid, in float32."""
    pid_d, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_d, mask_c = offs_d < D, offs_c < C
    acc = tl.zeros((BLOCK_D, BLOCK_C), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        g_t = tl.load(
            g_ptr + b * P * D + offs_p[None, :] * D + offs_d[:, None], mask=mask_d[:, None] & mask_p[None, :], other=0.0
        )  # (BLOCK_D, BLOCK_P)
        xr = gather_tile(
            x_ptr + b * sx_b, sx_h, sx_w, sx_c, offs_p, mask_p, offs_c, mask_c, grid_w,
            rh_idx, rh_wt, rw_idx, rw_wt, KH, KW, MODE, BLOCK_P, BLOCK_C,
        )  # fmt: skip
        acc = mma(acc, g_t, xr, g_t.dtype, IEEE)  # (BLOCK_D, BLOCK_C)
    ptrs = dw_ptr + b * D * C + offs_d[:, None] * C + offs_c[None, :]
    tl.store(ptrs, acc, mask=mask_d[:, None] & mask_c[None, :])


_TRITON_FUNCTIONS = ("gather_tile", "mma", "forward_kernel", "dmap_kernel", "dweight_kernel")


@functools.lru_cache(maxsize=None)
def _load_kernels() -> None:
    triton = import_triton()
    module = globals()
    module["tl"] = triton.language
    for name in _TRITON_FUNCTIONS:
        module[name] = triton.jit(module[name])


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _blocks(*dims: int, cap: int = 64) -> list[int]:
    """Power-of-two tile sides, at least 16 (tl.dot's minimum) and at most `cap`."""
    return [max(16, min(cap, 1 << max(0, d - 1).bit_length())) for d in dims]


TAPS, CONTIGUOUS, FACTOR = 0, 1, 2  # gather_tile's modes


def _gather_args(m: torch.Tensor, size: tuple[int, int], transposed: bool = False) -> tuple[list, dict]:
    """The tap tables and constexprs of `gather_tile` for map `m` (B, C, H, W) and grid `size`: the resize (map ->
    grid) or, `transposed`, its transpose (grid gradient -> map pixels)."""
    (in_h, in_w), mode = m.shape[-2:], resize_mode(m.shape[-2:], size)
    rows = _taps(in_h, size[0], mode, m.device)
    cols = _taps(in_w, size[1], mode, m.device)
    rows, cols = (rows[2:], cols[2:]) if transposed else (rows[:2], cols[:2])
    tables = [*rows, *cols]
    if mode == "identity" and (transposed or m.stride(2) == in_w * m.stride(3)):
        return tables, dict(KH=1, KW=1, MODE=CONTIGUOUS)  # the grid gradient is contiguous
    if mode == "pool" and in_h % size[0] == 0 and in_w % size[1] == 0:  # transposed: dmap_kernel's own path
        return tables, dict(KH=in_h // size[0], KW=in_w // size[1], MODE=FACTOR)
    return tables, dict(KH=rows[0].shape[1], KW=cols[0].shape[1], MODE=TAPS)


class _IntakeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, size, dtype, pos, temb, *flat):
        maps, weights, biases = flat[0::3], flat[1::3], flat[2::3]
        _load_kernels()
        h, w = size
        batch, dim, grid = maps[0].shape[0], weights[0].shape[0], h * w
        # float32 follows cuDNN's TF32 switch, as the 1x1 conv it replaces; the interpreter always computes in IEEE
        ieee = interpreting() or (dtype == torch.float32 and not torch.backends.cudnn.allow_tf32)
        out = torch.empty(batch, grid, dim, device=maps[0].device, dtype=dtype)
        acc = out if len(maps) == 1 else torch.empty(batch, grid, dim, device=out.device, dtype=torch.float32)
        bias = sum((b.float() for b in biases if b is not None), torch.zeros(dim, device=out.device))
        pos32, temb_c = pos.float().contiguous(), temb.contiguous()
        w2d = [wt.reshape(dim, -1).to(dtype).contiguous() for wt in weights]  # (D, C_l), autocast's cast
        for i, (m, wt) in enumerate(zip(maps, w2d)):
            tables, gather = _gather_args(m, size)
            channels = m.shape[1]
            block_p, block_d, block_c = _blocks(grid, dim, channels)
            launch(
                forward_kernel, (_cdiv(grid, block_p), _cdiv(dim, block_d), batch), m,
                m, wt, acc, out, bias, pos32, temb_c, *tables, channels, dim, grid, w, *m.stride(),
                FIRST=i == 0, LAST=i == len(maps) - 1, IEEE=ieee, BLOCK_P=block_p, BLOCK_D=block_d,
                BLOCK_C=block_c, **gather,
            )  # fmt: skip
        ctx.size, ctx.dtype, ctx.ieee = size, dtype, ieee
        ctx.pos_dtype, ctx.temb_dtype = pos.dtype, temb.dtype
        ctx.weight_dtypes = [wt.dtype for wt in weights]
        ctx.bias_dtypes = [None if b is None else b.dtype for b in biases]
        ctx.save_for_backward(*maps, *w2d)
        return out

    @staticmethod
    def backward(ctx, grad):
        _load_kernels()
        n = len(ctx.weight_dtypes)
        maps, w2d = ctx.saved_tensors[:n], ctx.saved_tensors[n:]
        needs = ctx.needs_input_grad  # (size, dtype, pos, temb, x_0, w_0, b_0, ...)
        grad = grad.to(ctx.dtype).contiguous()  # (B, h*w, D)
        batch, grid, dim = grad.shape
        h, w = ctx.size
        grad32 = grad.float() if any(needs[2:4]) or any(needs[6::3]) else None
        dpos = grad32.sum(0).to(ctx.pos_dtype) if needs[2] else None
        dtemb = grad32.sum(1).to(ctx.temb_dtype) if needs[3] else None
        grads = []
        for i, (m, wt) in enumerate(zip(maps, w2d)):
            channels, in_h, in_w = m.shape[1:]
            dx = dw = db = None
            if needs[4 + 3 * i]:
                dx = torch.empty(m.shape, device=m.device, dtype=m.dtype)  # contiguous
                tables, gather = _gather_args(m, ctx.size, transposed=True)
                rows = grid if gather["MODE"] == FACTOR else in_h * in_w  # grid positions or map pixels
                block_j, block_c, block_d = _blocks(rows, channels, dim)
                launch(
                    dmap_kernel, (_cdiv(rows, block_j), _cdiv(channels, block_c), batch), m,
                    grad, wt, dx, *tables, channels, dim, in_h * in_w, in_w, grid, w,
                    IEEE=ctx.ieee, BLOCK_J=block_j, BLOCK_C=block_c, BLOCK_D=block_d, **gather,
                )  # fmt: skip
            if needs[5 + 3 * i]:
                partial = torch.empty(batch, dim, channels, device=m.device, dtype=torch.float32)
                block_d, block_c, block_p = _blocks(dim, channels, grid)
                tables, gather = _gather_args(m, ctx.size)
                launch(
                    dweight_kernel, (_cdiv(dim, block_d), _cdiv(channels, block_c), batch), m,
                    grad, m, partial, *tables, channels, dim, grid, w, *m.stride(),
                    IEEE=ctx.ieee, BLOCK_D=block_d, BLOCK_C=block_c, BLOCK_P=block_p, **gather,
                )  # fmt: skip
                dw = partial.sum(0).reshape(dim, channels, 1, 1).to(ctx.weight_dtypes[i])
            if needs[6 + 3 * i]:
                db = grad32.sum((0, 1)).to(ctx.bias_dtypes[i])
            grads += [dx, dw, db]
        return None, None, dpos, dtemb, *grads


def intake_triton(
    maps: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    pos: torch.Tensor,
    temb: torch.Tensor,
    size: tuple[int, int],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The Triton kernels (forward and backward), same arguments as `intake_ref`; the compute dtype is autocast's
    where autocast is on for the maps' device, else `dtype` (default: the weights' dtype). Needs triton, and CUDA
    tensors or the interpreter (`TRITON_INTERPRET=1` before importing triton) for CPU tensors."""
    dtype = compute_dtype(maps[0].device, dtype or weights[0].dtype)
    flat = [t for triple in zip(maps, weights, biases) for t in triple]
    return _IntakeFunction.apply(tuple(size), dtype, pos, temb, *flat)


def _check(maps, weights, biases, pos, temb, size) -> None:
    if not (len(maps) == len(weights) == len(biases)) or not maps:
        raise ValueError(
            f"`maps`, `weights` and `biases` have lengths {len(maps)}, {len(weights)}, {len(biases)}; pass one "
            "weight and one bias (or None) per map, at least one map."
        )
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"`size` is {tuple(size)}; pass the token grid as (height, width), both at least 1.")
    batch, dim = maps[0].shape[0], weights[0].shape[0]
    for i, (m, wt, b) in enumerate(zip(maps, weights, biases)):
        if m.ndim != 4 or m.shape[0] != batch:
            raise ValueError(f"`maps[{i}]` has shape {tuple(m.shape)}; pass (B, C, H, W) maps with B={batch}.")
        if tuple(wt.shape) != (dim, m.shape[1], 1, 1):
            raise ValueError(
                f"`weights[{i}]` has shape {tuple(wt.shape)}; expected ({dim}, {m.shape[1]}, 1, 1), a 1x1 conv "
                f"from the map's {m.shape[1]} channels to D={dim}."
            )
        if b is not None and tuple(b.shape) != (dim,):
            raise ValueError(f"`biases[{i}]` has shape {tuple(b.shape)}; expected ({dim},) or None.")
    if tuple(pos.shape) != (size[0] * size[1], dim):
        raise ValueError(f"`pos` has shape {tuple(pos.shape)}; expected (h*w, D) = ({size[0] * size[1]}, {dim}).")
    if tuple(temb.shape) != (batch, dim):
        raise ValueError(f"`temb` has shape {tuple(temb.shape)}; expected (B, D) = ({batch}, {dim}).")


def adapter_intake(
    maps: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    pos: torch.Tensor,
    temb: torch.Tensor,
    size: tuple[int, int],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Adapter tokens `(B, h*w, D)` from probed maps: the Triton kernel for CUDA tensors with triton installed,
    `intake_ref` otherwise or under `DISCADAPT_KERNELS=0`. Arguments as `intake_ref` (no `upcast`)."""
    _check(maps, weights, biases, pos, temb, size)
    with torch.profiler.record_function("discadapt::intake"):
        if use_kernel(*maps, *weights, *biases, pos, temb):
            return intake_triton(maps, weights, biases, pos, temb, size, dtype)
        return intake_ref(maps, weights, biases, pos, temb, size, dtype)
