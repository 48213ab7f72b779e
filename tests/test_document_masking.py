"""Document masking (`data.document_masking`): BOS/EOS around every packed document, positions that
restart at each document, attention that stays inside it, on every backend and position type.

Real components throughout: the SentencePiece model and WebDataset shards `megaseqpe-prep` builds
(conftest), the real packer and training stream, real GPTs through the language task's own forward.
"""
from __future__ import annotations

import json
import math
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch

from megaseqpe.config import Config, ConfigError, DataConfig, ModelConfig, PositionConfig, TrainConfig
from megaseqpe.data import ManifestError, build_train_loader, eval_batches, load_manifest
from megaseqpe.data.packing import document_layout, pack_rows
from megaseqpe.model import build_gpt
from megaseqpe.model.attention import attention, block_causal_mask, document_cu_seqlens, flash_available
from megaseqpe.positions import StepPlan
from megaseqpe.positions.base import default_positions
from megaseqpe.positions.baselines import Rotary, alibi_slopes
from megaseqpe.tasks import build_task
from megaseqpe.tasks.language import DocumentMarkers, model_inputs

POSITION_TYPES = ("learned", "sinusoidal", "rope", "alibi", "nope", "seqpe")
TEXTS = {  # real text through the real tokenizer: documents of different lengths
    "A": "def area(r):\n    return 3.14 * r * r\n",
    "B": "import os\nfor name in os.listdir('.'):\n    print(name.upper(), len(name))\n",
    "C1": "x = 1\n",
    "C2": "y = [x, x + 1]\n",
    "D": "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
}


@pytest.fixture(scope="module")
def pieces(data_tokenizer: Path) -> dict[str, list[int]]:
    processor = sentencepiece.SentencePieceProcessor(model_file=str(data_tokenizer))
    return {name: processor.encode(text) for name, text in TEXTS.items()}


@pytest.fixture(scope="module")
def markers(data_manifest: Path) -> DocumentMarkers:
    found = DocumentMarkers.of(str(data_manifest))
    assert found.bos_id is not None and found.bos_id != found.eos_id  # the test tokenizer has a BOS
    return found


def make_config(manifest: Path, position_type: str, backend: str, masking: bool) -> Config:
    model = ModelConfig(n_layer=2, n_head=4, d_model=32, vocab_size=1000, max_seq_len=128, dropout=0.0,
                        attention_backend=backend)
    position = PositionConfig(type=position_type, max_position=1000, encoder_dropout=0.0, random_shift_rate=0.0)
    return Config(model=model, position=position, train=TrainConfig(seed=0),
                  data=DataConfig(manifest=str(manifest), document_masking=masking))


def packed(pieces: dict[str, list[int]], markers: DocumentMarkers, *names: str) -> list[int]:
    """The documents as the packer lays them out with a BOS: [BOS] + tokens + EOS each, the last
    one without its EOS so that it ends the row."""
    row = []
    for name in names:
        row += [markers.bos_id, *pieces[name], markers.eos_id]
    return row[:-1]


