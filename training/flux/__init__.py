"""FLUX for both LoRA trainers: loading the diffusers folder (``model``), the rectified-flow
training maths (``flow_matching``), the stochastic sampler with its log-probabilities
(``sampler``), the on-disk latent cache (``latent_cache``), the LoRA trainer base and its
``lora`` section (``lora_trainer``), and the reference policy of stage 2
(``reference_policy``)."""
