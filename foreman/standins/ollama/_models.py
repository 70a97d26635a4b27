"""The stand-in's "disk": model specs and Ollama's model-name rules.

Names follow Ollama's ``types/model/name.go`` (see ``docs/ollama-protocol.md``):
``[host/][namespace/]model[:tag]``
with defaults ``registry.ollama.ai``, ``library`` and ``latest``, matched
case-insensitively per part. ``llama3.2``, ``Llama3.2:LATEST`` and
``registry.ollama.ai/library/llama3.2:latest`` are one model; ``llama3.2`` is not
``llama3.2:3b``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from ._wire import rfc3339

__all__ = ["DEFAULT_MODELS", "ModelName", "ModelSpec", "parse_name"]

DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
DEFAULT_TAG: Final = "latest"

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")


class ModelName(NamedTuple):
    """A parsed model name, case preserved."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def key(self) -> str:
        """The case-folded full name: what two spellings of one model share."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def full(self) -> str:
        """``host/namespace/model:tag`` (used by Ollama's "does not support tools" text)."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def display(self) -> str:
        """Ollama's shortest display form: default host and namespace dropped, tag kept."""
        if self.host.lower() != DEFAULT_HOST:
            return self.full
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


def parse_name(name: str) -> ModelName | None:
    """Parse ``name`` with Ollama's defaults filled in, or None if Ollama calls it invalid.

    Deliberately independent of :mod:`foreman.dataplane.names`: the stand-in is the oracle
    foreman's name handling is tested against, so it must not share its bugs.
    """
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = DEFAULT_TAG
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    parts = name.split("/")
    if len(parts) > 3:
        parts = ["/".join(parts[:-2]), *parts[-2:]]
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    if not (
        _HOST.fullmatch(host)
        and _NAMESPACE.fullmatch(namespace)
        and _PART.fullmatch(model)
        and _PART.fullmatch(tag)
    ):
        return None
    return ModelName(host, namespace, model, tag)


def _parameter_count(size: str) -> int:
    """``"3.2B"`` -> 3_200_000_000, ``"137M"`` -> 137_000_000."""
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(size[-1:].upper(), 1.0)
    number = size[:-1] if scale != 1.0 else size
    try:
        return int(float(number) * scale)
    except ValueError:
        return 0


@dataclass(frozen=True)
class ModelSpec:
    """One model on the stand-in's disk, as ``/api/tags`` and ``/api/show`` describe it.

    Attributes:
        name: display name with tag, e.g. ``"llama3.2:latest"``.
        family: GGUF architecture, e.g. ``"llama"``; also ``details.family``.
        parameter_size: e.g. ``"3.2B"``.
        quantization_level: e.g. ``"Q4_K_M"``.
        capabilities: subset of ``completion``, ``tools``, ``thinking``, ``embedding``,
            ``insert``, ``vision`` (Ollama ≥ 0.30 lists them in ``/api/tags``).
        size: bytes on disk (``/api/tags`` ``size``); a loaded runner reports the same
            number as ``size`` and ``size_vram`` in ``/api/ps``.
        context_length: the trained context (``details.context_length``).
        embedding_length: the model's hidden size (``details.embedding_length``). The
            stand-in's embedding *vectors* are shorter (:attr:`vector_length`) to keep
            bodies small.
        modified_at: wall-clock nanoseconds since the epoch (fixed, for stable bytes).
        vector_length: floats in each embedding vector the stand-in returns.
        format: ``"gguf"``.
    """

    name: str
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    capabilities: tuple[str, ...] = ("completion", "tools")
    size: int = 2_019_393_189
    context_length: int = 131_072
    embedding_length: int = 3072
    modified_at: int = 1_780_000_000_000_000_000
    vector_length: int = 8
    format: str = "gguf"

    @classmethod
    def completion(cls, name: str, **changes: Any) -> ModelSpec:
        """A chat model (``completion``, ``tools``) with llama-like details."""
        return cls(name=name, **changes)

    @classmethod
    def embedding(cls, name: str, **changes: Any) -> ModelSpec:
        """An embedding-only model with nomic-bert-like details."""
        base: dict[str, Any] = {
            "family": "nomic-bert",
            "parameter_size": "137M",
            "quantization_level": "F16",
            "capabilities": ("embedding",),
            "size": 274_302_450,
            "context_length": 2048,
            "embedding_length": 768,
        }
        return cls(name=name, **{**base, **changes})

    @property
    def parsed(self) -> ModelName:
        parsed = parse_name(self.name)
        if parsed is None:
            raise ValueError(f"invalid model name: {self.name!r}")
        return parsed

    @property
    def digest(self) -> str:
        """Hex sha256 of the name, no ``sha256:`` prefix (Ollama's manifest digest form)."""
        return hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def runner_context(self) -> int:
        """``num_ctx`` of a loaded runner: Ollama's small-VRAM default 4096, capped by the model."""
        return min(4096, self.context_length)

    def details(self, *, lengths: bool) -> dict[str, Any]:
        """The ``details`` object; ``lengths`` adds ``context_length``/``embedding_length``
        (``/api/tags`` does, ``/api/ps`` and ``/api/show`` do not)."""
        details: dict[str, Any] = {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }
        if lengths:
            details["context_length"] = self.context_length
            details["embedding_length"] = self.embedding_length
        return details

    def tags_entry(self) -> dict[str, Any]:
        """One ``/api/tags`` entry, keys in Ollama's order."""
        return {
            "name": self.parsed.display,
            "model": self.parsed.display,
            "modified_at": rfc3339(self.modified_at),
            "size": self.size,
            "digest": self.digest,
            "details": self.details(lengths=True),
            "capabilities": list(self.capabilities),
        }

    def show(self) -> dict[str, Any]:
        """The ``/api/show`` body, keys in Ollama's order (``model_info`` always present)."""
        arch = self.family.replace("-", "_") if self.family != "nomic-bert" else "nomic-bert"
        body: dict[str, Any] = {
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {self.name}\n',
        }
        if "completion" in self.capabilities:
            body["parameters"] = (
                "temperature                    0.6\ntop_k                          20"
            )
            body["template"] = "{{- range .Messages }}{{ .Content }}{{ end }}"
        body["details"] = self.details(lengths=False)
        body["model_info"] = {
            "general.architecture": arch,
            "general.parameter_count": _parameter_count(self.parameter_size),
            f"{arch}.context_length": self.context_length,
            f"{arch}.embedding_length": self.embedding_length,
            "tokenizer.ggml.tokens": [],
        }
        body["capabilities"] = list(self.capabilities)
        body["modified_at"] = rfc3339(self.modified_at)
        return body

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)


DEFAULT_MODELS: Final[tuple[ModelSpec, ...]] = (
    ModelSpec.completion(
        "llama3.2:latest",
        modified_at=1_781_000_000_000_000_000,
    ),
    ModelSpec(
        "qwen3:8b",
        family="qwen3",
        parameter_size="8.2B",
        capabilities=("completion", "tools", "thinking"),
        size=5_225_388_164,
        context_length=40_960,
        embedding_length=4096,
        modified_at=1_782_990_845_318_220_710,
    ),
    ModelSpec.embedding(
        "nomic-embed-text:latest",
        modified_at=1_782_838_904_000_000_000,
    ),
)
"""``llama3.2:latest`` (completion, tools), ``qwen3:8b`` (completion, tools, thinking) and
``nomic-embed-text:latest`` (embedding; ``embedding_length`` 768, but the stand-in's
vectors have :attr:`ModelSpec.vector_length` = 8 floats)."""
