"""BLIP-VQA, T2I-CompBench style: split the prompt into noun phrases, ask "{phrase}?" of each image and multiply the
probabilities of "yes".

- `noun_phrases(prompt)`: a small rule-based splitter standing in for spaCy's noun chunks (pure, no model).
- `BLIPVQAScorer`: a transformers `BlipForQuestionAnswering` with its `BlipProcessor`, loaded from a local folder;
  `answer(images, questions)` gives P("yes") per question, `score(images, prompts)` the product over the phrases.

P("yes") ranks the two answers as LAVIS' BLIP-VQA does with `inference_method="rank"`: each answer is decoded as
`[bos] answer [SEP]` given the question states, its sequence log-likelihood is summed over tokens, and a softmax over
the two log-likelihoods gives P("yes") = 1 / (1 + exp(log p(no) - log p(yes))).

Known differences from T2I-CompBench's LAVIS run, which shift the numbers a little: the transformers checkpoint reads
384 px images (LAVIS' VQAv2 model 480 px); questions start with [CLS] as `BlipProcessor` tokenizes them (LAVIS
swaps in [ENC]); and the log-likelihoods here are exact, where LAVIS' decoder loss carries 0.1 label smoothing.

Example:
    >>> noun_phrases("a red book on the left of a yellow cup")
    ['a red book', 'a yellow cup']
    >>> scorer = BLIPVQAScorer.from_pretrained("/models/blip-vqa-base")  # doctest: +SKIP
    >>> scorer.score(images, ["a green bench and a blue bowl"] * len(images))  # (N,) in [0, 1]  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from .inputs import check_pairs, require_folder, to_pil

__all__ = ["BLIPVQAScorer", "noun_phrases"]

BLIP_VQA_SOURCE = (
    "download one with `huggingface-cli download Salesforce/blip-vqa-base --local-dir {path}` (or another "
    "transformers BlipForQuestionAnswering repository)"
)
ANSWERS = ("yes", "no")
MAX_QUESTION_TOKENS = 35  # LAVIS BLIP-VQA `max_txt_len`
_MODEL_PARTS = ("vision_model", "text_encoder", "text_decoder", "decoder_start_token_id")  # BlipForQuestionAnswering

# ---- the splitter ----------------------------------------------------------------------------------------------------
_LEAD = re.compile(r"^\s*(?:a|an)\s+(?:photo|picture|image)\s+of\s+", re.IGNORECASE)
_RELATIONS = (
    "on the left side of",
    "on the right side of",
    "on the left of",
    "on the right of",
    "to the left of",
    "to the right of",
    "on the top of",
    "on the bottom of",
    "on the side of",
    "on top of",
    "on side of",
    "in front of",
    "next to",
    "close to",
    "beside",
    "near",
    "underneath",
    "under",
    "above",
    "below",
    "behind",
    "over",
    "inside",
    "on",
    "in",
)
_WORDS = sorted(("and", "with", *_RELATIONS), key=len, reverse=True)  # longest first: "on the left of" before "on"
_SEPARATOR = re.compile(
    r"\s*(,|;|\b(?:" + "|".join(w.replace(" ", r"\s+") for w in _WORDS) + r")\b)\s*", flags=re.IGNORECASE
)
_DETERMINERS = frozenset(
    "a an the one two three four five six seven eight nine ten some many several few this that these those "
    "his her its their my our your each every".split()
)


def _is_modifier(phrase: str) -> bool:
    """One bare word ("black") or a determiner and one word ("a long"): the start of a list of adjectives."""
    words = phrase.split()
    return len(words) == 1 or (len(words) == 2 and words[0].lower() in _DETERMINERS)


def noun_phrases(prompt: str) -> list[str]:
    """The noun phrases of a T2I prompt, by rules (a stand-in for T2I-CompBench's spaCy noun chunks).

    Rules, in order:
    1. a leading "a photo of" / "a picture of" / "an image of" is dropped;
    2. the prompt is cut at commas, semicolons, "and", "with" and relation phrases ("on the left of", "on the top
       of", "on side of", "on top of", "next to", "near", "under", "above", "below", "behind", "beside",
       "in front of", "on", "in", ...), longest first; the cut words are dropped;
    3. a list of adjectives is put back together: a piece that is one bare word or a determiner and one word, cut at
       "and" or a comma from a piece that does not start with a determiner, is joined to it ("black and white floor
       tiles", "a tan, clean bathroom"; but "a cat, a dog" stays two);
    4. pieces are stripped of end punctuation and empty ones dropped; if none is left, the whole prompt is returned.

    Limits: there is no part-of-speech tagging, so verbs and clauses stay inside phrases ("two hot dogs sit"), a noun
    list without determiners stays one phrase ("a cat and dog"), and any "on"/"in"/"with" cuts, even inside an
    idiom ("in the rain" -> "the rain"). It is written for T2I-CompBench's attribute-binding and spatial prompts.

    Args:
        prompt (str): a text-to-image prompt, e.g. "a green bench and a blue bowl".

    Returns:
        list[str]: the phrases in prompt order, original case kept, e.g. ["a green bench", "a blue bowl"].

    Raises:
        ValueError: `prompt` is not a string or has no words.

    Example:
        >>> noun_phrases("a photo of a giraffe next to a lamp")
        ['a giraffe', 'a lamp']
        >>> noun_phrases("rubber sole shoes and fluffy clouds")
        ['rubber sole shoes', 'fluffy clouds']
    """
    if not isinstance(prompt, str) or not prompt.strip(" \t\n.,;:!?"):
        raise ValueError(f"`prompt` is {prompt!r}; pass a prompt with at least one word.")
    text = " ".join(_LEAD.sub("", prompt).split())
    parts = _SEPARATOR.split(text)  # [piece, separator, piece, separator, ..., piece]
    phrases = [parts[0].strip(" .,;:!?")]
    for separator, piece in zip(parts[1::2], parts[2::2]):
        piece = piece.strip(" .,;:!?")
        joins = separator.lower() in {"and", ","} and phrases[-1] and piece
        if joins and _is_modifier(phrases[-1]) and piece.split()[0].lower() not in _DETERMINERS:
            phrases[-1] = f"{phrases[-1]}{', ' if separator == ',' else ' and '}{piece}"
        else:
            phrases.append(piece)
    return [p for p in phrases if p] or [prompt.strip()]


# ---- the scorer ------------------------------------------------------------------------------------------------------
class BLIPVQAScorer:
    """T2I-CompBench BLIP-VQA: the product over the prompt's noun phrases of P("yes" | image, "{phrase}?").

    Args:
        model (BlipForQuestionAnswering): the VQA model (its device and dtype are used).
        processor (BlipProcessor): its image processor and tokenizer.
        batch_size (int): images per pass: one vision pass, then all their questions in one text pass per question
            length in tokens (so that none is padded). Default 16.
        model_name (str | None): what `model` reports, e.g. "BlipForQuestionAnswering at /models/blip-vqa-base".
            Default the model's class name.

    Attributes:
        net (BlipForQuestionAnswering): the model; `model` is its description, for reports.

    Raises:
        ValueError: `model` is not a BLIP VQA model, `processor` has no tokenizer, or `batch_size` is not an int >= 1.

    Example:
        >>> scorer = BLIPVQAScorer.from_pretrained("/models/blip-vqa-base")  # doctest: +SKIP
        >>> scorer.answer(images, ["a green bench?"] * len(images))  # (N,) P(yes)  # doctest: +SKIP
    """

    name = "BLIP-VQA"

    def __init__(self, model, processor, batch_size: int = 16, model_name: str | None = None):
        if not all(hasattr(model, part) for part in _MODEL_PARTS):
            raise ValueError(f"`model` is a {type(model).__name__}; pass a transformers BlipForQuestionAnswering.")
        if not callable(processor) or getattr(processor, "tokenizer", None) is None:
            raise ValueError(f"`processor` is a {type(processor).__name__}; pass the model's BlipProcessor.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1.")
        self.net, self.processor, self.batch_size = model.eval(), processor, batch_size
        self.model = model_name or type(model).__name__

    @classmethod
    def from_pretrained(cls, path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **kwargs):
        """A `BLIPVQAScorer` from a local transformers BLIP-VQA folder (offline).

        Args:
            path (str | PathLike): e.g. a download of Salesforce/blip-vqa-base.
            device (str | torch.device): where the model runs. Default "cpu".
            dtype (torch.dtype): its precision. Default torch.float32.
            **kwargs: `batch_size`.

        Returns:
            BLIPVQAScorer: with `model` "BlipForQuestionAnswering at {path}".

        Raises:
            FileNotFoundError: no model at `path` (names it and how to download one), before anything loads.
        """
        from transformers import BlipForQuestionAnswering, BlipProcessor

        folder = require_folder(path, BLIP_VQA_SOURCE)
        model = BlipForQuestionAnswering.from_pretrained(folder, local_files_only=True, dtype=dtype).to(device)
        processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
        return cls(model, processor, model_name=f"BlipForQuestionAnswering at {folder}", **kwargs)

    def answer(self, images, questions: Sequence[str]) -> torch.Tensor:
        """P("yes") for each (image, question) pair, the two answers ranked by sequence likelihood.

        Args:
            images: N PIL images, a `(N, H, W, 3)` uint8 array or a `(N, 3, H, W)` float tensor in [0, 1].
            questions (Sequence[str]): N questions, one per image, e.g. "a green bench?".

        Returns:
            torch.Tensor: `(N,)` float32 on the CPU, in [0, 1].

        Raises:
            ValueError: images and questions do not pair up, or the images are not pixels.
        """
        questions = check_pairs(images, questions)
        pil, out = to_pil(images), []
        for start in range(0, len(pil), self.batch_size):
            chunk = pil[start : start + self.batch_size]
            out.append(self._p_yes(chunk, torch.arange(len(chunk)), questions[start : start + len(chunk)]))
        return torch.cat(out)

    def score(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """The product over `noun_phrases(prompt)` of P("yes" | image, "{phrase}?"), for each (image, prompt) pair.

        Args:
            images: N PIL images, a `(N, H, W, 3)` uint8 array or a `(N, 3, H, W)` float tensor in [0, 1].
            prompts (Sequence[str]): N prompts, one per image.

        Returns:
            torch.Tensor: `(N,)` float32 on the CPU, in [0, 1].

        Raises:
            ValueError: images and prompts do not pair up, or a prompt has no words.
        """
        prompts = check_pairs(images, prompts)
        phrases = [noun_phrases(p) for p in prompts]
        pil, out = to_pil(images), []
        for start in range(0, len(pil), self.batch_size):
            chunk = phrases[start : start + self.batch_size]
            owner = torch.tensor([i for i, ps in enumerate(chunk) for _ in ps])  # (Q,) image of each question
            p_yes = self._p_yes(pil[start : start + len(chunk)], owner, [f"{p}?" for ps in chunk for p in ps])
            out.append(torch.stack([p_yes[owner == i].prod() for i in range(len(chunk))]))
        return torch.cat(out)

    @torch.no_grad()
    def _p_yes(self, images: list, owner: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """`(Q,)` P("yes") of question q about image `owner[q]`: one vision pass, then one text pass per question
        length, so that no question is padded (transformers 5's BLIP text cross-attention ignores
        `encoder_attention_mask`: the decoder would read the padding of shorter questions)."""
        param = next(self.net.parameters())
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        image_states = self.net.vision_model(pixel_values=pixels.to(param.device, param.dtype)).last_hidden_state
        q = self.processor.tokenizer(
            questions, padding="longest", truncation=True, max_length=MAX_QUESTION_TOKENS, return_tensors="pt"
        )
        lengths, p_yes = q.attention_mask.sum(-1), torch.empty(len(questions))
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero()[:, 0]
            question_ids = q.input_ids[rows, :length].to(param.device)  # (q, length), no padding
            p_yes[rows] = self._rank(image_states[owner[rows].to(param.device)], question_ids)  # (B, P, D) -> (q, P, D)
        return p_yes

    def _rank(self, image_states: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        """`(q,)` P("yes"): softmax over the sequence log-likelihoods of "yes" and "no", as LAVIS ranks answers."""
        question_states = self.net.text_encoder(
            input_ids=question_ids, encoder_hidden_states=image_states
        ).last_hidden_state  # (q, L, D)
        # [CLS] answer [SEP] with [CLS] -> the decoder's start token, as LAVIS ranks answers; rows yes, no, yes, no, ...
        a = self.processor.tokenizer(list(ANSWERS), padding="longest", return_tensors="pt").to(question_ids.device)
        answer_ids = a.input_ids.clone()  # (2, T)
        answer_ids[:, 0] = self.net.decoder_start_token_id
        n = len(question_ids)
        answer_ids, answer_mask = answer_ids.repeat(n, 1), a.attention_mask.repeat(n, 1)  # (2q, T)
        logits = self.net.text_decoder(
            input_ids=answer_ids,
            attention_mask=answer_mask,
            encoder_hidden_states=question_states.repeat_interleave(2, dim=0),
        ).logits  # (2q, T, V)
        log_probs = logits[:, :-1].float().log_softmax(-1)  # token t + 1 given tokens <= t
        token_ll = log_probs.gather(-1, answer_ids[:, 1:, None])[..., 0] * answer_mask[:, 1:]  # (2q, T - 1)
        sequence_ll = token_ll.sum(-1).view(n, 2)  # (q, 2): log p(yes), log p(no)
        return sequence_ll.softmax(-1)[:, 0].cpu()
