"""Train LLaVA: stage 1 (feature alignment) and stage 2 (instruction tuning), or with no --stage the whole
classroom pipeline. A thin command line: the loop is llava_mini/training/loop.py, the pipeline
llava_mini/training/pipeline.py.

    python train.py                 # the whole classroom pipeline on a CPU: world data, tiny bases, stage 1, stage 2,
                                    # evaluation and a report; then chat with the result:
                                    #   python chat.py --model checkpoints/tiny/final
    python train.py --quick         # the same at toy size (a smoke test, seconds)

One stage at a time (the pipeline prints the exact commands it runs; --preset tiny is the default run's recipe):
    python train.py --stage 1 --data data/shapes/stage1.json --image-root data/shapes \\
        --vision checkpoints/base/tiny-clip --llm checkpoints/base/tiny-llama --out checkpoints/tiny/stage1
    python train.py --stage 2 --data data/shapes/stage2_conv_detail_complex_vqa_shuffled.json data/easyvqa/easyvqa_train_shuffled.json \\
        --image-root data/shapes data/easyvqa --init checkpoints/tiny/stage1/final --out checkpoints/tiny \\
        --group-by-length
    python train.py --stage 2 ... --resume          # continue exactly from the newest checkpoint in --out
    python train.py --stage 2 ... --lora-r 8 --lr 1e-2 --projector-lr 1e-3   # LoRA adapters (PEFT format) + projector

The paper's configuration on GPUs (DDP; add --fsdp when the model does not fit on one GPU):
    torchrun --nproc_per_node 8 train.py --preset llava-1.5-7b --stage 1 --data blip_laion_cc_sbu_558k.json \\
        --image-root images --vision clip-vit-large-patch14-336 --llm vicuna-7b-v1.5 --out checkpoints/llava-1.5-7b/stage1
    torchrun --nproc_per_node 8 train.py --preset llava-1.5-7b-lora --stage 2 --init .../stage1/final ...  # LoRA
"""
import os

# OpenMP threads that busy-wait for work turn a shared CPU into a crawl (measured here: 2 threads on 2 cores next to one
# other busy process ran 15x slower than with passive waiting). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from llava_mini import cli  # noqa: E402
from llava_mini.training.args import parse_args  # noqa: E402


def main(argv=None):
    args = parse_args(argv)
    if args.stage is None:
        from llava_mini.training.pipeline import run_pipeline
        return run_pipeline(args)
    from llava_mini.training.distributed import shutdown_distributed
    from llava_mini.training.loop import train
    final = train(args)
    shutdown_distributed()
    return final


if __name__ == "__main__":
    cli.run(main)
