"""``python -m tools.gpucheck``: measure every chapter on the GPU profiles it claims.

On a CUDA machine it builds the shape twins (``helpers.shapes``), runs each chapter with
papermill on each profile's twin, side by side on one GPU, each kernel capped at its card's
budget (``helpers.hardware.card_budget``, through ``COURSE_GPU_MEMORY_GIB``), short runs; a
hook records ``torch.cuda.max_memory_reserved()`` after every cell. It writes
``data/gpu/measured.json``; ``python -m tools.gpucheck readme`` turns it into the README's
"What runs where". This is course machinery (not a lesson): it needs papermill and a GPU, and
runs with any Python that has torch, transformers, peft and bitsandbytes (no course venv).

    python -m tools.gpucheck run [--jobs t4:01,gpu-4gb:03] [--timeout 420] [--benchmark]
    python -m tools.gpucheck readme [--file data/gpu/measured.json]
"""
