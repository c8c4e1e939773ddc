"""Adapters that put AMR-SD advantages where each trainer's loss reads them.

Each module imports its trainer, so import only the one you use:

- `amr_client.integrations.trl`: `AMRGRPOTrainer`, a drop-in `trl.GRPOTrainer`.
- `amr_client.integrations.verl`: a batch reward manager and the `amr_sd` advantage estimator.
- `amr_client.integrations.shapes`: shifting, padding and per-step splitting for trainers that
  take full-sequence arrays (NeMo-RL, ROLL, AReaL) or one list per step (rllm, prime-rl).
- `amr_client.integrations.policy`: `PolicySync`, which names the policy being trained in each
  step's request (verl's manager uses it; call it beside `score` in the other trainers).

The service always answers in response-token order, aligned to the caller's token ids; these
adapters only move those numbers into each framework's layout, never re-tokenising anything.
"""
