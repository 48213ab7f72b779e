"""Learned-APE text runs as a stock `transformers` GPT2LMHeadModel: no custom code.

Our GPT is GPT-2's architecture (pre-LN blocks, LayerNorm eps 1e-5, biases, exact-erf GELU, a
learned table of L positions, 1/sqrt(head_dim) attention), so only names change, and GPT-2's Conv1D
layers store their weights as [in, out]: every Linear weight is transposed. The fused qkv
projection splits into q, k, v the same way in both. GPT-2's table cannot reach a position past
L (n_positions), so the stock model serves sequences of at most the training length; the
interpolation megaseqpe-eval uses beyond it is not part of GPT-2.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import Config

# Our Linear layers → GPT-2's Conv1D layers, within block i (both hold a weight and a bias).
_CONV1D = {"attention.qkv": "attn.c_attn", "attention.out": "attn.c_proj", "mlp.up": "mlp.c_fc",
           "mlp.down": "mlp.c_proj"}
_NORMS = {"norm_attention": "ln_1", "norm_mlp": "ln_2"}


def fits_gpt2(config: Config) -> bool:
    """Whether the run is a 1-D learned-table GPT of GPT-2's shape (LayerNorm, GELU MLP, multi-head
    attention, biases): exactly what GPT2LMHeadModel computes. RMSNorm, SwiGLU or grouped-query
    attention take the remote-code path."""
    model = config.model
    return (config.position.type == "learned" and config.position.n_dims == 1 and model.bias
            and model.norm == "layernorm" and model.mlp == "gelu" and model.kv_heads == model.n_head)


def gpt2_state(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Our GPT's state dict under GPT2LMHeadModel's names and layouts."""
    renamed = {"transformer.wte.weight": state["token_embedding.weight"],
               "transformer.wpe.weight": state["position.table.weight"],
               "transformer.ln_f.weight": state["final_norm.weight"], "transformer.ln_f.bias": state["final_norm.bias"],
               "lm_head.weight": state["lm_head.weight"]}
    for i in range(n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for name, conv in _CONV1D.items():
            renamed[f"{theirs}{conv}.weight"] = state[f"{ours}{name}.weight"].t().contiguous()
            renamed[f"{theirs}{conv}.bias"] = state[f"{ours}{name}.bias"]
        for name, norm in _NORMS.items():
            for part in ("weight", "bias"):
                renamed[f"{theirs}{norm}.{part}"] = state[f"{ours}{name}.{part}"]
    return renamed


def write_gpt2(folder: Path, model: nn.Module, config: Config, eos_id: int, dtype: torch.dtype) -> str:
    """Save the model as a GPT2LMHeadModel (config.json + model.safetensors) into `folder`; its class name."""
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = config.model
    gpt2_config = GPT2Config(
        vocab_size=shape.vocab_size, n_positions=shape.max_seq_len, n_embd=shape.d_model, n_layer=shape.n_layer,
        n_head=shape.n_head, n_inner=shape.mlp_width, activation_function="gelu",  # F.gelu: exact, not gelu_new
        resid_pdrop=shape.dropout, embd_pdrop=shape.dropout, attn_pdrop=shape.attention_dropout,
        layer_norm_epsilon=1e-5, tie_word_embeddings=shape.tie_embeddings,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    gpt2 = GPT2LMHeadModel(gpt2_config)
    gpt2.load_state_dict(gpt2_state(model.state_dict(), shape.n_layer), strict=True)
    gpt2.to(dtype).save_pretrained(str(folder))
    return type(gpt2).__name__
