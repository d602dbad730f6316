"""The judge nodes: VLM Judge Loader, Science Judge (A or B), Visual Quiz, Science Rubric Judge,
and the benchmark in a graph: Science Bench Records -> (the graph's own model) -> Science Bench
Score."""
from __future__ import annotations

import logging
from typing import Any

from .. import _comfy
from ..core.images import as_rgb_batch, to_pil
from ..errors import ScienceT2IError
from ..lmm import BACKENDS, LMM_TYPE, backend_from_spec, list_local_models
from .protocols import (Quiz, ask_quiz, grade_quiz, judge_both_orders, parse_choice_lines,
                        quiz_answer)

log = logging.getLogger("science_t2i")

NO_LOCAL_MODEL = "(put a model folder in models/vlm)"


def _pil_list(image: Any, what: str) -> list:
    batch = as_rgb_batch(image, what)
    return [to_pil(batch[i]) for i in range(batch.shape[0])]


class VLMJudgeLoaderNode:
    """A multimodal judge: a local model from models/vlm (or a Hub id), or a model behind an
    OpenAI-compatible endpoint (vLLM, Ollama, LM Studio, ``transformers serve``)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        # text-only language models (models/LLM) serve ImgCoder, which needs no images
        local = list_local_models() or [NO_LOCAL_MODEL]
        return {"required": {
            "backend": (list(BACKENDS), {"default": "local"}),
            "local_model": (local, {"tooltip": "backend local: a folder in models/vlm, or "
                                               "LLM/<folder in models/LLM> (text only, for "
                                               "ImgCoder)"}),
            "remote_model": ("STRING", {"default": "", "tooltip": "model name the endpoint "
                                        "serves, or a Hub id for backend local"}),
            "base_url": ("STRING", {"default": "http://127.0.0.1:8000/v1",
                                    "tooltip": "OpenAI-compatible endpoint (backend openai)"}),
            "api_key_env": ("STRING", {"default": "OPENAI_API_KEY", "tooltip":
                                       "environment variable holding the key (the key itself "
                                       "is never stored in the workflow)"}),
            "timeout": ("FLOAT", {"default": 120.0, "min": 1.0, "max": 3600.0}),
        }}

    RETURN_TYPES = (LMM_TYPE,)
    RETURN_NAMES = ("judge",)
    FUNCTION = "load"
    CATEGORY = "Science-T2I/Judges"

    def load(self, backend, local_model, remote_model, base_url, api_key_env, timeout):
        if backend not in BACKENDS:
            raise ScienceT2IError(f"unknown judge backend {backend!r}; use one of "
                                  f"{', '.join(BACKENDS)}.")
        name = remote_model.strip()
        if backend == "local":
            name = name or local_model  # "LLM/<folder>" resolves in models/LLM
            if name == NO_LOCAL_MODEL:
                raise ScienceT2IError("no local judge model: put an image-text-to-text model "
                                      f"folder in {_comfy.default_folder('vlm')} or type a Hub "
                                      "id in remote_model.")
        elif not name:
            raise ScienceT2IError(f"backend {backend} needs remote_model: the model name the "
                                  f"endpoint at {base_url} serves.")
        return (backend_from_spec(f"{backend}:{name}", base_url=base_url.strip(),
                                  api_key_env=api_key_env.strip() or "OPENAI_API_KEY",
                                  timeout=float(timeout)),)


class ScienceJudgeNode:
    """Pairwise: which of image A and image B shows the prompt's scientific outcome.

    ``both_orders`` asks twice with the images swapped (the paper's protocol); when the two
    answers disagree the verdict is "tie" (position bias, not a preference)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "judge": (LMM_TYPE,),
            "image_a": ("IMAGE",),
            "image_b": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": "an unripe apple"}),
            "both_orders": ("BOOLEAN", {"default": True}),
        }}

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("which", "reason")
    FUNCTION = "judge"
    CATEGORY = "Science-T2I/Judges"
    OUTPUT_NODE = True

    def judge(self, judge, image_a, image_b, prompt, both_orders):
        if not prompt.strip():
            raise ScienceT2IError("prompt is empty; give the (implicit) prompt the images were "
                                  "generated for.")
        a_list, b_list = _pil_list(image_a, "image_a"), _pil_list(image_b, "image_b")
        if len(a_list) != len(b_list) and 1 not in (len(a_list), len(b_list)):
            raise ScienceT2IError(f"image_a has {len(a_list)} images and image_b "
                                  f"{len(b_list)}; give equal batches or one image on a side.")
        n = max(len(a_list), len(b_list))
        verdicts, reasons = [], []
        with _comfy.Progress(n, desc="science judge") as bar:
            for i in range(n):
                a, b = a_list[min(i, len(a_list) - 1)], b_list[min(i, len(b_list) - 1)]
                pair = judge_both_orders(judge, a, b, prompt, both=both_orders)
                verdicts.append(pair.verdict)
                reasons.append(" | ".join(pair.texts))
                bar.update(1)
                _comfy.check_interrupt()
        which = "\n".join(verdicts)
        reason = "\n".join(reasons)
        return {"ui": {"text": [f"{which}\n{reason}"]}, "result": (which, reason)}


