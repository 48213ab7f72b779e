"""A megaseqpe GPT with its position module, as a transformers causal LM (written by megaseqpe-export).

The model is the run's own code (the flattened megaseqpe modules beside this file), with the
position module switched to what megaseqpe-eval and megaseqpe-generate use beyond the training
length (`enable_extrapolation`), so logits at any length are theirs, and `generate()` announces
its final length as megaseqpe-generate does (a learned table is stretched to it once). No KV
cache: every step of `generate()` runs the whole sequence again (the megaseqpe-generate --no-cache
reference), and batches must be unpadded (an attention_mask of ones).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_megaseqpe import MegaSeqPEConfig
from .model_gpt import GPT
from .positions_registry import build_position_encoding


class MegaSeqPEForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MegaSeqPEConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _tied_weights_keys = {"model.lm_head.weight": "model.token_embedding.weight"}

    def __init__(self, config: MegaSeqPEConfig) -> None:
        super().__init__(config)
        sections = config.sections()
        self.model = GPT(sections.model, build_position_encoding(sections))
        self.model.position.enable_extrapolation()
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Every weight comes from model.safetensors. The non-persistent buffers (ALiBi's slopes, SeqPE's
        index tables) are not in it, and transformers allocates them empty when it loads: they get the
        values that a freshly built position module computes."""
        if not module._non_persistent_buffers_set:
            return
        paths = {id(m): name for name, m in self.model.position.named_modules()}
        if id(module) not in paths:
            raise NotImplementedError(f"{type(module).__name__} has non-persistent buffers outside the position "
                                      "module: the export cannot restore them")
        fresh = build_position_encoding(self.config.sections()).get_submodule(paths[id(module)])
        with torch.no_grad():
            for name in module._non_persistent_buffers_set:
                getattr(module, name).copy_(getattr(fresh, name))

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.token_embedding

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.lm_head

    def forward(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.LongTensor] = None, **kwargs: Any) -> CausalLMOutputWithPast:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("padded batches are not supported: the model has no attention mask input; "
                             "pass unpadded sequences (one per call, or of equal length)")
        logits = self.model(input_ids).logits
        loss = None
        if labels is not None:  # next-token cross-entropy, as transformers' causal LMs compute it
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def generate(self, inputs: Optional[torch.Tensor] = None, generation_config: Any = None, **kwargs: Any) -> Any:
        """transformers' generate(), reaching positions beyond the training length as megaseqpe-generate
        does: a learned table is stretched once, to the prompt plus the new tokens, not anew at each step."""
        config = generation_config or self.generation_config
        prompt = inputs if inputs is not None else kwargs["input_ids"]
        new = kwargs.get("max_new_tokens", config.max_new_tokens)
        self.model.position.enable_extrapolation(
            prompt.shape[-1] + new if new is not None else kwargs.get("max_length", config.max_length))
        try:
            return super().generate(inputs, generation_config, **kwargs)
        finally:
            self.model.position.enable_extrapolation()  # plain calls: stretched to their own length

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None,
                                      **kwargs: Any) -> dict[str, Any]:
        """The whole sequence at every step (no KV cache)."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}
