"""discadapt.kernels: the references, the dispatch, the adapter's wiring, and the Triton kernels.

Tiers:
- default (CPU): the references against float64 and `gradcheck`; the adapter's outputs and gradients bit for bit
  against its historical code; the dispatch rules; the Triton kernels in the interpreter (`TRITON_INTERPRET=1`, set
  here before the kernels are first loaded) on small odd sizes, forward and backward, at float32, float16 and
  bfloat16; the kernels' CUDA compilation for sm_90 (no GPU needed).
- slow: CUDA compilation for more targets and dtypes.
- gpu: the kernels on a CUDA device at SD 1.5 and SDXL sizes (`pytest -m gpu tests/test_kernels.py`).

The kernel is accepted where it is at most twice as far from the float64 reference as the same-precision reference,
plus two units in the last place of the largest value (flash-attention's criterion; the slack covers the
interpreter, which converts float32 to bfloat16 by truncation where a GPU rounds to nearest).
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA:  # before triton is imported (conftest.py does it first); with CUDA the gpu tests run the compiled kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from discadapt import DiscriminativeAdapter  # noqa: E402
from discadapt.kernels import (  # noqa: E402
    _dispatch,  # noqa: E402
    adapter_intake,
    intake_ref,
    intake_triton,
    itm_logits,
    itm_ref,
    itm_triton,
    kernels_enabled,
)
from discadapt.kernels import intake as intake_module  # noqa: E402
from discadapt.kernels.intake import _taps_cpu, resize_mode  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture
def interpreter():
    """The Triton kernels on CPU tensors: needs triton, and the interpreter on (no CUDA device here)."""
    pytest.importorskip("triton")
    if not _dispatch.interpreting():
        pytest.skip("TRITON_INTERPRET is off (a CUDA device is present): the gpu tests run the kernels there")


def assert_like_reference(kernel, same, ref64, dtype, name):
    scale = max(ref64.abs().max().item(), 1e-6)
    err = (kernel.double() - ref64).abs().max().item()
    err_same = (same.double() - ref64).abs().max().item()
    bound = 2 * err_same + 2 * torch.finfo(dtype).eps * scale
    assert err <= bound, f"{name}: kernel error {err:.3g} > {bound:.3g} (same-precision reference: {err_same:.3g})"


def assert_scale_grad(logits, dscale, grad_seed=0):
    """d/d logit_scale of <logits, g> is <logits, g> itself (logits = exp(logit_scale) * cos): a sum over every
    output, whose terms cancel, so it is checked against the kernel's own logits, within float32 rounding of the sum
    of its terms' magnitudes (the logits' own error is checked separately)."""
    g = torch.randn(logits.shape, generator=torch.Generator().manual_seed(grad_seed)).double()
    terms = g * logits.detach().cpu().double()
    err = abs(dscale.item() - terms.sum().item())
    assert err <= 4 * torch.finfo(torch.float32).eps * terms.abs().sum().item(), f"dlogit_scale: error {err:.3g}"


def run(fn, leaves, cast=None, grad_seed=0, **kwargs):
    """fn(*leaves) and the gradients of <output, g> for a seeded g, on fresh copies (cast to `cast`)."""
    xs = [
        None if t is None else t.detach().clone().to(cast or t.dtype).requires_grad_(t.is_floating_point())
        for t in leaves
    ]
    out = fn(*xs, **kwargs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    out.backward(g)
    return out, [None if x is None else x.grad for x in xs]


def randn(*shape, dtype=torch.float32, device="cpu", seed=0, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(device, dtype)


# the intake ----------
# (maps as (C, H, W), grid): odd sizes; every gather mode (identity on a contiguous map, integer-factor pooling,
# pooling and bilinear by taps, strided maps)
INTAKE_CASES = {
    "identity": ([(37, 5, 5)], (5, 5)),
    "pool-factor": ([(37, 10, 15)], (5, 5)),
    "pool+bilinear": ([(37, 9, 7), (13, 3, 3)], (5, 5)),
    "bilinear-mixed": ([(21, 7, 3)], (5, 5)),
    "channels-last+sliced": ([(19, 5, 5), (11, 5, 5)], (5, 5)),
}


def intake_inputs(case, dtype, batch=3, dim=24, device="cpu"):
    shapes, size = INTAKE_CASES[case] if isinstance(case, str) else case
    maps = [randn(batch, *s, dtype=dtype, device=device, seed=i) for i, s in enumerate(shapes)]
    if case == "channels-last+sliced":  # a channels-last map, and a leaf whose columns 2..6 are the map (see views)
        maps[0] = maps[0].to(memory_format=torch.channels_last)
        maps[1] = randn(batch, 11, 5, 8, dtype=dtype, device=device, seed=9)
    weights = [
        randn(dim, s[0], 1, 1, dtype=dtype, device=device, seed=10 + i, scale=s[0] ** -0.5)
        for i, s in enumerate(shapes)
    ]
    biases = [randn(dim, dtype=dtype, device=device, seed=20 + i) for i in range(len(shapes))]
    pos = randn(size[0] * size[1], dim, device=device, seed=30)
    temb = randn(batch, dim, dtype=dtype, device=device, seed=31)
    return [maps, weights, biases, pos, temb], size


def intake_flat(maps, weights, biases, pos, temb):
    return [*maps, *weights, *biases, pos, temb]


def intake_call(fn, n, size, case=None, **kwargs):
    """fn on flat leaves; in the strided case the second map is a column slice of its leaf (rows of 8, 5 read)."""

    def call(*xs):
        maps = list(xs[:n])
        if case == "channels-last+sliced":
            maps[1] = maps[1][..., 2:7]
        return fn(maps, list(xs[n : 2 * n]), list(xs[2 * n : 3 * n]), xs[-2], xs[-1], size, **kwargs)

    return call


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", sorted(INTAKE_CASES))
def test_intake_kernel_matches_reference(interpreter, case, dtype):
    (maps, weights, biases, pos, temb), size = intake_inputs(case, dtype)
    leaves, n = intake_flat(maps, weights, biases, pos, temb), len(maps)
    out, grads = run(intake_call(intake_triton, n, size, case), leaves)
    same, grads_same = run(intake_call(intake_ref, n, size, case), leaves)
    ref64, grads64 = run(intake_call(intake_ref, n, size, case), leaves, cast=torch.float64)
    assert out.dtype == same.dtype == dtype and out.shape == (3, size[0] * size[1], 24)
    assert_like_reference(out, same, ref64, dtype, "tokens")
    names = [f"maps[{i}]" for i in range(n)] + [f"weights[{i}]" for i in range(n)] + [f"biases[{i}]" for i in range(n)]
    for name, g, g_same, g64, leaf in zip(names + ["pos", "temb"], grads, grads_same, grads64, leaves):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, name
        assert_like_reference(g, g_same, g64, dtype, f"d{name}")


def test_intake_kernel_under_autocast(interpreter):
    """float32 weights, bfloat16 maps, CPU autocast to bfloat16: the kernel computes in autocast's dtype, as the conv;
    the weights' gradients come back in float32."""
    (maps, weights, biases, pos, temb), size = intake_inputs("pool+bilinear", torch.float32)
    maps = [m.bfloat16() for m in maps]
    leaves, n = intake_flat(maps, weights, biases, pos, temb), len(maps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = run(intake_call(intake_triton, n, size), leaves)
        same, grads_same = run(intake_call(intake_ref, n, size), leaves)
    ref64, grads64 = run(intake_call(intake_ref, n, size), leaves, cast=torch.float64)
    assert out.dtype == same.dtype == torch.bfloat16
    assert_like_reference(out, same, ref64, torch.bfloat16, "tokens")
    for i, (g, g_same, g64) in enumerate(zip(grads, grads_same, grads64)):
        assert g.dtype == leaves[i].dtype
        assert_like_reference(g, g_same, g64, torch.bfloat16, f"grad {i}")


def test_intake_reference_gradcheck():
    (maps, weights, biases, pos, temb), size = intake_inputs(([(5, 4, 6), (3, 2, 3)], (3, 3)), torch.float64, 2, 4)
    leaves = [t.double().requires_grad_(True) for t in intake_flat(maps, weights, biases, pos, temb)]
    assert torch.autograd.gradcheck(intake_call(intake_ref, 2, size), leaves, fast_mode=True)


def test_intake_reference_upcast():
    (maps, weights, biases, pos, temb), size = intake_inputs("pool+bilinear", torch.bfloat16)
    up = intake_ref(maps, weights, biases, pos, temb, size, upcast=True)
    f32 = intake_ref([m.float() for m in maps], [w.float() for w in weights], [b.float() for b in biases], pos,
                     temb.float(), size)  # fmt: skip
    assert up.dtype == torch.float32 and torch.equal(up, f32)


@pytest.mark.parametrize(
    "n_in, n_out, mode", [(9, 5, "pool"), (10, 5, "pool"), (7, 7, "identity"), (3, 5, "bilinear"), (7, 5, "bilinear")]
)
def test_resize_taps_are_torch_resizes(n_in, n_out, mode):
    """The kernels' gather tables reproduce F.adaptive_avg_pool2d / F.interpolate, and their transposes."""
    index, weight, index_t, weight_t = _taps_cpu(n_in, n_out, mode)
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64).index_put_(
        (torch.arange(n_out)[:, None].expand_as(index), index.long()), weight.double(), accumulate=True
    )  # (n_out, n_in)
    x = torch.randn(2, 3, n_in, n_in, dtype=torch.float64)
    size = (n_out, n_out)
    torch_resize = {"pool": F.adaptive_avg_pool2d, "identity": lambda x, s: x}.get(
        mode, lambda x, s: F.interpolate(x, size=s, mode="bilinear", align_corners=False)
    )
    torch.testing.assert_close(matrix @ x @ matrix.T, torch_resize(x, size), rtol=1e-6, atol=1e-7)
    transposed = torch.zeros(n_in, n_out, dtype=torch.float64).index_put_(
        (torch.arange(n_in)[:, None].expand_as(index_t), index_t.long()), weight_t.double(), accumulate=True
    )
    torch.testing.assert_close(transposed, matrix.T)


