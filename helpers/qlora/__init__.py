"""QLoRA: a frozen 4-bit NF4 base under trainable LoRA adapters (chapter 03).

Two twins with the same public names, imported explicitly:

    from helpers.qlora import naive, library

``naive`` builds the 4-bit layer on chapter 01's NF4 and puts chapter 02's LoRA on top;
``library`` uses bitsandbytes, transformers' ``BitsAndBytesConfig`` and peft. ``checkpoint``
holds the save / resume workflow that a run on a free GPU needs (it works with either twin).
Nothing is imported here, so importing the package costs nothing.
"""

PUBLIC_NAMES = (
    "Linear4bit",
    "quantize_model",
    "load_4bit",
    "prepare_for_kbit_training",
    "add_lora",
    "base_bytes",
    "merge_and_dequantize",
    "merge_into_4bit",
)
# Where the library twin's signature must differ from the naive one's, and why.
SIGNATURES_DIFFER = {
    "Linear4bit": (
        "the library twin is bitsandbytes' own Linear4bit class (input_features, "
        "output_features, its quantization options); the naive one takes the three arguments "
        "the chapter teaches"
    ),
}
