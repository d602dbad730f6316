"""Arguments every command that talks to a judge or language model shares: where an
``openai:`` endpoint is, its key's variable, the time per call and the retries; and the
backend built from them."""
from __future__ import annotations

import argparse
from typing import Any


def add_endpoint_args(parser: Any, *, timeout: float) -> None:
    """--base-url, --api-key-env, --timeout and --retries on ``parser`` (or a group)."""
    parser.add_argument("--base-url", default=None,
                        help="OpenAI-compatible endpoint of openai: models")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="environment variable holding the endpoint's key")
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds per call")
    parser.add_argument("--retries", type=int, default=3,
                        help="retries of a call that timed out or met a server error")


def backend_from_args(spec: str, args: argparse.Namespace) -> Any:
    """The backend of ``local:NAME`` / ``openai:MODEL`` with the endpoint arguments."""
    from ...nodes.lmm import backend_from_spec
    return backend_from_spec(spec, base_url=args.base_url, api_key_env=args.api_key_env,
                             timeout=args.timeout, retries=args.retries)


# ----------------------------------------------------------------------------- rubric judge
# (eval-t2i and bench: the Science-T2I benchmark's score out of 100)

def add_rubric_judge_args(group: Any) -> None:
    """--judge, the endpoint arguments, --judge-prompt and --concurrency."""
    group.add_argument("--judge", default=None, metavar="local:MODEL|openai:MODEL",
                       help="the rubric judge: local:<folder in models/vlm, path or Hub id> "
                            "or openai:<model> with --base-url")
    add_endpoint_args(group, timeout=120.0)
    group.add_argument("--judge-prompt", default=None, metavar="FILE",
                       help="the judge's prompt as a text file with {prompt}, {scene} and "
                            "{reality} where they go (e.g. the reference's wording); "
                            "default: the pack's own")
    group.add_argument("--concurrency", type=int, default=4, help="judge requests at once")


def rubric_judge_template(args: argparse.Namespace, records: Any,
                          sciscore_runs: bool = True) -> tuple[str | None, str | None]:
    """Before anything is loaded: the judge prompt file's text (checked for its
    placeholders), and why the judge stage is skipped, if it is (records of which none has
    the rubric fields, while SciScore still scores the run; without SciScore that is an
    error). (None, None) without --judge."""
    import logging
    from pathlib import Path

    from ...nodes.errors import ScienceT2IError
    if not args.judge:
        if args.judge_prompt:
            raise ScienceT2IError("--judge-prompt needs --judge.")
        return None, None
    if not records:
        raise ScienceT2IError("--judge needs --dataset: the records' scene_scoring and "
                              "real_scoring are what the judge grades against.")
    from ...nodes.judges.science_rubric import rubric_prompt
    from ..core.readers import read_text
    from ..eval.rubric_runs import check_rubric_fields, rubric_gap_message, rubric_gaps
    template = read_text(Path(args.judge_prompt), "--judge-prompt") if args.judge_prompt \
        else None
    rubric_prompt("p", "s", "r", template)   # its placeholders, before any work
    lacking, _ = rubric_gaps(records)
    log = logging.getLogger("science_t2i")
    if len(lacking) == len(records):          # nothing to judge
        if not sciscore_runs:
            check_rubric_fields(records)      # refuses, saying what to do
        skipped = f"rubric judge not run: {rubric_gap_message(records)}"
        log.warning("%s; SciScore still scores the run.", skipped)
        return template, skipped
    if lacking:
        log.warning("%s; their images count as judge failures.", rubric_gap_message(records))
    return template, None


def run_rubric_judge(args: argparse.Namespace, run_dir: Any, records: Any,
                     template: str | None, out: Any) -> dict:
    """The rubric judge over ``run_dir``, its replies cached in ``out/rubric_cache.jsonl``."""
    from pathlib import Path

    from ..eval.judge_cache import JudgeCache
    from ..eval.rubric_runs import judge_run
    return judge_run(Path(run_dir), records, backend_from_args(args.judge, args),
                     cache=JudgeCache(Path(out) / "rubric_cache.jsonl"), template=template,
                     concurrency=args.concurrency)

