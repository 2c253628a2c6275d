"""How fast the shapes world makes data on one CPU core.

    python benchmarks/bench_world.py [--scenes 2000] [--image-size 64]

Times each stage separately (sample a scene, render it, encode the PNG, run the rule teacher and the short-answer
questions on its symbolic form) and prints scenes per minute for each and for the whole pipeline.
Everything runs in this one process, single-threaded.
"""
import io
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from llava_mini import cli  # noqa: E402
from llava_mini.synth import world  # noqa: E402
from llava_mini.synth.teacher import AnswerBalancer, RuleTeacher, short_answer_questions  # noqa: E402


def main(argv=None):
    p = cli.ArgumentParser()
    p.add_argument("--scenes", type=cli.positive_int, default=2000)
    p.add_argument("--image-size", type=cli.positive_int, default=64)
    p.add_argument("--rotate", action="store_true")
    args = p.parse_args(argv)
    cfg = world.WorldConfig(image_size=args.image_size, rotate=args.rotate)
    vocab = world.vocabulary(cfg)
    teacher, balancer = RuleTeacher(vocab), AnswerBalancer(random.Random(1))
    rng = random.Random(0)
    seconds = {"sample": 0.0, "render": 0.0, "png": 0.0, "teacher": 0.0}
    for i in range(args.scenes):
        t0 = time.perf_counter()
        scene = world.sample_scene(rng, cfg, f"s{i}", "x.png")
        t1 = time.perf_counter()
        img = world.render(scene)
        t2 = time.perf_counter()
        img.save(io.BytesIO(), format="PNG", compress_level=6)
        t3 = time.perf_counter()
        ctx = world.symbolic_context(scene)
        r = random.Random(i)
        teacher.conversation(ctx, r), teacher.detail(ctx, r), teacher.complex(ctx, r)
        short_answer_questions(ctx["boxes"], vocab, balancer)
        t4 = time.perf_counter()
        for k, dt in zip(seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            seconds[k] += dt
    total = sum(seconds.values())
    print(f"{args.scenes} scenes, {args.image_size}px, rotate={args.rotate}, one core")
    for k, s in seconds.items():
        print(f"  {k:8s} {1000 * s / args.scenes:7.3f} ms/scene  {60 * args.scenes / s:12,.0f} scenes/min")
    print(f"  {'generated+rendered (sample+render+png)':40s} "
          f"{60 * args.scenes / (seconds['sample'] + seconds['render'] + seconds['png']):,.0f} scenes/min")
    print(f"  {'whole pipeline (+ teacher)':40s} {60 * args.scenes / total:,.0f} scenes/min")


if __name__ == "__main__":
    cli.run(main)
