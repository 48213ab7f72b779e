"""The retrieval-QA sample format (`"kind": "qa"` manifests from `megaseqpe-prep qa`), apart from the
streams that read it (`megaseqpe.data.qa`) so that megaseqpe-prep writes samples without torch.

A sample is ``<key>.tokens.npy`` (prompt then answer, ``length + 1`` token ids, so the model reads
exactly ``length`` of them when the answer is teacher-forced: like a packed text row of that
length), ``<key>.meta.json`` (as text samples) and ``<key>.qa.json``: the answer's token count,
the length, the depth bin and the index of the inserted fact's first token.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from .samples import SampleFormatError, decode_tokens, encode_sample

IGNORE = -100  # cross-entropy's ignore_index


@dataclass(frozen=True)
class QAInfo:
    """What `qa.json` says about one sample."""

    answer_tokens: int  # the last `answer_tokens` ids of the sample are the answer
    length: int  # tokens the model reads: prompt + answer - 1
    depth: float  # the depth bin the fact was placed at (0 = first token of the filler, 1 = its end)
    needle_at: int  # index of the fact's first token in the sample
    needle_tokens: int


@dataclass(frozen=True)
class QASample:
    tokens: np.ndarray  # prompt + answer
    info: QAInfo

    @property
    def prompt(self) -> np.ndarray:
        return self.tokens[:-self.info.answer_tokens]

    @property
    def answer(self) -> np.ndarray:
        return self.tokens[-self.info.answer_tokens:]


def encode_qa_sample(key: str, sample: QASample, source: str, index: int) -> dict[str, Any]:
    """The tar members of one sample (sorted-key JSON: equal samples give equal bytes)."""
    members = encode_sample(key, sample.tokens, source, index)
    members["qa.json"] = json.dumps(asdict(sample.info), sort_keys=True).encode("utf-8")
    return members


def decode_qa_sample(sample: Mapping[str, Any], vocab_size: int | None = None) -> QASample:
    """A sample read back from a shard; SampleFormatError when it does not hold together."""
    tokens = decode_tokens(sample, vocab_size)
    try:
        info = QAInfo(**json.loads(sample["qa.json"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SampleFormatError(f"sample {sample.get('__key__')!r}: bad or missing qa.json: {exc}") from None
    if not 0 < info.answer_tokens < len(tokens) or len(tokens) != info.length + 1:
        raise SampleFormatError(f"sample {sample.get('__key__')!r}: {len(tokens)} tokens do not fit "
                                f"length {info.length} with {info.answer_tokens} answer token(s)")
    return QASample(tokens, info)


def answer_labels(sample: QASample) -> np.ndarray:
    """The sample's tokens with every non-answer id replaced by IGNORE."""
    labels = np.full(len(sample.tokens), IGNORE, dtype=np.int64)
    labels[-sample.info.answer_tokens:] = sample.answer
    return labels