class VisualQuizNode:
    """Ask a question about an image; with choices the answer is an option letter, and with
    a correct answer the node says whether the judge got it right (SciGenBench's inverse
    validation, one image at a time)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "judge": (LMM_TYPE,),
            "image": ("IMAGE",),
            "question": ("STRING", {"multiline": True, "default": ""}),
        }, "optional": {
            "choices": ("STRING", {"multiline": True, "default": "",
                                   "tooltip": "one option per line (A. ..., B. ...); empty for "
                                              "a free-form answer"}),
            "correct_answer": ("STRING", {"default": "", "tooltip": "option letter or the "
                                          "expected answer; empty to only ask"}),
        }}

    RETURN_TYPES = ("STRING", "BOOLEAN", "STRING")
    RETURN_NAMES = ("answer", "correct", "reply")
    FUNCTION = "ask"
    CATEGORY = "Science-T2I/Judges"
    OUTPUT_NODE = True

    def ask(self, judge, image, question, choices="", correct_answer=""):
        if not question.strip():
            raise ScienceT2IError("question is empty; type the question to ask about the image.")
        pil = _pil_list(image, "image")
        if len(pil) > 1:
            log.warning("Visual Quiz: the image batch holds %d images; asking about the first",
                        len(pil))
        quiz = Quiz(question, parse_choice_lines(choices), correct_answer.strip())
        reply = ask_quiz(judge, pil[0], quiz)
        parsed = quiz_answer(reply, quiz)
        answer = str(parsed.value) if parsed.ok else "unparseable"
        correct = False
        if quiz.answer:
            correct, _ = grade_quiz(reply, quiz)
        summary = f"answer: {answer}" + (f"  correct: {correct}" if quiz.answer else "")
        return {"ui": {"text": [summary + "\n" + reply.strip()]},
                "result": (answer, bool(correct), reply)}


class ScienceRubricJudgeNode:
    """The Science-T2I benchmark's rubric: is the image's scene right (scene criteria) and
    is its scientific outcome real (reality criteria)? Score 0-100 (the record's 0-3 score
    / 3), the scene verdict and the judge's description of the image."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "judge": (LMM_TYPE,),
            "image": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": "an unripe apple"}),
            "scene_criteria": ("STRING", {"multiline": True,
                                          "default": "An apple is shown, whole and in focus."}),
            "reality_criteria": ("STRING", {"multiline": True,
                                            "default": "The apple is green, as unripe apples "
                                                       "are, not red."}),
        }}

    RETURN_TYPES = ("FLOAT", "STRING", "STRING")
    RETURN_NAMES = ("score", "scene", "description")
    FUNCTION = "judge"
    CATEGORY = "Science-T2I/Judges"
    OUTPUT_NODE = True

    def judge(self, judge, image, prompt, scene_criteria, reality_criteria):
        from .science_rubric import judge_rubric
        images = _pil_list(image, "image")
        scores, scenes, descriptions = [], [], []
        with _comfy.Progress(len(images), desc="rubric judge") as bar:
            for img in images:
                parsed = judge_rubric(judge, img, prompt, scene_criteria, reality_criteria)
                if not parsed.ok:
                    raise ScienceT2IError(f"the judge's reply could not be read "
                                          f"({parsed.reason}): {parsed.text[:300]!r}")
                v = parsed.value
                scores.append(v.score_100)
                scenes.append("unknown" if v.scene is None else
                              f"{'failed' if v.scene == 0 else 'met'} ({v.scene:g}/3)")
                descriptions.append(v.description)
                bar.update(1)
                _comfy.check_interrupt()
        score = sum(scores) / len(scores)
        scene, description = "\n".join(scenes), "\n".join(descriptions)
        return {"ui": {"text": [f"science score {score:.1f}/100\n{scene}\n{description}"]},
                "result": (score, scene, description)}


