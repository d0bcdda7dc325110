"""torch.export programs out of and into fxpress: `Graph.save_pt2`, `fxpress.load_pt2` / `fxpress.capture(path)`.

Out: a pruned and an int8 graph saved as .pt2 run in a fresh PyTorch process
after ``import fxpress`` (which registers fxpress's ops) and give the eager
graph's outputs bit for bit; without fxpress, torch's own error names the
``torch.ops.fxpress`` operator and says to import it. In: a model saved by
plain ``torch.export.save`` (a training job's hand-over, no Python class) is
a Graph with its example inputs and dynamic batch, the passes run on it, and
the CLI takes it where it takes ``MODULE:FACTORY``. Bad input: a missing
file, a file that is not an archive, operators nobody registered (fxpress's
loader names each and the library to import).
"""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fxpress
from fxpress.cli import main
from fxpress.errors import CaptureError, ExportError
from fxpress.passes import Calibrate, FoldBatchNorm, FoldQDQ, Observe
from fxpress.passes.prune import PruneChannels

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "fxpress"
BATCH = {0: torch.export.Dim("batch")}

LOAD_CHILD = """
import sys
import numpy as np
import fxpress  # before torch: registering fxpress's ops does not depend on the order
import torch

x = torch.from_numpy(np.load(sys.argv[1]))
for path in sys.argv[2:]:
    program = torch.export.load(path)
    np.save(path + ".out.npy", program.module()(x).detach().numpy())
print("loaded", len(sys.argv) - 2)
"""

NO_FXPRESS_CHILD = """
import sys
import torch

try:
    torch.export.load(sys.argv[1])
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(3)
"""

FOREIGN_CHILD = """
import sys
import torch

@torch.library.custom_op("fxpress_pt2_test::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2

@torch.library.custom_op("fxpress::from_the_future", mutates_args=())
def future(x: torch.Tensor) -> torch.Tensor:
    return x + 1

twice.register_fake(lambda x: torch.empty_like(x))
future.register_fake(lambda x: torch.empty_like(x))

class Model(torch.nn.Module):
    def forward(self, x):
        return torch.ops.fxpress.from_the_future(torch.ops.fxpress_pt2_test.twice(x))

torch.export.save(torch.export.export(Model(), (torch.randn(2, 3),)), sys.argv[1])
"""


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(y.flatten(1))


