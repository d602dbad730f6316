"""What every room of the pack shares: files written atomically and model files read safely
(``files``), the one model-source resolver and the Hub downloads (``hub``), ComfyUI IMAGE /
MASK tensors and PIL images (``images``), and the sha256 digests (``digest``)."""
from .digest import bytes_sha256, file_sha256, json_digest, parts_digest
from .files import (PICKLE_SUFFIXES, atomic_directory, atomic_path, commit_directory,
                    load_safetensors, load_torch_checkpoint, recover_directory,
                    safetensors_metadata, save_safetensors_atomic, write_bytes_atomic,
                    write_json_atomic)
from .hub import (download_command, download_model, download_repo, hub_offline, in_hub_cache,
                  local_model, looks_like_hub_id, repo_folder)
from .images import as_mask_batch, as_rgb_batch, from_pil, rgb8, to_pil

__all__ = ["PICKLE_SUFFIXES", "as_mask_batch", "as_rgb_batch", "atomic_directory",
           "atomic_path", "bytes_sha256", "commit_directory", "download_command",
           "download_model", "download_repo", "file_sha256", "from_pil", "hub_offline",
           "in_hub_cache", "json_digest", "load_safetensors", "load_torch_checkpoint",
           "local_model", "looks_like_hub_id", "parts_digest", "recover_directory",
           "repo_folder", "rgb8", "safetensors_metadata", "save_safetensors_atomic", "to_pil",
           "write_bytes_atomic", "write_json_atomic"]
