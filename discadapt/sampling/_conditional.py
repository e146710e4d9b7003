"""Editing a pipeline's conditional noise predictions with more prompts: what region prompts and hard-negative
guidance share.

`ConditionalEdit` stands in for `unet.forward` while open (as `recorder.UNetPassRecorder` does, restoring whatever
`forward` it found). The pipeline's own UNet call runs unchanged; a subclass's `_edit` then sees its output, finds the
conditional rows (the second half of the batch under classifier-free guidance, all of it without), may run some of
those rows once more with other prompts' text (`_call_with_text`, one more UNet call), and returns the output with
the conditional rows replaced. The unconditional rows are never touched. The extra prompts are encoded once, when the
context opens, with the pipeline's text encoders (`text.encode_text`); for SDXL their pooled embedding is the added
`text_embeds`, the `time_ids` are the image's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from ..text import TextEmbeddings, encode_text, get_unet
from ._forward import override_forward, restore_forward

__all__ = ["ConditionalEdit", "rows_of", "with_sample"]


def rows_of(value, n: int, index: torch.Tensor):
    """Rows `index` of every tensor in `value` whose first dimension is the UNet batch `n` (timesteps, SDXL's
    added conditioning, ControlNet residuals, ...); other values as they are."""
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
        return value[index.to(value.device)]
    if isinstance(value, dict):
        return {k: rows_of(v, n, index) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(rows_of(v, n, index) for v in value)
    return value


def with_sample(output, sample: torch.Tensor):
    """The UNet output `output` (a tuple, or a diffusers `BaseOutput`) with its prediction replaced by `sample`."""
    if isinstance(output, tuple):
        return (sample, *output[1:])
    return type(output)(**{**dict(output.items()), "sample": sample})


class ConditionalEdit:
    """Base of the contexts that edit the conditional predictions of a pipeline's UNet calls.

    Args:
        pipe: a diffusers SD or SDXL pipeline (see `text.SUPPORTED_PIPELINES`), any scheduler.
        per_prompt (`Sequence`): one entry per prompt of the pipeline call (`name` names it in errors).
        prompts (`Sequence[str]`): the extra prompts to encode when the context opens.
        num_images_per_prompt (`int`): the value passed to the pipeline.
        name (`str`): the argument `per_prompt` came from, for error messages.

    Subclasses implement `_edit(output, sample, args, kwargs, offset)`. Every UNet call while open must be one of
    the pipeline's denoising calls: run callbacks that call the UNet themselves (e.g. `SelfCorrection`) through
    `outside(callback)`, or other code under `paused()`.
    """

    def __init__(self, pipe, per_prompt: Sequence, prompts: Sequence[str], num_images_per_prompt: int, name: str):
        get_unet(pipe)
        k = num_images_per_prompt
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`num_images_per_prompt` is {k!r}; pass the int >= 1 given to the pipeline.")
        self.pipe = pipe
        self.num_images_per_prompt = k
        self.prompts = list(dict.fromkeys(prompts))  # unique extra prompts
        self.text: TextEmbeddings | None = None  # of `prompts`, while open
        self._count, self._name = len(per_prompt), name
        self._inner = None  # the UNet's forward while attached (its own, or another wrapper's)
        self._shadowed = False  # the UNet had a `forward` instance attribute before
        self._paused = 0

    # attaching ------------------------------------------------------------------------------------------------
    def attach(self):
        """Encode the extra prompts and stand in for `unet.forward` (idempotent)."""
        if self._inner is not None:
            return self
        if self.prompts and self.text is None:
            with torch.no_grad():
                self.text = encode_text(self.pipe, self.prompts)
        self._inner, self._shadowed = override_forward(self.pipe.unet, self._forward)  # the UNet's hooks still run
        return self

    def remove(self) -> None:
        """Put back the `forward` found by `attach`."""
        if self._inner is not None:
            restore_forward(self.pipe.unet, self._inner, self._shadowed)
            self._inner = None

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    @contextlib.contextmanager
    def paused(self):
        """UNet calls inside pass through unchanged (e.g. a scorer's own forward between steps)."""
        self._paused += 1
        try:
            yield self
        finally:
            self._paused -= 1

    def outside(self, callback: Callable) -> Callable:
        """`callback` (a `callback_on_step_end`) run with the edit paused, so the UNet calls it makes (e.g.
        `SelfCorrection`'s plain-mode gradient) are not edited. `SelfCorrection(mode="reuse")` reads the sampler's
        own UNet pass, which the edit changes, and is refused."""
        if getattr(callback, "mode", None) == "reuse":
            raise ValueError(
                f"SelfCorrection(mode='reuse') reads the sampler's own UNet pass, which {type(self).__name__} "
                "changes; use mode='plain' with it."
            )

        def run(pipe, step_index, timestep, callback_kwargs):
            with self.paused():
                return callback(pipe, step_index, timestep, callback_kwargs)

        run.tensor_inputs = list(getattr(callback, "tensor_inputs", ["latents"]))
        return run

    # the edit -------------------------------------------------------------------------------------------------
    def _conditional_offset(self, n: int) -> int:
        """Where the conditional rows start in a UNet batch of `n` latents (0 without guidance)."""
        branch = self._count * self.num_images_per_prompt
        try:
            guided = bool(self.pipe.do_classifier_free_guidance)
        except AttributeError:  # not set before the pipeline's first call: read it from the batch
            guided = n == 2 * branch
        if n != (2 if guided else 1) * branch:
            raise ValueError(
                f"The UNet was called with {n} latents, but `{self._name}` has {self._count} lists x "
                f"num_images_per_prompt={self.num_images_per_prompt} = {branch} images"
                f"{' per branch (guidance on)' if guided else ''}; pass one list per prompt and the pipeline's "
                f"num_images_per_prompt, and run callbacks that call the UNet through `{type(self).__name__}.outside`."
            )
        return n - branch

    def _call_with_text(self, sample, args, kwargs, rows: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction for batch rows `rows` (their latent, timestep and added conditions) with the text of
        `self.prompts[prompt]` in place of theirs, in one call: (len(rows), C, h, w)."""
        r_sample, r_args, r_kwargs = rows_of((sample, args, kwargs), sample.shape[0], rows)
        hidden = self.text.encoder_hidden_states[prompt.to(self.text.encoder_hidden_states.device)]
        hidden = hidden.to(sample.device)
        if len(r_args) >= 2:  # encoder_hidden_states given positionally
            r_args = (r_args[0], hidden, *r_args[2:])
        else:
            r_kwargs["encoder_hidden_states"] = hidden
        if self.text.is_sdxl:
            pooled = self.text.pooled[prompt.to(self.text.pooled.device)].to(sample.device)
            r_kwargs["added_cond_kwargs"] = {**r_kwargs["added_cond_kwargs"], "text_embeds": pooled}
        return self._inner(r_sample, *r_args, **{**r_kwargs, "return_dict": False})[0]

    def _forward(self, sample, *args, **kwargs):
        output = self._inner(sample, *args, **kwargs)  # the pipeline's own call, exactly as without the edit
        if self._paused:
            return output
        return self._edit(output, sample, args, kwargs, self._conditional_offset(sample.shape[0]))

    def _edit(self, output, sample, args, kwargs, offset: int):
        raise NotImplementedError
