"""Loading a broker catalog from TOML, and the errors a user gets for a bad one."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsed.broker.catalog import CAPABILITIES, Catalog, CatalogEntry, RoleSpec
from nsed.config import ModelSpec
from nsed.errors import ConfigError

GOOD = """
[[models]]
name = "qwen-7b"
base_url = "http://127.0.0.1:8001/v1"
model = "Qwen/Qwen2.5-7B-Instruct"
family = "Qwen"
params_b = 7.6
vram_gb = 16
capabilities = ["math", "code", "Text"]
context_window = 32768
prior_skill = { math = 0.6, code = 0.55 }
latency_s = 4.0

[[models]]
name = "gpt-mini"
base_url = "https://api.example.com/v1/"
model = "gpt-4o-mini"
api_key_env = "EXAMPLE_API_KEY"
input_price = 0.15
output_price = 0.6
family = "openai"
capabilities = ["math", "code", "text", "tools", "long_context"]

[[roles]]
name = "solver"
capability = "math"
count = 2

[[roles]]
name = "critic"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_models_and_roles(tmp_path):
    catalog = Catalog.from_toml(write(tmp_path, GOOD))
    assert catalog.names() == ["qwen-7b", "gpt-mini"]
    qwen = catalog.get("qwen-7b")
    assert isinstance(qwen, ModelSpec)  # usable wherever a team member is
    assert qwen.family == "qwen"  # normalised, so "Qwen" and "qwen" share the family cap
    assert qwen.capabilities == ["math", "code", "text"]
    assert qwen.prior_skill == {"math": 0.6, "code": 0.55}
    assert (qwen.params_b, qwen.vram_gb, qwen.context_window, qwen.latency_s) == (
        7.6,
        16,
        32768,
        4.0,
    )
    assert qwen.self_hosted and not catalog.get("gpt-mini").self_hosted
    mini = catalog.get("gpt-mini")
    assert mini.base_url == "https://api.example.com/v1"
    assert (mini.input_price, mini.output_price, mini.vram_gb) == (0.15, 0.6, 0)
    assert mini.has("tools") and mini.has(None) and not qwen.has("tools")
    assert catalog.roles == [
        RoleSpec(name="solver", capability="math", count=2),
        RoleSpec(name="critic", capability=None, count=1),
    ]


def test_roles_are_optional(tmp_path):
    text = GOOD.split("[[roles]]")[0]
    assert Catalog.from_toml(write(tmp_path, text)).roles == []


def test_get_unknown_model_lists_known_names(tmp_path):
    catalog = Catalog.from_toml(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"no model named 'llama'.*known: qwen-7b, gpt-mini"):
        catalog.get("llama")


def test_duplicate_model_names(tmp_path):
    text = GOOD.replace('name = "gpt-mini"', 'name = "qwen-7b"')
    with pytest.raises(ConfigError, match="model names must be unique; repeated: qwen-7b") as info:
        Catalog.from_toml(write(tmp_path, text))
    assert str(write(tmp_path, text)) in str(info.value)


def test_unknown_capability_lists_valid_ones(tmp_path):
    text = GOOD.replace('"math", "code", "Text"', '"math", "coding"')
    with pytest.raises(ConfigError) as info:
        Catalog.from_toml(write(tmp_path, text))
    message = str(info.value)
    assert "models.0.capabilities" in message
    assert "unknown capability 'coding'" in message
    assert "valid capabilities are: " + ", ".join(CAPABILITIES) in message


def test_unknown_capability_in_role_and_prior(tmp_path):
    role = GOOD.replace('capability = "math"', 'capability = "algebra"')
    with pytest.raises(ConfigError, match=r"roles\.0\.capability.*unknown capability 'algebra'"):
        Catalog.from_toml(write(tmp_path, role))
    prior = GOOD.replace("math = 0.6", "maths = 0.6")
    with pytest.raises(ConfigError, match="unknown capability 'maths'"):
        Catalog.from_toml(write(tmp_path, prior))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("input_price = 0.15", "input_price = -0.15", r"models\.1\.input_price.*greater than"),
        ("vram_gb = 16", "vram_gb = -16", r"models\.0\.vram_gb"),
        ("math = 0.6", "math = 1.6", r"prior_skill\.math = 1\.6 must be within \[0, 1\]"),
        ("latency_s = 4.0", "latency_s = 0", r"models\.0\.latency_s"),
        ('family = "openai"', 'family = "  "', r"family must not be blank"),
        ('family = "openai"\n', "", r"models\.1\.family: Field required"),
        ("count = 2", "count = 0", r"roles\.0\.count"),
        ('[[roles]]\nname = "critic"', '[[roles]]\nname = "solver"', "role names must be unique"),
        ("latency_s = 4.0", 'latency_s = 4.0\nflavour = "x"', r"flavour: Extra inputs"),
        ("latency_s = 4.0", "latency_s = 4.0\nreplicas = 2", "replicas is not supported"),
    ],
)
def test_bad_values_are_config_errors(tmp_path, old, new, message):
    assert old in GOOD
    with pytest.raises(ConfigError, match=message):
        Catalog.from_toml(write(tmp_path, GOOD.replace(old, new, 1)))


def test_empty_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="models: Field required"):
        Catalog.from_toml(write(tmp_path, "# no models\n"))
    with pytest.raises(ConfigError, match="models: List should have at least 1 item"):
        Catalog.from_toml(write(tmp_path, "models = []\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        Catalog.from_toml(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        Catalog.from_toml(write(tmp_path, "[[models]\nname = 1\n"))


def test_python_api_validation():
    base = {"name": "a", "base_url": "http://127.0.0.1:1/v1", "model": "m", "family": "f"}
    # A dict from the Python API gets the same ConfigError as a TOML file...
    with pytest.raises(ConfigError, match=r"api: models\.1\.capabilities: unknown capability"):
        Catalog.model_validate_toml(
            {"models": [base, {**base, "name": "b", "capabilities": ["vision"]}]}, source="api"
        )
    # ...and direct construction raises pydantic's ValidationError (a ValueError), like ModelSpec.
    with pytest.raises(ValueError, match="unknown capability 'vision'"):
        CatalogEntry(**base, capabilities=["vision"])
    with pytest.raises(ValueError, match="repeated: a"):
        Catalog(models=[CatalogEntry(**base), base])
    with pytest.raises(ValueError, match="unknown capability"):
        RoleSpec(name="x", capability="vision")
    entry = CatalogEntry(**base, capabilities=["MATH", "math", " code "])
    assert entry.capabilities == ["math", "code"]
