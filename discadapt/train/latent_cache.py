"""A VAE latent cache in safetensors shards, so the VAE encodes each training image once.

Layout of `out_dir`:

- `latents-00000.safetensors`, `latents-00001.safetensors`, ...: shard k holds items `k * shard_size` onwards,
  one tensor `(C, h, w)` per item named by its offset in the shard (`"0"`, `"1"`, ...), and metadata
  `{"vae_hash", "start", "count"}`. Shards are written atomically (`discadapt.io.write_atomic`), so a shard file is
  always complete.
- `index.json`, written last: `{"format": "discadapt.latent_cache", "version": 1, "num_items", "shard_size",
  "vae": {"vae_hash", "scaling_factor", "shift_factor"}, "shards": [file names], "items": [[shard, offset], ...]}`.

Latents are `discadapt.encode_images`' output: the posterior mode, shifted and scaled as the UNet expects, in the
UNet's dtype, bit for bit equal to `encode_images` on the same batches (another batch size can change the last
bits, as CPU kernels may sum in another order). `vae_hash` covers the VAE config and its weights (the first 1024
values of each tensor, as float32 bytes), so a cache built with another VAE (or the same weights at another
precision) is refused.

Re-running `build` on the same `out_dir` resumes: shards already there for the same VAE and item range are kept,
missing ones are encoded, and damaged ones (truncated, garbled) are encoded again with a warning naming them. The
images must be the same, in the same order (this is not checked). Opening a cache with a damaged shard raises a
ValueError naming it.

Example:
    >>> cache = LatentCache.build(pipe, dataset, "latents/", batch_size=16, shard_size=1024)
    >>> cache = LatentCache("latents/", pipe=pipe)  # later: refuses a cache built with another VAE
    >>> cache[0].shape
    torch.Size([4, 64, 64])
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..io import write_atomic
from ..scoring import encode_images

__all__ = ["LatentCache", "vae_fingerprint"]

INDEX = "index.json"
FORMAT = "discadapt.latent_cache"


def shard_name(k: int) -> str:
    return f"latents-{k:05d}.safetensors"


def vae_fingerprint(pipe) -> dict:
    """`{"vae_hash", "scaling_factor", "shift_factor"}` of a pipeline's VAE (see the module docstring)."""
    config = {k: v for k, v in dict(pipe.vae.config).items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in pipe.vae.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().flatten()[:1024].to("cpu", torch.float32).numpy().tobytes())
    return {
        "vae_hash": digest.hexdigest(),
        "scaling_factor": pipe.vae.config.scaling_factor,
        "shift_factor": getattr(pipe.vae.config, "shift_factor", None) or 0.0,
    }


def _image(item, index: int) -> PIL.Image.Image:
    image = item.get("image") if isinstance(item, dict) else item
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(
            f"item {index} of `dataset_or_images` is a {type(item).__name__}; pass PIL images or a dataset whose "
            'items are dicts with a PIL "image".'
        )
    return image


def _read_index(out_dir: Path) -> dict | None:
    path = out_dir / INDEX
    if not path.is_file():
        return None
    index = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a discadapt latent cache index; pass another `out_dir`.")
    return index


def _check_vae(found: str, expected: str, where: str) -> None:
    if found != expected:
        raise ValueError(
            f"{where} was built with another VAE (vae_hash {found[:12]}...) than this pipeline's ({expected[:12]}...); "
            "use another `out_dir`, or delete the cache to rebuild it."
        )


def _encode_shard(pipe, images, start: int, count: int, batch_size: int) -> dict[str, torch.Tensor]:
    tensors = {}
    for first in range(start, start + count, batch_size):
        ids = range(first, min(first + batch_size, start + count))
        batch = [_image(images[i], i) for i in ids]
        sizes = sorted({im.size for im in batch})
        if len(sizes) > 1:
            raise ValueError(
                f"items {ids.start}..{ids.stop - 1} of `dataset_or_images` have sizes {sizes}; a batch must share one "
                "size: resize the images, or pass `batch_size=1`."
            )
        with torch.no_grad():
            latents = encode_images(pipe, batch).cpu()  # (B, C, h, w)
        for i, latent in zip(ids, latents):
            tensors[str(i - start)] = latent.clone(memory_format=torch.contiguous_format)
    return tensors


