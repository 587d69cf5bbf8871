"""Load a profile's model and tokenizer: the shipped tiny model offline, or a hub id.

Never with ``trust_remote_code``: only architectures that transformers itself implements run.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import (
    logging as hf_logging,
)

from helpers.profiles import Profile


class ModelUnavailableError(OSError):
    """The profile's model could not be loaded; the message says what to do."""


def _unavailable(profile: Profile, err: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"Could not load {profile.model_id!r} (profile {profile.name!r}): {err}\n"
        "The model hub may be unreachable from this machine (offline, firewalled, or "
        "HF_HUB_OFFLINE=1 with the model not in the cache). Use PROFILE='tiny', which runs "
        "the model shipped in data/tiny-llama with no network, or download the model first."
    )


def load_tokenizer(profile: Profile) -> PreTrainedTokenizerBase:
    """The profile's tokenizer, with a pad token and left padding ready for generation."""
    try:
        tok = AutoTokenizer.from_pretrained(profile.model_id, trust_remote_code=False)
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
    """
    four_bit = profile.load_in_4bit if load_in_4bit is None else load_in_4bit
    kwargs: dict = {"dtype": profile.torch_dtype, "trust_remote_code": False}
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
    return model, tokenizer
