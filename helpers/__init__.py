"""Helpers for the course "Fine-tuning LLMs on a budget GPU".

Each technique lives in a subpackage with two twins that share their public names:
``naive.py`` (plain torch, written to be read) and ``library.py`` (bitsandbytes, peft,
transformers, accelerate). The core modules (``hardware``, ``profiles``, ``data``, ``models``,
``report``, ``doctor``) are what every chapter stands on.
"""

__version__ = "0.1.0"
