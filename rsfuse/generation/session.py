"""Step-wise batched generation (docs/DESIGN_NOTES.md §1.11): ``GenerationSession``.

A session holds a ``StaticKVCache`` of ``max_batch`` rows (the pytorch-labs/gpt-fast pattern) and owns each row's
fill level and key mask (the cache is storage only):

* ``add(pixel_values, input_ids, ..., params)`` prefills new prompts (images encoded once, detail injected at
  prefill) straight into free rows of the cache and samples each row's first token;
* ``step()`` decodes one token for every row at once: fixed shapes, per-row temperature, top-p and seed, sampling
  without a host sync (greedy rows take the argmax; sampled rows race counter-based exponential noise of
  ``(seed, step, token)``), EOS and token limits tracked on the device;
* ``poll()`` synchronises once and returns each row's new tokens and whether it finished (EOS, length, a stop
  string, or ``cancel``); a finished row's slot takes the next ``add`` while the others keep decoding.

``compile=True`` compiles the decode step with ``torch.compile`` (``mode="reduce-overhead"``, i.e. CUDA graphs, on a
GPU). The session needs only what `GenerativeModel` names from a model; ``MFRSVLM.generate`` (`rsfuse.generation.generate`)
and the server (``rsfuse serve``) drive it, so there is one decoding loop.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
from einops import rearrange

from rsfuse._typing import Bool, Float, Int, Tensor
from rsfuse.llm.cache import KVCache, StaticKVCache
from rsfuse.llm.config import LlamaConfig
from rsfuse.generation.sampling import SamplingParams, draw_seed, sample_tokens

__all__ = ["GenerationSession", "GenerativeModel", "PromptEmbeddings", "RowUpdate", "SamplingParams"]


@dataclass
class PromptEmbeddings:
    """A batch of prompts ready for the decoder: ``inputs_embeds [B, L, D]``, the bool ``attention_mask [B, L]``,
    rotary ``position_ids [B, L]`` and the prefill's injection (None without one)."""

    inputs_embeds: Float[Tensor, "batch sequence dim"]
    attention_mask: Bool[Tensor, "batch sequence"]
    position_ids: Int[Tensor, "batch sequence"]
    injection: Any = None


class GenerativeModel(Protocol):
    """What ``GenerationSession`` and ``generate`` need from a model (``MFRSVLM`` is one)."""

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def decoder_config(self) -> LlamaConfig:
        """Cache shape (layers, KV heads, head size), context length, and the EOS and pad rules."""

    def embed_prompts(
        self, pixel_values: Tensor | None, input_ids: Tensor, attention_mask: Tensor | None = None, **inputs: Any
    ) -> PromptEmbeddings:
        """Checked, laid-out (left-padded) and embedded prompts; ``inputs``: the processor's other outputs."""

    def next_token_logits(
        self,
        *,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None,
        position_ids: Tensor,
        cache: KVCache | None = None,
        cache_position: Tensor | None = None,
        cache_rows: Tensor | None = None,
        injection: Any = None,
    ) -> Float[Tensor, "batch vocab"]:
        """The decoder's logits of the last position of each row (writing the cache where told)."""


@dataclass
class RowUpdate:
    """What ``poll`` reports for one row: tokens produced since the last poll, and the finish reason once done
    (``"eos"``, ``"length"``, ``"stop"``, ``"cancelled"``; None while running)."""

    row: int
    new_tokens: list[int]
    finish_reason: str | None


