"""``router-controller check`` and ``render``: a StaticRoute's verdict and router file, offline.

GitOps pipelines validate manifests before they reach a cluster, and a StaticRoute the
API server refuses (or the operator reports as invalid) should fail the pull request,
not the sync. ``check`` reads manifests (files, directories, ``-`` for stdin: multi-
document YAML, JSON, ``List`` objects, ``kustomize build`` output), skips objects of
other kinds, and applies to each StaticRoute what a create goes through: ObjectMeta's
rules (:mod:`router_controller.objectmeta`), the CRD's schema and CEL rules
(:mod:`router_controller.crdvalidation`, reading the CRD shipped in this package), then
the operator's own rules (:func:`router_controller.routerconfig.render`). Each problem
is printed with the file, the line of its document, the object and the field; the exit
code is 1 when any StaticRoute is invalid, 2 when the input could not be read.

``render`` prints the exact ``dynamic_config.json`` the operator would write for one
StaticRoute, so a change can be reviewed as the router will see it.

The CRD is package data (``router_controller/crd/``): in the source tree a symlink to
``config/crd/bases``, so there is one CRD to edit; the wheel (and so the container image)
holds the file itself and checks against the CRD it was released with.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from router_controller import api, objectmeta
from router_controller.crdvalidation import RuleError, Validator
from router_controller.routerconfig import (
    InvalidSpecError,
    RenderedConfig,
    check_config_map_name,
    render,
)

CRD_FILE = f"{api.GROUP}_{api.PLURAL}.yaml"
SUFFIXES = (".yaml", ".yml", ".json")

_FIELD = re.compile(r"\bspec(?:\.\w+)+")

Object = dict[str, Any]


def packaged_crd() -> Object:
    """The StaticRoute CRD this package was built with."""
    text = resources.files("router_controller").joinpath("crd", CRD_FILE).read_text("utf-8")
    crd: Object = yaml.safe_load(text)
    return crd


class InputError(Exception):
    """A path that cannot be read; the check cannot run (exit 2)."""


@dataclass(frozen=True, slots=True)
class Document:
    source: str  # the file as given, or "-" for stdin
    line: int  # 1-based line where the document starts (1 for JSON)
    where: str  # "" or "items[3]" inside a List
    obj: Any


@dataclass(slots=True)
class Verdict:
    """What the check found about one StaticRoute (or one unreadable document)."""

    document: Document
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rendered: RenderedConfig | None = None

    @property
    def name(self) -> str:
        obj = self.document.obj
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict):
            return "<no metadata>"
        name = str(meta.get("name") or meta.get("generateName") or "<no name>")
        namespace = meta.get("namespace")
        return f"{namespace}/{name}" if namespace else name

    def lines(self) -> Iterator[str]:
        doc = self.document
        where = f"{doc.source}:{doc.line}"
        subject = f"{api.KIND} {self.name}" if isinstance(doc.obj, dict) else "document"
        if doc.where:
            subject = f"{subject} ({doc.where})"
        for problem in self.problems:
            yield f"{where}: {subject}: {problem}"
        for warning in self.warnings:
            yield f"{where}: {subject}: warning: {warning}"


# --- reading ----------------------------------------------------------------------


def read(paths: Sequence[str], *, stdin: TextIO, recursive: bool) -> Iterator[tuple[str, str]]:
    """(source, text) for every file named, directories expanded as ``kubectl -f`` does."""
    for given in paths:
        if given == "-":
            yield "-", stdin.read()
            continue
        path = Path(given)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if p.suffix in SUFFIXES and p.is_file())
            for file in files:
                yield str(file), _text(file)
        elif path.exists():
            yield given, _text(path)
        else:
            raise InputError(f'the path "{given}" does not exist')


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}") from None


def documents(source: str, text: str) -> Iterator[Document | Verdict]:
    """Each object in ``text``; a document that does not parse becomes a failed Verdict."""
    if text.lstrip().startswith(("{", "[")):
        yield from _json_documents(source, text)
        return
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            line = node.start_mark.line + 1
            yield from _expand(Document(source, line, "", loader.construct_document(node)))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        yield Verdict(Document(source, line, "", None), problems=[f"not valid YAML: {err}"])
    finally:
        loader.dispose()


def _json_documents(source: str, text: str) -> Iterator[Document | Verdict]:
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        line = text.count("\n", 0, position) + 1
        try:
            obj, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            yield Verdict(
                Document(source, err.lineno, "", None), problems=[f"not valid JSON: {err}"]
            )
            return
        items = obj if isinstance(obj, list) else [obj]
        for i, item in enumerate(items):
            where = f"[{i}]" if isinstance(obj, list) else ""
            yield from _expand(Document(source, line, where, item))


def _expand(doc: Document) -> Iterator[Document]:
    """A ``List`` (``kind: List`` or ``StaticRouteList``) becomes its items."""
    obj = doc.obj
    if isinstance(obj, dict) and str(obj.get("kind", "")).endswith("List"):
        items = obj.get("items")
        if isinstance(items, list):
            for i, item in enumerate(items):
                if (
                    isinstance(item, dict)
                    and obj.get("kind") == f"{api.KIND}List"
                    and "kind" not in item
                ):
                    item = {"apiVersion": obj.get("apiVersion"), "kind": api.KIND, **item}
                yield Document(doc.source, doc.line, f"{doc.where}items[{i}]", item)
            return
    yield doc


# --- checking ---------------------------------------------------------------------


class Checker:
    """The API server's and the operator's rules for StaticRoutes, from one CRD."""

    def __init__(self, crd: Object, *, namespace: str = "default") -> None:
        self._validator = Validator.for_version(crd, api.VERSION)
        self._namespace = namespace  # for objects without one, as `kubectl apply -n`
        self._served = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]

    @property
    def rule_count(self) -> int:
        return self._validator.rule_count

    def applies_to(self, doc: Document) -> bool:
        obj = doc.obj
        if not isinstance(obj, dict):
            return obj is not None  # a scalar document is an error; an empty one is not
        # Ours by group; a StaticRoute without an apiVersion is ours gone wrong.
        group = str(obj.get("apiVersion") or "").partition("/")[0]
        return group == api.GROUP or (not group and obj.get("kind") == api.KIND)

    def check(self, doc: Document) -> Verdict:
        verdict = Verdict(doc)
        obj = doc.obj
        if not isinstance(obj, dict):
            verdict.problems.append("expected an object with apiVersion and kind")
            return verdict
        group, _, version = str(obj.get("apiVersion", "")).partition("/")
        if obj.get("kind") != api.KIND:
            verdict.problems.append(
                f"kind: {api.GROUP} has no kind {obj.get('kind')!r}; expected {api.KIND}"
            )
            return verdict
        if group != api.GROUP or version not in self._served:
            verdict.problems.append(
                f"apiVersion: {obj.get('apiVersion')!r} is not served; use "
                + " or ".join(f"{api.GROUP}/{v}" for v in self._served)
            )
            return verdict
        verdict.problems.extend(str(e) for e in objectmeta.validate(obj.get("metadata")))
        obj = {**obj, "metadata": objectmeta.named(obj.get("metadata"))}
        stored, errors = self._validator.validate(obj, skip=frozenset({"metadata", "status"}))
        verdict.problems.extend(str(e) for e in errors)
        if verdict.problems:
            return verdict
        # What the API server would store; now the operator's own rules.
        try:
            spec = api.StaticRouteSpec.model_validate(stored.get("spec") or {})
        except ValidationError as err:
            for detail in err.errors():
                where = ".".join(str(part) for part in ("spec", *detail["loc"]))
                verdict.problems.append(f"{where}: {detail['msg']}")
            return verdict
        meta = obj["metadata"]
        try:
            verdict.rendered = render(spec, namespace=meta.get("namespace") or self._namespace)
            check_config_map_name(meta["name"], spec)
        except InvalidSpecError as err:
            # One message per problem, each led by the field it is about.
            for part in re.split(r"; (?=spec\.)", str(err)):
                named = _FIELD.search(part)
                if named is not None and not part.startswith(named.group(0)):
                    part = f"{named.group(0)}: {part}"
                verdict.problems.append(part)
        verdict.warnings.extend(_router_ref_warnings(obj, spec))
        return verdict


def _router_ref_warnings(obj: Object, spec: api.StaticRouteSpec) -> list[str]:
    """What the operator reports on the status later (RouterHealthy=False), said now."""
    ref = spec.router_ref
    if ref is None:
        return []
    if (ref.kind or "Service") != "Service":
        return [f"spec.routerRef.kind is {ref.kind}; the operator only probes a Service"]
    own = obj.get("metadata", {}).get("namespace")
    if ref.namespace and own and ref.namespace != own:
        return [
            f"spec.routerRef points to namespace {ref.namespace}; a router mounts its "
            f"ConfigMap from its own namespace ({own}), so the operator refuses this unless "
            "started with --allow-cross-namespace-router-ref"
        ]
    return []


def verdicts(
    checker: Checker, paths: Sequence[str], *, stdin: TextIO, recursive: bool
) -> Iterator[Verdict]:
    for source, text in read(paths, stdin=stdin, recursive=recursive):
        for found in documents(source, text):
            if isinstance(found, Verdict):
                yield found
            elif checker.applies_to(found):
                yield checker.check(found)


# --- commands ---------------------------------------------------------------------


def _parser(command: str) -> argparse.ArgumentParser:
    if command == "check":
        description = (
            "Check StaticRoute manifests against the CRD's schema and CEL rules and the "
            "operator's own rules, without a cluster. Objects of other kinds are skipped. "
            "Exit 0: all valid; 1: some invalid; 2: the input could not be read."
        )
    else:
        description = (
            "Print the exact dynamic_config.json the operator would write for a StaticRoute."
        )
    p = argparse.ArgumentParser(prog=f"router-controller {command}", description=description)
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="a file, a directory of .yaml/.yml/.json files, or - for stdin"
        + ("; repeatable" if command == "check" else ""),
    )
    if command == "check":
        p.add_argument("-R", "--recursive", action="store_true", help="descend into directories")
    else:
        p.add_argument("--name", help="which StaticRoute, when the input holds several")
    p.add_argument(
        "-n",
        "--namespace",
        default="default",
        help="the namespace of objects that name none, as `kubectl apply -n` (default: default)",
    )
    p.add_argument(
        "--crd",
        metavar="FILE",
        help="check against this CRD instead of the one this version was built with",
    )
    return p


def _checker(args: argparse.Namespace, stderr: TextIO) -> Checker | None:
    try:
        crd = packaged_crd() if args.crd is None else yaml.safe_load(Path(args.crd).read_text())
        return Checker(crd, namespace=args.namespace)
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        print(f"router-controller: cannot load the CRD: {err}", file=stderr)
    except RuleError as err:
        print(
            f"router-controller: the CRD has rules this check cannot evaluate: {err}", file=stderr
        )
    return None


def check_main(
    argv: Sequence[str], *, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:  # fmt: skip
    args = _parser("check").parse_args(argv)
    checker = _checker(args, stderr)
    if checker is None:
        return 2
    checked = invalid = 0
    try:
        for verdict in verdicts(checker, args.filename, stdin=stdin, recursive=args.recursive):
            checked += 1
            invalid += bool(verdict.problems)
            for line in verdict.lines():
                print(line, file=stdout)
    except InputError as err:
        print(f"router-controller: {err}", file=stderr)
        return 2
    plural = "" if checked == 1 else "s"
    found = "" if checked else f" (no {api.KIND} in the input: objects of other kinds are skipped)"
    print(f"{checked} {api.KIND}{plural} checked, {invalid} invalid{found}", file=stderr)
    return 1 if invalid else 0


def render_main(
    argv: Sequence[str], *, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:  # fmt: skip
    args = _parser("render").parse_args(argv)
    checker = _checker(args, stderr)
    if checker is None:
        return 2
    try:
        found = list(verdicts(checker, args.filename, stdin=stdin, recursive=False))
    except InputError as err:
        print(f"router-controller: {err}", file=stderr)
        return 2
    if args.name is not None:
        found = [v for v in found if args.name in (v.name, v.name.rpartition("/")[2])]
    if len(found) != 1:
        names = ", ".join(v.name for v in found) or "none"
        hint = "pick one with --name" if found else "give a file with one StaticRoute"
        print(
            f"router-controller: expected one {api.KIND}, found {len(found)} ({names}); {hint}",
            file=stderr,
        )
        return 2
    verdict = found[0]
    if verdict.rendered is None:
        for line in verdict.lines():
            print(line, file=stderr)
        return 1
    for warning in verdict.warnings:
        print(f"warning: {warning}", file=stderr)
    # The bytes of the ConfigMap's value, UTF-8 and unchanged, whatever the locale.
    binary = getattr(stdout, "buffer", None)
    if binary is not None:
        stdout.flush()
        binary.write(verdict.rendered.data.encode("utf-8"))
        binary.flush()
    else:
        stdout.write(verdict.rendered.data)
    return 0
