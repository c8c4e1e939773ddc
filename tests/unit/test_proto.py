"""The generated gRPC code is what proto/amr_sd/v1/scoring.proto gives today (`make proto`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "client" / "amr_client" / "v1"
FILES = ("scoring_pb2.py", "scoring_pb2.pyi", "scoring_pb2_grpc.py")


def test_generated_code_is_not_stale(tmp_path):
    # The same command as `make proto`, into a scratch folder.
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iamr_client/v1=proto/amr_sd/v1",
                           f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                           f"--pyi_out={tmp_path}", "proto/amr_sd/v1/scoring.proto"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in FILES:
        fresh = (tmp_path / "amr_client" / "v1" / name).read_text()
        assert (GENERATED / name).read_text() == fresh, f"{name} is stale: run `make proto`"


def test_every_wire_model_field_has_a_proto_field_of_the_same_name():
    from amr_client import schemas
    from amr_client.v1 import scoring_pb2 as pb

    pairs = {pb.ScoreRequest: schemas.ScoreRequest, pb.Group: schemas.Group, pb.Prompt: schemas.Prompt,
             pb.Rollout: schemas.Rollout, pb.ScoringConfig: schemas.ScoringConfig,
             pb.ReturnSwitches: schemas.ReturnSwitches, pb.PolicyRef: schemas.PolicyRef,
             pb.ScoreResponse: schemas.ScoreResponse, pb.ScoredRollout: schemas.ScoredRollout,
             pb.ReflectionRecord: schemas.ReflectionRecord, pb.BatchStats: schemas.BatchStats,
             pb.PolicyStatus: schemas.PolicyStatus, pb.PolicyUpdate: schemas.PolicyUpdate}
    for message, model in pairs.items():
        assert set(message.DESCRIPTOR.fields_by_name) == set(model.model_fields), message.DESCRIPTOR.name


def test_the_status_table_in_docs_grpc_md_is_the_error_classes_own():
    import re

    from amr_sd import errors

    classes, todo = {}, [errors.AmrError]
    while todo:
        cls = todo.pop()
        classes[cls.type] = cls
        todo.extend(cls.__subclasses__())
    table = (ROOT / "docs" / "grpc.md").read_text().split("## Status codes", 1)[1]
    seen = set()
    for code, status, reasons in re.findall(r"^\| ([A-Z_]+) \| (\d{3}) \| ([^|]+) \|", table, re.M):
        for reason in re.findall(r"`(\w+)`", reasons):
            cls = classes[reason]
            assert (cls.grpc_code, cls.status_code) == (code, int(status)), reason
            seen.add(reason)
    assert seen == set(classes) - {"not_acceptable"}  # 406 is about HTTP's Accept header only


def test_every_engine_setting_info_reports_has_a_proto_field():
    # GetInfo fills pb.EngineSettings from EngineSettings.describe(); a new setting without a
    # proto field would make every GetInfo an INTERNAL error.
    from amr_client.grpc_codec import fill
    from amr_client.v1 import scoring_pb2 as pb
    from amr_sd.engine.base import EngineSettings

    for settings in (EngineSettings(), EngineSettings.for_device("cuda")):
        described = settings.describe()
        message = fill(pb.EngineSettings(), described)
        assert set(described) <= {f.name for f in message.DESCRIPTOR.fields}
