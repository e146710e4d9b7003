"""The ITM logit as one op: `exp(logit_scale) * max_q cos(queries[b, q], text[t])`.

    queries      (B, Q, P)   the adapter's ITM query embeddings (`AdapterOutput.itm_embeds`)
    text         (B, P) or (T, P)   the prompts' ITM embeddings (`adapter.text_target`)
    logit_scale  ()          log of the logit scale (`adapter.logit_scale`)
    pairwise:  logits[b]    = exp(logit_scale) * max_q <q^[b, q], t^[b]>        (B,)
    else:      logits[b, t] = exp(logit_scale) * max_q <q^[b, q], t^[t]>        (B, T)
    with x^ = x / max(|x|, 1e-12) (F.normalize); the queries are normalised only when `normalize_queries`.

Three functions:
- `itm_ref`: PyTorch, `DiscriminativeAdapter.itm_logits`' historical computation (with `normalize_queries=False`,
  since the adapter's embeddings are already unit vectors): bit for bit the same logits. It computes in float32 at
  least (`upcast=True`, float64 stays float64); `upcast=False` computes in the queries' own dtype.
- `itm_triton`: Triton kernels behind a `torch.autograd.Function`. Forward, one program per (b, t): dot products and
  squared norms accumulated in float32 over P, cosines, max and argmax over the queries; it keeps the argmax, the
  maximal cosine and the norms. Backward, with c = dlogits * exp(logit_scale): the query gradient lands on the argmax
  row only, dq[b, q*] = sum_t c (t^ - q^ cos) / |q| (one program per b and P-block), the text gradient is
  dt[t] = sum_b c (q^[b, q*] - t^ cos) / |t| (one program per t and P-block), and dlogit_scale = sum dlogits * logits.
  Where several queries tie for the max, the gradient goes to the first (autograd's amax splits it evenly).
  Logits are float32 whatever the input dtype or autocast.
- `itm_logits`: the dispatcher the adapter calls (kernel on CUDA with triton installed, else the reference).

Example:
    >>> queries = F.normalize(torch.randn(4, 8, 768, device="cuda", dtype=torch.bfloat16), dim=-1)
    >>> text, scale = torch.randn(4, 768, device="cuda"), torch.tensor(2.66, device="cuda")
    >>> itm_logits(queries, text, scale).shape, itm_logits(queries, text, scale, pairwise=False).shape
    (torch.Size([4]), torch.Size([4, 4]))
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._dispatch import KERNEL_DTYPES, import_triton, launch, use_kernel

__all__ = ["itm_logits", "itm_ref", "itm_triton"]

EPS = 1e-12  # F.normalize's


def itm_ref(
    queries: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    pairwise: bool = True,
    normalize_queries: bool = True,
    upcast: bool = True,
) -> torch.Tensor:
    """PyTorch reference of the ITM logits; differentiable by autograd.

    Args:
        queries (`torch.Tensor` of shape `(B, Q, P)`): query embeddings.
        text (`torch.Tensor` of shape `(B, P)` if pairwise, else `(T, P)`): text embeddings (normalised here).
        logit_scale (`torch.Tensor`, 0-dim): log of the scale.
        pairwise (`bool`, defaults to True): logits `(B,)` of pair b with text b; else `(B, T)`, all against all.
        normalize_queries (`bool`, defaults to True): L2-normalise the queries first (False when they already are).
        upcast (`bool`, defaults to True): compute in float32 at least (float64 stays float64); False computes in
            the queries' dtype.

    Returns:
        `torch.Tensor` of shape `(B,)` or `(B, T)`.
    """
    dtype = torch.promote_types(queries.dtype, torch.float32) if upcast else queries.dtype
    q = queries.to(dtype)  # (B, Q, P)
    if normalize_queries:
        q = F.normalize(q, dim=-1)
    t = F.normalize(text.to(dtype), dim=-1)
    if pairwise:
        cos = torch.einsum("bqp,bp->bq", q, t).amax(dim=1)  # (B,)
    else:
        cos = torch.einsum("bqp,tp->btq", q, t).amax(dim=2)  # (B, T)
    return logit_scale.to(dtype).exp() * cos


# Triton kernels -------------------------------------------------------------------------------------------------------
# Plain functions until `_load_kernels()`, at the first kernel call, imports triton and jit-compiles them in place
# (triton is optional, and the interpreter switch TRITON_INTERPRET is read then).
tl = None  # triton.language once loaded


def forward_kernel(
    q_ptr, t_ptr, scale_ptr, out_ptr, arg_ptr, cos_ptr, qnorm_ptr, tnorm_ptr,
    Q, P, T, sq_b, sq_q, sq_p, st_t, st_p, eps,
    PAIRWISE: tl.constexpr, NORM_Q: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """logits[b, t] and what the backward needs: argmax, max cosine, |q[b, :]|, |t|."""
    b, t = tl.program_id(0), tl.program_id(1)
    row = b if PAIRWISE else t  # the text of this program
    k = b * T + t  # index into (B, T) outputs (T = 1 when pairwise)
    offs_q = tl.arange(0, BLOCK_Q)
    mask_q = offs_q < Q
    dot = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    q_sq = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    t_sq = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        q = tl.load(
            q_ptr + b * sq_b + offs_q[:, None] * sq_q + offs_p[None, :] * sq_p,
            mask=mask_q[:, None] & mask_p[None, :],
            other=0.0,
        ).to(tl.float32)  # (BLOCK_Q, BLOCK_P)
        v = tl.load(t_ptr + row * st_t + offs_p * st_p, mask=mask_p, other=0.0).to(tl.float32)
        dot += tl.sum(q * v[None, :], axis=1)
        q_sq += tl.sum(q * q, axis=1)
        t_sq += v * v
    q_norm = tl.sqrt(q_sq)
    t_norm = tl.sqrt(tl.sum(t_sq, axis=0))
    cos = dot / tl.maximum(t_norm, eps)
    if NORM_Q:
        cos = cos / tl.maximum(q_norm, eps)
    cos = tl.where(mask_q, cos, float("-inf"))
    best = tl.max(cos, axis=0)
    scale = tl.exp(tl.load(scale_ptr).to(tl.float32))
    tl.store(out_ptr + k, scale * best)
    tl.store(cos_ptr + k, best)
    tl.store(arg_ptr + k, tl.argmax(cos, axis=0).to(tl.int32))
    if t == 0:  # one program per image writes its query norms, one per text its norm
        tl.store(qnorm_ptr + b * Q + offs_q, q_norm, mask=mask_q)
    if PAIRWISE or b == 0:
        tl.store(tnorm_ptr + row, t_norm)


def dquery_kernel(
    q_ptr, t_ptr, c_ptr, arg_ptr, cos_ptr, qnorm_ptr, tnorm_ptr, dq_ptr,
    Q, P, T, sq_b, sq_q, sq_p, st_t, st_p, eps,
    PAIRWISE: tl.constexpr, NORM_Q: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """dq[b, :, p-block] = sum over the texts whose argmax is row q of c (t^ - q^ cos) / |q| (rows without an
    argmax get 0)."""
    b, pid_p = tl.program_id(0), tl.program_id(1)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_q, mask_p = offs_q < Q, offs_p < P
    acc = tl.zeros((BLOCK_Q, BLOCK_P), dtype=tl.float32)
    dots = tl.zeros((BLOCK_Q,), dtype=tl.float32)  # <q^, dq^> per row: sum of c * cos
    for i in range(0, T):
        row = b if PAIRWISE else i
        k = b * T + i
        c = tl.load(c_ptr + k)
        best = tl.load(cos_ptr + k)
        sel = offs_q == tl.load(arg_ptr + k)
        t_norm = tl.maximum(tl.load(tnorm_ptr + row), eps)
        v = tl.load(t_ptr + row * st_t + offs_p * st_p, mask=mask_p, other=0.0).to(tl.float32) / t_norm
        acc += tl.where(sel[:, None], c * v[None, :], 0.0)
        dots += tl.where(sel, c * best, 0.0)
    if NORM_Q:
        q_norm = tl.load(qnorm_ptr + b * Q + offs_q, mask=mask_q, other=1.0)
        q_clamped = tl.maximum(q_norm, eps)
        q = (
            tl.load(
                q_ptr + b * sq_b + offs_q[:, None] * sq_q + offs_p[None, :] * sq_p,
                mask=mask_q[:, None] & mask_p[None, :],
                other=0.0,
            ).to(tl.float32)
            / q_clamped[:, None]
        )
        # F.normalize's clamp: below eps the norm is a constant, and the gradient is dq^ / eps
        acc = tl.where((q_norm > eps)[:, None], acc - q * dots[:, None], acc) / q_clamped[:, None]
    ptrs = dq_ptr + b * Q * P + offs_q[:, None] * P + offs_p[None, :]
    tl.store(ptrs, acc.to(dq_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_p[None, :])


def dtext_kernel(
    q_ptr, t_ptr, c_ptr, arg_ptr, cos_ptr, qnorm_ptr, tnorm_ptr, dt_ptr,
    n_images, Q, P, T, sq_b, sq_q, sq_p, st_t, st_p, eps,
    PAIRWISE: tl.constexpr, NORM_Q: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """dt[row, p-block] = sum over the images scored against this text of c (q^[b, q*] - t^ cos) / |t|."""
    row, pid_p = tl.program_id(0), tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    dots = tl.zeros((1,), dtype=tl.float32)  # <t^, dt^>: sum of c * cos
    for i in range(0, n_images):  # 1 when pairwise, else B
        b = row if PAIRWISE else i
        k = b if PAIRWISE else b * T + row
        c = tl.load(c_ptr + k)
        arg = tl.load(arg_ptr + k)
        q = tl.load(q_ptr + b * sq_b + arg * sq_q + offs_p * sq_p, mask=mask_p, other=0.0).to(tl.float32)
        if NORM_Q:
            q = q / tl.maximum(tl.load(qnorm_ptr + b * Q + arg), eps)
        acc += c * q
        dots += c * tl.load(cos_ptr + k)
    t_norm = tl.load(tnorm_ptr + row)
    t_clamped = tl.maximum(t_norm, eps)
    v = tl.load(t_ptr + row * st_t + offs_p * st_p, mask=mask_p, other=0.0).to(tl.float32) / t_clamped
    acc = tl.where(t_norm > eps, acc - v * dots, acc) / t_clamped
    tl.store(dt_ptr + row * P + offs_p, acc.to(dt_ptr.dtype.element_ty), mask=mask_p)


_TRITON_FUNCTIONS = ("forward_kernel", "dquery_kernel", "dtext_kernel")


@functools.lru_cache(maxsize=None)
def _load_kernels() -> None:
    triton = import_triton()
    module = globals()
    module["tl"] = triton.language
    for name in _TRITON_FUNCTIONS:
        module[name] = triton.jit(module[name])


def _pow2(n: int, cap: int) -> int:
    return max(2, min(cap, 1 << max(0, n - 1).bit_length()))


class _ITMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, text, logit_scale, pairwise, normalize_queries):
        _load_kernels()
        batch, n_queries, dim = queries.shape
        n_texts = 1 if pairwise else text.shape[0]  # programs per image
        device = queries.device
        out = torch.empty((batch,) if pairwise else (batch, n_texts), device=device, dtype=torch.float32)
        best = torch.empty(batch, n_texts, device=device, dtype=torch.float32)
        arg = torch.empty(batch, n_texts, device=device, dtype=torch.int32)
        q_norm = torch.empty(batch, n_queries, device=device, dtype=torch.float32)
        t_norm = torch.empty(text.shape[0], device=device, dtype=torch.float32)
        block_q, block_p = _pow2(n_queries, 64), _pow2(dim, 256)
        launch(
            forward_kernel, (batch, n_texts), queries,
            queries, text, logit_scale, out, arg, best, q_norm, t_norm,
            n_queries, dim, n_texts, *queries.stride(), *text.stride(), EPS,
            PAIRWISE=pairwise, NORM_Q=normalize_queries, BLOCK_Q=block_q, BLOCK_P=block_p,
        )  # fmt: skip
        ctx.save_for_backward(queries, text, logit_scale, out, best, arg, q_norm, t_norm)
        ctx.pairwise, ctx.normalize_queries, ctx.blocks = pairwise, normalize_queries, (block_q, block_p)
        return out

    @staticmethod
    def backward(ctx, grad):
        _load_kernels()
        queries, text, logit_scale, out, best, arg, q_norm, t_norm = ctx.saved_tensors
        batch, n_queries, dim = queries.shape
        n_texts = best.shape[1]
        grad = grad.float().reshape(batch, n_texts)  # (B, T), T = 1 when pairwise
        c = (grad * logit_scale.detach().float().exp()).contiguous()  # dlogits * exp(logit_scale)
        block_q, block_p = ctx.blocks
        flags = dict(PAIRWISE=ctx.pairwise, NORM_Q=ctx.normalize_queries, BLOCK_P=block_p)
        dq = dt = dscale = None
        if ctx.needs_input_grad[0]:
            dq = torch.empty(queries.shape, device=queries.device, dtype=queries.dtype)
            launch(
                dquery_kernel, (batch, -(-dim // block_p)), queries,
                queries, text, c, arg, best, q_norm, t_norm, dq,
                n_queries, dim, n_texts, *queries.stride(), *text.stride(), EPS, BLOCK_Q=block_q, **flags,
            )  # fmt: skip
        if ctx.needs_input_grad[1]:
            dt = torch.empty(text.shape, device=text.device, dtype=text.dtype)
            launch(
                dtext_kernel, (text.shape[0], -(-dim // block_p)), queries,
                queries, text, c, arg, best, q_norm, t_norm, dt,
                1 if ctx.pairwise else batch, n_queries, dim, n_texts, *queries.stride(), *text.stride(), EPS,
                **flags,
            )  # fmt: skip
        if ctx.needs_input_grad[2]:
            dscale = (grad * out.reshape(batch, n_texts)).sum().to(logit_scale.dtype)
        return dq, dt, dscale, None, None


def itm_triton(
    queries: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    pairwise: bool = True,
    normalize_queries: bool = True,
) -> torch.Tensor:
    """The Triton kernels (forward and backward), same arguments as `itm_ref`; float32 logits. Needs triton, and
    CUDA tensors or the interpreter (`TRITON_INTERPRET=1` before importing triton) for CPU tensors."""
    return _ITMFunction.apply(queries, text, logit_scale.reshape(()), bool(pairwise), bool(normalize_queries))


def _check(queries, text, logit_scale, pairwise) -> None:
    if queries.ndim != 3:
        raise ValueError(f"`queries` has shape {tuple(queries.shape)}; pass (B, Q, P) query embeddings.")
    if text.ndim != 2 or text.shape[1] != queries.shape[2]:
        raise ValueError(
            f"`text` has shape {tuple(text.shape)}; pass (B, P) or (T, P) embeddings with P={queries.shape[2]}, "
            "the queries' width."
        )
    if pairwise and text.shape[0] != queries.shape[0]:
        raise ValueError(
            f"pairwise scoring needs one text per output: got {text.shape[0]} texts for {queries.shape[0]} outputs."
        )
    if logit_scale.numel() != 1:
        raise ValueError(f"`logit_scale` has shape {tuple(logit_scale.shape)}; pass a single value (0-dim tensor).")


def itm_logits(
    queries: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    pairwise: bool = True,
    normalize_queries: bool = True,
) -> torch.Tensor:
    """ITM logits `(B,)` (pairwise) or `(B, T)`: the Triton kernel for CUDA tensors with triton installed (float32
    logits), `itm_ref` otherwise or under `DISCADAPT_KERNELS=0`, or for float64 inputs. Arguments as `itm_ref`."""
    _check(queries, text, logit_scale, pairwise)
    with torch.profiler.record_function("discadapt::itm"):
        kernel_dtypes = queries.dtype in KERNEL_DTYPES and text.dtype in KERNEL_DTYPES
        if kernel_dtypes and use_kernel(queries, text, logit_scale):
            return itm_triton(queries, text, logit_scale, pairwise, normalize_queries)
        return itm_ref(queries, text, logit_scale, pairwise, normalize_queries)
