"""escale's bridge into Megatron-Core.

escale (Rust) owns the product logic: which tensors map to which, the model arguments, the
Megatron-LM / FlagScale argument files. This package only drives megatron-core itself: build a
`GPTModel` from the arguments escale wrote, load a state dict into it, save or load a
torch_dist distributed checkpoint, run a forward pass, read indexed datasets.

Run as `python -m escale_megatron <command> ...` (see `__main__.py`).
"""

# megatron-core versions this bridge was checked against. 0.16.1 is the newest that installs on
# Python 3.11; 0.19.2 needs Python >= 3.12. The CPU shims in `cpu_shims.py` are written for these.
SUPPORTED_MCORE = ("0.16.1", "0.19.2")

# Version of the JSON files escale and the bridge exchange (bump both sides together).
PROTOCOL = 1
