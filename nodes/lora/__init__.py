"""Science LoRAs: FLUX LoRA files in any common key format (``keys``), read and written in
the diffusers layout (``files``), and applied to a ComfyUI MODEL with a report of what
matched (``apply``); ComfyUI's own loader silently drops keys it cannot map."""
from .apply import MatchReport, apply_lora, lora_report, match_lora
from .files import (DIFFUSERS_METADATA_KEY, META_PREFIX, LoraFile, folded_adapter_config,
                    read_lora, save_flux_lora)
from .keys import is_diffusers_module, normalise_state_dict

__all__ = ["DIFFUSERS_METADATA_KEY", "META_PREFIX", "LoraFile", "MatchReport", "apply_lora",
           "folded_adapter_config", "is_diffusers_module", "lora_report", "match_lora",
           "normalise_state_dict", "read_lora", "save_flux_lora"]
