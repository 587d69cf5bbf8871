"""The accelerate twin as a script, for ``accelerate launch`` (chapter 08).

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no helpers/distributed/accelerate_script.py --out DIR [--job JOB.pt]

Every rank writes its own record, ``DIR/rank{r}.json`` (its rank and the world size accelerate
formed), and prints the same line; the records, not the interleaved output of the processes,
say how many ranks ran (``read_records``). With ``--job`` (a ``Job.to_dict()`` saved with
``torch.save``) each rank also runs ``library._run`` and saves its result as ``DIR/rank{r}.pt``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist


def write_record(out: Path, rank: int, world_size: int) -> None:
    """This rank's record, ``out/rank{rank}.json``."""
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world_size": world_size}))
    print(f"rank {rank} of world size {world_size}", flush=True)


def read_records(out: str | Path) -> list[dict]:
    """The records the ranks wrote in ``out``, by rank: ``[{"rank", "world_size"}, ...]``."""
    records = [json.loads(p.read_text()) for p in Path(out).glob("rank*.json")]
    return sorted(records, key=lambda r: r["rank"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for each rank's record")
    parser.add_argument("--job", type=Path, help="a Job saved with torch.save(job.to_dict())")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.job is None:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        write_record(args.out, state.process_index, state.num_processes)
        return
    from helpers.distributed import library
    from helpers.distributed.job import Job

    job = Job.from_dict(torch.load(args.job, weights_only=True))
    result = library._run(job)
    write_record(args.out, result["rank"], result["world_size"])
    torch.save(result, args.out / f"rank{result['rank']}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