BENCH_RECORD_TYPE = "SCIENCE_BENCH_RECORD"


class ScienceBenchRecordsNode:
    """A handful of benchmark records for the graph's own model to draw: one prompt per
    record (a list: the nodes after it run once per record) and the records themselves for
    Science Bench Score."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "records_file": ("STRING", {"default": "", "tooltip": "a Science-T2I test set as "
                             ".json/.jsonl (in ComfyUI's input folder, or a full path); empty: "
                             "the pack's sample of six records"}),
            "prompt_kind": (["implicit", "explicit", "superficial"],),
            "start": ("INT", {"default": 0, "min": 0, "max": 1_000_000}),
            "count": ("INT", {"default": 4, "min": 1, "max": 1000}),
        }}

    RETURN_TYPES = ("STRING", BENCH_RECORD_TYPE)
    RETURN_NAMES = ("prompt", "record")
    OUTPUT_IS_LIST = (True, True)
    FUNCTION = "load"
    CATEGORY = "Science-T2I/Judges"

    def load(self, records_file, prompt_kind, start, count):
        from .bench_records import load_bench_records
        records = load_bench_records(records_file, prompt_kind, start, count)
        return ([r.prompt for r in records], records)


class ScienceBenchScoreNode:
    """Judges every image the graph drew for the records by the records' rubrics and gives
    the benchmark's score out of 100 (per task too); unreadable replies are counted as
    failures and left out of the mean, as the headless benchmark does."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"judge": (LMM_TYPE,), "images": ("IMAGE",),
                             "record": (BENCH_RECORD_TYPE,)}}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("score", "report")
    FUNCTION = "score"
    CATEGORY = "Science-T2I/Judges"
    OUTPUT_NODE = True

    def score(self, judge, images, record):
        from .science_rubric import aggregate, judge_rubric
        if len(images) != len(record):
            raise ScienceT2IError(f"{len(images)} image batches for {len(record)} records: "
                                  "connect the images drawn from Science Bench Records' "
                                  "prompts, one batch per record.")
        pairs = [(rec, img) for rec, batch in zip(record, images) for img in _pil_list(batch, "images")]
        rows, lines = [], []
        with _comfy.Progress(len(pairs), desc="bench judge") as bar:
            for n, (rec, img) in enumerate(pairs):
                parsed = judge_rubric(judge[0], img, rec.prompt, rec.scene, rec.reality)
                row = {"id": f"{rec.label} image {n}", "category": rec.category, "law": rec.law,
                       "score": parsed.value.score if parsed.ok else None}
                rows.append(row)
                lines.append(f"{row['id']}: " + (f"{parsed.value.score_100:.0f}/100"
                                                 if parsed.ok else f"failed ({parsed.reason})"))
                bar.update(1)
                _comfy.check_interrupt()
        result = aggregate(rows)
        laws = ", ".join(f"{k} {v['score']:.1f}" for k, v in result["by_law"].items()
                         if v["score"] is not None)
        head = ("science score: no image could be judged" if result["score"] is None else
                f"science score {result['score']:.1f}/100 ({result['judged']} judged, "
                f"{result['failures']} failed)")
        report = "\n".join([head] + ([f"by task: {laws}"] if laws else []) + lines)
        score = float("nan") if result["score"] is None else float(result["score"])
        return {"ui": {"text": [report]}, "result": (score, report)}


NODE_CLASS_MAPPINGS = {
    "ScienceT2I_VLMJudgeLoader": VLMJudgeLoaderNode,
    "ScienceT2I_ScienceJudge": ScienceJudgeNode,
    "ScienceT2I_VisualQuiz": VisualQuizNode,
    "ScienceT2I_ScienceRubricJudge": ScienceRubricJudgeNode,
    "ScienceT2I_BenchRecords": ScienceBenchRecordsNode,
    "ScienceT2I_BenchScore": ScienceBenchScoreNode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ScienceT2I_VLMJudgeLoader": "VLM Judge Loader",
    "ScienceT2I_ScienceJudge": "Science Judge (A or B)",
    "ScienceT2I_VisualQuiz": "Visual Quiz",
    "ScienceT2I_ScienceRubricJudge": "Science Rubric Judge (0-100)",
    "ScienceT2I_BenchRecords": "Science Bench Records",
    "ScienceT2I_BenchScore": "Science Bench Score (0-100)",
}
