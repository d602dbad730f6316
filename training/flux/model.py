"""FLUX components for training: loading from a diffusers folder, LoRA, encoders.

The VAE and both text encoders are only needed to fill the latent cache; the trainer loads
them through :class:`FluxEncoders`, encodes, and drops them before the transformer is loaded.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from ...nodes.core import PICKLE_SUFFIXES
from ...nodes.errors import ScienceT2IError

log = logging.getLogger(__name__)

LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
_WEIGHTS = ("transformer", "vae", "text_encoder", "text_encoder_2")


def resolve_flux_model(model: Any, output_dir: str | Path) -> Path:
    """The FLUX folder of a ``model`` section: a diffusers folder or Hub id (``model.path``),
    or, when ``model.path`` is a .safetensors file, the folder ``single_file`` writes under
    ``output_dir`` for ComfyUI's transformer, CLIP, T5 and VAE files."""
    from .single_file import find_files, is_single_file, write_flux_folder
    if is_single_file(model.path):
        return write_flux_folder(find_files(model), Path(output_dir) / "flux_files")
    return resolve_flux_dir(model.path)


def resolve_flux_dir(path: str | Path) -> Path:
    """A local diffusers FLUX folder (FLUX.1-dev layout); a Hub id is downloaded on demand."""
    p = Path(path).expanduser()
    if not p.exists() and "/" in str(path) and not str(path).startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download
            p = Path(snapshot_download(str(path), allow_patterns=[
                "model_index.json", "*/config.json", "*/*.safetensors", "*/*.json", "*/*.txt",
                "*/*.model", "*/*.safetensors.index.json"]))
        except Exception as exc:
            raise ScienceT2IError(
                f"FLUX model {path!r} is not a local folder and could not be downloaded ({exc}); "
                "pass the path of a diffusers FLUX.1-dev folder (with model_index.json).") from exc
    missing = [c for c in _COMPONENTS if not (p / c).is_dir()]
    if not p.is_dir() or missing:
        raise ScienceT2IError(
            f"{p} is not a diffusers FLUX folder (missing: {', '.join(missing) or 'the folder'}); "
            "point model.path at a FLUX.1-dev download (model_index.json, transformer/, vae/, "
            "text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/).")
    for component in _WEIGHTS:
        _check_weights(p / component)
    return p


