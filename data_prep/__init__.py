"""data_prep: corpus → SentencePiece tokenizer → WebDataset token shards + manifest.json.

Command line: ``megaseqpe-prep tokenizer ...`` and ``megaseqpe-prep shards ...`` (see
:mod:`data_prep.cli`). The manifest schema lives in :mod:`megaseqpe.data.manifest`.
"""
