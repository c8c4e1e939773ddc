"""Train the embedded SmolLM2-135M with TRL's GRPOTrainer and AMR-SD advantages, on CPU.

    python examples/trl_grpo_amrsd.py                      # starts amr-sd itself on --port
    python examples/trl_grpo_amrsd.py --url http://127.0.0.1:8000   # or use a running one
    python examples/trl_grpo_amrsd.py --compare-grpo       # first the same steps with plain GRPO

Problems are reasoning-gym `chain_sum` sums; the reward is reasoning-gym's own verifier on the
last number of the completion, and failed completions carry verifier feedback to the critique
writer. AMR-SD's stats (amr/gate_rate, amr/acceptance_rate, amr/mean_abs_advantage next to
amr/mean_abs_base_advantage, ...) appear in the trainer's logs at every step. `--compare-grpo`
runs the same steps with TRL's plain GRPOTrainer first and prints both step times and their ratio.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

# TRL warns about the installed vLLM at import; this example generates with transformers.
warnings.filterwarnings("ignore", message="TRL currently supports vLLM")

import reasoning_gym
import torch
from datasets import Dataset
from demo import start_server, wait_ready
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from amr_client import AMRClient
from amr_client.integrations.trl import AMRGRPOTrainer
from amr_sd.engine.models import EMBEDDED_MODEL, resolve_model

_LAST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
INSTRUCTION = " Think briefly, then end with the final number."


def make_dataset(problems: int, seed: int):
    gym = reasoning_gym.create_dataset("chain_sum", size=problems, seed=seed,
                                       min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    rows = [{"prompt": [{"role": "user", "content": entry["question"] + INSTRUCTION}],
             "answer": entry["answer"], "index": k} for k, entry in enumerate(gym)]
    return gym, Dataset.from_list(rows)


def make_reward(gym):
    entries = list(gym)

    def chain_sum_verifier(completions, index, log_extra, **_):
        """reasoning-gym's own scorer on the completion's last number; feedback for failures."""
        rewards, feedback = [], []
        for completion, k in zip(completions, index, strict=True):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            numbers = _LAST_NUMBER.findall(text)
            answer = numbers[-1] if numbers else None
            reward = float(gym.score_answer(answer, entries[k]))
            rewards.append(reward)
            feedback.append("" if reward >= 1.0 else
                            f"The final answer {answer} is incorrect." if answer else "No final answer was found.")
        log_extra("amr_feedback", feedback)
        return rewards

    return chain_sum_verifier


def train(trainer_cls, args, model_path: str, gym, dataset, out_dir: str, **extra) -> list[dict]:
    config = GRPOConfig(
        output_dir=out_dir, max_steps=args.steps, per_device_train_batch_size=args.groups * args.group_size,
        num_generations=args.group_size, max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate, logging_steps=1, report_to="none", use_cpu=True,
        bf16=False, save_strategy="no", seed=args.seed)
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
        processing_class=AutoTokenizer.from_pretrained(model_path),
        reward_funcs=[make_reward(gym)], args=config, train_dataset=dataset, **extra)
    trainer.train()
    return [entry for entry in trainer.state.log_history if "step_time" in entry]


def summarise(name: str, logs: list[dict]) -> float:
    step_time = statistics.mean(e["step_time"] for e in logs)
    print(f"{name}: {len(logs)} steps, mean step time {step_time:.1f} s, "
          f"mean reward {statistics.mean(e['reward'] for e in logs):.3f}")
    if "amr/gate_rate" in logs[0]:
        print("  step  anneal_w  gate_rate  acceptance  mean|Â|  mean|A|  score_s")
        for k, e in enumerate(logs):
            print(f"  {k:>4}  {e['amr/anneal_weight']:>8.2f}  {e['amr/gate_rate']:>9.3f}  "
                  f"{e['amr/acceptance_rate']:>10.3f}  {e['amr/mean_abs_advantage']:>7.4f}  "
                  f"{e['amr/mean_abs_base_advantage']:>7.4f}  {e['amr/score_seconds']:>7.1f}")
    return step_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running amr-sd service; default: start one on --port")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--groups", type=int, default=2, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-completion-length", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    parser.add_argument("--decay-steps", type=int, default=50, help="AMR-SD anneal length")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--compare-grpo", action="store_true",
                        help="first train the same steps with plain GRPO and print the step-time ratio")
    args = parser.parse_args()

    model_path = str(resolve_model(EMBEDDED_MODEL))
    gym, dataset = make_dataset(args.problems, args.seed)
    proc = None
    url = args.url
    if url is None:
        url = f"http://127.0.0.1:{args.port}"
        log_path = Path("build/trl-example-server.log")
        log_path.parent.mkdir(exist_ok=True)
        print(f"starting amr-sd on {url} (log: {log_path}) ...", flush=True)
        proc = start_server(args.port, log_path)
    try:
        with AMRClient(url) as client, tempfile.TemporaryDirectory() as out_dir:
            if proc is not None:
                wait_ready(client, proc, log_path)
            grpo_time = None
            if args.compare_grpo:
                grpo_time = summarise("GRPO", train(GRPOTrainer, args, model_path, gym, dataset, out_dir))
            amr_logs = train(AMRGRPOTrainer, args, model_path, gym, dataset, out_dir, amr_client=client,
                             amr_config={"decay_steps": args.decay_steps}, amr_reference_column="answer")
            amr_time = summarise("GRPO + AMR-SD", amr_logs)
            if grpo_time is not None:
                print(f"step time ratio AMR-SD / GRPO: {amr_time / grpo_time:.2f}x")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            if proc.wait(timeout=60) != 0:
                sys.exit(f"the service exited with {proc.returncode}; see {log_path}")


if __name__ == "__main__":
    main()