def _check_weights(folder: Path) -> None:
    """Refuse, before any loading, a component whose weights are only pickle files (they can
    run code when loaded) or that has no weights at all."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in folder.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ScienceT2IError(
            f"{folder} holds its weights only as pickle files ({', '.join(pickles)}), which can "
            "run code when loaded, so the trainers read .safetensors only: download the "
            "safetensors release of the model, or convert the folder in a trusted environment.")
    raise ScienceT2IError(f"{folder} has no weights (*.safetensors): the download is "
                          "incomplete; download the FLUX folder again.")


@contextlib.contextmanager
def _loading(what: str, folder: Path) -> Iterator[None]:
    """An error of the library while loading a checked component, as one line saying which
    folder and what to do (a truncated or corrupt download)."""
    try:
        yield
    except (ScienceT2IError, MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ScienceT2IError(f"cannot load the {what} in {folder} ({type(exc).__name__}: "
                              f"{reason}); the files are incomplete or corrupt: download the "
                              "FLUX folder again.") from exc


def component_fingerprint(folder: Path) -> str:
    """Identity of a model component without reading all its weights: its config, and for each
    weight file (the folder's, or the single file it names) the name, size, safetensors header
    and first/last MiB."""
    from .single_file import single_file
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.suffix == ".json" or f.name.endswith(".txt") or f.suffix == ".model":
            h.update(f.name.encode() + f.read_bytes())
        elif f.suffix == ".safetensors":
            _fingerprint_file(f, h)
    one = single_file(folder)
    if one:
        _fingerprint_file(Path(one["file"]), h)
    return h.hexdigest()[:16]


def _fingerprint_file(f: Path, h: Any) -> None:
    size = f.stat().st_size
    h.update(f"{f.name}:{size}".encode())
    with open(f, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(size - (1 << 20))
            h.update(fh.read())


class FluxEncoders:
    """The VAE and the CLIP + T5 text encoders of a FLUX folder, loaded on first use."""

    def __init__(self, model_dir: Path, device: torch.device, dtype: torch.dtype,
                 max_sequence_length: int = 512):
        self.model_dir = model_dir
        self.device = device
        self.dtype = dtype
        self.max_sequence_length = max_sequence_length
        self._vae: Any = None
        self._text: Any = None

    # identities used in cache keys: a different encoder or setting never reuses an entry
    def image_encoder_id(self) -> str:
        return f"vae:{component_fingerprint(self.model_dir / 'vae')}"

    def text_encoder_id(self) -> str:
        parts = [component_fingerprint(self.model_dir / c) for c in
                 ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")]
        return f"clip+t5:{'-'.join(parts)}:len{self.max_sequence_length}"

    @property
    def vae(self) -> Any:
        if self._vae is None:
            from diffusers import AutoencoderKL
            from .single_file import single_file
            one = single_file(self.model_dir / "vae")
            with _loading("VAE", Path(one["file"]) if one else self.model_dir / "vae"):
                if one:   # ae.safetensors: diffusers' conversion of the BFL layout
                    vae = AutoencoderKL.from_single_file(
                        one["file"], config=str(self.model_dir), subfolder="vae",
                        torch_dtype=self.dtype)
                else:
                    vae = AutoencoderKL.from_pretrained(
                        str(self.model_dir), subfolder="vae", torch_dtype=self.dtype,
                        use_safetensors=True)
                self._vae = vae.to(self.device).eval()
            self._vae.requires_grad_(False)
        return self._vae

    def _load_text(self) -> tuple[Any, Any, Any, Any]:
        if self._text is None:
            from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel
            d = str(self.model_dir)
            with _loading("CLIP text encoder", self.model_dir / "text_encoder"):
                clip = load_text_encoder(CLIPTextModel, self.model_dir, "text_encoder",
                                         self.dtype).to(self.device).eval()
            with _loading("T5 text encoder", self.model_dir / "text_encoder_2"):
                t5 = load_text_encoder(T5EncoderModel, self.model_dir, "text_encoder_2",
                                       self.dtype).to(self.device).eval()
            clip.requires_grad_(False)
            t5.requires_grad_(False)
            self._text = (AutoTokenizer.from_pretrained(d, subfolder="tokenizer"), clip,
                          AutoTokenizer.from_pretrained(d, subfolder="tokenizer_2"), t5)
        return self._text

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """FLUX's conditioning: T5 last hidden states [B, L, D] and CLIP pooled output [B, P],
        tokenised exactly as FluxPipeline.encode_prompt does (padding to max length)."""
        clip_tok, clip, t5_tok, t5 = self._load_text()
        ids = clip_tok(prompts, padding="max_length", max_length=clip_tok.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.to(self.device)
        pooled = clip(ids, output_hidden_states=False).pooler_output
        ids2 = t5_tok(prompts, padding="max_length", max_length=self.max_sequence_length,
                      truncation=True, return_tensors="pt").input_ids.to(self.device)
        seq = t5(ids2, output_hidden_states=False)[0]
        return seq, pooled

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior of images in [-1, 1] [B, 3, H, W]: (mean, std), each [B, C, h, w].

        The training input is drawn from it each step, x0 = (mean + std * eps - shift) * scale,
        as the reference does with ``latent_dist.sample()``.
        """
        dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        return dist.mean, dist.std

    def latent_scaling(self) -> tuple[float, float]:
        cfg = json.loads((self.model_dir / "vae" / "config.json").read_text())
        return float(cfg.get("shift_factor") or 0.0), float(cfg.get("scaling_factor") or 1.0)

    def release(self) -> None:
        """Drop the encoders so training runs without them in memory."""
        self._vae = None
        self.release_text()

    def release_text(self) -> None:
        """Drop the CLIP and T5 encoders (the VAE stays): prompts were encoded beforehand."""
        self._text = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def vae_scale_factor(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "vae" / "config.json").read_text())
    return 2 ** (len(cfg["block_out_channels"]) - 1)


