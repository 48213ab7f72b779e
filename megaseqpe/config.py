"""Typed configuration: dataclasses that validate themselves.

Every knob of the model and of the position scheme lives here; docs/config.md is generated from
the attribute docstrings below (`make docs`). SeqPE knobs keep the reference names without the
`seqpe_`/`pe_` prefix, except distillation: the reference's `transfer_*` are `distill_*` here
(the old names are accepted aliases, see ALIASES).
Validation happens at construction, so a bad value fails at start-up with a message that
names the key, not deep inside a training step.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

# Keys whose choices are the names of a registry. The registries live with the code they select
# (and import this module), so they are looked up when a config is validated, not at import time.
_REGISTRIES = {
    "task": ("megaseqpe.tasks", "TASKS"),
    "position.type": ("megaseqpe.positions.registry", "POSITION_TYPES"),
    "model.attention_backend": ("megaseqpe.model.attention", "BACKENDS"),
    "data.on_corrupt": ("megaseqpe.data.shard_reader", "ON_CORRUPT"),
}

# Old key names still accepted in YAML and overrides. The reference code (and our first configs)
# call distillation "transfer"; the code, the TensorBoard tags and the docs say "distill".
ALIASES = {
    "position.transfer_weight": "position.distill_weight",
    "position.transfer_batch_size": "position.distill_batch_size",
    "position.transfer_num": "position.distill_num",
    "position.transfer_per_head": "position.distill_per_head",
    "position.transfer_loss": "position.distill_loss",
    "position.transfer_beta": "position.distill_beta",
}


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


def registered(key: str) -> tuple[str, ...]:
    """The names the registry behind `key` (e.g. "position.type") accepts."""
    module, attribute = _REGISTRIES[key]
    return tuple(getattr(importlib.import_module(module), attribute))


NORMS = ("layernorm", "rmsnorm")  # model.norm
MLPS = ("gelu", "swiglu")  # model.mlp
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")  # model.activation_checkpointing
# model.preset → the sizes it sets (GPT-3 paper, Table 2.1: 125M, 350M, 760M and 1.3B parameters).
MODEL_PRESETS = {
    "gpt2-124m": {"n_layer": 12, "n_head": 12, "d_model": 768},
    "gpt2-350m": {"n_layer": 24, "n_head": 16, "d_model": 1024},
    "gpt2-760m": {"n_layer": 24, "n_head": 16, "d_model": 1536},
    "gpt2-1.3b": {"n_layer": 24, "n_head": 16, "d_model": 2048},
}


def _with_preset(values: dict[str, Any]) -> dict[str, Any]:
    """A model section's values with its preset's sizes under them: a key the section sets wins.
    (An unknown preset name is left for ModelConfig to reject.)"""
    return {**MODEL_PRESETS.get(values.get("preset", ""), {}), **values}


@dataclass
class ModelConfig:
    """A GPT-2 style decoder (ViT shares the trunk knobs)."""

    n_layer: int = 4
    """Transformer blocks in the trunk (the GPT decoder or the ViT encoder)."""
    n_head: int = 4
    """Attention heads per block; must divide d_model."""
    d_model: int = 256
    """Width of the trunk: token/patch embeddings and residual stream."""
    vocab_size: int = 8000
    """Rows of the token embedding and LM head; at least the tokenizer's vocabulary (checked at start-up)."""
    max_seq_len: int = 512
    """The training length L in tokens: rows are cut to L, positions are 0..L-1, the learned table has L rows."""
    dropout: float = 0.0
    """Dropout on the trunk's input embeddings and residual branches (attention output, MLP), in [0, 1)."""
    attention_dropout: float = 0.0
    """Dropout on the trunk's attention weights, in [0, 1)."""
    attention_backend: str = "auto"
    """Attention kernel: auto = flash when it can run (flash-attn, CUDA, fp16/bf16), else sdpa (on CPU, SeqPE
    attn_scalar's term is the fused kernel's float mask in training passes whose rows share positions); eager = explicit;
    flex = torch's FlexAttention, SeqPE attn_scalar's pe_q.pe_k term added as a score bias built once per forward
    pass (shared by every layer and row with attn_scalar_proj: single), no concatenation or v padding. auto never
    picks flex: it has no GPU measurement yet. flex has no attention dropout, and on CPU no backward (evaluation
    only there); its bias is a dense [B|1, heads, N, N] float32 tensor (12 GB at N = 16k with 12 heads)."""
    activation_checkpointing: str = "none"
    """Recompute the trunk's and the SeqPE encoder's activations in the backward instead of keeping them (training
    only; same losses and gradients): none; full = every block keeps only its input; selective = every block keeps the outputs of its
    matmuls and attention kernel and recomputes the rest (norms, activations, dropout). Parameter names are unchanged."""
    bias: bool = True
    """Biases in the trunk's Linear and LayerNorm layers (and the ViT's patch embedding and head)."""
    tie_embeddings: bool = True
    """The GPT's LM head shares its weight with the token embedding."""
    preset: str = ""
    """A size preset that fills n_layer, n_head and d_model where the config does not set them (keys set
    explicitly win): gpt2-124m (12 layers x 768, 12 heads), gpt2-350m (24 x 1024, 16), gpt2-760m
    (24 x 1536, 16), gpt2-1.3b (24 x 2048, 16), the GPT-3 paper's shapes, named by their parameter
    counts at GPT-2's vocabulary of 50257 with a tied head; "" = none. Resolved when a config is read."""
    norm: str = "layernorm"
    """Normalisation of the trunk: layernorm (GPT-2; eps 1e-5, a bias when model.bias) or rmsnorm (LLaMA; eps 1e-5, no bias)."""
    mlp: str = "gelu"
    """The trunk's MLP: gelu = down(gelu(up(x))) with exact GELU (GPT-2); swiglu = down(silu(gate(x)) * up(x)) (LLaMA)."""
    mlp_hidden: int = 0
    """Hidden width of the MLP; 0 = the usual rule: 4 x d_model for gelu, and for swiglu 2/3 x 4 x d_model rounded up
    to a multiple of model.mlp_multiple_of (LLaMA's rule: about the parameters of a gelu MLP)."""
    mlp_multiple_of: int = 256
    """swiglu with mlp_hidden 0: the hidden width is rounded up to a multiple of this (LLaMA uses 256)."""
    n_kv_head: int = 0
    """Key/value heads (grouped-query attention): each serves n_head / n_kv_head query heads; must divide n_head;
    0 = n_head (multi-head attention)."""
    # --- the ViT (task: image_classification); the text model ignores them ---
    image_size: int = 16
    """ViT: training resolution in pixels (square); images are resized to it; a multiple of patch_size."""
    patch_size: int = 4
    """ViT: side of a square patch in pixels; the position grid is image_size / patch_size per side."""
    channels: int = 1
    """ViT: image channels (1 grey, 3 RGB); must match the image shards."""
    num_classes: int = 10
    """ViT: outputs of the classification head; at least the shards' number of classes."""

    def __post_init__(self) -> None:
        for key in ("n_layer", "n_head", "d_model", "vocab_size", "max_seq_len", "image_size", "patch_size",
                    "channels", "num_classes"):
            _check(getattr(self, key) > 0, f"model.{key}", "must be positive")
        _check(self.d_model % self.n_head == 0, "model.d_model",
               f"{self.d_model} is not divisible by model.n_head={self.n_head}")
        _choice(self.attention_backend, "model.attention_backend", registered("model.attention_backend"))
        for key in ("dropout", "attention_dropout"):
            _check(0.0 <= getattr(self, key) < 1.0, f"model.{key}", "must be in [0, 1)")
        _check(self.attention_backend != "flex" or self.attention_dropout == 0.0, "model.attention_dropout",
               "must be 0 with model.attention_backend: flex (FlexAttention has no attention dropout)")
        _choice(self.activation_checkpointing, "model.activation_checkpointing", ACTIVATION_CHECKPOINTING)
        self._check_shape()

    def _check_shape(self) -> None:
        _check(not self.preset or self.preset in MODEL_PRESETS, "model.preset",
               f"{self.preset!r} is not one of {', '.join(MODEL_PRESETS)}")
        _choice(self.norm, "model.norm", NORMS)
        _choice(self.mlp, "model.mlp", MLPS)
        _check(self.mlp_hidden >= 0, "model.mlp_hidden", "must be >= 0 (0 = the rule of model.mlp)")
        _check(self.mlp_multiple_of > 0, "model.mlp_multiple_of", "must be positive")
        _check(self.n_kv_head >= 0, "model.n_kv_head", "must be >= 0 (0 = model.n_head)")
        _check(self.n_head % self.kv_heads == 0, "model.n_kv_head",
               f"{self.n_kv_head} does not divide model.n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads per block (n_head unless grouped-query attention)."""
        return self.n_kv_head or self.n_head

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width (model.mlp_hidden, or the rule of model.mlp)."""
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.d_model
        return -(-(2 * 4 * self.d_model // 3) // self.mlp_multiple_of) * self.mlp_multiple_of

    @property
    def grid_size(self) -> int:
        """Patches per side of a training image (the ViT's position grid is grid_size x grid_size)."""
        return self.image_size // self.patch_size


# The authors' released runs differ between text (1-D) and images (2-D) in these settings; a None
# in PositionConfig takes the value for its number of dimensions (docs/method.md §4).
_REFERENCE_OBJECTIVES = {
    1: {"main_batch_size": 16, "contrastive_batch_size": 16, "contrastive_num": 32,
        "contrastive_mode_shares": (0.0, 0.4, 0.6), "contrastive_hard_ratio": 0.25, "dist_sample_range": 256,
        "distill_batch_size": 16, "distill_num": 32},
    2: {"main_batch_size": 32, "contrastive_batch_size": 32, "contrastive_num": 64,
        "contrastive_mode_shares": (0.5, 0.3, 0.2), "contrastive_hard_ratio": 0.2, "dist_sample_range": 14,
        "distill_batch_size": 32, "distill_num": 64},
}


@dataclass
class PositionConfig:
    """The position scheme (`type`) and every SeqPE knob (docs/method.md)."""

    type: str = "seqpe"
    """The position scheme: SeqPE or a baseline (alibi is 1-D only; learned is a grid table in 2-D)."""
    n_dims: int = 1
    """Coordinates per position: 1 for text (token index), 2 for images ((row, col) of a patch)."""
    # --- SeqPE representation (docs/method.md §1.1-1.2) ---
    max_position: int = 20000
    """pe_max_position: digits per coordinate are those of max_position-1; shifts and objectives sample below it."""
    base: int = 10
    """Number base of the digit tokens (>= 2), also the size of the encoder's digit vocabulary."""
    d_pe: Optional[int] = None
    """Width of the SeqPE encoder (reference pe_dim); None = model.d_model. Its output is model.d_model wide."""
    encoder_layers: int = 2
    """Transformer layers of the SeqPE encoder."""
    encoder_heads: Optional[int] = None
    """Attention heads of the SeqPE encoder; None = model.n_head. Must divide the encoder's width."""
    attn_direction: str = "causal"
    """Attention over a position's digits in the encoder: causal (each digit sees those before it) or bi."""
    mask_padding: bool = False
    """Hide the left-padding 0 digits from the encoder's attention (each token still sees itself)."""
    # The None default follows the reference runs for attn_scalar (text) and attn_mul (images); input_add's
    # output is added to token embeddings of std 0.02 that a unit-scale LayerNorm output would drown.
    final_layernorm: Optional[bool] = None
    """LayerNorm on the encoder's output before its projection; None = on for attn_scalar and attn_mul, off for
    input_add."""
    temperature: float = 1.0
    """The encoder's output is divided by it (> 0)."""
    encoder_dropout: float = 0.1
    """Dropout on the SeqPE encoder's residual and MLP branches (none on its input embeddings, as the reference)."""
    encoder_attention_dropout: float = 0.0
    """Dropout on the SeqPE encoder's attention weights."""
    # --- how the model uses it (§4) ---
    use: str = "attn_scalar"
    """input_add: added to the token/patch embeddings; attn_scalar: s * pe_q.pe_k added to every attention logit;
    attn_mul: q * pe_q and k * pe_k elementwise before attention (the reference image runs)."""
    attn_scalar_proj: str = "single"
    """attn_scalar and attn_mul: single = one pe_q/pe_k projection shared by all layers; multi = one per layer."""
    scalar_scale: float = 1.0
    """attn_scalar only: s in logit(i, j) += s * pe_q[i].pe_k[j] (reference seqpe_scalar_scale)."""
    # --- training-time shifts (§5) ---
    random_shift_rate: float = 0.1
    """pe_random_shift_rate: chance that a micro-batch uses shifted windows, not [0, L); in [0, 1], SeqPE only."""
    random_shift_downsample: int = 320
    """pe_random_shift_downsample: size of each rank's fixed random subset of window starts that shifts use."""
    main_batch_size: Optional[int] = None
    """pe_main_batch_size: consecutive windows of the subset per shifted micro-batch, row r using window
    r mod this; None = the reference's 16 (1-D) or 32 (2-D)."""
    # --- contrastive objective (§6) ---
    contrastive_weight: float = 0.1
    """Weight of the contrastive loss in the total loss (reference seqpe_contrastive_weight); 0 = off."""
    contrastive_batch_size: Optional[int] = None
    """Pivots per micro-batch and rank, each rank visiting every position once per epoch of its own
    (seqpe_contrastive_batch_size); None = 16 (1-D) or 32 (2-D)."""
    contrastive_num: Optional[int] = None
    """Candidates per pivot (seqpe_contrastive_num), the label being the nearest; None = 32 (1-D) or 64 (2-D)."""
    contrastive_mode_shares: Optional[tuple] = None
    """Share of pivots whose special candidates are none (random only), hard negatives, or a window:
    (random, hard, window) summing to 1; None = the reference's (0, 0.4, 0.6) in 1-D, (0.5, 0.3, 0.2) in 2-D."""
    contrastive_hard_ratio: Optional[float] = None
    """Hard (digit-edit) negatives per hard-mode pivot as a fraction of contrastive_num; None = 0.25 (1-D), 0.2 (2-D)."""
    dist_sample_range: Optional[int] = None
    """Window mode: side of the window (per dimension) at a random start, at least (5 x contrastive_num) ** (1 /
    n_dims) and at most max_position (seqpe_dist_sample_range); None = 256 (1-D) or 14 (2-D)."""
    contrastive_logit_scale: float = 1.0
    """Factor on the pivot-candidate dot products before the contrastive cross-entropy."""
    contrastive_per_head: bool = False
    """Contrast per head (embedding split into model.n_head parts) instead of on the whole vector."""
    # --- distillation objective (§7) ---
    distill_weight: float = 0.1
    """Weight of the distillation loss (reference seqpe_transfer_weight); 0 = off."""
    distill_batch_size: Optional[int] = None
    """Distillation examples (slot set + student start) per unshifted micro-batch (seqpe_transfer_batch_size);
    None = 16 (1-D) or 32 (2-D)."""
    distill_num: Optional[int] = None
    """Positions per example, m of the m x m similarity matrices (seqpe_transfer_num), >= 2; None = 32 (1-D) or
    64 (2-D)."""
    distill_per_head: bool = True
    """Compare similarity matrices per head (embedding split into model.n_head parts), as the reference does."""
    distill_space: str = "embedding"
    """Where distillation compares similarities: embedding = the encoder outputs' dot products (the paper);
    attention = the attn_scalar bias s * pe_q.pe_k / sqrt(head_dim) that attention actually adds (ours)."""
    distill_loss: str = "kl"
    """kl = KL both ways between row-wise softmaxes of the similarity matrices; mse = MSE between the matrices."""
    distill_beta: float = 1.0
    """kl only: weight of KL(teacher || student); KL(student || teacher) has weight 1."""
    # --- baselines (§9) ---
    rope_base: float = 10000.0
    """Frequency base of RoPE (position.type rope)."""

    def __post_init__(self) -> None:
        _choice(self.type, "position.type", registered("position.type"))
        _choice(self.attn_direction, "position.attn_direction", ("causal", "bi"))
        _choice(self.use, "position.use", ("input_add", "attn_scalar", "attn_mul"))
        _choice(self.attn_scalar_proj, "position.attn_scalar_proj", ("single", "multi"))
        _choice(self.distill_loss, "position.distill_loss", ("kl", "mse"))
        _choice(self.distill_space, "position.distill_space", ("embedding", "attention"))
        if self.final_layernorm is None:
            self.final_layernorm = self.use != "input_add"
        _check(self.n_dims > 0, "position.n_dims", "must be positive")
        for key, value in _REFERENCE_OBJECTIVES[min(self.n_dims, 2)].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.contrastive_mode_shares = tuple(float(share) for share in self.contrastive_mode_shares)
        for key in ("max_position", "encoder_layers", "contrastive_batch_size", "contrastive_num",
                    "dist_sample_range", "distill_batch_size", "random_shift_downsample", "main_batch_size"):
            _check(getattr(self, key) > 0, f"position.{key}", "must be positive")
        self._check_objectives()
        _check(self.base >= 2, "position.base", "must be at least 2")
        _check(self.distill_num >= 2, "position.distill_num", "needs at least 2 slots")
        _check(self.temperature > 0, "position.temperature", "must be positive")
        _check(0.0 <= self.random_shift_rate <= 1.0, "position.random_shift_rate", "must be in [0, 1]")

    def _check_objectives(self) -> None:
        shares = self.contrastive_mode_shares
        _check(len(shares) == 3 and min(shares) >= 0 and abs(sum(shares) - 1) < 1e-6,
               "position.contrastive_mode_shares", f"needs three non-negative shares summing to 1, got {shares}")
        _check(0 <= self.contrastive_hard_ratio <= 1, "position.contrastive_hard_ratio", "must be in [0, 1]")
        # The sampler needs enough positions besides the pivot and the nearest one's mirror image.
        _check(self.max_position ** self.n_dims - 2 >= self.contrastive_num, "position.contrastive_num",
               f"{self.contrastive_num} candidates need more than {self.max_position}^{self.n_dims} positions")
        _check(self.distill_space == "embedding" or self.use == "attn_scalar", "position.distill_space",
               f"attention needs position.use=attn_scalar (the only use with a position-only attention bias), "
               f"got {self.use}")


@dataclass
class DataSource:
    """One entry of `data.sources`: a manifest and its share of the training rows."""

    manifest: str = ""
    """manifest.json (or its directory) from `megaseqpe-prep shards`."""
    weight: float = 1.0
    """Relative share of the rows: a row comes from this source with probability weight / sum of weights."""
    name: str = ""
    """Name in TensorBoard tags (`data/tokens/<name>`, `val/loss/<name>`); "" = the manifest's directory name."""


# A source's name ends TensorBoard tags: keep it to characters that need no quoting anywhere.
_SOURCE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _manifest_dir_name(manifest: str) -> str:
    path = Path(manifest)
    return path.parent.name if path.suffix == ".json" else path.name


def _data_source(value: Any, index: int) -> DataSource:
    """`data.sources[index]` (a YAML mapping, or a DataSource) checked, its name filled in."""
    key = f"data.sources[{index}]"
    if not isinstance(value, DataSource):
        _check(isinstance(value, Mapping), key, f"expected a mapping with manifest and weight, got {value!r}")
        hints = typing.get_type_hints(DataSource)
        for name in value:
            _check(name in hints, key, f"unknown key {name!r}{_suggest(str(name), hints)}")
        value = DataSource(**{name: _coerce(item, hints[name], f"{key}.{name}") for name, item in value.items()})
    _check(bool(value.manifest), f"{key}.manifest", "not set (the manifest.json written by megaseqpe-prep shards)")
    _check(math.isfinite(value.weight) and value.weight > 0, f"{key}.weight", f"must be positive, got {value.weight}")
    name = value.name or _manifest_dir_name(value.manifest)
    _check(_SOURCE_NAME.fullmatch(name) is not None, f"{key}.name",
           f"{name!r} must be letters, digits, '_', '.' or '-' (it ends TensorBoard tags); set name: explicitly")
    return dataclasses.replace(value, name=name)


@dataclass
class DataConfig:
    manifest: str = ""
    """manifest.json (or its directory) from `megaseqpe-prep shards` or `images`; megaseqpe-train needs it or data.sources."""
    sources: list = field(default_factory=list)
    """A weighted mixture instead of data.manifest: a list of {manifest: PATH, weight: FLOAT, name: NAME}; each row is drawn from a source with probability weight / sum (text only; one tokenizer for all). Names default to the manifest's directory name and must be unique."""
    micro_batch_size: int = 8
    """Rows (sequences or images) per micro-batch and rank; also the validation batch size."""
    num_workers: int = 1
    """DataLoader worker processes per rank (0 = read in the main process)."""
    shuffle_buffer: int = 1000
    """Samples held in each reader's shuffle buffer (1 = no sample shuffling)."""
    on_corrupt: str = "error"
    """A corrupt shard: error = stop, naming the shard; skip = drop its unreadable samples, count them, go on."""
    val_split: str = "val"
    """Manifest split for validation during training, and megaseqpe-eval's default split."""
    document_masking: bool = False
    """Text: each packed document starts with the tokenizer's BOS (if it has one), its positions restart at 0 and its tokens attend only inside it (every attention backend). Off keeps the reference configs' exact data stream; recommended on for new runs."""

    def __post_init__(self) -> None:
        _check(self.micro_batch_size > 0, "data.micro_batch_size", "must be positive")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _choice(self.on_corrupt, "data.on_corrupt", registered("data.on_corrupt"))
        self._check_sources()

    def _check_sources(self) -> None:
        _check(not (self.manifest and self.sources), "data.sources",
               "set either data.manifest (one source) or data.sources (a mixture), not both")
        self.sources = [_data_source(value, index) for index, value in enumerate(self.sources)]
        first: dict[str, int] = {}
        for index, source in enumerate(self.sources):
            _check(source.name not in first, f"data.sources[{index}].name",
                   f"{source.name!r} is also the name of data.sources[{first.get(source.name)}]; names must be "
                   "unique (set name: for each source)")
            first[source.name] = index

    @property
    def source_list(self) -> tuple[DataSource, ...]:
        """The run's sources: data.sources, or data.manifest as one source of weight 1."""
        if self.sources:
            return tuple(self.sources)
        return (DataSource(self.manifest, 1.0, _manifest_dir_name(self.manifest)),) if self.manifest else ()

    @property
    def primary_manifest(self) -> str:
        """data.manifest, or the first source's: the tokenizer every source shares ("" when none is set)."""
        return self.sources[0].manifest if self.sources else self.manifest


@dataclass
class TrainConfig:
    max_steps: int = 1000
    """Optimizer steps to train (each of grad_accum_steps micro-batches)."""
    lr: float = 6e-4
    """Peak AdamW learning rate, reached at the end of the warmup."""
    min_lr_ratio: float = 0.1
    """The decay ends at lr * min_lr_ratio at max_steps; in [0, 1]."""
    warmup_steps: int = 100
    """Steps of linear warmup up to lr; 0 = none."""
    decay: str = "cosine"
    """Shape of the decay from lr after the warmup: cosine or linear."""
    weight_decay: float = 0.1
    """AdamW weight decay on Linear weight matrices; norms, biases and embeddings (SeqPE's too) get none."""
    betas: tuple = (0.9, 0.95)
    """AdamW (beta1, beta2); in YAML a list of two numbers."""
    grad_clip: float = 1.0
    """Gradient-norm clipping threshold (DeepSpeed gradient_clipping); 0 = no clipping."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    seed: int = 1234
    """Seeds the initial weights, the data order, dropout, the position shifts and the objectives' samples."""
    compile: bool = False
    """torch.compile each trunk block in place before DeepSpeed wraps the model (parameter names unchanged);
    needs a C++ compiler on CPU, Triton on GPU. The first steps are slower while the graph compiles."""
    precision: str = "fp32"
    """fp32, or DeepSpeed mixed precision: bf16, or fp16 with dynamic loss scaling."""
    log_every: int = 10
    """Steps between logged metrics (averages since the last log; TensorBoard and metrics.jsonl)."""
    eval_every: int = 200
    """Steps between validation passes (one also runs at max_steps)."""
    eval_batches: int = 20
    """Validation batches per rank in each validation pass, at most."""
    save_every: int = 500
    """Steps between checkpoints (one is also saved at max_steps and on SIGTERM/SIGUSR1)."""
    keep_last: int = 2
    """Complete checkpoints kept under RUN/checkpoints; older ones are deleted."""
    max_bad_steps: int = 5
    """Bad steps in a row before the run aborts: a non-finite loss (the micro-batch is skipped), a non-finite gradient norm, or a step the optimizer skipped. The last checkpoint from before the first of them is kept, whatever keep_last says."""
    init_from: str = ""
    """RUN or RUN/TAG (default tag: its latest): start a new run from that run's model weights (any ZeRO stage and
    number of processes), with a fresh optimizer, schedule, step counter and data stream, and validate them at step 0.
    The model and position keys must equal the source's (dropout, attention_backend, objectives may change; max_seq_len
    too unless a learned table has that many rows). "" = random initial weights. A run with a checkpoint of its own
    resumes from it instead."""

    def __post_init__(self) -> None:
        for key in ("max_steps", "grad_accum_steps", "log_every", "eval_every", "save_every",
                    "keep_last", "max_bad_steps", "eval_batches"):
            _check(getattr(self, key) > 0, f"train.{key}", "must be positive")
        _check(self.lr > 0, "train.lr", "must be positive")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", "must be in [0, 1]")
        _choice(self.decay, "train.decay", ("cosine", "linear"))
        _choice(self.precision, "train.precision", ("fp32", "bf16", "fp16"))
        self.betas = tuple(self.betas)
        _check(len(self.betas) == 2, "train.betas", "needs two numbers")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0, 1, 2 or 3."""
    config: str = ""
    """A DeepSpeed JSON whose entries override those built from this config ("" = none); batch sizes excepted."""

    def __post_init__(self) -> None:
        _check(self.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage", f"{self.zero_stage} is not 0, 1, 2 or 3")


@dataclass
class RunConfig:
    dir: str = "runs/default"
    """Run directory: config.yaml, checkpoints/, metrics.jsonl, tensorboard/, eval/; a rerun resumes from it."""


@dataclass
class Config:
    """The whole run: one section per concern, as in the YAML files under configs/.

    `task` is the one top-level scalar: it picks the model, data pipeline and loss (a GPT on
    token shards, or a ViT on image shards); every other key lives in a section.
    """

    task: str = "language_modeling"
    """What is trained: language_modeling = a GPT on token shards; image_classification = a ViT on image shards; qa = a GPT fine-tuned (train.init_from a language_modeling run) on `megaseqpe-prep qa` retrieval samples, loss on the answer tokens only."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The trunk: a GPT-2 style decoder, or for image_classification a ViT that shares its knobs."""
    position: PositionConfig = field(default_factory=PositionConfig)
    """The position scheme and every SeqPE knob (representation, use, shifts, objectives)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The sharded input pipeline: which manifest, batch size, workers, shuffling, corrupt shards."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation (AdamW, warmup then decay), precision, and how often to log, validate and save."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """DeepSpeed ZeRO stage and an optional JSON of extra DeepSpeed settings."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where the run writes its outputs."""

    def __post_init__(self) -> None:
        _choice(self.task, "task", registered("task"))
        if self.task == "image_classification":
            self._check_image_task()
        elif self.position.type == "seqpe" and self.position.n_dims == 1:
            _check(self.position.max_position >= self.model.max_seq_len, "position.max_position",
                   f"{self.position.max_position} is below model.max_seq_len={self.model.max_seq_len}")
        if self.position.type == "rope":
            _check(self.model.head_dim % (2 * self.position.n_dims) == 0, "model.d_model",
                   f"RoPE over {self.position.n_dims} dims needs head_dim divisible by "
                   f"{2 * self.position.n_dims}, got {self.model.head_dim}")

    def _check_image_task(self) -> None:
        model, position = self.model, self.position
        _check(not self.data.sources, "data.sources", "weighted mixtures are for language_modeling; "
               "image_classification reads one data.manifest")
        _check(not self.data.document_masking, "data.document_masking", "packed-document masking is for "
               "language_modeling; an image is one example")
        _check(model.image_size % model.patch_size == 0, "model.image_size",
               f"{model.image_size} is not a multiple of model.patch_size={model.patch_size}")
        _check(position.n_dims == 2, "position.n_dims",
               f"image_classification positions are (row, col) patch coordinates: set 2, got {position.n_dims}")
        _check(position.type != "alibi", "position.type", "alibi is 1-D only; use seqpe, learned, "
               "sinusoidal, rope or nope for images")
        if position.type == "seqpe":
            _check(position.max_position >= model.grid_size, "position.max_position",
                   f"{position.max_position} is below the training grid of {model.grid_size} patches per side")

    def to_dict(self) -> dict:
        """Plain YAML-safe data: sections of scalars, tuples (betas, shares) as lists."""
        data = dataclasses.asdict(self)
        return {name: {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
                if isinstance(section, dict) else section for name, section in data.items()}


# ----------------------------------------------------------------------------- YAML and overrides
def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a field's type hint; ints are accepted where floats are expected."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    expected = hint if isinstance(hint, type) else object
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _canonical(section: str, key: str) -> str:
    """The current name of `section.key` (itself, unless it is an old name in ALIASES)."""
    return ALIASES.get(f"{section}.{key}", f"{section}.{key}").split(".", 1)[1]


def _resolve_aliases(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with old key names (ALIASES) renamed; giving both names of one key is an error."""
    resolved, given_as = {}, {}
    for key, value in values.items():
        name = _canonical(section, key)
        if name in resolved:
            raise ConfigError(f"{section}.{name}: set twice, as {section}.{given_as[name]} and {section}.{key} "
                              "(one is an old name of the other)")
        resolved[name], given_as[name] = value, key
    return resolved


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> Config:
    """Build a validated Config; unknown sections/keys and wrong types fail naming the key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    hints = typing.get_type_hints(Config)
    built = {}
    for section, values in data.items():
        if section not in hints:
            raise ConfigError(f"{source}: unknown section {section!r}{_suggest(section, hints)}")
        cls = hints[section]
        if not dataclasses.is_dataclass(cls):  # a top-level scalar such as `task`
            built[section] = _coerce(values, cls, section)
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section}: expected a mapping of keys, got {type(values).__name__}")
        field_hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in _resolve_aliases(section, values).items():
            if key not in field_hints:
                raise ConfigError(f"{source}: unknown key {section}.{key}{_suggest(key, field_hints)}")
            kwargs[key] = _coerce(value, field_hints[key], f"{section}.{key}")
        if cls is ModelConfig:
            kwargs = _with_preset(kwargs)
        built[section] = cls(**kwargs)
    return Config(**built)


def _scalar_fields() -> set[str]:
    """Top-level Config fields that are plain values, not sections (overridden as `task=...`)."""
    return {name for name, hint in typing.get_type_hints(Config).items() if not dataclasses.is_dataclass(hint)}


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` → (["section", "key"], value parsed as YAML: 3, 1e-4, true, [0.9, 0.95]);
    a top-level scalar is `name=value` (`task=image_classification`)."""
    path, sep, raw = text.partition("=")
    if not sep or ("." not in path and path.strip() not in _scalar_fields()):
        raise ConfigError(f"override {text!r}: expected section.key=value")
    return path.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from defaults) and apply `section.key=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}".splitlines()[0]) from None
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 1:
            data[keys[0]] = value
            continue
        if len(keys) != 2:
            raise ConfigError(f"override {text!r}: expected exactly section.key")
        section = data.setdefault(keys[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"override {text!r}: section {keys[0]!r} is not a mapping")
        # An override replaces the key under either of its names (a file may use the old one).
        name = _canonical(keys[0], keys[1])
        for key in [k for k in section if _canonical(keys[0], k) == name]:
            del section[key]
        section[name] = value
    return config_from_dict(data, source=str(path) if path else "config")


def dump_config(config: Config) -> str:
    """The resolved config as YAML, in the layout of the files under configs/."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(dump_config(config))