def test_resize_mode():
    """As the adapter always resized: pool when the map is at least the grid on both sides, else bilinear."""
    assert resize_mode((5, 5), (5, 5)) == "identity"
    assert resize_mode((9, 5), (5, 5)) == "pool"
    assert resize_mode((7, 3), (5, 5)) == resize_mode((3, 3), (5, 5)) == "bilinear"


def test_intake_errors():
    (maps, weights, biases, pos, temb), size = intake_inputs("pool+bilinear", torch.float32)
    with pytest.raises(ValueError, match=r"`maps`, `weights` and `biases` have lengths 2, 1, 2"):
        adapter_intake(maps, weights[:1], biases, pos, temb, size)
    with pytest.raises(ValueError, match=r"`weights\[1\]` has shape \(24, 12, 1, 1\); expected \(24, 13, 1, 1\)"):
        adapter_intake(maps, [weights[0], weights[1][:, :12]], biases, pos, temb, size)
    with pytest.raises(ValueError, match=r"`biases\[0\]` has shape \(23,\); expected \(24,\) or None"):
        adapter_intake(maps, weights, [biases[0][:23], biases[1]], pos, temb, size)
    with pytest.raises(ValueError, match=r"`maps\[1\]` has shape \(2, 13, 3, 3\); pass \(B, C, H, W\) maps with B=3"):
        adapter_intake([maps[0], maps[1][:2]], weights, biases, pos, temb, size)
    with pytest.raises(ValueError, match=r"`pos` has shape \(25, 24\); expected \(h\*w, D\) = \(16, 24\)"):
        adapter_intake(maps, weights, biases, pos, temb, (4, 4))
    with pytest.raises(ValueError, match=r"`temb` has shape \(2, 24\); expected \(B, D\) = \(3, 24\)"):
        adapter_intake(maps, weights, biases, pos, temb[:2], size)
    with pytest.raises(ValueError, match=r"`size` is \(0, 5\); pass the token grid as \(height, width\)"):
        adapter_intake(maps, weights, biases, pos, temb, (0, 5))