def scheduler_config(model_dir: Path) -> dict:
    """The FLUX folder's scheduler/scheduler_config.json ({} when absent: diffusers' defaults)."""
    f = Path(model_dir) / "scheduler" / "scheduler_config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def load_transformer(model_dir: Path, dtype: torch.dtype, device: torch.device,
                     base: str = "bf16") -> Any:
    """The frozen FLUX transformer in ``dtype``; with a quantized ``base`` (``quantize``) its
    linear layers are quantized on the CPU before it moves to ``device``."""
    from diffusers import FluxTransformer2DModel

    from .quantize import describe, keep_fp8_weights, quantize_transformer
    from .single_file import single_file
    one = single_file(Path(model_dir) / "transformer")
    with _loading("FLUX transformer", Path(one["file"]) if one else
                  Path(model_dir) / "transformer"):
        if one:   # ComfyUI's file: diffusers' own conversion of the BFL layout
            model = FluxTransformer2DModel.from_single_file(
                one["file"], config=str(model_dir), subfolder="transformer", torch_dtype=dtype)
        else:
            model = FluxTransformer2DModel.from_pretrained(
                str(model_dir), subfolder="transformer", torch_dtype=dtype, use_safetensors=True)
    model.requires_grad_(False)
    if one and one["fp8"] and base in ("bf16", "fp8"):
        # an fp8 file stays fp8 (its own values: fp8 -> bf16 -> fp8 is exact); each layer is
        # cast up for its product only, on any GPU
        n = keep_fp8_weights(model)
        base = f"fp8 (the file's fp8 weights, {n} layers, computed in {str(dtype)[6:]})"
    elif base != "bf16":
        quantize_transformer(model, base)
    log.info("%s", describe(model, base))
    return model.to(device)


def load_text_encoder(cls: Any, model_dir: Path, subfolder: str, dtype: torch.dtype) -> Any:
    """A CLIP or T5 encoder from its diffusers subfolder, or from the single file it names
    (ComfyUI's clip_l / t5xxl files, fp16 or fp8, converted to ``dtype`` tensor by tensor).
    transformers >= 4.56 takes dtype= (diffusers' loaders keep torch_dtype=)."""
    from .single_file import single_file
    folder = Path(model_dir) / subfolder
    one = single_file(folder)
    if one is None:
        return cls.from_pretrained(str(model_dir), subfolder=subfolder, dtype=dtype,
                                   use_safetensors=True)
    from safetensors import safe_open
    with safe_open(one["file"], framework="pt") as f:
        sd = {k: f.get_tensor(k).to(dtype) for k in f.keys()
              if "text_projection" not in k and "logit_scale" not in k}
    config = cls.config_class.from_pretrained(str(folder))
    model, info = cls.from_pretrained(None, config=config, state_dict=sd, dtype=dtype,
                                      output_loading_info=True)
    missing = [k for k in info["missing_keys"] if k != "encoder.embed_tokens.weight"]
    if missing:   # tied to shared.weight in T5; anything else would stay random
        raise ScienceT2IError(f"{one['file']} lacks {len(missing)} tensor(s) of the encoder "
                              f"(e.g. {missing[0]}): it is not a complete {cls.__name__}.")
    return model


def attach_lora(transformer: Any, rank: int = 16, alpha: float = 16.0,
                init: str | bool = "gaussian", targets: Iterable[str] = LORA_TARGETS,
                adapter_name: str = "default", dtype: str = "fp32") -> list[torch.nn.Parameter]:
    """Add a peft LoRA to the transformer; returns its trainable parameters. ``dtype`` fp32
    keeps them in float32 (the frozen base may be bf16) so small updates are not rounded
    away; "base" leaves them in the base weights' dtype, as peft creates them (the reference
    implementation trains bf16 LoRA weights this way)."""
    from peft import LoraConfig
    if rank < 1:
        raise ScienceT2IError(f"lora.rank must be >= 1; got {rank}.")
    targets = list(targets)
    names = {n.rsplit(".", 1)[-1] for n, _ in transformer.named_modules()} | {
        ".".join(n.rsplit(".", 2)[-2:]) for n, _ in transformer.named_modules()}
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ScienceT2IError(f"LoRA target module(s) {unknown} do not exist in the FLUX "
                              "transformer; use names like to_k, to_q, to_v, to_out.0, "
                              "add_k_proj, proj_mlp.")
    init_value: Any = True if init in (True, "default", "kaiming") else init
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=init_value,
                                       target_modules=targets), adapter_name=adapter_name)
    params = [p for p in transformer.parameters() if p.requires_grad]
    if dtype == "fp32":
        for p in params:
            p.data = p.data.float()
    return params


def lora_state(transformer: Any, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict
    return {k: v.detach().clone() for k, v in
            get_peft_model_state_dict(transformer, adapter_name=adapter_name).items()}


def load_lora_state(transformer: Any, state: dict[str, torch.Tensor],
                    adapter_name: str = "default") -> None:
    from peft.utils import set_peft_model_state_dict
    result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ScienceT2IError(f"checkpoint LoRA has tensors the model does not ({unexpected[:3]}"
                              "...); resume with the same lora settings as the original run.")
