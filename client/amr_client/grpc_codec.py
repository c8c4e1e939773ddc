"""Plain data <-> the gRPC messages of proto/amr_sd/v1/scoring.proto.

The proto mirrors the pydantic wire contract (schemas.py) field by field, under the same names,
so one generic walk converts either way and the pydantic models stay the only validation: a
gRPC request is checked by exactly the code that checks an HTTP body, with the same field paths
in its errors. Per-token arrays go through `extend` / `list`, which copy in C.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


# Messages that stand for a tuple in the pydantic models (BatchStats.top_gated_tokens).
_TUPLES = {"amr_sd.v1.TokenCount"}


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _repeated(field: FieldDescriptor) -> bool:
    # `label` is deprecated in newer protobuf releases; is_repeated replaces it.
    is_repeated = getattr(field, "is_repeated", None)
    return is_repeated if is_repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def to_dict(msg: Message, *, absent_as_none: bool = False) -> dict[str, Any]:
    """The message as the dict a pydantic model validates. An unset optional field and an empty
    repeated field are left out (or None with `absent_as_none`), so defaults apply as over HTTP."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        name = field.name
        value = getattr(msg, name)
        if _is_map(field):
            if value or not absent_as_none:
                out[name] = dict(value)
        elif _repeated(field):
            if field.message_type is not None and field.message_type.full_name in _TUPLES:
                items = [tuple(getattr(item, f.name) for f in field.message_type.fields) for item in value]
            elif field.message_type is not None:
                items = [to_dict(item, absent_as_none=absent_as_none) for item in value]
            else:
                items = list(value)
            if items:
                out[name] = items
            elif absent_as_none:
                out[name] = None
        elif field.has_presence and not msg.HasField(name):
            if absent_as_none:
                out[name] = None
        elif field.message_type is not None:
            out[name] = to_dict(value, absent_as_none=absent_as_none)
        else:
            out[name] = value
    return out


def fill(msg: Message, data: Mapping[str, Any]) -> Message:
    """Set `msg`'s fields from `data` (a model_dump): None leaves a field unset; a tuple fills a
    sub-message's fields in declaration order (BatchStats.top_gated_tokens), as `to_dict` reads
    them back."""
    fields = msg.DESCRIPTOR.fields_by_name
    for name, value in data.items():
        if value is None:
            continue
        field = fields.get(name)
        if field is None:
            raise ValueError(f"{msg.DESCRIPTOR.full_name} has no field {name!r}")
        if _is_map(field):
            getattr(msg, name).update(value)
        elif _repeated(field):
            target = getattr(msg, name)
            if field.message_type is None:
                target.extend(value)
            else:
                order = [f.name for f in field.message_type.fields]
                for item in value:
                    fill(target.add(), dict(zip(order, item)) if isinstance(item, (tuple, list)) else item)
        elif field.message_type is not None:
            sub = getattr(msg, name)
            sub.SetInParent()  # present even when every field is at its default
            fill(sub, value)
        else:
            setattr(msg, name, value)
    return msg