class LatentCache(Dataset):
    """Read access to a latent cache built by `LatentCache.build`: `cache[i]` is item i's latent `(C, h, w)`.

    Args:
        out_dir (`str` or `os.PathLike`): the cache folder.
        pipe (diffusers pipeline or `None`, defaults to `None`): when given, a cache built with another VAE is
            refused with a `ValueError`.

    Example:
        >>> cache = LatentCache("latents/", pipe=pipe)
        >>> len(cache), cache[0].shape
    """

    def __init__(self, out_dir: str | os.PathLike, pipe=None):
        self.out_dir = Path(out_dir)
        index = _read_index(self.out_dir)
        if index is None:
            raise ValueError(
                f"`out_dir` {str(self.out_dir)!r} has no {INDEX}: it is not a latent cache, or its build did not "
                "finish; run `LatentCache.build` (it resumes)."
            )
        if pipe is not None:
            _check_vae(
                index["vae"]["vae_hash"], vae_fingerprint(pipe)["vae_hash"], f"the cache in {str(self.out_dir)!r}"
            )
        missing = [name for name in index["shards"] if not (self.out_dir / name).is_file()]
        if missing:
            raise ValueError(
                f"{len(missing)} shard(s) of the cache in {str(self.out_dir)!r} are missing: {missing[:3]}; "
                "run `LatentCache.build` again to re-encode them."
            )
        for name in index["shards"]:
            try:
                with safe_open(self.out_dir / name, framework="pt"):
                    pass
            except Exception as err:
                raise ValueError(
                    f"shard {str(self.out_dir / name)!r} of the latent cache is damaged ({err}); run "
                    "`LatentCache.build` again with the same images: it encodes that shard again."
                ) from None
        self.index = index
        self.vae = index["vae"]

    def __len__(self) -> int:
        return self.index["num_items"]

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for a latent cache of {len(self)} items.")
        shard, offset = self.index["items"][i]
        with safe_open(self.out_dir / self.index["shards"][shard], framework="pt") as file:
            return file.get_tensor(str(offset))

    @classmethod
    def build(
        cls,
        pipe,
        dataset_or_images: Sequence,
        out_dir: str | os.PathLike,
        batch_size: int = 16,
        shard_size: int = 1024,
        progress: bool = False,
    ) -> LatentCache:
        """Encode every image once with `discadapt.encode_images` and write the cache (resuming one in `out_dir`).

        Args:
            pipe: a diffusers pipeline with a `vae` and an `image_processor`.
            dataset_or_images (`Sequence`): PIL images, or a dataset whose items are dicts with a PIL `"image"`
                (e.g. `CocoCaptions`, `CaptionedFolder`). Images of one batch must share a size.
            out_dir (`str` or `os.PathLike`): the cache folder, created if needed.
            batch_size (`int`, defaults to 16): images per VAE call.
            shard_size (`int`, defaults to 1024): items per shard file.
            progress (`bool`, defaults to `False`): show a progress bar over shards.

        Returns:
            `LatentCache` over `out_dir`.

        Example:
            >>> cache = LatentCache.build(pipe, [image_a, image_b], "latents/", batch_size=2, shard_size=64)
        """
        for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` is {value!r}; pass a positive integer.")
        n = len(dataset_or_images)
        if n == 0:
            raise ValueError("`dataset_or_images` is empty; pass at least one image.")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        vae = vae_fingerprint(pipe)
        old = _read_index(out_dir)
        if old is not None:
            _check_vae(old["vae"]["vae_hash"], vae["vae_hash"], f"the cache in {str(out_dir)!r}")
            if (old["num_items"], old["shard_size"]) != (n, shard_size):
                raise ValueError(
                    f"the cache in {str(out_dir)!r} holds {old['num_items']} items in shards of {old['shard_size']}, "
                    f"but this build has {n} items in shards of {shard_size}; use another `out_dir`."
                )
        shards, items = [], []
        for k in tqdm(range((n + shard_size - 1) // shard_size), disable=not progress, desc="latent shards"):
            start, count = k * shard_size, min(shard_size, n - k * shard_size)
            path = out_dir / shard_name(k)
            meta = {"vae_hash": vae["vae_hash"], "start": str(start), "count": str(count)}
            found = None
            if path.is_file():
                try:
                    with safe_open(path, framework="pt") as file:
                        found = file.metadata() or {}
                except Exception as err:  # truncated or garbled: safetensors checks the header against the size
                    warnings.warn(f"shard {str(path)!r} is damaged ({err}); encoding it again.", stacklevel=2)
                else:
                    _check_vae(found.get("vae_hash", "?"), vae["vae_hash"], f"shard {str(path)!r}")
            if found != meta:
                tensors = _encode_shard(pipe, dataset_or_images, start, count, batch_size)
                write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
            shards.append(path.name)
            items += [[k, offset] for offset in range(count)]
        index = {"format": FORMAT, "version": 1, "num_items": n, "shard_size": shard_size, "vae": vae}
        index.update(shards=shards, items=items)
        write_atomic(out_dir / INDEX, json.dumps(index))
        return cls(out_dir)