# the ITM logits ----------
def itm_inputs(dtype, pairwise, batch=3, queries=5, dim=37, texts=7, device="cpu", strided=False):
    q = randn(batch, 2 * queries if strided else queries, dim, dtype=dtype, device=device, seed=1)
    q = q[:, ::2] if strided else q
    t = randn(batch if pairwise else texts, dim, dtype=dtype, device=device, seed=2)
    return [q, t, torch.tensor(2.3, device=device)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("normalize_queries", [True, False], ids=["normalize", "unit-queries"])
@pytest.mark.parametrize("pairwise", [True, False], ids=["pairwise", "all-pairs"])
def test_itm_kernel_matches_reference(interpreter, pairwise, normalize_queries, dtype):
    leaves = itm_inputs(dtype, pairwise, strided=not pairwise)
    kwargs = dict(pairwise=pairwise, normalize_queries=normalize_queries)
    out, grads = run(itm_triton, leaves, **kwargs)
    same, grads_same = run(itm_ref, leaves, upcast=False, **kwargs)
    ref64, grads64 = run(itm_ref, leaves, cast=torch.float64, **kwargs)
    assert out.dtype == torch.float32 and out.shape == ((3,) if pairwise else (3, 7))
    # float32 logits from any input dtype: as close as the float32 reference
    assert_like_reference(out, run(itm_ref, leaves, **kwargs)[0], ref64, torch.float32, "logits")
    for name, g, g_same, g64, leaf in zip(["queries", "text"], grads, grads_same, grads64, leaves):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, name
        assert_like_reference(g, g_same, g64, dtype, f"d{name}")
    assert_scale_grad(out, grads[2])


def test_itm_reference_gradcheck():
    for pairwise in (True, False):
        leaves = [t.double().requires_grad_(True) for t in itm_inputs(torch.float64, pairwise, 2, 3, 5, 4)]
        assert torch.autograd.gradcheck(lambda q, t, s: itm_ref(q, t, s, pairwise=pairwise), leaves, fast_mode=True)


def test_itm_errors():
    q, t, scale = itm_inputs(torch.float32, True)
    with pytest.raises(ValueError, match=r"`queries` has shape \(3, 37\); pass \(B, Q, P\)"):
        itm_logits(q[:, 0], t, scale)
    with pytest.raises(ValueError, match=r"`text` has shape \(3, 36\); pass \(B, P\) or \(T, P\) .* P=37"):
        itm_logits(q, t[:, :36], scale)
    with pytest.raises(ValueError, match="one text per output: got 2 texts for 3 outputs"):
        itm_logits(q, t[:2], scale)
    with pytest.raises(ValueError, match=r"`logit_scale` has shape \(2,\); pass a single value"):
        itm_logits(q, t, scale.expand(2))


# dispatch ----------
def test_dispatch_rules(monkeypatch):
    x = torch.zeros(2)
    for value, enabled in [("1", True), ("0", False), ("off", False), ("False", False), ("yes", True)]:
        monkeypatch.setenv("DISCADAPT_KERNELS", value)
        assert kernels_enabled() is enabled
    monkeypatch.delenv("DISCADAPT_KERNELS")
    assert kernels_enabled() and not _dispatch.use_kernel(x)  # CPU tensors take the reference
    monkeypatch.setattr(_dispatch, "_KERNEL_DEVICES", ("cuda", "cpu"))  # as if they were CUDA tensors
    monkeypatch.setattr(_dispatch, "_triton_available", lambda: True)
    assert _dispatch.use_kernel(x, None)
    monkeypatch.setenv("DISCADAPT_KERNELS", "0")
    assert not _dispatch.use_kernel(x)
    monkeypatch.delenv("DISCADAPT_KERNELS")
    monkeypatch.setattr(_dispatch, "_triton_available", lambda: False)  # installed without triton
    assert not _dispatch.use_kernel(x)
    assert _dispatch.compute_dtype(x.device, torch.float32) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _dispatch.compute_dtype(x.device, torch.float32) == torch.bfloat16
        assert _dispatch.compute_dtype(x.device, torch.float64) == torch.float64


def test_launch_retries_unpipelined_when_shared_memory_overflows(monkeypatch):
    """A configuration that triton refuses for shared memory is launched again with num_stages=1, and later launches
    of it go there directly; other configurations and other errors are untouched."""
    pytest.importorskip("triton")
    from triton.runtime.errors import OutOfResources

    calls = []

    class Kernel:
        __name__ = "fake_kernel"

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                calls.append((grid, kwargs.get("num_stages")))
                if kwargs.get("BLOCK") == 64 and "num_stages" not in kwargs:
                    raise OutOfResources(447488, 232448, "shared memory")
                if kwargs.get("BLOCK") == 0:
                    raise RuntimeError("not ours")

            return run

    monkeypatch.setattr(_dispatch, "_UNPIPELINED", set())
    x = torch.zeros(3)
    _dispatch.launch(Kernel(), (2,), x, x, 5, BLOCK=64)
    assert calls == [((2,), None), ((2,), 1)]
    _dispatch.launch(Kernel(), (2,), x, x, 5, BLOCK=64)  # remembered
    _dispatch.launch(Kernel(), (2,), x, x, 5, BLOCK=32)  # fits
    assert calls[2:] == [((2,), 1), ((2,), None)]
    with pytest.raises(RuntimeError, match="not ours"):
        _dispatch.launch(Kernel(), (2,), x, x, BLOCK=0)


def test_missing_triton_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'discadapt\[kernels\]'"):
        _dispatch.import_triton()


# the adapter's wiring ----------
def small_adapter(seed=0, **config):
    torch.manual_seed(seed)
    return DiscriminativeAdapter(
        layers=["a", "b"], in_channels=[37, 13], text_dim=20, token_dim=12, hidden_size=24, num_heads=4, **config
    )


def adapter_inputs(dtype=torch.float32):
    maps = [randn(3, 37, 9, 7, dtype=dtype, seed=1), randn(3, 13, 3, 3, dtype=dtype, seed=2)]
    return maps, torch.tensor([10, 500, 999]), randn(3, 20, seed=3), randn(3, 4, 12, seed=4)


def historical_forward(adapter, maps, timestep, text_tokens, text):
    """`DiscriminativeAdapter.forward` and `itm_logits` as written before discadapt.kernels existed."""
    batch = maps[0].shape[0]
    h, w = adapter._grid(maps)
    x = 0
    for proj, m in zip(adapter.proj, maps):
        m = proj(m.to(adapter.dtype))
        if m.shape[-2:] != (h, w):
            if m.shape[-2] >= h and m.shape[-1] >= w:
                m = F.adaptive_avg_pool2d(m, (h, w))
            else:
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        x = x + m
    tokens = x.flatten(2).transpose(1, 2)
    from discadapt.adapter import sine_position_embedding

    pos = sine_position_embedding(adapter.config.hidden_size, h, w, device=tokens.device).to(tokens.dtype)
    timestep = torch.as_tensor(timestep, device=tokens.device).reshape(-1).expand(batch)
    temb = adapter.time_embedding(adapter.time_proj(timestep).to(tokens.dtype))
    memory = adapter.encoder(tokens + pos + temb[:, None])
    queries = adapter.decoder(adapter.queries.expand(batch, -1, -1).to(memory.dtype), memory)
    itm, rec = queries.split([adapter.config.num_itm_queries, adapter.config.num_rec_queries], dim=1)
    itm_embeds = F.normalize(adapter.itm_head(itm), dim=-1)
    token_embeds = F.normalize(adapter.align_token(text_tokens.to(adapter.dtype)), dim=-1)

    def itm_logits(pairwise):
        dtype = torch.promote_types(itm_embeds.dtype, torch.float32)
        q, t = itm_embeds.to(dtype), F.normalize(text.to(dtype), dim=-1)
        if pairwise:
            cos = torch.einsum("bqp,bp->bq", q, t).amax(dim=1)
        else:
            cos = torch.einsum("bqp,tp->btq", q, t).amax(dim=2)
        return adapter.logit_scale.to(dtype).exp() * cos

    return dict(
        itm_embeds=itm_embeds,
        boxes=adapter.box_head(rec).sigmoid(),
        rec_logits=adapter.class_head(rec),
        rec_embeds=F.normalize(adapter.align_query(rec), dim=-1),
        token_embeds=token_embeds,
        logits=itm_logits(pairwise=True),
        all_logits=itm_logits(pairwise=False),
    )


def wired_forward(adapter, maps, timestep, text_tokens, text):
    out = adapter(maps, timestep, text_tokens=text_tokens)
    return dict(out, logits=adapter.itm_logits(out, text), all_logits=adapter.itm_logits(out, text, pairwise=False))


@pytest.mark.parametrize("precision", ["float32", "float64", "cpu-autocast-bf16"])
def test_adapter_bit_identical_to_historical_code(precision):
    """On the CPU the wired adapter computes exactly what it always did: outputs and gradients, torch.equal."""
    results = []
    for forward in (historical_forward, wired_forward):
        adapter = small_adapter(grid_size=None)
        maps, t, text, tokens = adapter_inputs()
        if precision == "float64":
            adapter, maps, text, tokens = adapter.double(), [m.double() for m in maps], text.double(), tokens.double()
        maps = [m.requires_grad_(True) for m in maps]
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("cpu-autocast"))
        with amp:
            out = forward(adapter, maps, t, tokens, text)
        sum(v.float().sum() for v in out.values()).backward()
        grads = [m.grad for m in maps] + [p.grad for p in adapter.parameters()]
        results.append((out, grads))
    (old, old_grads), (new, new_grads) = results
    for key in old:
        assert old[key].dtype == new[key].dtype and torch.equal(old[key], new[key]), key
    assert all(torch.equal(a, b) for a, b in zip(old_grads, new_grads))


