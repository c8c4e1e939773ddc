"""`amr-sd` command line: `serve` (the HTTP and gRPC service), `score` (the scorer in-process on a
JSONL file of groups), `view` (the credit viewer), and the generated documents: `openapi`,
`config-doc` (docs/config.md) and `server-config-doc` (docs/server-config.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from amr_client._version import __version__
from amr_client.saved import line_head, replaced_atomically, scored_line
from amr_client.schemas import Group, ReturnSwitches, ScoreRequest, ScoringConfig
from amr_sd import mathcheck
from amr_sd.config import SECTIONS, EngineKnobs, ModelChoice, Settings, check_engine_copies
from amr_sd.config_flags import HelpFormatter, add_flags, given, server_config_markdown
from amr_sd.engine.models import EMBEDDED_MODEL
from amr_sd.errors import AmrError, InvalidRequest, from_validation_error


class InputError(Exception):
    """Bad input file: the message names the line and the field."""


def read_groups(path: Path) -> tuple[list[Group], list[int]]:
    """Parse and validate every line before any engine starts: (groups, their line numbers)."""
    groups, line_numbers = [], []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            groups.append(Group.model_validate_json(line))
            line_numbers.append(n)
        except ValidationError as exc:
            err = from_validation_error(exc)
            if err.message.startswith("Invalid JSON"):
                raise InputError(f"{path}:{n}: {err.message}") from None
            raise InputError(f"{path}:{n}: {err.field or 'group'}: {err.message}") from None
    if not groups:
        raise InputError(f"{path}: no groups (one JSON group per line expected)")
    return groups, line_numbers


def _parse_config(raw: str | None) -> ScoringConfig | None:
    if raw is None:
        return None
    text = Path(raw).read_text() if os.path.isfile(raw) else raw
    try:
        return ScoringConfig.model_validate_json(text)
    except ValidationError as exc:
        err = from_validation_error(exc, ("config",))
        raise InputError(f"--config: {err.field}: {err.message}") from None


def _engine_flags(args) -> tuple[ModelChoice, EngineKnobs]:
    """The model and engine flags, checked as `amr-sd serve` checks them."""
    choice, knobs = ModelChoice(**given(args, ModelChoice)), EngineKnobs(**given(args, EngineKnobs))
    check_engine_copies(choice, knobs)
    return choice, knobs


def _engine(args):
    from amr_sd.engine import create_engine

    choice, knobs = _engine_flags(args)
    return create_engine(choice.engine, choice.model, knobs.engine_settings())


async def _score(args, groups: list[Group], line_numbers: list[int], config: ScoringConfig | None,
                 out) -> tuple:
    """Scores the file batch by batch: (its BatchTally, wall seconds)."""
    from tqdm import tqdm

    from amr_sd.scoring import Scorer
    from amr_sd.scoring.stats import BatchTally

    returns = ReturnSwitches(cig=args.return_cig, logprobs=args.return_logprobs,
                             reflections=args.return_reflections)
    requests = [
        ScoreRequest(groups=groups[k:k + args.batch_groups], step=args.step, config=config,
                     returns=returns)
        for k in range(0, len(groups), args.batch_groups)
    ]
    engine = _engine(args)
    if not args.quiet:
        for line in engine.settings.explain():
            print(f"amr-sd score: {line}", file=sys.stderr)
    try:
        scorer = Scorer(engine)
        # Every batch is checked against the model's vocabulary and length limits before the
        # first engine call, so a bad line late in the file fails fast and writes nothing.
        for k, request in enumerate(requests):
            try:
                scorer.plan(request)
            except InvalidRequest as exc:
                raise _located(exc, line_numbers[k * args.batch_groups:], args.input) from None
        await engine.warmup()
        total = BatchTally()
        start = time.perf_counter()
        with tqdm(total=len(groups), unit="group", file=sys.stderr, disable=args.quiet) as bar:
            async def one_more(index, group):
                bar.update(1)

            memo: dict[int, str] = {}  # token pieces, each distinct id decoded once per file
            for request in requests:
                response = await scorer.score(request, on_group=one_more)
                head = line_head(response.model, response.policy_version, response.step,
                                 response.anneal_weight, stats=response.stats,
                                 config=config.model_dump(mode="json", exclude_unset=True) if config else None)
                # Self-contained lines, as save_scored writes them: `amr-sd view` needs nothing else.
                for sent, scored in zip(request.groups, response.groups, strict=True):
                    group = sent.model_dump(mode="json", exclude_none=True)
                    line = scored_line(head, scored, group, engine.tokenizer.decode, memo)
                    out.write(json.dumps(line) + "\n")
                total += BatchTally.of(response.stats)
        return total, time.perf_counter() - start
    finally:
        await engine.close()
        mathcheck.close()


def _located(exc: InvalidRequest, line_numbers: list[int], path: Path) -> InputError:
    # "groups[3].rollouts[1].token_ids[4]" of a batch is rollouts[1]... on that batch's 4th line.
    field = exc.field or ""
    if field.startswith("groups["):
        index = int(field[len("groups["):field.index("]")])
        rest = field[field.index("]") + 2:]
        return InputError(f"{path}:{line_numbers[index]}: {rest}: {exc.message}")
    return InputError(f"{path}: {field}: {exc.message}")


def _summary(total, wall_s: float) -> dict:
    """The file's summary: sums, and rates and token-weighted means over every batch."""
    return {
        "groups": total.groups,
        "rollouts": total.rollouts,
        "tokens_scored": total.tokens_scored,
        "reflected_tokens": total.reflected_tokens,
        "gated_tokens": total.gated_tokens,
        "gate_rate": round(total.gate_rate, 4),
        "gate_rate_positive": round(total.positive.gate_rate, 4),
        "gate_rate_negative": round(total.negative.gate_rate, 4),
        "reflections_requested": total.reflections_requested,
        "reflections_generated": total.reflections_generated,
        "acceptance_rate": round(total.acceptance_rate, 4),
        "reject_reasons": dict(total.reject_reasons),
        "mean_abs_base_advantage": round(total.mean_abs_base_advantage, 4),
        "mean_abs_advantage": round(total.mean_abs_advantage, 4),
        "wall_s": round(wall_s, 2),
    }


