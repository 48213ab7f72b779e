"""WebDataset token pipelines: manifest schema, rank/worker splitting, packing, resumable state.

Training::

    loader = build_train_loader(manifest, max_seq_len=256, micro_batch_size=8, seed=1,
                                rank=rank, world_size=world, num_workers=2)
    for batch in loader:            # LongTensor[8, 257], endless
        inputs, targets = batch[:, :-1], batch[:, 1:]
    ckpt["data"] = loader.state_dict()  ...  loader.load_state_dict(ckpt["data"])

Evaluation: ``for batch in eval_batches(manifest, "val", max_seq_len=256, batch_size=8): ...``

Images (``"kind": "image"`` manifests): :mod:`megaseqpe.data.images`.
"""
from .dataset import NotEnoughShardsError, ReaderState, ShardStreamDataset, TextShardDataset
from .demo_corpus import first_files, stdlib_sources
from .evaluation import eval_batches
from .image_samples import decode_image_sample, encode_image_sample
from .images import (ImageShardDataset, build_image_train_loader, eval_image_batches,
                     resize_images)
from .loader import DataStreamMismatch, TokenBatchLoader, build_train_loader
from .mixture import MixtureLoader, build_mixture_loader, check_same_tokenizer, source_of_row
from .manifest import (FORMAT_VERSION, KIND_IMAGE, KIND_TEXT, MAX_SKIP_EXAMPLES, SKIP_REASONS,
                       ImageInfo, InputsInfo, Manifest, ManifestError, ShardInfo, SplitInfo,
                       TokenizerInfo, load_manifest, manifest_from_dict)
from .samples import SHARD_PATTERN, decode_meta, decode_tokens, encode_sample, token_dtype
from .shard_reader import CorruptShardError, iter_raw_samples

__all__ = [
    "FORMAT_VERSION", "KIND_IMAGE", "KIND_TEXT", "MAX_SKIP_EXAMPLES", "SKIP_REASONS", "SHARD_PATTERN",
    "CorruptShardError", "DataStreamMismatch", "ImageInfo", "ImageShardDataset", "ShardStreamDataset",
    "InputsInfo",
    "build_image_train_loader", "decode_image_sample", "encode_image_sample", "eval_image_batches",
    "resize_images", "Manifest", "ManifestError", "NotEnoughShardsError",
    "ReaderState", "ShardInfo", "SplitInfo", "TextShardDataset", "TokenBatchLoader",
    "TokenizerInfo", "build_train_loader", "decode_meta", "decode_tokens", "encode_sample",
    "eval_batches", "first_files", "iter_raw_samples", "load_manifest", "manifest_from_dict",
    "stdlib_sources", "token_dtype",
    "MixtureLoader", "build_mixture_loader", "check_same_tokenizer", "source_of_row",
]
