"""FLUX for both LoRA trainers: loading the diffusers folder (``model``), the rectified-flow
training maths (``flow_matching``), the stochastic sampler with its log-probabilities
(``sampler``), the on-disk latent cache (``latent_cache``), the LoRA trainer base and its
``lora`` section (``lora_trainer``), and the reference policy of stage 2
(``reference_policy``)."""
from .flow_matching import (discrete_levels, flow_matching_loss, flow_target, noisy_latents,
                            sample_discrete, sample_sigmas, text_ids)
from .lora_trainer import LoraSection, LoraTrainer
from .model import (LORA_TARGETS, FluxEncoders, attach_lora, load_transformer, resolve_flux_dir,
                    scheduler_config, vae_scale_factor)
from .sampler import (FluxConditioning, Trajectory, decode_latents, flux_sigmas, latent_image_ids,
                      pack_latents, predict_velocity, sample_plain, sample_trajectory,
                      transition_log_prob, unpack_latents)

__all__ = ["LORA_TARGETS", "FluxConditioning", "FluxEncoders", "LoraSection", "LoraTrainer",
           "Trajectory", "attach_lora", "decode_latents", "discrete_levels",
           "flow_matching_loss", "flow_target", "flux_sigmas", "latent_image_ids",
           "load_transformer", "noisy_latents", "pack_latents", "predict_velocity",
           "resolve_flux_dir", "sample_discrete", "sample_plain", "sample_sigmas",
           "sample_trajectory", "scheduler_config", "text_ids", "transition_log_prob",
           "unpack_latents", "vae_scale_factor"]
