"""The accelerate twin as a script, for ``accelerate launch`` (chapter 07).

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no helpers/distributed/accelerate_script.py [--job JOB.pt --out DIR]

Every rank prints its rank and the world size accelerate formed. With ``--job`` (a
``Job.to_dict()`` saved with ``torch.save``) each rank also runs ``library._run`` and saves its
result as ``DIR/rank{r}.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, help="a Job saved with torch.save(job.to_dict())")
    parser.add_argument("--out", type=Path, help="folder for each rank's result")
    args = parser.parse_args(argv)
    if (args.job is None) != (args.out is None):
        parser.error("--job and --out go together")
    torch.set_num_threads(1)
    if args.job is None:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        print(f"rank {state.process_index} of world size {state.num_processes}", flush=True)
        return
    from helpers.distributed import library
    from helpers.distributed.job import Job

    job = Job.from_dict(torch.load(args.job, weights_only=True))
    result = library._run(job)
    print(f"rank {result['rank']} of world size {result['world_size']}", flush=True)
    torch.save(result, args.out / f"rank{result['rank']}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
