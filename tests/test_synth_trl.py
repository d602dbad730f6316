"""The synth-data export trains a vision-language model: one step of trl's SFTTrainer on the
exported folder, loaded with ``datasets.load_from_disk``, with the tiny Qwen2-VL on CPU: the
images reach the model and the step changes its weights, the vision tower's included."""
from __future__ import annotations

import pytest
import torch
from test_synth_data import DiscJudge, bench  # noqa: F401  (the fixture)
from tiny_vlm import build_tiny_qwen2_vl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_one_sft_step_on_the_export_changes_the_model(bench, tmp_path):  # noqa: F811
    from datasets import load_from_disk
    from science_t2i.training.eval.judge_cache import JudgeCache
    from science_t2i.training.synth import (VerifyOptions, dataset_rows, draw_records,
                                            export_dataset, verify_images)
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
    from trl import SFTConfig, SFTTrainer

    records, folder = bench
    out = tmp_path / "synth"
    drawn = draw_records(records, out / "images", "folder", folder)
    verdicts = verify_images(records, drawn, DiscJudge(), JudgeCache(None), VerifyOptions())
    export_dataset(dataset_rows(records, drawn, verdicts, "scripted:disc"), out)
    dataset = load_from_disk(str(out / "dataset"))

    vlm = build_tiny_qwen2_vl(tmp_path / "qwen2-vl")
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(vlm), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(str(vlm))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, learning_rate=1e-2,
                     per_device_train_batch_size=2, gradient_accumulation_steps=1,
                     max_length=None,
                     report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                     bf16=False, fp16=False, dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                         processing_class=processor)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "pixel_values" in batch and "image_grid_thw" in batch   # the images went in
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed, "one optimizer step changed no weight"
    assert any("visual" in n for n in changed) and any("lm_head" in n or "embed" in n
                                                       for n in changed)
