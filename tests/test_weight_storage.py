"""How an artifact stores its weights (runtime/storage.py): codebooks, hashed buckets, bit-exact on load.

The oracle is the dense array: every form must load back bit for bit (``-0.0``
stays ``-0.0``), and the compiled module loaded from disk must compute what
the module that was saved computes. Sizes are checked against the counts the
forms promise (indices of ceil(log2(entries)) bits plus the codebook; buckets
alone for a hashed weight).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fxpress
from fxpress.cli import main
from fxpress.ir import annotations as notes
from fxpress.reports.size import artifact_sizes, entropy_bytes, huffman_bits, weight_sizes
from fxpress.runtime import codebook, storage
from fxpress.runtime.hashing import expand, hash_buckets
from fxpress.runtime.packing import pack_fields, unpack_fields
from fxpress.sharing.annotations import SharedWeights


@pytest.mark.parametrize("bits", range(1, 9))
def test_fields_of_any_width_round_trip(bits):
    rng = np.random.default_rng(bits)
    fields = rng.integers(0, 2**bits, size=1001).astype(np.uint8)
    packed = pack_fields(fields, bits)
    assert packed.size == -(-1001 * bits // 8)
    assert np.array_equal(unpack_fields(packed, bits, 1001), fields)
    with pytest.raises(ValueError, match="does not fit"):
        pack_fields(np.array([2**bits], np.uint16), bits)


def test_codebook_round_trips_bit_patterns_and_is_smaller():
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal(48).astype(np.float32)
    weight = centroids[rng.integers(0, 48, size=(300, 784))]
    weight[0, :5] = [0.0, -0.0, 0.0, -0.0, np.float32(1e-30)]  # sign of zero and a tiny value kept apart
    out, tables = storage.encode_params({"w": weight, "b": rng.standard_normal(300).astype(np.float32)})
    entry = tables["codebook"]["w"]
    assert entry == {"bits": 6, "entries": 51, "dtype": "float32", "shape": [300, 784]}
    assert out["w"].nbytes == -(-300 * 784 * 6 // 8) and out["w" + codebook.SUFFIX].nbytes == 51 * 4
    assert "b" not in tables["codebook"]  # 300 distinct floats: stored as they are
    back = storage.decode_params(out, tables)
    assert back["w"].view(np.uint32).tolist() == weight.view(np.uint32).tolist()
    assert set(back) == {"w", "b"}


def test_int8_forms_pick_the_smaller():
    levels = np.array([0, 1, -1, 2, -2, 4, -4, 8, -8, 16, -16, 32, -32, 64, -64], np.int8)  # logarithmic
    rng = np.random.default_rng(1)
    log_weight = levels[rng.integers(0, 15, size=4096)]
    uniform4 = rng.integers(-8, 8, size=4096).astype(np.int8)
    out, tables = storage.encode_params({"log": log_weight, "u4": uniform4})
    assert tables["codebook"]["log"]["bits"] == 4 and tables["packed"]["u4"]["bits"] == 4
    back = storage.decode_params(out, tables)
    assert np.array_equal(back["log"], log_weight) and np.array_equal(back["u4"], uniform4)


def test_hashed_weight_is_stored_as_its_buckets():
    rng = np.random.default_rng(2)
    buckets = rng.standard_normal(100).astype(np.float32)
    weight = expand(buckets, (40, 50), seed=3)
    out, tables = storage.encode_params({"w": weight}, {"w": {"buckets": 100, "seed": 3}})
    assert out["w"].shape == (100,) and tables["hashed"]["w"]["shape"] == [40, 50]
    assert np.array_equal(storage.decode_params(out, tables)["w"], weight)
    broken = weight.copy()
    broken[0, 0] += 1.0
    with pytest.raises(ValueError, match=r"'w'.*does not follow its hash"):
        storage.encode_params({"w": broken}, {"w": {"buckets": 100, "seed": 3}})


def test_a_broken_codebook_entry_is_a_value_error():
    weight = np.repeat(np.arange(4, dtype=np.float32), 64)
    out, tables = storage.encode_params({"w": weight})
    bad = json.loads(json.dumps(tables))
    bad["codebook"]["w"]["entries"] = 5
    with pytest.raises(ValueError, match="codebook parameter 'w'"):
        storage.decode_params(out, bad)
    with pytest.raises(ValueError, match="lacks its indices or its codebook"):
        storage.decode_params({"w": out["w"]}, tables)


class _Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(64, 96), torch.nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _shared_graph(hashed: bool):
    torch.manual_seed(0)
    model = _Mlp().eval()
    with torch.no_grad():
        if hashed:  # fc1 as HashedNets: 1/8 of its weights stored
            buckets = model.fc1.weight.flatten()[:768].numpy().copy()
            model.fc1.weight.copy_(torch.from_numpy(expand(buckets, (96, 64), seed=5)))
        else:  # fc1 with 16 shared values
            centroids = torch.linspace(-0.1, 0.1, 16)
            model.fc1.weight.copy_(centroids[torch.randint(0, 16, (96, 64))])
    x = torch.randn(8, 64)
    graph = fxpress.capture(model, (x,))
    node = next(n for n in graph.nodes("get_attr") if n.target == "fc1.weight")
    note = SharedWeights("hash", 768, seed=5) if hashed else SharedWeights("kmeans", 16, bits=4)
    notes.annotate(node, note)
    graph.verify()
    return graph, x


@pytest.mark.parametrize("hashed", [False, True], ids=["codebook", "hashed"])
def test_compiled_shared_weights_load_back_the_same(hashed, tmp_path):
    graph, x = _shared_graph(hashed)
    compiled = fxpress.compile(graph, target="x86")
    want = compiled(x.numpy())
    assert np.allclose(want, graph(x).detach().numpy(), atol=1e-5)
    compiled.save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    summary = manifest["storage"]
    assert summary["stored_bytes"] < summary["dense_bytes"]
    if hashed:
        assert manifest["weights_stage"] == "raw" and len(manifest["hashed"]) == 1
        (entry,) = manifest["hashed"].values()
        assert entry == {"buckets": 768, "seed": 5, "dtype": "float32", "shape": [96, 64]}
    else:
        assert "weights_stage" not in manifest and summary["forms"]["codebook"] == 1
    loaded = fxpress.load(tmp_path / "a")
    assert np.array_equal(loaded(x.numpy()), want)
    loaded.save(tmp_path / "b")  # a loaded module saves again, in the same form
    again = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert again["storage"] == summary
    assert np.array_equal(fxpress.load(tmp_path / "b")(x.numpy()), want)


def test_hash_indices_are_spread_and_fixed():
    index, sign = hash_buckets((300, 784), 3675, seed=7)
    counts = np.bincount(index.ravel(), minlength=3675)
    assert counts.min() > 20 and counts.max() < 110  # 64 a bucket on average
    assert abs(float(sign.mean())) < 0.01
    # pinned: artifacts store only the buckets, so the hash may never change
    assert index[0, :4].tolist() == [473, 616, 1619, 2842] and sign[0, :4].tolist() == [-1, -1, 1, 1]
    assert not np.array_equal(index, hash_buckets((300, 784), 3675, seed=8)[0])


def test_huffman_bits_are_exact_code_lengths():
    assert huffman_bits([7]) == 7  # one symbol: a bit each
    assert huffman_bits([1, 1]) == 2 and huffman_bits([1, 1, 2]) == 6  # codes 10, 11, 0
    assert huffman_bits([0, 5, 0, 5]) == 10  # absent symbols cost nothing


def test_entropy_estimate_uses_the_sparse_form_when_smaller():
    rng = np.random.default_rng(3)
    centroids = rng.standard_normal(64).astype(np.float32)
    weight = centroids[rng.integers(0, 64, size=(300, 784))]
    weight[rng.random(weight.shape) > 0.08] = 0.0  # 8 % of weights left, as Deep Compression's LeNet-300-100
    coded = entropy_bytes(weight)
    dense_indices = -(-weight.size * 7 // 8)  # 65 entries: 7-bit indices
    assert coded is not None and coded < dense_indices / 4  # the relative-index form wins by far
    assert coded > weight.size * 0.08 * 6 / 8  # but cannot beat 6 bits a surviving weight
    assert entropy_bytes(rng.standard_normal(1000).astype(np.float32)) is None  # > 256 values: not coded


def test_size_report_of_a_graph_and_of_its_artifact(tmp_path, capsys):
    graph, _ = _shared_graph(hashed=False)
    report = weight_sizes(graph)
    fc1 = next(t for t in report.tensors if t.name == "fc1.weight")
    assert fc1.form == "codebook" and fc1.dense_fp32_bytes == 96 * 64 * 4
    assert fc1.stored_bytes == 96 * 64 * 4 // 8 + 16 * 4  # 4-bit indices + 16 float centroids
    assert fc1.entropy_bytes <= fc1.stored_bytes
    assert report.dense_fp32_bytes == sum(p.numel() * 4 for p in graph.params().values())
    assert "total" in report.text() and report.to_json()["ratios"]["stored"] > 1
    fxpress.compile(graph, target="x86").save(tmp_path / "a")
    assert (
        artifact_sizes(tmp_path / "a").stored_bytes
        == json.loads((tmp_path / "a" / "manifest.json").read_text())["storage"]["stored_bytes"]
    )
    assert main(["inspect", str(tmp_path / "a"), "--sizes"]) == 0
    out = capsys.readouterr().out
    assert "codebook 1" in out and "entropy-coded" in out
