"""Credit fidelity: does the credit land on the tokens that went wrong? (docs/fidelity.md)

- `onpolicy`: `make fidelity` on the model's own mistakes (`onpolicy_sample` samples them into
  `data/`, `onpolicy_data` checks them step by step).
- `synthetic`: `make fidelity` on synthetic slips written into arithmetic chains (`chains`).
- `placement`: `make fidelity-placement`, teacher-block placements and wordings on those chains.
- `metrics`: AUROC, gate precision / recall / lift, hit@1, ProcessBench F1, shared by all three.
"""
