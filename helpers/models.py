"""Load a profile's model and tokenizer: the shipped tiny model offline, or a hub id at the
commit the profile pins (``Profile.revision``).

Never with ``trust_remote_code``: only architectures that transformers itself implements run.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import (
    logging as hf_logging,
)

from helpers.hardware import free_gpu_bytes
from helpers.paths import PACKAGE_DIR, TINY_MODEL_DIR, missing_data
from helpers.profiles import Profile


class ModelUnavailableError(OSError):
    """The profile's model could not be loaded; the message says what to do."""


class ModelTooLargeError(MemoryError):
    """The unquantized model would not fit in this GPU's free memory; the message says what to do."""


def _unavailable(profile: Profile, err: Exception) -> ModelUnavailableError:
    if profile.is_local:  # the shipped model: the cause is a missing data/, not the hub
        missing = ", ".join(str(p) for p in missing_data()) or profile.model_id
        return ModelUnavailableError(
            f"Could not load the course's tiny model (profile {profile.name!r}): {err}\n"
            f"Missing: {missing}. helpers was imported from {PACKAGE_DIR}; run from a clone "
            "of the course, install it with pip install . from a clone, or set COURSE_ROOT "
            "to a clone."
        )
    return ModelUnavailableError(
        f"Could not load {profile.model_id!r} (profile {profile.name!r}): {err}\n"
        "The model hub may be unreachable from this machine (offline, firewalled, or "
        "HF_HUB_OFFLINE=1 with the model not in the cache). Use PROFILE='tiny', which runs "
        "the model shipped in data/tiny-llama with no network, or download the model first."
    )


def _check_shipped(profile: Profile) -> None:
    """Refuse early, naming the missing files, when the shipped model is not on disk (without
    this, transformers reads the missing path as a malformed hub id)."""
    if profile.is_local and not (TINY_MODEL_DIR / "config.json").is_file():
        raise _unavailable(profile, FileNotFoundError(TINY_MODEL_DIR / "config.json"))


def load_tokenizer(profile: Profile) -> PreTrainedTokenizerBase:
    """The profile's tokenizer, with a pad token and left padding ready for generation."""
    _check_shipped(profile)
    try:
        tok = AutoTokenizer.from_pretrained(
            profile.model_id, revision=profile.revision, trust_remote_code=False
        )
    except OSError as err:
        raise _unavailable(profile, err) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(profile: Profile) -> BitsAndBytesConfig:
    """NF4 with double quantization, computing in the profile's dtype (QLoRA's recipe)."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=profile.torch_dtype,
    )


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def check_fits_unquantized(profile: Profile, headroom: float = 1.0) -> None:
    """Refuse, before any download or allocation, an unquantized model the GPU cannot hold.

    Counts the weights from the model's config (``helpers.memory``) at the profile's dtype and
    compares ``headroom`` times them with the bytes this process may still allocate
    (``helpers.hardware.free_gpu_bytes``: a ``$COURSE_GPU_MEMORY_GIB`` cap counts), keeping 10 %
    for activations. ``headroom`` > 1 asks for room to train, not only to hold the weights.
    Without a GPU, or for a config that is not Llama-style, it does nothing.

    Raises:
        ModelTooLargeError: ``headroom`` x the weights would take more than 90 % of the free
            memory.
    """
    if not torch.cuda.is_available():
        return
    from helpers.memory import ModelShape
    from helpers.memory.naive import parameter_counts

    try:
        config = AutoConfig.from_pretrained(
            profile.model_id, revision=profile.revision, trust_remote_code=False
        )
    except OSError as err:
        raise _unavailable(profile, err) from err
    try:
        shape = ModelShape.from_config(config)
    except AttributeError:  # not a decoder with the usual config fields: let transformers try
        return
    n_params = sum(parameter_counts(shape).values())
    needed = n_params * profile.torch_dtype.itemsize
    free = free_gpu_bytes()
    if headroom * needed > 0.9 * free:
        count = f"{n_params / 1e9:.2f}B" if n_params >= 1e9 else f"{n_params / 1e6:.1f}M"
        raise ModelTooLargeError(
            f"Profile {profile.name!r}: {profile.model_id} has {count} parameters, "
            f"{_gib(needed)} in {profile.compute_dtype} without quantization"
            + (f" ({headroom:g}x that to train it)" if headroom != 1.0 else "")
            + f", and this GPU has {_gib(free)} free for this process. Load it in 4 bits "
            "(load_model(profile, load_in_4bit=True)), or run this chapter with a smaller "
            "profile, e.g. PROFILE='t4' (1.5B) or PROFILE='tiny'."
        )


def load_model(
    profile: Profile, *, load_in_4bit: bool | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the profile's causal LM and tokenizer.

    Args:
        profile: the run profile.
        load_in_4bit: store the linear layers' weights as NF4 through bitsandbytes; defaults to
            ``profile.load_in_4bit``. Works on a CPU too.
    Returns:
        ``(model, tokenizer)``, the model in eval mode on the GPU when there is one.
    Raises:
        ModelUnavailableError: the model cannot be reached or read.
        ModelTooLargeError: unquantized, the model would not fit in the GPU's free memory.
    """
    _check_shipped(profile)
    four_bit = profile.load_in_4bit if load_in_4bit is None else load_in_4bit
    if not four_bit:
        check_fits_unquantized(profile)
    else:
        from helpers import bnb_cpu  # noqa: F401  (one 4-bit layout on every CPU)
    # revision: the profile's pinned hub commit (None for a local folder)
    kwargs: dict = {
        "dtype": profile.torch_dtype,
        "revision": profile.revision,
        "trust_remote_code": False,
    }
    if four_bit:
        kwargs["quantization_config"] = quantization_config(profile)
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    # The tiny model loads in milliseconds: its progress bar would only clutter a chapter.
    if profile.is_local:
        hf_logging.disable_progress_bar()
    else:
        hf_logging.enable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(profile.model_id, **kwargs)
    except OSError as err:
        raise _unavailable(profile, err) from err
    tokenizer = load_tokenizer(profile)
    model.eval()
    # For the memory guard's record (helpers.memory.resident): a load at the profile's own
    # precision (4-bit on the GPU profiles) as opposed to an explicit unquantized one.
    model.course_follows_profile = load_in_4bit is None
    return model, tokenizer
