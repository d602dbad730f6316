"""SciScore scoring speed: N images x 1 prompt, measured side by side in one run.

    python benchmarks/score.py [--model DIR] [-n 4] [--input-size 512] [--threads T] [--compile]

Without --model, a CLIP-H-shaped transformers CLIPModel (laion CLIP-ViT-H-14: vision 32 x 1280,
16 heads, patch 14, 224 px; text 24 x 1024, 16 heads; projection 1024) with random weights,
and the real CLIP BPE vocabulary (bundled with open_clip) so prompts have their real length.

Prints which CPU path the scorer's default (``onednn="auto"``) chose and why (the CPU's
capability and a one-layer measurement, clip_onednn.auto_choice), and how long deciding took.
Then, for the pack's path (tensor preprocessing, batched images, text encoded once, the towers
on the path auto chose): images/s, achieved GFLOP/s (334.6 GFLOP per 224 px image; a text
counts 47.1 GFLOP x its tokens / 77), the ratio to this machine's fp32 matmul throughput
measured in the same run, and the speed-up over a reference-style path (CLIPImageProcessor on
PIL images, one model call per (prompt, image) pair, the text re-encoded on each call), as
the paper's evaluation code does. The same scorer with ``onednn=False`` (transformers' own
forward) and ``onednn=True`` (oneDNN's fused towers forced) is measured in the same
alternation, and with --compile also ``compile=True`` (its compilation happens during the
warm-up, not the timing).

Matmul throughput is measured two ways, both square fp32 GEMMs on the same threads, best of 5
at the start, after every repeat and at the end (so background load cannot make them look
slower than they are): ``torch.mm`` (PyTorch's matmul: MKL sgemm) and oneDNN's GEMM with a
pre-packed weight (the fastest fp32 GEMM PyTorch offers here; on CPUs where MKL runs its AVX2
code, such as AMD's, it is much faster than torch.mm). Ratios to both are printed.
The GFLOP counts are CLIP-H's at 224 px, so with --model they only mean something for SciScore.
"""
from __future__ import annotations

import argparse
import os
import time
from types import SimpleNamespace

import torch

IMAGE_GFLOP = 334.6
TEXT_GFLOP_77 = 47.1
AUTO = "ours (auto)"  # the scorer as load_sciscore makes it
PROMPT = ("A butter stick placed on a heated frying pan for several minutes, photographed in a "
          "kitchen")


def clip_h_config():
    from transformers import CLIPConfig
    vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                  num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu",
                  projection_dim=1024, layer_norm_eps=1e-5)
    text = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                num_hidden_layers=24, num_attention_heads=16, max_position_embeddings=77,
                hidden_act="gelu", projection_dim=1024, layer_norm_eps=1e-5,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=1024)


def clip_tokenizer():
    """The real CLIP BPE (open_clip ships it) as a transformers CLIPTokenizer."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer
    simple = SimpleTokenizer()
    vocab = {k: i for k, i in simple.encoder.items() if i < 49406}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 49406, 49407
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 77
    return tok


def random_clip_h():
    """CLIP-H with random weights, built on the meta device and filled once (fast init)."""
    from transformers import CLIPModel
    config = clip_h_config()
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = CLIPModel(config)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.uniform_(-0.02, 0.02, generator=g)
        model.logit_scale.fill_(4.6052)
        for name, buf in model.named_buffers():
            if name.endswith("position_ids"):
                buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
    return model.eval().requires_grad_(False)


def build_scorer(args):
    from science_t2i.nodes.sciscore import load_sciscore
    from science_t2i.nodes.sciscore.model import SciScoreModel, _HFBackend
    from science_t2i.nodes.sciscore.preprocess import CLIP_MEAN, CLIP_STD
    if args.model:
        return load_sciscore(args.model, device="cpu", dtype="fp32", batch_size=args.batch_size)
    backend = _HFBackend(random_clip_h(), clip_tokenizer())
    return SciScoreModel(backend, name="random CLIP-H", image_size=224, crop_size=224,
                         mean=CLIP_MEAN, std=CLIP_STD, device=torch.device("cpu"),
                         dtype=torch.float32, batch_size=args.batch_size)


def twin(scorer, **changes):
    """The same weights and settings, with ``changes`` (compile=True, onednn=False)."""
    from science_t2i.nodes.sciscore.model import SciScoreModel
    settings = {"compile": scorer.compile, "onednn": scorer.onednn,
                "preprocess": scorer.preprocess, **changes}
    return SciScoreModel(scorer._backend, name=scorer.name, image_size=scorer.image_size,
                         crop_size=scorer.crop_size, mean=scorer.mean, std=scorer.std,
                         device=scorer.device, dtype=scorer.dtype, batch_size=scorer.batch_size,
                         **settings)


class Clock:
    """Wall time and this process's CPU time (all threads). On a shared machine the wall
    time also counts other programs' turns on the CPUs; CPU time / threads does not, so both
    are reported and the ratios use each consistently."""

    def __enter__(self) -> "Clock":
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def gemms(n: int) -> dict:
    """name -> a call running one fp32 n x n x n GEMM."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    calls = {"torch.mm": lambda: torch.mm(a, b)}
    from science_t2i.nodes.sciscore import onednn as clip_onednn
    if clip_onednn.available():
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), n)
        calls["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none",
                                                                      [], "")
    return calls