def last_losses(task, model, rows: list[list[int]], count: int) -> torch.Tensor:
    """Per-token losses `[rows, count]` of the last `count` targets of each row, through the task's forward."""
    batch = torch.tensor(rows)
    plan = StepPlan(default_positions(batch.shape[1] - 1, batch.device), None, shifted=False)
    out, _ = task.forward(model, batch, plan)
    losses = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2).float(), batch[:, 1:], reduction="none")
    return losses[:, -count:]


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("position_type", POSITION_TYPES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_loss_of_a_document_does_not_depend_on_earlier_documents(data_manifest, pieces, markers, position_type,
                                                                  backend, mode):
    """D's tokens, last in every row, after A, after B (another length), after two documents, and
    after the tail of a document (a row that starts mid-document): identical per-token losses with
    masking (train mode: SeqPE's unique-position batching; eval: its table), different without."""
    torch.manual_seed(0)
    masked = build_task(make_config(data_manifest, position_type, backend, True))
    model = build_gpt(masked.config).train(mode == "train")
    unmasked = build_task(make_config(data_manifest, position_type, backend, False))
    count = len(pieces["D"])  # the targets d1 (from the BOS) ... dk
    # One batch of two rows (masks differ per row), cut to one length: they start inside A and C1.
    rows = [packed(pieces, markers, "A", "D"), packed(pieces, markers, "C1", "C2", "D")]
    same_length = [row[-min(map(len, rows)):] for row in rows]
    tail = packed(pieces, markers, "B", "D")[5:]  # starts inside B, without its BOS
    with torch.set_grad_enabled(mode == "train"):
        for task, equal in ((masked, True), (unmasked, False)):
            reference = last_losses(task, model, same_length, count)
            others = [reference[1:], last_losses(task, model, [packed(pieces, markers, "B", "D")], count),
                      last_losses(task, model, [tail], count)]
            for other in others:
                if equal:
                    torch.testing.assert_close(other, reference[:1].expand_as(other), rtol=1e-6, atol=1e-6)
                else:  # the same check can fail: without masking D reads what came before it
                    assert (other - reference[:1]).abs().max() > 1e-3


def test_positions_restart_at_every_document(markers):
    eos, bos = markers.eos_id, markers.bos_id
    batch = torch.tensor([[7, 8, eos, bos, 5, 6, 9, eos, bos, 4, 3],
                          [bos, 5, eos, bos, eos, bos, 9, 9, 9, 9, 9]])
    documents, restart = document_layout(batch[:, :-1], eos)
    assert restart.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]]
    assert documents.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]]
    # SeqPE's shifted windows: each row's documents restart from the row's window start.
    shifted = torch.tensor([100, 300]).view(2, 1, 1) + torch.arange(10).view(1, 10, 1)
    inputs = model_inputs(batch, markers, shifted)
    assert torch.equal(inputs["positions"][..., 0], restart + torch.tensor([[100], [300]]))
    # A BOS target is ignored by the loss (it always follows an EOS); every other target counts.
    assert torch.equal(inputs["targets"], batch[:, 1:].masked_fill(batch[:, 1:] == bos, -100))
    assert model_inputs(batch, None)["positions"] is None  # unmasked: the plan's positions, untouched


def test_packer_puts_bos_and_eos_around_documents_and_resumes_exactly(pieces, markers):
    documents = [(0, i, np.array(pieces[name], dtype=np.int64)) for i, name in enumerate(TEXTS)]
    row_len = 7  # shorter than most documents: rows start and end inside them, or on a BOS or EOS
    rows = list(pack_rows(documents, row_len, markers.eos_id, bos_id=markers.bos_id))
    stream = [token for name in TEXTS for token in (markers.bos_id, *pieces[name], markers.eos_id)]
    assert np.concatenate([row for row, _ in rows]).tolist() == stream[:len(rows) * row_len]
    for cut, (_, position) in enumerate(rows):  # resuming from every saved position gives the same rows
        resumed = pack_rows(documents[position.document:], row_len, markers.eos_id, position.offset, markers.bos_id)
        assert [row.tolist() for row, _ in resumed] == [row.tolist() for row, _ in rows[cut + 1:]], cut
    unmasked = list(pack_rows(documents, row_len, markers.eos_id))
    assert markers.bos_id not in np.concatenate([row for row, _ in unmasked])  # off: the stream as before


def test_training_stream_with_bos_resumes_exactly(data_manifest, markers):
    make = lambda: build_train_loader(data_manifest, max_seq_len=63, micro_batch_size=2, seed=3, num_workers=0,
                                      bos_id=markers.bos_id)
    reference = list(islice(make(), 40))
    rows = torch.cat(reference)
    starts = (rows[:, :-1] == markers.eos_id).nonzero()
    assert len(starts) and bool((rows[starts[:, 0], starts[:, 1] + 1] == markers.bos_id).all())  # EOS, then BOS
    first = make()
    head = list(islice(first, 17))
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert all(torch.equal(a, b) for a, b in zip(head + list(islice(resumed, 23)), reference))
    val = next(eval_batches(data_manifest, "val", max_seq_len=63, batch_size=1, bos_id=markers.bos_id))
    assert int(val[0, 0]) == markers.bos_id  # evaluation rows are packed as in training


def segment_reference(q, k, v, documents, *, bias=None):
    """Causal attention run on each document's slice alone: what masking must equal."""
    out = torch.empty_like(v)
    for b in range(q.shape[0]):
        for d in documents[b].unique():
            s = (documents[b] == d).nonzero().flatten()
            logits = q[b][:, s] @ k[b][:, s].transpose(-1, -2) / math.sqrt(q.shape[-1])
            if bias is not None:
                logits = logits + bias[:, : len(s), : len(s)]
            future = torch.ones(len(s), len(s), dtype=torch.bool).triu(1)
            out[b][:, s] = logits.masked_fill(future, float("-inf")).softmax(-1) @ v[b][:, s]
    return out