def test_adapter_through_the_kernels(interpreter, monkeypatch):
    """The adapter's dispatchers route to the kernels where they apply (here: CPU tensors treated as CUDA), giving
    the reference's outputs and gradients within float32 tolerance; DISCADAPT_KERNELS=0 routes back."""
    calls = []
    monkeypatch.setattr(_dispatch, "_KERNEL_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(intake_module, "intake_triton", lambda *a, **k: calls.append(1) or intake_triton(*a, **k))
    results = []
    for enabled in ("1", "0"):
        monkeypatch.setenv("DISCADAPT_KERNELS", enabled)
        adapter = small_adapter()
        maps, t, text, tokens = adapter_inputs()
        maps = [m.requires_grad_(True) for m in maps]
        out = wired_forward(adapter, maps, t, tokens, text)
        (out["logits"].sum() + out["all_logits"].sum() + out["boxes"].sum()).backward()
        grads = [m.grad for m in maps] + [p.grad for p in adapter.parameters()]
        results.append((out, grads, out["logits"].grad_fn.name()))
    (kernel, kernel_grads, kernel_node), (ref, ref_grads, ref_node) = results
    assert calls == [1] and "ITMFunction" in kernel_node and "ITMFunction" not in ref_node
    for key in ref:
        torch.testing.assert_close(kernel[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)
    for a, b in zip(kernel_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_without_triton_same_numbers(tmp_path):
    """An install without triton imports, and the adapter gives the same numbers as here (a fresh process where
    `import triton` fails)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["triton"] = None  # import triton raises ImportError
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import torch
        from test_kernels import adapter_inputs, small_adapter, wired_forward
        adapter = small_adapter()
        maps, t, text, tokens = adapter_inputs()
        torch.save(wired_forward(adapter, maps, t, tokens, text), {str(tmp_path / "out.pt")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")
    maps, t, text, tokens = adapter_inputs()
    ours = wired_forward(small_adapter(), maps, t, tokens, text)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# CUDA compilation (no GPU needed) ----------
COMPILE_SCRIPT = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from discadapt.kernels import intake, itm

arch, dtype, variants = int(sys.argv[1]), sys.argv[2], sys.argv[3]
full = variants == "full"
# "unpipelined": num_stages=1, as `_dispatch.launch` retries a launch that overflows shared memory; each must fit in
# the 99 KB per block of the smallest CUDA GPUs (sm_86 / sm_89)
options = dict(num_stages=1) if variants == "unpipelined" else {}
SHARED_LIMIT = 99 * 1024
intake._load_kernels()
itm._load_kernels()
pointers = {  # pointer arguments: element type ("D": the compute dtype, "X": the maps' dtype, bfloat16)
    "x_ptr": "X", "dx_ptr": "X", "w_ptr": "D", "out_ptr": "D", "temb_ptr": "D", "g_ptr": "D", "q_ptr": "D",
    "t_ptr": "D", "dq_ptr": "D", "dt_ptr": "D", "rh_idx": "i32", "rw_idx": "i32", "th_idx": "i32", "tw_idx": "i32",
    "arg_ptr": "i32",
}


def compile_kernel(fn, types=(), **constexprs):
    signature = {}
    types = dict(types)
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith(("_ptr", "_idx", "_wt")):
            kind = types.get(name, pointers.get(name, "fp32"))
            signature[name] = "*" + {"D": dtype, "X": "bf16"}.get(kind, kind)
        else:
            signature[name] = "fp32" if name == "eps" else "i32"
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    if options:
        shared = kernel.metadata.shared
        assert shared <= SHARED_LIMIT, f"{fn.__name__} {constexprs}: {shared} bytes of shared memory unpipelined"


ieee = dtype == "fp32"
modes = [(0, (2, 3)), (1, (1, 1)), (2, (2, 2))][: 3 if full else 1]  # taps, contiguous, factor
if options:
    modes = [(0, (5, 5))]  # the transposed taps of a 37 -> 29 bilinear resize: 447 KB at 3 stages in float32
for mode, (kh, kw) in modes:
    tiles = dict(KH=kh, KW=kw, MODE=mode, IEEE=ieee)
    for first, last in [(True, True), (False, False)][: 2 if full else 1]:
        compile_kernel(intake.forward_kernel, FIRST=first, LAST=last, BLOCK_P=64, BLOCK_D=64, BLOCK_C=64, **tiles)
    compile_kernel(intake.dmap_kernel, BLOCK_J=64, BLOCK_C=64, BLOCK_D=64, **tiles)
    compile_kernel(intake.dweight_kernel, BLOCK_D=64, BLOCK_C=64, BLOCK_P=64, **tiles)
for pairwise in (True, False)[: 2 if full else 1]:
    for norm in (True, False)[: 2 if full else 1]:
        flags = dict(PAIRWISE=pairwise, NORM_Q=norm, BLOCK_P=256)
        compile_kernel(itm.forward_kernel, types={"out_ptr": "fp32"}, BLOCK_Q=8, **flags)
        compile_kernel(itm.dquery_kernel, BLOCK_Q=8, **flags)
        compile_kernel(itm.dtext_kernel, **flags)
print("compiled")
"""


@pytest.mark.parametrize(
    "arch, dtype, variants",
    [
        (90, "bf16", "one"),
        pytest.param(90, "bf16", "full", marks=pytest.mark.slow),
        pytest.param(90, "fp16", "full", marks=pytest.mark.slow),
        pytest.param(90, "fp32", "full", marks=pytest.mark.slow),
        pytest.param(80, "bf16", "full", marks=pytest.mark.slow),
        (90, "fp32", "unpipelined"),
    ],
)
def test_kernels_compile_for_cuda(arch, dtype, variants):
    """The kernels compile to CUDA binaries (PTX and cubin through triton's bundled ptxas), no GPU needed: what the
    interpreter cannot check (types, layouts, loop-carried values). Default tier: each kernel once; slow: every
    variant (gather modes, first/last map, pairwise, query normalisation). `unpipelined`: the retry of a launch that
    overflowed shared memory (float32, 25 taps) fits in 99 KB, the least any current CUDA GPU gives a block."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT, str(arch), dtype, variants],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


# GPU ----------
# SD 1.5 (up_blocks.1: 1280 x 32 x 32; up_blocks.2: 640 x 64 x 64) and SDXL (up_blocks.0 at 1024 px: 1280 x 64 x 64)
GPU_INTAKE_CASES = {
    "sd15-up1": ([(1280, 32, 32)], (32, 32)),
    "sd15-up1+up2": ([(1280, 32, 32), (640, 64, 64)], (32, 32)),
    "sdxl-up0": ([(1280, 64, 64)], (32, 32)),
    "odd-bilinear": ([(1280, 16, 16), (640, 37, 37)], (29, 29)),
}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", sorted(GPU_INTAKE_CASES))
def test_gpu_intake(monkeypatch, case, dtype):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 in IEEE, kernel and cuDNN alike
    (maps, weights, biases, pos, temb), size = intake_inputs(GPU_INTAKE_CASES[case], dtype, 8, 256, "cuda")
    leaves, n = intake_flat(maps, weights, biases, pos, temb), len(maps)
    out, grads = run(intake_call(adapter_intake, n, size), leaves)  # the dispatcher picks the kernel on CUDA
    assert out.grad_fn.name().endswith("_IntakeFunctionBackward")
    same, grads_same = run(intake_call(intake_ref, n, size), leaves)
    ref64, grads64 = run(intake_call(intake_ref, n, size), leaves, cast=torch.float64)
    assert_like_reference(out, same, ref64, dtype, "tokens")
    for i, (g, g_same, g64) in enumerate(zip(grads, grads_same, grads64)):
        assert_like_reference(g, g_same, g64, dtype, f"grad {i}")


@pytest.mark.gpu
@needs_cuda
def test_gpu_intake_tf32(monkeypatch):
    """float32 with cuDNN's TF32 switch on (PyTorch's default): the kernel's products in TF32, within TF32's error."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    (maps, weights, biases, pos, temb), size = intake_inputs(
        GPU_INTAKE_CASES["sd15-up1+up2"], torch.float32, 8, 256, "cuda"
    )
    leaves, n = intake_flat(maps, weights, biases, pos, temb), len(maps)
    out, grads = run(intake_call(intake_triton, n, size), leaves)
    ref64, grads64 = run(intake_call(intake_ref, n, size), leaves, cast=torch.float64)
    for name, x, x64 in [
        ("tokens", out, ref64),
        *((f"grad {i}", g, g64) for i, (g, g64) in enumerate(zip(grads, grads64))),
    ]:
        scale = x64.abs().max().item()
        assert (x.double() - x64).abs().max().item() <= 4e-3 * scale, name


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [768, 1280])
@pytest.mark.parametrize("pairwise", [True, False], ids=["pairwise", "all-pairs"])
def test_gpu_itm(pairwise, dim, dtype):
    leaves = itm_inputs(dtype, pairwise, batch=32, queries=8, dim=dim, texts=32, device="cuda")
    out, grads = run(itm_logits, leaves, pairwise=pairwise)
    assert "ITMFunction" in out.grad_fn.name()
    same, grads_same = run(itm_ref, leaves, upcast=False, pairwise=pairwise)
    ref64, grads64 = run(itm_ref, leaves, cast=torch.float64, pairwise=pairwise)
    assert_like_reference(out, run(itm_ref, leaves, pairwise=pairwise)[0], ref64, torch.float32, "logits")
    for name, g, g_same, g64 in zip(["queries", "text"], grads, grads_same, grads64):
        assert_like_reference(g, g_same, g64, dtype, f"d{name}")
    assert_scale_grad(out, grads[2])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "autocast-bf16"])
def test_gpu_adapter_kernels_vs_reference(monkeypatch, autocast):
    """The default-size adapter on SD 1.5 features (bfloat16), kernels on and off (DISCADAPT_KERNELS=0); float32
    without TF32 (the kernel follows cuDNN's switch), or under bfloat16 autocast."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    results = []
    for enabled in ("1", "0"):
        monkeypatch.setenv("DISCADAPT_KERNELS", enabled)
        torch.manual_seed(0)
        adapter = DiscriminativeAdapter(layers=["up_blocks.1"], in_channels=[1280], text_dim=768, token_dim=768)
        adapter = adapter.cuda()
        feats = randn(8, 1280, 32, 32, dtype=torch.bfloat16, device="cuda").requires_grad_(True)
        text = randn(8, 768, device="cuda", seed=5)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = adapter([feats], torch.full((8,), 500, device="cuda"))
            logits = adapter.itm_logits(out, text)
        logits.sum().backward()
        results.append((logits.float(), feats.grad.float(), adapter.proj[0].weight.grad))
    tol = dict(rtol=3e-2, atol=3e-2) if autocast else dict(rtol=1e-4, atol=1e-4)
    for kernel, ref in zip(*results):
        torch.testing.assert_close(kernel, ref, **tol)