def gemm_seconds(calls: dict, reps: int) -> dict:
    """name -> best (wall, CPU) seconds of one call."""
    out = {}
    for name, call in calls.items():
        call()
        best_w = best_c = float("inf")
        for _ in range(reps):
            with Clock() as c:
                call()
            best_w, best_c = min(best_w, c.wall), min(best_c, c.cpu)
        out[name] = (best_w, best_c)
    return out


def reference_processor(scorer):
    # the PIL pipeline the reference ran (transformers 4's CLIPImageProcessor; 5 calls it ...Pil)
    try:
        from transformers.models.clip.image_processing_pil_clip import \
            CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor
    return CLIPImageProcessor(size={"shortest_edge": scorer.image_size},
                              crop_size={"height": scorer.crop_size, "width": scorer.crop_size},
                              image_mean=scorer.mean, image_std=scorer.std)


def run_reference(scorer, processor, images, prompt) -> tuple[Clock, torch.Tensor]:
    """The paper's evaluation style: PIL images through CLIPImageProcessor, one full model
    call per (prompt, image) pair, the prompt tokenised and encoded again each time."""
    from science_t2i.nodes.core.images import to_pil
    clip, tok = scorer.clip, scorer.tokenizer
    scores = []
    with Clock() as clock, torch.no_grad():
        for img in images:
            pil = to_pil(img)
            pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
            text = tok([prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
            out = clip(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                       pixel_values=pixels)
            scores.append(out.logits_per_image[0, 0])
    return clock, torch.stack(scores)


def run_preprocess(scorer, images, mode: str) -> Clock:
    """The image preprocessing alone (what ``encode_images`` does before the tower)."""
    from science_t2i.nodes.sciscore.model import image_views
    saved, scorer.preprocess = scorer.preprocess, mode
    views = image_views(images)
    try:
        with Clock() as clock:
            for i in range(0, len(views), scorer.batch_size):
                scorer._pixels(views[i:i + scorer.batch_size])
    finally:
        scorer.preprocess = saved
    return clock


def run_ours(scorer, images, prompt) -> tuple[Clock, Clock, torch.Tensor]:
    scorer.clear_text_cache()
    with Clock() as total:
        scores = scorer.score(images, prompt)  # text encoded once, images batched
    with Clock() as images_only:
        scorer.encode_images(images)
    return total, images_only, scores


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a SciScore/CLIP folder (default: random CLIP-H)")
    p.add_argument("-n", "--images", type=int, default=4)
    p.add_argument("--input-size", type=int, default=512, help="generated images' side (px)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs; the best counts")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--compile", action="store_true",
                   help="also measure the scorer with compile=True (adds the compilation time)")
    return p.parse_args()


def prepare(args: argparse.Namespace) -> SimpleNamespace:
    """The scorers to compare (the pack's, its two forwards, compiled), warmed up."""
    t = time.perf_counter()
    scorer = build_scorer(args)
    n_params = sum(p.numel() for p in scorer.module.parameters())
    print(f"model: {scorer.name} ({n_params / 1e6:.0f} M parameters), built in "
          f"{time.perf_counter() - t:.1f} s")
    tokens = len(scorer.tokenizer(PROMPT, truncation=True, max_length=77)["input_ids"])
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, args.input_size, args.input_size, 3, generator=g)
    processor = reference_processor(scorer)
    # the pack's scorer (its default: onednn="auto"), the same with transformers' own forward
    # and with oneDNN's fused towers forced
    from science_t2i.nodes.sciscore.onednn import LABELS
    with Clock() as c:
        choice = scorer.cpu_path()  # the one-time decision (cached for the warm-up and runs)
    print(f"auto chose {LABELS[choice.path]} (decided in {c.wall * 1e3:.0f} ms): {choice.reason}")
    scorers = {AUTO: scorer, "ours, onednn=False": twin(scorer, onednn=False),
               "ours, onednn=True": twin(scorer, onednn=True)}
    warm = images[:1]
    for s in scorers.values():
        s.score(warm, "warm up")
    run_reference(scorer, processor, warm, "warm up")
    if args.compile:
        comp = scorers["compiled"] = twin(scorer, compile=True)
        with Clock() as c:
            comp.score(images, "warm up")  # compiles for this batch shape
        if comp._compile_failed:
            print("torch.compile failed (see the warning); the compiled row runs eager")
        print(f"compile=True: first batch (compilation) {c.wall:.1f} s wall")
    return SimpleNamespace(scorer=scorer, scorers=scorers, images=images, processor=processor,
                           choice=choice, tokens=tokens, text_gflop=TEXT_GFLOP_77 * tokens / 77)


