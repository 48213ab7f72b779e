"""WebDataset token pipelines: manifest schema, rank/worker splitting, packing, resumable state.

Training::

    loader = build_train_loader(manifest, max_seq_len=256, micro_batch_size=8, seed=1,
                                rank=rank, world_size=world, num_workers=2)
    for batch in loader:            # LongTensor[8, 257], endless
        inputs, targets = batch[:, :-1], batch[:, 1:]
    ckpt["data"] = loader.state_dict()  ...  loader.load_state_dict(ckpt["data"])

Evaluation: ``for batch in eval_batches(manifest, "val", max_seq_len=256, batch_size=8): ...``

Images (``"kind": "image"`` manifests): :mod:`megaseqpe.data.images`.

Each name loads its submodule on first use: the torch-free ones (manifests, sample encoding) serve
``megaseqpe-prep`` without importing torch.
"""
from ..lazy_exports import lazy_exports

_EXPORTS = {  # submodule: the names it serves
    "dataset": ["NotEnoughShardsError", "ReaderState", "ShardStreamDataset", "TextShardDataset"],
    "demo_corpus": ["first_files", "stdlib_sources"],
    "evaluation": ["eval_batches"],
    "image_samples": ["decode_image_sample", "encode_image_sample"],
    "images": ["ImageShardDataset", "build_image_train_loader", "eval_image_batches", "resize_images"],
    "loader": ["DataStreamMismatch", "TokenBatchLoader", "build_train_loader"],
    "mixture": ["MixtureLoader", "build_mixture_loader", "check_same_tokenizer", "source_of_row"],
    "manifest": ["FORMAT_VERSION", "KIND_IMAGE", "KIND_TEXT", "MAX_SKIP_EXAMPLES", "SKIP_REASONS", "ImageInfo",
                 "InputsInfo", "Manifest", "ManifestError", "ShardInfo", "SplitInfo", "TokenizerInfo",
                 "load_manifest", "manifest_from_dict"],
    "samples": ["SHARD_PATTERN", "decode_meta", "decode_tokens", "encode_sample", "token_dtype"],
    "shard_reader": ["CorruptShardError", "iter_raw_samples"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = __dir__()