@dataclass
class _Row:
    params: SamplingParams
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class GenerationSession:
    """Step-wise batched generation for one model over ``max_batch`` rows of ``max_length`` positions."""

    def __init__(
        self,
        model: GenerativeModel,
        *,
        max_batch: int,
        max_length: int,
        compile: bool = False,
        generator: torch.Generator | None = None,
        decode: Callable[[list[int]], str] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        config = model.decoder_config
        context = config.max_position_embeddings
        if max_length > context:
            raise ValueError(
                f"generate: {max_length} positions (prompt + max_new_tokens) exceed the model's context "
                f"max_position_embeddings = {context}"
            )
        self.model = model
        self.max_batch, self.max_length = max_batch, max_length
        self.generator = generator
        self.decode = decode
        self.pad_token_id = config.pad_id if pad_token_id is None else int(pad_token_id)
        self.default_eos = config.eos_token_ids
        device, dtype = model.device, model.dtype
        self.cache = StaticKVCache.for_model(
            config, batch_size=max_batch, max_length=max_length, dtype=dtype, device=device
        )
        # The cache is storage only; the session owns each row's fill level and which of its slots hold real tokens.
        self.lengths = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.key_mask = torch.zeros(max_batch, max_length, dtype=torch.bool, device=device)
        self.rows: list[_Row | None] = [None] * max_batch
        # Per-row device state: the token to feed next, its rotary position, sampling settings, EOS ids, limits.
        self.last_token = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.position = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.temperature = torch.zeros(max_batch, dtype=torch.float32, device=device)
        self.top_p = torch.ones(max_batch, dtype=torch.float32, device=device)
        self.seed = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.limit = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.eos = torch.full((max_batch, 1), -1, dtype=torch.long, device=device)
        self.done = torch.ones(max_batch, dtype=torch.bool, device=device)
        self.count = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.generated = torch.zeros(max_batch, max_length, dtype=torch.long, device=device)
        self._seen = [0] * max_batch
        self._everything = torch.arange(max_batch, device=device)
        self._row_starts = rearrange(self._everything * max_length, "b -> b 1")
        self._step = self._decode_logits
        if compile:
            if device.type == "cuda":
                self.cache.mark_static_addresses()
                for tensor in (self.lengths, self.key_mask, self.last_token, self.position):
                    torch._dynamo.mark_static_address(tensor)
            mode = "reduce-overhead" if device.type == "cuda" else None
            self._step = torch.compile(self._decode_logits, mode=mode, dynamic=False)

    def reset(self, *, generator: torch.Generator | None = None) -> None:
        """Free every row and empty the cache, keeping its buffers (and a compiled step's graphs) for reuse."""
        self.lengths.zero_()
        self.key_mask.zero_()
        self.rows = [None] * self.max_batch
        self.done.fill_(True)
        self.count.zero_()
        self._seen = [0] * self.max_batch
        self.generator = generator

    # ----- rows ----------------------------------------------------------------------------------------------------
    @property
    def free_rows(self) -> list[int]:
        return [index for index, row in enumerate(self.rows) if row is None]

    @property
    def active_rows(self) -> list[int]:
        return [index for index, row in enumerate(self.rows) if row is not None and row.finish_reason is None]

    def tokens(self, row: int) -> list[int]:
        """Every token row ``row`` produced so far (up to the last ``poll``)."""
        state = self.rows[row]
        if state is None:
            raise ValueError(f"GenerationSession: row {row} holds no request")
        return list(state.tokens)

    def release(self, row: int) -> None:
        """Free a finished (or cancelled) row's slot for the next ``add``."""
        self.cancel(row)
        self.rows[row] = None

    def cancel(self, row: int) -> None:
        """Stop row ``row`` now; its tokens so far stay readable until ``release``."""
        state = self.rows[row]
        if state is not None and state.finish_reason is None:
            state.finish_reason = "cancelled"
        self.done[row] = True
        self._forget(row)

    def _forget(self, row: int) -> None:
        """Empty row ``row`` of the cache (its slots stop counting as real)."""
        self.key_mask[row] = False
        self.lengths[row] = 0

    def _eos_ids(self, params: SamplingParams) -> list[int]:
        ids = self.default_eos if params.eos_token_ids is None else params.eos_token_ids
        return [int(token) for token in ids]

    # ----- prefill -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def add(
        self,
        pixel_values: Tensor | None,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        params: SamplingParams | Sequence[SamplingParams],
        image_mask: Tensor | None = None,
        **inputs: Any,
    ) -> list[int]:
        """Prefill a batch of prompts into free rows (returned, in order) and sample their first tokens.
        ``inputs``: the processor's other outputs (e.g. ``visual_positions``), passed to the model."""
        prompts = self.model.embed_prompts(pixel_values, input_ids, attention_mask, image_mask=image_mask, **inputs)
        return self.add_prompts(prompts, params=params)

    @torch.no_grad()
    def add_prompts(
        self, prompts: PromptEmbeddings, *, params: SamplingParams | Sequence[SamplingParams]
    ) -> list[int]:
        """``add`` for prompts the model has embedded already (``model.embed_prompts``)."""
        batch = prompts.inputs_embeds.shape[0]
        params = [params] * batch if isinstance(params, SamplingParams) else list(params)
        if len(params) != batch:
            raise ValueError(f"GenerationSession.add: {len(params)} SamplingParams for {batch} prompts")
        free = self.free_rows
        if len(free) < batch:
            raise ValueError(f"GenerationSession.add: {batch} prompts but only {len(free)} free rows")
        model = self.model
        embeds = prompts.inputs_embeds
        length = embeds.shape[1]
        for item in params:
            if length + item.max_new_tokens > self.max_length:
                context = model.decoder_config.max_position_embeddings
                limit = (f"the model's context max_position_embeddings = {context}" if self.max_length == context
                         else f"this session's max_length {self.max_length} (the context is {context})")
                raise ValueError(
                    f"generate: prompt of {length} positions + max_new_tokens {item.max_new_tokens} exceeds {limit}"
                )
        rows = free[:batch]
        index = torch.tensor(rows, dtype=torch.long, device=embeds.device)
        mask = prompts.attention_mask
        slots = torch.arange(length, device=embeds.device).unsqueeze(0)
        # The prompts are written straight into their rows, from slot 0; the rows' other slots stop counting.
        self.key_mask[index] = False
        self.key_mask[index, :length] = mask
        self.lengths[index] = length
        logits = model.next_token_logits(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=prompts.position_ids,
            cache=self.cache,
            cache_position=slots,
            cache_rows=None if rows == list(range(self.max_batch)) else index,
            injection=prompts.injection,
        )
        if not bool(torch.isfinite(logits).all()):
            raise ValueError(
                "generate: the prefill produced non-finite logits (NaN/inf in the weights or in pixel_values?)"
            )
        eos_lists = [self._eos_ids(item) for item in params]
        width = max([self.eos.shape[1], *(len(ids) for ids in eos_lists)])
        if width > self.eos.shape[1]:
            pad = torch.full((self.max_batch, width - self.eos.shape[1]), -1, dtype=torch.long, device=self.eos.device)
            self.eos = torch.cat([self.eos, pad], dim=1)
        eos_rows = torch.full((batch, width), -1, dtype=torch.long)
        for position, ids in enumerate(eos_lists):
            eos_rows[position, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.eos[index] = eos_rows.to(self.eos.device)
        self.temperature[index] = torch.tensor([float(p.temperature) for p in params], device=index.device)
        self.top_p[index] = torch.tensor([float(p.top_p) for p in params], device=index.device)
        seeds = [draw_seed(self.generator) if p.seed is None else p.seed for p in params]
        self.seed[index] = torch.tensor(seeds, dtype=torch.long, device=index.device)
        self.limit[index] = torch.tensor([p.max_new_tokens for p in params], device=index.device)
        self.position[index] = prompts.position_ids[:, -1] + 1
        self.count[index] = 0
        self.done[index] = False
        for row, item in zip(rows, params):
            self.rows[row] = _Row(params=item)
            self._seen[row] = 0
        self._record(self._sample(logits, index), index)
        return rows

    # ----- decoding ------------------------------------------------------------------------------------------------
    def _decode_logits(self, token: Tensor, position: Tensor) -> Tensor:
        slots = self.lengths.unsqueeze(1)  # [B, 1] (hot path: native views)
        self.key_mask.scatter_(1, slots, True)
        logits = self.model.next_token_logits(
            input_ids=token.unsqueeze(1),
            position_ids=position.unsqueeze(1),
            cache=self.cache,
            cache_position=slots,
            attention_mask=self.key_mask,
        )
        self.lengths += (~self.done).long()
        return logits

    def _sample(self, logits: Tensor, index: Tensor) -> Tensor:
        rows = [self.rows[int(i)] for i in index.tolist()] if index.numel() != self.max_batch else self.rows
        if all(row is None or row.params.temperature == 0 for row in rows):
            return logits.argmax(dim=-1)
        return sample_tokens(logits, self.temperature[index], self.top_p[index], seeds=self.seed[index],
                             steps=self.count[index])

    def _record(self, token: Tensor, index: Tensor | None) -> None:
        """Store each still-running row's new token; mark rows that hit EOS or their token limit (on the device).
        ``index`` None: every row (the decoding step's fast path, no gathers)."""
        if index is None:
            running = ~self.done
            token = torch.where(running, token, self.pad_token_id)
            # A finished row writes padding one past its last token, where nothing is read.
            slot = self.count.clamp_max(self.max_length - 1).unsqueeze(1)
            self.generated.view(-1)[(self._row_starts + slot).view(-1)] = token
            self.count += running.long()
            is_eos = (token.unsqueeze(1) == self.eos).any(dim=-1)
            self.done |= (running & is_eos) | (self.count >= self.limit)
            self.last_token.copy_(token)
            return
        running = ~self.done[index]
        token = torch.where(running, token, self.pad_token_id)
        count = self.count[index]
        slot = count.clamp_max(self.max_length - 1)
        self.generated[index, slot] = torch.where(running, token, self.generated[index, slot])
        count = count + running.long()
        self.count[index] = count
        is_eos = (rearrange(token, "b -> b 1") == self.eos[index]).any(dim=-1)
        self.done[index] = self.done[index] | (running & is_eos) | (count >= self.limit[index])
        self.last_token[index] = token

    @torch.no_grad()
    def step(self) -> None:
        """Decode one token for every running row (no host synchronisation)."""
        logits = self._step(self.last_token, self.position)
        self.position += (~self.done).long()
        self._record(self._sample(logits, self._everything), None)

    def poll(self) -> list[RowUpdate]:
        """Synchronise once: each running row's new tokens since the last poll and its finish reason."""
        counts = self.count.tolist()
        done = self.done.tolist()
        longest = max([counts[row] for row in self.active_rows], default=0)
        generated = self.generated[:, :longest].tolist() if longest else [[] for _ in range(self.max_batch)]
        updates = []
        for row in self.active_rows:
            state = self.rows[row]
            new = generated[row][self._seen[row] : counts[row]]
            self._seen[row] = counts[row]
            state.tokens.extend(new)
            eos = set(self._eos_ids(state.params))
            if state.tokens and state.tokens[-1] in eos:
                state.finish_reason = "eos"
            elif len(state.tokens) >= state.params.max_new_tokens:
                state.finish_reason = "length"
            elif state.params.stop_strings and self.decode is not None:
                text = self.decode(state.tokens)
                if any(stop in text for stop in state.params.stop_strings):
                    state.finish_reason = "stop"
            elif done[row]:
                state.finish_reason = "length"
            if state.finish_reason is not None:
                self.done[row] = True
                self._forget(row)
            updates.append(RowUpdate(row=row, new_tokens=new, finish_reason=state.finish_reason))
        return updates

    @property
    def all_done(self) -> bool:
        return not self.active_rows
