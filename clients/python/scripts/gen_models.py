#!/usr/bin/env python3
"""Generates ``src/replyd/_models.py`` from ``clients/openapi.json``.

The SDK's wire types are not written by hand: answers (``Job``, ``Lease``,
``Problem``...) become frozen dataclasses with a ``from_json`` that checks
each member's type and keeps members this version does not know in
``extra``; request bodies (``SubmitRequest``, ``LeaseRequest``...) become
``TypedDict``s, so that mypy checks every body the SDK builds against the
spec. A test regenerates the file in memory and fails when the committed
one differs.

Usage (from ``clients/python``)::

    python scripts/gen_models.py           # rewrite src/replyd/_models.py
    python scripts/gen_models.py --check   # exit 1 if it is out of date

Only the standard library is used, and the output is a pure function of
the spec, so that any Python 3.9+ regenerates the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent.parent / "openapi.json"
OUTPUT = HERE.parent / "src" / "replyd" / "_models.py"

#: Schemas read from the server's answers: generated as dataclasses.
RESPONSES = [
    "Progress",
    "JobError",
    "Links",
    "Output",
    "Job",
    "JobList",
    "Lease",
    "LeaseBatch",
    "LeaseStatus",
    "Problem",
    "OutcomeAnswer",
]

#: Schemas the SDK sends: generated as TypedDicts.
REQUESTS = [
    "WebhookSpec",
    "OutputRequest",
    "SubmitRequest",
    "LeaseRequest",
    "HeartbeatRequest",
    "ProgressRequest",
    "CompleteRequest",
    "FailReason",
    "FailRequest",
    "Outcome",
    "OutcomesRequest",
]

#: Members whose names cannot be Python identifiers: wire name -> attribute.
RENAMES = {"self": "self_"}

#: What the SDK adds to a generated class (fields after the wire's, then
#: code), kept here so that the generated file is the only definition.
SDK_FIELDS: Dict[str, List[Tuple[str, str, str, str]]] = {
    "Job": [
        (
            "result",
            "Optional[JobResult]",
            "field(default=None, compare=False)",
            "The result itself, when ``submit(..., wait=N)`` was answered with it "
            "(``200``); otherwise None: read it with ``result(id)``.",
        ),
    ],
}
SDK_CODE: Dict[str, str] = {
    "Job": '''
    @property
    def is_terminal(self) -> bool:
        """Whether the job has finished (succeeded, failed or canceled)."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """Whether the job finished with a result."""
        return self.state == "succeeded"
''',
}

HEADER = '''"""The wire types of replyd's API, generated from ``clients/openapi.json``.

DO NOT EDIT: run ``python scripts/gen_models.py`` (in ``clients/python``).

Answers are frozen dataclasses: ``from_json`` checks each member's type
(``ValueError`` when the server sent something else) and keeps members
this version does not know in ``extra``. Request bodies are ``TypedDict``s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Dict, FrozenSet, List, Mapping, Optional, TypedDict, Union

from ._result import JobResult

#: Every state a job can be in (``JobState``).
JOB_STATES = {job_states}
#: The states a job ends in.
TERMINAL_STATES = ("succeeded", "failed", "canceled")

_TIME = re.compile(
    r"(\\d{{4}})-(\\d\\d)-(\\d\\d)[Tt ](\\d\\d):(\\d\\d):(\\d\\d)(?:\\.(\\d+))?"
    r"(?:([Zz])|([+-])(\\d\\d):(\\d\\d))$"
)


def _fail(where: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{{where}}: expected {{expected}}, got {{type(value).__name__}}")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, "a string", value)
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, "an integer", value)
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, "a number", value)
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, "a boolean", value)
    return value


def _list(value: Any, where: str) -> List[Any]:
    if not isinstance(value, list):
        raise _fail(where, "an array", value)
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "an object", value)
    return value


