"""`--format hf`: a folder that `transformers` loads offline, with the run's SentencePiece tokenizer.

Learned-APE runs of GPT-2's shape become a stock GPT2LMHeadModel (gpt2.py). Every other run ships
its modelling code: hf_code/ and the flattened megaseqpe modules (sources.py), named in config.json's
`auto_map`, for `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`.

The tokenizer is transformers' plain SentencePiece wrapper (BertGenerationTokenizer: the .model file's
own encoding, no added tokens) with special-token strings in the text encoded as text, so that
`AutoTokenizer.from_pretrained(DIR).encode(text)` gives the ids of our SentencePiece processor. Like
training documents, a prompt follows the end-of-document token: generation starts from
`[eos_id] + encode(text)` (megaseqpe-generate prepends it).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..data.manifest import TokenizerInfo
from ..evaluation.trained import TrainedModel
from .gpt2 import fits_gpt2, write_gpt2
from .native import unique_state
from .sources import config_sections, copy_sources

HF_CODE = Path(__file__).with_name("hf_code")
MODELLING_FILES = ("configuration_megaseqpe.py", "modeling_megaseqpe.py")
AUTO_MAP = {"AutoConfig": "configuration_megaseqpe.MegaSeqPEConfig",
            "AutoModelForCausalLM": "modeling_megaseqpe.MegaSeqPEForCausalLM"}
PREFIX = "model."  # MegaSeqPEForCausalLM holds our GPT as `self.model`
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def write_tokenizer(folder: Path, tokenizer_file: Path, processor: Any, info: TokenizerInfo) -> None:
    """The SentencePiece model and the tokenizer config AutoTokenizer reads."""
    shutil.copyfile(tokenizer_file, folder / "spiece.model")  # BertGenerationTokenizer's vocab file name
    eos = processor.id_to_piece(info.eos_id)
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "BertGenerationTokenizer", "eos_token": eos, "pad_token": eos,
        "unk_token": processor.id_to_piece(processor.unk_id()), "bos_token": None, "sep_token": None,
        # "</s>" typed in a text is text, as for our processor; no id is ever added around the text.
        "split_special_tokens": True, "model_max_length": 1 << 30})


def write_generation_config(folder: Path, info: TokenizerInfo, vocab_size: int, use_cache: bool) -> None:
    """Greedy by default, stopping at end-of-document; ids past the tokenizer's vocabulary (a larger
    model table) are never chosen, as megaseqpe-generate never chooses them."""
    config = {"bos_token_id": info.eos_id, "eos_token_id": info.eos_id, "pad_token_id": info.eos_id,
              "do_sample": False, "use_cache": use_cache}
    if vocab_size > info.vocab_size:
        config["suppress_tokens"] = list(range(info.vocab_size, vocab_size))
    _write_json(folder / "generation_config.json", config)


def write_remote(folder: Path, trained: TrainedModel, eos_id: int, dtype: torch.dtype) -> str:
    """The model with its modelling code (config.json with auto_map, model.safetensors); its class name."""
    from safetensors.torch import save_file

    copy_sources(folder)
    for name in MODELLING_FILES:
        shutil.copyfile(HF_CODE / name, folder / name)
    state, _ = unique_state(trained.model, dtype)  # the tied LM head is re-tied by _tied_weights_keys
    save_file({PREFIX + name: tensor for name, tensor in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    shape, sections = trained.config.model, config_sections(trained.config)
    if sections["model"]["attention_backend"] == "flash":  # the folder may run anywhere: flash where it can
        sections["model"]["attention_backend"] = "auto"
    _write_json(folder / "config.json", {
        "architectures": ["MegaSeqPEForCausalLM"], "model_type": "megaseqpe", "auto_map": AUTO_MAP,
        "megaseqpe": sections, "vocab_size": shape.vocab_size,
        "hidden_size": shape.d_model, "num_hidden_layers": shape.n_layer, "num_attention_heads": shape.n_head,
        "tie_word_embeddings": shape.tie_embeddings, "dtype": _DTYPE_NAMES[dtype], "use_cache": False,
        "bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id})
    return "MegaSeqPEForCausalLM (remote code)"


def write_hf(folder: Path, trained: TrainedModel, config_file: Path, tokenizer_file: Path, processor: Any,
             info: TokenizerInfo, dtype: torch.dtype) -> str:
    """Write the `--format hf` folder; what it holds, in words."""
    stock = fits_gpt2(trained.config)
    if stock:
        what = write_gpt2(folder, trained.model, trained.config, info.eos_id, dtype)
    else:
        what = write_remote(folder, trained, info.eos_id, dtype)
    write_tokenizer(folder, tokenizer_file, processor, info)
    write_generation_config(folder, info, trained.config.model.vocab_size, use_cache=stock)
    shutil.copyfile(config_file, folder / "megaseqpe_config.yaml")  # the run's config, for the record
    return what
