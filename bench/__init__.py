"""Benchmarks of amr-sd: speed, run side by side so every figure has a baseline from the same run,
and credit fidelity, where the credit lands.

- `speed/`: `python -m bench` runs every part and writes JSON and PNG files under `build/bench/`;
  `--quick` shrinks every size for a smoke run, `--only PART ...` picks parts. Each part is also a
  module with a `run()` of its own. The parts, by their `--only` name, in the order they run:

  - `encoding` (`speed/encoding.py`): the cost of the score response on the wire, JSON against
    compact binary forms.
  - `viewer` (`speed/viewer.py`): the credit viewer's page-ready time for a large batch, beside
    parsing alone.
  - `engine` (`speed/engine_sweep.py`): vLLM engine settings (dtype x thread binding x token
    budget) on the embedded measured model, plus the transformers reference engine; is
    `EngineSettings.for_device` the best choice?
  - `overhead` (`speed/overhead.py`, with `recorder.py` and `replay.py`): the service against the
    same engine calls replayed on a bare engine; loop lag.
  - `scaling` (`speed/scaling.py`): a running `amr-sd serve` under growing requests: time,
    throughput, peak memory.
  - `transport` (`speed/transport.py`): HTTP against gRPC on the same batch.
  - `peer` (`speed/peer.py`, with `trl_launcher.py`): plain `vllm serve` and TRL's vLLM server
    against amr-sd's scoring-only path on the same tokens.
  - `replicas` (`speed/replicas.py`, with `standin_server.py`): one `ReplicaClient` call over two
    one-core replicas against one replica and one two-core server; the client's fan-out over
    1-16 stand-in replicas with a fixed per-token cost.

- `fidelity/`: `make fidelity` (`fidelity.onpolicy`, `fidelity.synthetic`) and `make
  fidelity-placement` (`fidelity.placement`) measure where the credit lands, not speed
  (docs/fidelity.md).
- `common/`: what both share: server processes (`procs`), the machine (`host`), the token
  sequences scored (`corpus`), tables, JSON and plots (`report`).

Numbers from a shared or busy machine are noisy: every part records the load average it saw.
"""

from pathlib import Path

OUT_DIR = Path("build/bench")