def _time(value: Any, where: str) -> datetime:
    """An RFC 3339 time, as an aware datetime (any number of fraction digits)."""
    match = _TIME.match(_str(value, where))
    if match is None:
        raise ValueError(f"{{where}}: {{value!r}} is not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = (match.group(7) or "0")[:6].ljust(6, "0")
    if match.group(8):
        tz = timezone.utc
    else:
        offset = timedelta(hours=int(match.group(10)), minutes=int(match.group(11)))
        tz = timezone(offset if match.group(9) == "+" else -offset)
    try:
        return datetime(year, month, day, hour, minute, min(second, 59), int(fraction), tz)
    except ValueError as e:
        raise ValueError(f"{{where}}: {{value!r}}: {{e}}") from None


def _required(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ValueError(f"{{where}} is missing")
    return data[key]


def _extra(data: Mapping[str, Any], known: FrozenSet[str]) -> Dict[str, Any]:
    return {{k: v for k, v in data.items() if k not in known}}
'''


class Generator:
    """Turns the selected schemas into Python source."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        self.schemas: Dict[str, Any] = spec["components"]["schemas"]
        self.out: List[str] = []

    # ---- types -------------------------------------------------------
    def ref_name(self, schema: Dict[str, Any]) -> Optional[str]:
        ref = schema.get("$ref")
        if ref is None:
            return None
        name = str(ref).rsplit("/", 1)[-1]
        if name not in RESPONSES and name not in REQUESTS and name != "JobState":
            raise SystemExit(f"gen_models: {name} is referenced but not generated")
        return name

    def nullable(self, schema: Dict[str, Any]) -> Tuple[bool, Dict[str, Any]]:
        """(whether null is allowed, the schema without the null)."""
        one_of = schema.get("oneOf")
        if one_of:
            rest = [s for s in one_of if s.get("type") != "null"]
            if len(rest) == 1 and len(rest) < len(one_of):
                return True, rest[0]
        kind = schema.get("type")
        if isinstance(kind, list) and "null" in kind:
            others = [k for k in kind if k != "null"]
            plain = dict(schema)
            plain["type"] = others[0] if len(others) == 1 else others
            return True, plain
        return False, schema

    def py_type(self, schema: Dict[str, Any]) -> str:
        null, schema = self.nullable(schema)
        base = self.base_type(schema)
        return f"Optional[{base}]" if null and base != "Any" else base

    def base_type(self, schema: Dict[str, Any]) -> str:
        name = self.ref_name(schema)
        if name == "JobState":
            return "str"
        if name is not None:
            return name
        kind = schema.get("type")
        if kind == "string":
            return "datetime" if schema.get("format") == "date-time" else "str"
        if kind == "integer":
            return "int"
        if kind == "number":
            return "float"
        if kind == "boolean":
            return "bool"
        if kind == "array":
            return f"List[{self.py_type(schema.get('items', {}))}]"
        if kind == "object":
            return "Dict[str, Any]"
        if not kind and not schema.get("oneOf"):
            return "Any"
        raise SystemExit(f"gen_models: no Python type for {schema!r}")

    def request_type(self, schema: Dict[str, Any]) -> str:
        """Types in request bodies: times stay strings, refs are TypedDicts."""
        null, plain = self.nullable(schema)
        if plain.get("type") == "string":
            base = "str"
        else:
            base = self.base_type(plain)
        return f"Optional[{base}]" if null and base != "Any" else base

    def converter(self, schema: Dict[str, Any], expr: str, where: str) -> str:
        """An expression that checks and converts `expr` to the schema's type."""
        null, schema = self.nullable(schema)
        conv = self.base_converter(schema, expr, where)
        if null and conv != expr:
            return f"None if {expr} is None else {conv}"
        return conv

    def base_converter(self, schema: Dict[str, Any], expr: str, where: str) -> str:
        name = self.ref_name(schema)
        if name == "JobState":
            return f"_str({expr}, {where!r})"
        if name is not None:
            return f"{name}.from_json(_object({expr}, {where!r}))"
        kind = schema.get("type")
        simple = {"integer": "_int", "number": "_float", "boolean": "_bool"}
        if kind == "string":
            helper = "_time" if schema.get("format") == "date-time" else "_str"
            return f"{helper}({expr}, {where!r})"
        if kind in simple:
            return f"{simple[kind]}({expr}, {where!r})"
        if kind == "array":
            item = self.converter(schema.get("items", {}), "item", where + "[]")
            return f"[{item} for item in _list({expr}, {where!r})]"
        if kind == "object":
            return f"dict(_object({expr}, {where!r}))"
        return expr

    # ---- output ------------------------------------------------------
    def emit(self, text: str = "") -> None:
        self.out.append(text)

    def docstring(self, text: str, indent: str) -> None:
        lines = text.strip().replace('"""', "'''").splitlines() or [""]
        if len(lines) == 1:
            self.emit(f'{indent}"""{lines[0]}"""')
            return
        self.emit(f'{indent}"""{lines[0]}')
        for line in lines[1:]:
            self.emit(f"{indent}{line}".rstrip())
        self.emit(f'{indent}"""')

    def dataclass(self, name: str) -> None:
        schema = self.schemas[name]
        props: Dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        ordered = [p for p in props if p in required] + [p for p in props if p not in required]
        self.emit()
        self.emit()
        self.emit("@dataclass(frozen=True)")
        self.emit(f"class {name}:")
        self.docstring(schema.get("description", name), "    ")
        self.emit()
        for wire in ordered:
            attr = RENAMES.get(wire, wire)
            typ = self.py_type(props[wire])
            if wire in required:
                self.emit(f"    {attr}: {typ}")
            else:
                if not typ.startswith("Optional[") and typ != "Any":
                    typ = f"Optional[{typ}]"
                self.emit(f"    {attr}: {typ} = None")
            doc = props[wire].get("description")
            if doc:
                self.docstring(doc, "    ")
        self.emit("    extra: Dict[str, Any] = field(default_factory=dict, repr=False)")
        self.emit('    """Members of the answer that this version of the SDK does not know."""')
        for attr, typ, default, doc in SDK_FIELDS.get(name, []):
            self.emit(f"    {attr}: {typ} = {default}")
            self.docstring(doc, "    ")
        self.emit()
        self.emit(f"    _KEYS: ClassVar[FrozenSet[str]] = frozenset({sorted(props)!r})")
        self.emit()
        self.emit("    @classmethod")
        self.emit(f"    def from_json(cls, data: Mapping[str, Any]) -> {name}:")
        self.emit(f'        """Reads a ``{name}`` from its decoded JSON (``ValueError`` if malformed)."""')
        self.emit("        return cls(")
        for wire in ordered:
            attr = RENAMES.get(wire, wire)
            where = f"{name}.{wire}"
            if wire in required:
                value = f"_required(data, {wire!r}, {where!r})"
                conv = self.converter(props[wire], value, where)
            else:
                value = f"data.get({wire!r})"
                conv = self.converter(props[wire], value, where)
                if conv != value and not conv.startswith("None if "):
                    conv = f"None if {value} is None else {conv}"
            self.emit(f"            {attr}={conv},")
        self.emit("            extra=_extra(data, cls._KEYS),")
        self.emit("        )")
        if name in SDK_CODE:
            self.emit(SDK_CODE[name].rstrip("\n"))

    def typed_dict(self, name: str) -> None:
        schema = self.schemas[name]
        if "oneOf" in schema:
            self.union_alias(name, schema)
            return
        props: Dict[str, Any] = schema.get("properties", {})
        required = [p for p in props if p in set(schema.get("required", []))]
        optional = [p for p in props if p not in required]
        doc = schema.get("description", name)
        self.emit()
        self.emit()
        if required and optional:
            self.emit(f"class _{name}Required(TypedDict):")
            for wire in required:
                self.emit(f"    {wire}: {self.request_type(props[wire])}")
            self.emit()
            self.emit()
            self.emit(f"class {name}(_{name}Required, total=False):")
            self.docstring(doc, "    ")
            self.emit()
            for wire in optional:
                self.emit(f"    {wire}: {self.request_type(props[wire])}")
        else:
            total = "" if required else ", total=False"
            self.emit(f"class {name}(TypedDict{total}):")
            self.docstring(doc, "    ")
            self.emit()
            for wire in props:
                self.emit(f"    {wire}: {self.request_type(props[wire])}")

    def union_alias(self, name: str, schema: Dict[str, Any]) -> None:
        """A oneOf of plain types and one inline object: `Union[..., NameDetail]`."""
        members: List[str] = []
        for i, option in enumerate(schema["oneOf"]):
            if option.get("type") == "object":
                detail = f"{name}Detail"
                self.schemas[detail] = dict(option, description=f"{name} as an object.")
                self.typed_dict(detail)
                members.append(detail)
            else:
                members.append(self.request_type(option))
        self.emit()
        self.emit()
        self.emit(f"{name} = Union[{', '.join(members)}]")
        self.docstring(schema.get("description", name), "")

    def render(self) -> str:
        states = self.schemas["JobState"]["enum"]
        self.emit(HEADER.format(job_states=repr(tuple(states))).rstrip("\n"))
        for name in RESPONSES:
            self.dataclass(name)
        for name in REQUESTS:
            self.typed_dict(name)
        self.emit()
        text = "\n".join(self.out)
        return text.rstrip("\n") + "\n"


def render(spec: Dict[str, Any]) -> str:
    """The text of ``_models.py`` for ``spec`` (the decoded openapi.json)."""
    return Generator(json.loads(json.dumps(spec))).render()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render(json.loads(args.spec.read_text(encoding="utf-8")))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python scripts/gen_models.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