def cmd_score(args) -> int:
    try:
        groups, line_numbers = read_groups(args.input)
        config = _parse_config(args.config)
        # Step and config checks; a file may hold more groups than one request allows.
        ScoreRequest(groups=groups[:1], step=args.step, config=config)
        _engine_flags(args)
    except InputError as exc:
        print(f"amr-sd score: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        err = from_validation_error(exc)
        print(f"amr-sd score: {err.field}: {err.message}", file=sys.stderr)
        return 2

    # Write beside the target and rename at the end: a failed run leaves no partial output.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replaced_atomically(args.out) as out:
            total, wall_s = asyncio.run(_score(args, groups, line_numbers, config, out))
    except InputError as exc:
        print(f"amr-sd score: {exc}", file=sys.stderr)
        return 2
    except AmrError as exc:
        print(f"amr-sd score: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(_summary(total, wall_s)), file=sys.stderr)
    return 0


def _decoder(model: str):
    """One token's text, from the named model's tokenizer (only for files without `pieces`)."""
    from transformers import AutoTokenizer

    from amr_sd.engine.models import resolve_model
    from amr_sd.viewer import ViewError

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model(model))
    except (OSError, ValueError) as exc:
        raise ViewError(f"--model: no tokenizer for {model!r} ({exc}); pass the model the file "
                        "was scored with, as an embedded name or a local folder") from None
    return lambda ids: tok.decode(ids)


def cmd_view(args) -> int:
    from amr_sd.viewer import ViewError, build, read_batch, read_jsonl, render

    try:
        inputs = [obj for _, obj in read_jsonl(args.input)] if args.input else None
        batches = [read_batch(path, inputs) for path in args.files]
        if all(isinstance(b.head.get("step"), int) for b in batches):
            batches.sort(key=lambda b: b.head["step"])  # a run's steps, in order, however globbed
        decode = None
        if any(g.get("pieces") is None for b in batches for g in b.groups):
            decode = _decoder(args.model or batches[0].head.get("model") or EMBEDDED_MODEL)
        data = build(batches, decode)
    except ViewError as exc:
        print(f"amr-sd view: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.files[-1].with_suffix(".html")
    title = f"amr-sd credit: {', '.join(b.label for b in batches)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(data, title[:200]), encoding="utf-8")
    os.replace(tmp, out)
    rollouts = sum(len(b["rows"]) for b in data["batches"])
    tokens = sum(b["summary"]["tokens"] for b in data["batches"])
    print(f"amr-sd view: wrote {out} ({out.stat().st_size / 1e6:.2f} MB: {len(batches)} batch(es), "
          f"{rollouts} rollouts, {tokens} tokens)", file=sys.stderr)
    if args.serve:
        _serve_file(out, args.host, args.port)
    return 0


def _serve_file(path: Path, host: str, port: int) -> None:
    """The page on http://host:port/ until Ctrl-C or SIGTERM; nothing else is served."""
    import signal
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = path.read_bytes()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path.split("?")[0] not in ("/", "/index.html", f"/{path.name}"):
                self.send_error(404, "only the viewer page is served here")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Page)
    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"amr-sd view: serving http://{host}:{server.server_address[1]}/ (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def config_markdown() -> str:
    """The ScoringConfig reference (docs/config.md), generated from the model's fields."""
    rows = ["| field | type | default | meaning and source |", "|---|---|---|---|"]
    for name, f in ScoringConfig.model_fields.items():
        choices = getattr(f.annotation, "__args__", None)
        if choices and all(isinstance(c, type) for c in choices):  # `float | None`
            kind = " or ".join("null" if c is type(None) else c.__name__ for c in choices)
        else:  # a Literal's values
            kind = r" \| ".join(f"`{c}`" for c in choices) if choices else f.annotation.__name__
        rows.append(f"| `{name}` | {kind} | `{json.dumps(f.default)}` | {f.description} |")
    return ("# ScoringConfig reference\n\nGenerated by `amr-sd config-doc`; do not edit by hand. "
            "Every field can be overridden per request in `config` (only the fields you set apply).\n\n"
            + "\n".join(rows) + "\n")


def openapi_yaml() -> str:
    """openapi.yaml, generated from the app's routes and the wire schema."""
    import yaml

    from amr_sd.api.http import create_app

    return yaml.safe_dump(create_app().openapi(), sort_keys=False, allow_unicode=True, width=100)


def cmd_openapi(args) -> int:
    sys.stdout.write(openapi_yaml())
    return 0


def cmd_config_doc(args) -> int:
    sys.stdout.write(config_markdown())
    return 0


def cmd_server_config_doc(args) -> int:
    sys.stdout.write(server_config_markdown())
    return 0


EXIT_ENGINE_DEAD = 3


def cmd_serve(args) -> int:
    import logging

    import uvicorn

    from amr_sd.api.http import create_app
    from amr_sd.api.server import DrainingServer
    from amr_sd.runtime import Phase, Runtime

    try:
        settings = Settings(**given(args, Settings))  # AMR_* variables fill what flags leave out
    except ValidationError as exc:
        err = from_validation_error(exc)
        print(f"amr-sd serve: {err.field}: {err.message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    runtime = Runtime(settings)
    # One worker: the engine lives in this process; scale with replicas, not workers.
    config = uvicorn.Config(create_app(runtime), host=settings.host, port=settings.port, workers=1,
                            log_level="warning", timeout_graceful_shutdown=5)
    server = DrainingServer(config, runtime, settings.drain_timeout_s, grpc_port=settings.grpc_port)
    server.run()
    return EXIT_ENGINE_DEAD if runtime.phase is Phase.ENGINE_DEAD else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amr-sd", description="AMR-SD token-level credit assignment")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score a JSONL file of groups in-process",
                           formatter_class=HelpFormatter)
    score.add_argument("--in", dest="input", type=Path, required=True, help="JSONL, one group per line")
    score.add_argument("--out", type=Path, required=True,
                       help="JSONL, one scored group per line, self-contained (the group as sent and "
                            "its token texts beside its scores): `amr-sd view OUT` needs nothing else")
    score.add_argument("--step", type=int, required=True, help="global training step (anneal schedule)")
    add_flags(score, (ModelChoice, EngineKnobs), env=False)
    score.add_argument("--config", help="ScoringConfig overrides: a JSON object or a JSON file")
    score.add_argument("--batch-groups", type=int, default=64, help="groups per scorer call")
    score.add_argument("--return-cig", action="store_true", help="add per-token cig and gated")
    score.add_argument("--return-logprobs", action="store_true",
                       help="add per-token student_logprobs and teacher_logprobs")
    score.add_argument("--return-reflections", action=argparse.BooleanOptionalAction, default=True,
                       help="add the per-rollout reflection record (default on)")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(func=cmd_score)
    serve = sub.add_parser(
        "serve", help="run the HTTP service (AMR_* environment variables too)",
        formatter_class=HelpFormatter,
        description="Every setting is a flag and an AMR_* environment variable (flags win), except "
                    "AMR_API_KEYS, which is environment only. docs/server-config.md lists them.")
    add_flags(serve, SECTIONS, env=True)
    serve.set_defaults(func=cmd_serve)
    view = sub.add_parser("view", help="write the credit viewer: scored JSONL files as one HTML page")
    view.add_argument("files", nargs="+", type=Path,
                      help="scored JSONL: `amr-sd score --return-cig` output or batches a trainer "
                           "saved; several files (a run's steps) add a trend")
    view.add_argument("--in", dest="input", type=Path,
                      help="the groups that were scored, for files without `input` (written by an "
                           "older amr-sd score)")
    view.add_argument("--model", help="tokenizer for files without `pieces` (default: the file's model)")
    view.add_argument("--out", type=Path, help="HTML file to write (default: the last file, .html)")
    view.add_argument("--serve", action="store_true", help="then serve it on http://HOST:PORT/")
    view.add_argument("--host", default="127.0.0.1")
    view.add_argument("--port", type=int, default=8765, help="default 8765; 0 picks a free one")
    view.set_defaults(func=cmd_view)
    api = sub.add_parser("openapi", help="print the OpenAPI document (openapi.yaml) as YAML")
    api.set_defaults(func=cmd_openapi)
    doc = sub.add_parser("config-doc", help="print the ScoringConfig reference as Markdown")
    doc.set_defaults(func=cmd_config_doc)
    server_doc = sub.add_parser("server-config-doc",
                                help="print the server settings reference as Markdown")
    server_doc.set_defaults(func=cmd_server_config_doc)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # vLLM's per-request INFO lines drown the progress bar; an explicit setting still wins.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if getattr(args, "batch_groups", 1) < 1:
        print("amr-sd score: --batch-groups must be >= 1", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
