"""OPA as the oracle for tests/opa_differential.rs.

Reads a JSON job on standard input:
  {"policies": {NAME: {"modules": {FILE: TEXT}, "data": {...}, "query": "data.a.b"}},
   "cases": [{"policy": NAME, "input": {...}}, ...]}
and writes one JSON line per case, in order, to standard output:
  {"value": V} | {"undefined": true} | {"error": "..."}
A policy set OPA refuses to compile gives {"refused": "..."} for each of its cases.

OPA here is OPA's Go `rego` package (opa-golib-python-bindings), which evaluates
with strict builtin errors: a builtin error is reported as {"error": ...}.
"""
import json
import sys

from opa_bindings import OpaEngine
from opa_bindings.engine import OpaUndefinedError


def engine_for(policy):
    e = OpaEngine()
    for name, text in sorted(policy["modules"].items()):
        e.add_policy(name, text)
    if policy.get("data"):
        e.add_data(policy["data"])
    return e


def main():
    job = json.load(sys.stdin)
    engines = {}
    refused = {}
    for name, policy in job["policies"].items():
        try:
            engines[name] = engine_for(policy)
            # Compile now: OPA reports module errors at the first evaluation.
            engines[name].eval_query("true")
        except Exception as ex:  # noqa: BLE001 - any compile error is a refusal
            refused[name] = str(ex)
    out = sys.stdout
    for case in job["cases"]:
        name = case["policy"]
        if name in refused:
            out.write(json.dumps({"refused": refused[name]}) + "\n")
            continue
        path = job["policies"][name]["query"][len("data."):]
        try:
            value = engines[name].eval_document(path, case["input"])
            out.write(json.dumps({"value": value}) + "\n")
        except OpaUndefinedError:
            out.write(json.dumps({"undefined": True}) + "\n")
        except Exception as ex:  # noqa: BLE001 - evaluation errors are results too
            msg = str(ex)
            if "refused" in msg or "prepare_error" in msg:
                out.write(json.dumps({"refused": msg}) + "\n")
            else:
                out.write(json.dumps({"error": msg}) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
