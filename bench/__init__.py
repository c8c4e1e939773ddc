"""Speed benchmarks of amr-sd, run side by side so every figure has a baseline from the same run.

`python -m bench` runs every part and writes JSON and PNG files under `build/bench/`; `--quick`
shrinks every size for a smoke run. Each part is also a module with a `run()` of its own:

- `engine_sweep`: vLLM engine settings (dtype x thread binding x token budget) on the embedded
  measured model, plus the transformers reference engine; is `EngineSettings.for_device` the best
  choice?
- `encoding`: the cost of the score response on the wire, JSON against compact binary forms.
- `scaling`: a running `amr-sd serve` under growing requests: time, throughput, peak memory.
- `peer_trl`: TRL's vLLM scoring server against amr-sd's scoring-only path on the same tokens.
- `overhead`: the service against the same engine calls replayed on a bare engine; loop lag.
- `transport`: HTTP against gRPC on the same batch.
- `viewer`: the credit viewer's page-ready time for a large batch, beside parsing alone.

`make fidelity` runs the credit-fidelity benchmarks (`fidelity`, `fidelity_onpolicy`), which
measure where the credit lands, not speed (docs/fidelity.md).

Numbers from a shared or busy machine are noisy: every part records the load average it saw.
"""

from pathlib import Path

OUT_DIR = Path("build/bench")
