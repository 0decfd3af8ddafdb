#!/usr/bin/env python3
"""Run llama.cpp's own converter (convert_hf_to_gguf.py) on checkpoints.

    llama_cpp_convert.py LLAMA_CPP_SRC HF_DIR OUT.gguf OUTTYPE [HF_DIR OUT.gguf OUTTYPE ...]

LLAMA_CPP_SRC is llama.cpp's source folder (convert_hf_to_gguf.py,
conversion/, gguf-py/). Needs torch, transformers, numpy and sentencepiece
(runtime/tests/convert/setup-llama-cpp-converter.sh installs them). Several
conversions run in one process, to pay for importing torch once.

An OUT ending in `.mmproj.gguf` asks for the vision tower's mmproj file
(`--mmproj`).

Two changes to llama.cpp's behaviour:

* a folder without tokenizer.json gets no tokenizer metadata (llama.cpp's
  converter stops there with an exception, and the tiny test models have no
  tokenizer), by making `set_vocab` a no-op for it;
* the tensor-name map is built for at least 3 blocks. llama.cpp expands
  `{bid}` patterns only up to the tower's block count, and Llama 4's
  adapter names (`vision_model.vision_adapter.mlp.fc{bid}`, fc1 and fc2)
  use the pattern too, so a tower of fewer than 3 layers (the tiny test
  model has 2) stops with "Can not map tensor
  'vision_model.vision_adapter.mlp.fc2.weight'". A larger map only knows
  more names; it changes no name it already knew.

Nothing else is patched.
"""
import sys
from pathlib import Path


def main() -> int:
    src = Path(sys.argv[1])
    jobs = sys.argv[2:]
    if not jobs or len(jobs) % 3:
        print(__doc__, file=sys.stderr)
        return 2
    sys.path.insert(0, str(src))
    sys.path.insert(1, str(src / "gguf-py"))
    import convert_hf_to_gguf  # noqa: E402  (llama.cpp's script, as a module)
    from conversion.base import TextModel
    from conversion.llama import LlamaModel, Llama4Model

    import gguf
    from conversion import base

    name_map = gguf.get_tensor_name_map
    base.gguf.get_tensor_name_map = lambda arch, n_blocks: name_map(arch, max(n_blocks, 3))

    classes = (TextModel, LlamaModel, Llama4Model)
    original = {cls: cls.__dict__["set_vocab"] for cls in classes}
    for hf_dir, out, outtype in zip(jobs[0::3], jobs[1::3], jobs[2::3]):
        no_vocab = not (Path(hf_dir) / "tokenizer.json").is_file()
        for cls in classes:
            cls.set_vocab = (lambda self: None) if no_vocab else original[cls]
        sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outfile", out, "--outtype", outtype]
        if out.endswith(".mmproj.gguf"):
            sys.argv.append("--mmproj")
        convert_hf_to_gguf.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
