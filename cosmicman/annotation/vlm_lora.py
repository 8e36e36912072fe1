"""The VLM annotator's building blocks: its constants and errors, checkpoint identity, the LoRA
configuration (:class:`LoraSpec`) and immutable adapter weights."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image

from cosmicman.core.imageio import decode_image

KIND = "vlm"
FORMAT_VERSION = 1
DEFAULT_PROMPT = "Question: {question} Answer:"
SUPPORTED_MODEL_TYPES = ("blip-2", "instructblip")
TINY_SCHEME = "tiny-vlm:"
# Attention projection names of the language models BLIP-2 / InstructBLIP ship with (OPT, Llama /
# Vicuna, T5) and a few common others; only Linear layers inside an attention block are matched.
LM_ATTENTION_PROJECTIONS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "out_proj",
    "q",
    "k",
    "v",
    "o",
    "query",
    "key",
    "value",
    "qkv_proj",
    "c_attn",
    "Wqkv",
)
QFORMER_ATTENTION_PROJECTIONS = ("query", "key", "value")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_FULL_FINGERPRINT_MAX_PARAMS = 50_000_000
_SKETCH = 4096
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class VLMWeightsUnavailableError(FileNotFoundError):
    """The VLM checkpoint (weights, tokenizer, image processor) is not available locally."""


def weights_needed_message(src: str, reason: str) -> str:
    return (
        f"VLM annotator weights for {src!r} are not available locally: {reason.strip().rstrip('.')}. "
        "It needs a BLIP-2 or InstructBLIP checkpoint in a local directory (or the local Hugging Face "
        "cache, HF_HOME / HF_HUB_CACHE): config.json with model_type 'blip-2' or 'instructblip', the "
        "weights (model.safetensors, or model-*.safetensors shards with model.safetensors.index.json), "
        "the language model's tokenizer files, preprocessor_config.json and, for InstructBLIP, the "
        "qformer_tokenizer/ folder. There is no model hub access here: stage the checkpoint where the hub "
        "is reachable (e.g. `huggingface-cli download Salesforce/blip2-opt-2.7b --local-dir "
        "/models/blip2-opt-2.7b`, or `save_pretrained` of model and processor) and pass that directory; "
        "pass local_files_only=False only where the hub is reachable."
    )


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def sha_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def as_image(x: Image.Image | bytes) -> Image.Image:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return decode_image(bytes(x))
    if isinstance(x, Image.Image):
        return x if x.mode == "RGB" else x.convert("RGB")
    raise TypeError(f"expected a PIL image or encoded image bytes, got {type(x).__name__}")


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.float16
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if name not in table:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(table)}")
    return table[name]


_CONFIG_NOISE = {
    "transformers_version",
    "dtype",
    "torch_dtype",
    "architectures",
    "name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_cache",
}


def _clean_config(obj: Any) -> Any:
    """A model config dict without the keys that vary with how it was loaded (dtype, paths, versions)."""
    if isinstance(obj, dict):
        return {k: _clean_config(v) for k, v in obj.items() if not str(k).startswith("_") and k not in _CONFIG_NOISE}
    if isinstance(obj, (list, tuple)):
        return [_clean_config(v) for v in obj]
    return obj


def base_identity(model: Any) -> dict[str, Any]:
    """Checkpoint identity of a (LoRA-free) base model, independent of device and of its path / id.

    ``config_sha``: the architecture config (load-time keys removed). ``weights_sha``: every parameter
    (name, shape, values as float32) for models up to 50M parameters; for larger ones a sketch (the
    first and last 4096 values of each tensor), cheap even for a multi-billion-parameter model on GPU.
    Loading in another dtype than the checkpoint's changes values, hence the identity (an adapter is
    tied to the numbers it was trained on).
    """
    cfg = _clean_config(model.config.to_dict())
    params = sorted((n, p) for n, p in model.named_parameters() if "lora_" not in n)
    n_params = int(sum(p.numel() for _, p in params))
    full = n_params <= _FULL_FINGERPRINT_MAX_PARAMS
    h = hashlib.sha256()
    for name, p in params:
        h.update(f"{name}:{tuple(p.shape)};".encode())
        t = p.detach().reshape(-1)
        if not full and t.numel() > 2 * _SKETCH:
            t = torch.cat([t[:_SKETCH], t[-_SKETCH:]])
        h.update(t.to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return {
        "config_sha": sha_hex(canonical_json(cfg)),
        "weights_sha": h.hexdigest(),
        "weights_hashed": "full" if full else "sketch",
        "n_params": n_params,
    }


def _state_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in state.items()})


# --------------------------------------------------------------------------------------------------
# LoRA configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraSpec:
    """The LoRA setup of an adapter lineage: rank, alpha, dropout, and which projections it adapts."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    projections: tuple[str, ...] = LM_ATTENTION_PROJECTIONS
    qformer: bool = False

    def __post_init__(self):
        if self.r < 1:
            raise ValueError("LoRA rank must be >= 1")
        object.__setattr__(self, "projections", tuple(self.projections))

    @property
    def target_regex(self) -> str:
        """Full module names (relative to the BLIP-2 / InstructBLIP model) that get LoRA (``re.fullmatch``)."""
        lm = "|".join(sorted(set(self.projections)))
        pattern = rf"language_model\.(?:.*\.)?[^.]*(?:attn|attention|Attention)[^.]*\.(?:{lm})"
        if self.qformer:
            qf = "|".join(QFORMER_ATTENTION_PROJECTIONS)
            pattern = rf"(?:{pattern}|qformer\.(?:.*\.)?attention\.(?:{qf}))"
        return pattern

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["projections"] = list(self.projections)
        d["target_modules"] = self.target_regex
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoraSpec:
        return cls(int(d["r"]), float(d["alpha"]), float(d["dropout"]), tuple(d["projections"]), bool(d["qformer"]))

    @property
    def digest(self) -> str:
        return sha_hex(canonical_json(self.to_dict()))[:12]

    @property
    def slot(self) -> str:
        return f"lora_{self.digest}"

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_regex,
            bias="none",
            init_lora_weights=True,
        )


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    """Immutable adapter weights (CPU) of one annotator version."""

    spec: LoraSpec
    state: Mapping[str, torch.Tensor]
    blob: bytes  # safetensors serialisation (what is saved and hashed)

    @classmethod
    def from_state(cls, spec: LoraSpec, state: Mapping[str, torch.Tensor]) -> LoraAdapter:
        frozen = {k: v.detach().to("cpu").clone() for k, v in state.items()}
        return cls(spec, frozen, _state_bytes(frozen))

    @classmethod
    def from_bytes(cls, spec: LoraSpec, blob: bytes) -> LoraAdapter:
        from safetensors.torch import load

        return cls(spec, load(blob), blob)

    @property
    def digest(self) -> str:
        return sha_hex(self.blob)


@dataclass(frozen=True)
class ScoredRow:
    """One teacher-forced sequence: an image, a prompt (LM ids, Q-Former ids) and a candidate answer."""

    image: int
    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    qprompt: tuple[int, ...] = ()


def scatter_logprobs(logits: torch.Tensor, labels: torch.Tensor, amask: torch.Tensor) -> torch.Tensor:
    """``[n_true, V]`` logits at the answer positions -> ``[R, A]`` token log-probabilities (0 on padding)."""
    logits = logits.float()
    target = labels[amask]
    vals = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    return torch.zeros(amask.shape, dtype=vals.dtype, device=vals.device).masked_scatter(amask, vals)