DOCUMENTS = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3]])


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("alibi", [False, True])
def test_block_causal_attention_equals_each_document_alone(backend, alibi):
    g = torch.Generator().manual_seed(0)
    B, H, N, D = 2, 4, DOCUMENTS.shape[1], 8
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    slopes = alibi_slopes(H) if alibi else None
    # ALiBi's bias within a document: -slope * (distance of the restarted positions), from 0.
    i = torch.arange(N)
    bias = -slopes[:, None, None] * (i[:, None] - i[None]).abs() if alibi else None
    out = attention(q, k, v, causal=True, backend=backend, alibi_slopes=slopes, documents=DOCUMENTS)
    torch.testing.assert_close(out, segment_reference(q, k, v, DOCUMENTS, bias=bias), rtol=1e-5, atol=1e-5)
    dense = torch.zeros(B, 1, N, N, dtype=torch.bool)
    for b, i, j in np.ndindex(B, N, N):
        dense[b, 0, i, j] = bool(DOCUMENTS[b, i] == DOCUMENTS[b, j]) and j <= i
    assert torch.equal(block_causal_mask(DOCUMENTS, causal=True), dense)


def test_flash_varlen_offsets_and_no_mask_behind_a_cache():
    cu_seqlens, longest = document_cu_seqlens(DOCUMENTS)
    # Row 0: 3, 5, 4 tokens; row 1 (from 12): 1, 8, 2, 1.
    assert cu_seqlens.tolist() == [0, 3, 8, 12, 13, 21, 23, 24] and cu_seqlens.dtype == torch.int32
    assert longest == 8
    from megaseqpe.model.kv_cache import LayerCache
    q = torch.zeros(1, 1, 2, 8)
    with pytest.raises(ValueError, match="KV cache holds one document"):
        attention(q, q, q, causal=True, backend="sdpa", cache=LayerCache(), documents=torch.zeros(1, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("alibi", [False, True])
def test_cuda_flash_varlen_equals_block_causal_sdpa(alibi):
    g = torch.Generator().manual_seed(1)
    B, H, N, D = 2, 4, DOCUMENTS.shape[1], 16
    q, k, v = (torch.randn(B, H, N, D, generator=g).cuda().bfloat16().requires_grad_() for _ in range(3))
    if not flash_available(q):
        pytest.skip("flash-attn is not installed")
    rotary = Rotary(D).signal(document_layout(DOCUMENTS, -1)[1][..., None].cuda()).layers[0].rotary
    slopes = alibi_slopes(H).cuda() if alibi else None
    documents = DOCUMENTS.cuda()
    flash = attention(q, k, v, causal=True, backend="flash", rotary=rotary, alibi_slopes=slopes, documents=documents)
    f32 = [t.detach().float().requires_grad_() for t in (q, k, v)]
    sdpa = attention(*f32, causal=True, backend="sdpa", rotary=rotary, alibi_slopes=slopes, documents=documents)
    torch.testing.assert_close(flash.float(), sdpa, rtol=3e-2, atol=3e-2)
    weight = torch.randn(flash.shape, device="cuda")
    for got, want in zip(torch.autograd.grad((flash.float() * weight).sum(), (q, k, v)),
                         torch.autograd.grad((sdpa * weight).sum(), f32)):
        torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2)


def test_manifest_without_its_tokenizer_is_one_clear_error(data_manifest, tmp_path):
    """Masking reads the BOS from the tokenizer file: a copied manifest without it names the file."""
    copy = tmp_path / "manifest.json"
    copy.write_text(Path(data_manifest).read_text())
    with pytest.raises(ManifestError, match=r"tokenizer .*tokenizer\.model: missing; data\.document_masking"):
        DocumentMarkers.of(str(copy))
    assert load_manifest(data_manifest).tokenizer.eos_id == DocumentMarkers.of(str(data_manifest)).eos_id


def test_image_runs_refuse_document_masking():
    with pytest.raises(ConfigError, match=r"^data\.document_masking: .*language_modeling"):
        Config(task="image_classification", data=DataConfig(document_masking=True), position=PositionConfig(n_dims=2))