def measure(args: argparse.Namespace, ctx: SimpleNamespace) -> SimpleNamespace:
    """Every path, alternating, ``args.repeats`` times; GEMM peaks measured in between."""
    calls = gemms(args.matmul_size)
    res = SimpleNamespace(calls=calls, mm=[gemm_seconds(calls, reps=5)],
                          totals={k: [] for k in ctx.scorers},
                          image_only={k: [] for k in ctx.scorers},
                          prep={"exact": [], "fast": []}, scores={}, ref=[], s_ref=None)
    for _ in range(args.repeats):  # alternate, so background load hits all paths alike
        for key, s in ctx.scorers.items():
            total, img_only, res.scores[key] = run_ours(s, ctx.images, PROMPT)
            res.totals[key].append(total), res.image_only[key].append(img_only)
        for mode in res.prep:
            res.prep[mode].append(run_preprocess(ctx.scorer, ctx.images, mode))
        rt, res.s_ref = run_reference(ctx.scorer, ctx.processor, ctx.images, PROMPT)
        res.ref.append(rt)
        res.mm.append(gemm_seconds(calls, reps=5))  # the best of all counts
    return res


def report_clock(args: argparse.Namespace, ctx: SimpleNamespace, res: SimpleNamespace,
                 label: str, key: str, norm: int) -> None:
    """The table of one clock (wall, or CPU time per thread)."""
    n = args.images
    mm_flop = 2 * args.matmul_size ** 3 / 1e9
    flop_ours = n * IMAGE_GFLOP + ctx.text_gflop
    flop_ref = n * (IMAGE_GFLOP + ctx.text_gflop)
    col = 0 if key == "wall" else 1

    def best(clocks):
        return min(getattr(c, key) for c in clocks) / norm
    peaks = {name: mm_flop / min(m[name][col] / norm for m in res.mm) for name in res.calls}

    def of_matmul(gflops: float) -> str:
        return ", ".join(f"{gflops / peak:6.1%} of {name}" for name, peak in peaks.items())
    t_ref = best(res.ref)
    print(f"-- by {label}")
    for name, peak in peaks.items():
        print(f"  fp32 GEMM {args.matmul_size}^3, {name:8}: {peak:7.1f} GFLOP/s")
    for k in ctx.scorers:
        t_all, t_img = best(res.totals[k]), best(res.image_only[k])
        print(f"  {k:<19}: {t_all:6.2f} s  {n / t_all:6.3f} images/s  "
              f"{flop_ours / t_all:6.1f} GFLOP/s = {of_matmul(flop_ours / t_all)}; "
              f"{t_ref / t_all:.2f}x the reference path")
        print(f"    images only (preprocess + image tower): "
              f"{n * IMAGE_GFLOP / t_img:6.1f} GFLOP/s = {of_matmul(n * IMAGE_GFLOP / t_img)}")
    print(f"  {'reference':<19}: {t_ref:6.2f} s  {n / t_ref:6.3f} images/s  "
          f"{flop_ref / t_ref:6.1f} GFLOP/s = {of_matmul(flop_ref / t_ref)}")
    t_auto = best(res.totals[AUTO])
    print(f"  speed-up of ours (auto: {ctx.choice.path}) over the reference path: "
          f"{t_ref / t_auto:.3f}x; over onednn=False (PyTorch's forward): "
          f"{best(res.totals['ours, onednn=False']) / t_auto:.3f}x; over onednn=True: "
          f"{best(res.totals['ours, onednn=True']) / t_auto:.3f}x")
    for mode, clocks in res.prep.items():
        print(f"  {mode} preprocessing of {args.input_size} px images: "
              f"{best(clocks) / n * 1e3:6.1f} ms per image = "
              f"{best(clocks) / t_auto:.2%} of ours' scoring time")


def main() -> None:
    args = parse_args()
    os.environ.setdefault("SCIENCE_T2I_NO_PROGRESS", "1")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, "
          f"{args.images} images of {args.input_size}x{args.input_size} x 1 prompt")
    ctx = prepare(args)
    res = measure(args, ctx)
    print(f"prompt: {ctx.tokens} tokens -> {ctx.text_gflop:.1f} GFLOP per text encode")
    report_clock(args, ctx, res, "wall clock", "wall", 1)
    report_clock(args, ctx, res, "CPU time / threads", "cpu", torch.get_num_threads())
    print(f"max |score difference| ours vs reference: "
          f"{(res.scores[AUTO] - res.s_ref).abs().max().item():.4f} "
          f"(scale exp(logit_scale) = {ctx.scorer.logit_scale_exp:.1f})")
    for k in ctx.scorers:
        if k != AUTO:
            print(f"max |score difference| {k} vs ours: "
                  f"{(res.scores[k] - res.scores[AUTO]).abs().max().item():.2e}")
    print("wall seconds per run: " + ", ".join(
        f"{k} {[round(c.wall, 1) for c in v]}" for k, v in res.totals.items())
        + f", reference {[round(c.wall, 1) for c in res.ref]}")
    if hasattr(os, "getloadavg"):  # other work on the machine skews the wall-clock figures
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