def _child(code: str, *args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def saved_by_torch(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A model a training job saved with plain torch.export (eval mode, dynamic batch)."""
    torch.manual_seed(0)
    model = ConvNet().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    program = torch.export.export(model, (torch.randn(4, 3, 8, 8),), dynamic_shapes=(BATCH,))
    path = tmp_path_factory.mktemp("pt2") / "convnet.pt2"
    torch.export.save(program, path)
    return path, model


def test_a_saved_program_is_a_graph_with_its_inputs_and_dynamic_batch(saved_by_torch):
    path, model = saved_by_torch
    graph = fxpress.capture(path)
    assert graph.model_name == "convnet" and graph.example_inputs[0].shape == (4, 3, 8, 8)
    (dims,) = graph.dynamic_shapes
    assert list(dims) == [0]
    x = torch.randn(7, 3, 8, 8)
    torch.testing.assert_close(graph(x), model(x), rtol=0, atol=0)
    given = fxpress.load_pt2(path, (torch.randn(2, 3, 8, 8),))
    assert given.example_inputs[0].shape == (2, 3, 8, 8)


def test_pruned_and_int8_graphs_run_in_pytorch_after_import_fxpress(saved_by_torch, tmp_path):
    path, _ = saved_by_torch
    graph = fxpress.optimize(fxpress.capture(path), [FoldBatchNorm()])
    pruned = fxpress.optimize(graph, [PruneChannels(ratio=0.5)])
    data = [(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)),) for i in range(3)]
    int8 = fxpress.optimize(graph, [Observe(per_channel=True), Calibrate(data=data), FoldQDQ()])
    files = [pruned.save_pt2(tmp_path / "pruned.pt2"), int8.save_pt2(tmp_path / "int8.pt2")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.pt2", "pruned.pt2"]  # no temporary left
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    np.save(tmp_path / "x.npy", x.numpy())
    proc = _child(LOAD_CHILD, tmp_path / "x.npy", *files)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for g, f in zip((pruned, int8), files, strict=True):
        np.testing.assert_array_equal(np.load(f"{f}.out.npy"), g(x).numpy())
    with zipfile.ZipFile(files[1]) as archive:
        note = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("extra/fxpress.json"))))
    assert "fxpress.quantize.default" in note["fxpress_ops"] and "import fxpress" in note["load"]
    assert note["pipeline"].endswith("fold-qdq")


def test_without_fxpress_torch_names_the_fxpress_op(saved_by_torch, tmp_path):
    path, _ = saved_by_torch
    data = [(torch.randn(8, 3, 8, 8),)]
    graph = fxpress.capture(path)
    int8 = fxpress.optimize(graph, [Observe(), Calibrate(data=data), FoldQDQ()]).save_pt2(tmp_path / "int8.pt2")
    proc = _child(NO_FXPRESS_CHILD, int8)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "torch.ops.fxpress.quantize.default" in proc.stderr
    assert "Please import the custom op to register it" in proc.stderr


def test_loader_names_unregistered_ops_and_what_to_import(tmp_path):
    path = tmp_path / "foreign.pt2"
    proc = _child(FOREIGN_CHILD, path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with pytest.raises(ExportError) as err:
        fxpress.load_pt2(path)
    text = str(err.value)
    assert "not registered here: fxpress::from_the_future, fxpress_pt2_test::twice" in text
    assert "`import fxpress`" in text and "defines no fxpress::from_the_future" in text
    assert "import the library that defines the fxpress_pt2_test operators" in text
    with pytest.raises(ExportError, match="fxpress_pt2_test::twice"):
        fxpress.capture(path)


def test_bad_files(tmp_path):
    with pytest.raises(CaptureError, match="does not exist"):
        fxpress.capture(tmp_path / "missing.pt2")
    (tmp_path / "notes.pt2").write_text("not a zip")
    with pytest.raises(ExportError, match=r"not a torch\.export archive"):
        fxpress.load_pt2(tmp_path / "notes.pt2")
    with pytest.raises(CaptureError, match="drop dynamic_shapes"):
        fxpress.capture(tmp_path / "notes.pt2", dynamic_shapes=(BATCH,))
    with pytest.raises(CaptureError, match="capturing a Identity needs example_inputs"):
        fxpress.capture(nn.Identity())


def test_cli_takes_a_pt2_model(saved_by_torch, tmp_path, capsys):
    path, model = saved_by_torch
    out = tmp_path / "folded.pt2"
    assert main(["export", str(path), "--passes", "fold-bn,dce", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    folded = fxpress.load_pt2(out)
    assert not any("batch_norm" in str(n.target) for n in folded.nodes("call_function"))
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert main(["export", str(tmp_path / "missing.pt2"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "missing.pt2 does not exist" in capsys.readouterr().err


def _defines_fxpress_ops(path: Path) -> bool:
    """Whether a module registers an ``fxpress::`` op (``custom_op("fxpress::..")`` or ``f"{_LIB}::.."``)."""
    text = path.read_text()
    return "custom_op(" in text and ('"fxpress::' in text or ('_LIB = "fxpress"' in text))


def test_import_fxpress_registers_every_module_defining_ops():
    from fxpress import _register_torch_ops

    tree = ast.parse(inspect.getsource(_register_torch_ops))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    defining = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in PACKAGE.rglob("*.py") if _defines_fxpress_ops(p)
    }
    assert defining and defining - {"fxpress.ir.ops"}  # the scan finds more than one module
    assert defining <= imported, f"add to fxpress._register_torch_ops: {sorted(defining - imported)}"
