"""GOT-OCR2 (Wei et al., 2024, "General OCR Theory: Towards OCR-2.0 via a Unified End-to-end Model").

A SAM ViTDet encoder reads a (1024 x 1024) image, two stride-2 convolutions and a linear layer turn its 64 x 64
feature map into 256 tokens, which replace the ``<imgpad>`` tokens of a chat prompt; a Qwen2 decoder then writes
the text greedily. The model works on ids only: the prompt (with its ``<imgpad>`` slots) is built from strings by
:mod:`strhub.models.gotocr2.prompts` and handed over with :meth:`GotOcr2.set_prompt`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from strhub.models.gotocr2.language import QwenDecoder
from strhub.models.gotocr2.vision import Projector, VisionEncoder


@dataclass
class Generation:
    """Greedy decoding result.

    Attributes:
        ids: (N, T) generated ids (after a row's stop id, whatever the model went on to emit).
        probs: (N, T) the probability of each generated id.
        logits: (N, T, vocab) the logits of each step, when asked for.
    """

    ids: Tensor
    probs: Tensor
    logits: Tensor | None = None


class GotOcr2(nn.Module):
    """The GOT-OCR2 network.

    Args:
        vocab_size: rows of the (tied) token embedding.
        max_label_length: default number of answer tokens :meth:`forward` generates (plus one for the stop token).
        img_size: (height, width) of each input image (crop).
        patch_size, vision_width, vision_depth, vision_heads, vision_mlp_dim, vision_out_channels, window,
            global_layers: the ViTDet encoder (see :class:`VisionEncoder`).
        text_width, text_depth, text_heads, text_kv_heads, text_mlp_dim, rope_theta, text_head_dim: the Qwen2
            decoder (see :class:`QwenDecoder`).
        rms_eps, vision_eps: norm epsilons.
        image_token_id, stop_ids: ``<imgpad>`` and the ids that end an answer; set by the system from its
            tokenizer.
    """

    def __init__(
        self,
        vocab_size: int,
        max_label_length: int = 25,
        img_size: Sequence[int] = (1024, 1024),
        patch_size: int = 16,
        vision_width: int = 768,
        vision_depth: int = 12,
        vision_heads: int = 12,
        vision_mlp_dim: int = 3072,
        vision_out_channels: int = 256,
        window: int = 14,
        global_layers: Sequence[int] = (2, 5, 8, 11),
        text_width: int = 1024,
        text_depth: int = 24,
        text_heads: int = 16,
        text_kv_heads: int = 16,
        text_mlp_dim: int = 2816,
        rope_theta: float = 1e6,
        text_head_dim: int | None = None,
        rms_eps: float = 1e-6,
        vision_eps: float = 1e-6,
        image_token_id: int = 151859,
        stop_ids: Sequence[int] = (151643, 151645),
    ) -> None:
        super().__init__()
        self.max_label_length = max_label_length
        self.img_size = tuple(img_size)
        self.vision_tower = VisionEncoder(
            img_size,
            patch_size,
            vision_width,
            vision_depth,
            vision_heads,
            vision_mlp_dim,
            vision_out_channels,
            window,
            global_layers,
            vision_eps,
        )
        self.multi_modal_projector = Projector(vision_out_channels, text_width)
        self.language_model = QwenDecoder(
            vocab_size,
            text_width,
            text_depth,
            text_heads,
            text_kv_heads,
            text_mlp_dim,
            rope_theta,
            rms_eps,
            text_head_dim,
        )
        grid = self.vision_tower.grid
        self.num_image_tokens = math.ceil(math.ceil(grid[0] / 2) / 2) * math.ceil(math.ceil(grid[1] / 2) / 2)
        self.image_token_id = image_token_id
        self.stop_ids = tuple(stop_ids)
        self.register_buffer('prompt_ids', torch.empty(0, dtype=torch.long), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # Qwen2's initialisation (normal, std 0.02) for every linear layer and the embedding; positional tables
        # start at zero as in SAM; convolutions and norms keep PyTorch's defaults.
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, 'bias', None) is not None:
                    nn.init.zeros_(module.bias)

    def set_prompt(self, prompt_ids: Sequence[int] | Tensor) -> None:
        """The prompt :meth:`forward` reads every image with (one image, so ``num_image_tokens`` ``<imgpad>``)."""
        ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=self.prompt_ids.device)
        self._check_prompt(ids[None], 1)
        self.prompt_ids = ids

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.vision_tower.gradient_checkpointing = enabled
        self.language_model.gradient_checkpointing = enabled

    def no_weight_decay(self) -> set[str]:
        return {'pos_embed', 'rel_pos_h', 'rel_pos_w'}

    # -- building blocks ----------------------------------------------------------------------------------------

    def image_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_image_tokens, text_width) image tokens."""
        return self.multi_modal_projector(self.vision_tower(images))

    def _check_prompt(self, prompt_ids: Tensor, crops: int) -> None:
        slots = (prompt_ids == self.image_token_id).sum(1)
        expected = crops * self.num_image_tokens
        if prompt_ids.numel() == 0 or (slots != expected).any():
            raise ValueError(
                f'the prompt has {slots.tolist()} <imgpad> slot(s) per row but {crops} image(s) of '
                f'{self.num_image_tokens} tokens need {expected}; build it with '
                'strhub.models.gotocr2.prompts.build_prompt(num_image_tokens=..., crops=...)'
            )

    def embed_prompt(self, images: Tensor, prompt_ids: Tensor) -> Tensor:
        """Prompt embeddings with the image tokens at the ``<imgpad>`` positions.

        Args:
            images: (N, 3, H, W), or (N, K, 3, H, W) for K crops of one image each read with one prompt.
            prompt_ids: (N, P) or (P,) for every row.

        Returns:
            (N, P, text_width).
        """
        if images.dim() == 4:
            images = images[:, None]
        n, crops = images.shape[:2]
        if prompt_ids.dim() == 1:
            prompt_ids = prompt_ids.expand(n, -1)
        if prompt_ids.shape[0] != n:
            raise ValueError(f'{prompt_ids.shape[0]} prompts for {n} images: give one prompt, or one per image')
        self._check_prompt(prompt_ids, crops)
        embeds = self.language_model.embed_tokens(prompt_ids)
        features = self.image_features(images.flatten(0, 1)).to(embeds.dtype)
        slots = (prompt_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        # Row-major over images, then crops, then tokens: the order of the <imgpad> slots in each row.
        return embeds.masked_scatter(slots, features.reshape(n, -1, embeds.shape[-1]))

    def teacher_forced_logits(self, images: Tensor, input_ids: Tensor, prompt_length: int | None = None) -> Tensor:
        """Logits of a whole sequence (prompt with ``<imgpad>`` slots, then answer tokens) in one pass.

        Args:
            images: (N, 3, H, W) or (N, K, 3, H, W).
            input_ids: (N, S) prompt then answer ids.
            prompt_length: only the logits from position ``prompt_length - 1`` on are projected (the ones that
                predict the answer); all S positions when None.

        Returns:
            (N, S, vocab) or (N, S - prompt_length + 1, vocab).
        """
        if prompt_length is None:
            embeds = self.embed_prompt(images, input_ids)
        else:
            prompt = self.embed_prompt(images, input_ids[:, :prompt_length])
            answer = self.language_model.embed_tokens(input_ids[:, prompt_length:])
            embeds = torch.cat([prompt, answer], dim=1)
        hidden = self.language_model(embeds)
        if prompt_length is not None:
            hidden = hidden[:, prompt_length - 1 :]
        return self.language_model.logits(hidden)

    # -- generation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        images: Tensor,
        prompt_ids: Tensor | None = None,
        max_new_tokens: int | None = None,
        return_logits: bool = False,
        stop_ids: Sequence[int] | None = None,
    ) -> Generation:
        """Greedy decoding with a key/value cache, stopping when every row has emitted a stop id.

        Args:
            images: (N, 3, H, W) or (N, K, 3, H, W) crops.
            prompt_ids: (P,) or (N, P); the prompt set with :meth:`set_prompt` when None.
            max_new_tokens: at most this many ids per row (``max_label_length + 1`` when None).
            return_logits: also return every step's logits.
            stop_ids: ids that end an answer (the model's ``stop_ids`` when None; empty: never stop early).
        """
        prompt_ids = self.prompt_ids if prompt_ids is None else prompt_ids.to(images.device)
        steps = self.max_label_length + 1 if max_new_tokens is None else max_new_tokens
        stop_list = self.stop_ids if stop_ids is None else list(stop_ids)
        stops = torch.as_tensor(stop_list, dtype=torch.long, device=images.device)
        embeds = self.embed_prompt(images, prompt_ids)
        n, prompt_length = embeds.shape[:2]
        lm = self.language_model
        cache = lm.new_cache(n, prompt_length + steps, embeds)
        hidden = lm(embeds, cache)[:, -1]
        ids, probs, logits_out = [], [], []
        finished = torch.zeros(n, dtype=torch.bool, device=images.device)
        for step in range(steps):
            logits = lm.logits(hidden).float()
            prob, token = logits.softmax(-1).max(-1)
            ids.append(token)
            probs.append(prob)
            if return_logits:
                logits_out.append(logits)
            finished |= torch.isin(token, stops)
            if step == steps - 1 or bool(finished.all()):
                break
            hidden = lm(lm.embed_tokens(token)[:, None], cache)[:, -1]
        return Generation(
            torch.stack(ids, 1), torch.stack(probs, 1), torch.stack(logits_out, 1) if return_logits else None
        )

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, 3, H, W) images -> (N, T, vocab) logits of the greedily generated answer with the prompt set by
        :meth:`set_prompt`; ``T <= min(max_length, max_label_length) + 1`` (generation stops once every row has
        emitted a stop id)."""
        length = self.max_label_length if max_length is None else min(max_length, self.max_label_length)
        return self.generate(images, max_new_tokens=length + 1, return_logits=True).logits
