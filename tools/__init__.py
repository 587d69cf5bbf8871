"""The course's machinery, kept apart from ``helpers`` (the package learners import).

What maintainers and instructors run, never a chapter: the runner (``tools.course``), the
workbook generator (``tools.workbook``), the website (``tools.website``), the launch badges and
the release pin (``tools.badges``, ``tools.release``), the memory guard (``tools.memory_guard``),
the GPU check (``tools.gpucheck``) and the workshop kit (``tools.workshop``). Each is run as
``python -m tools.<name>`` from the course's folder (the Makefile's targets). ``tools`` imports
``helpers``; ``helpers`` never imports ``tools`` (tests/test_import_graph.py).
"""
