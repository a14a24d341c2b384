#!/usr/bin/env python3
"""Generate tests/data/stripe_params.json from Stripe's OpenAPI definitions.

Usage: python3 tests/data/gen_stripe_params.py [SPEC] [OUT]
  SPEC  default ../../../shared/stripe/openapi-subset.json relative to this file
        (i.e. /work/shared/stripe/openapi-subset.json)
  OUT   default stripe_params.json next to this file

For every operation the fake Stripe server implements, write the tree of
parameter names Stripe accepts (form body for POST, query string for GET),
following $ref and anyOf.  Only names and structure are kept, plus the scalar
kind of each leaf, whether an empty value ("unset") is allowed and which
members are required.

Node encoding (kept short on purpose):
  leaf        "s" string | "i" integer | "n" number | "b" boolean,
              with a "?" suffix when an empty value is accepted ("s?")
  object      {"p": {name: node}, "r": [required names]}
  array       {"a": node}                      (a[0]=.., a[]=..)
  free map    {"m": node}                      (metadata[any key]=..)
  a node may combine these when the spec allows several forms (anyOf), and
  carries "t": kind / "e": 1 when a plain scalar / an empty value is also allowed.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SPEC = os.path.normpath(
    os.path.join(HERE, "..", "..", "..", "shared", "stripe", "openapi-subset.json"))
DEFAULT_OUT = os.path.join(HERE, "stripe_params.json")

# (method, OpenAPI path) of every operation tests/fake_stripe.py implements.
OPERATIONS = [
    ("post", "/v1/customers"),
    ("get", "/v1/customers/search"),
    ("get", "/v1/customers/{customer}"),
    ("post", "/v1/checkout/sessions"),
    ("get", "/v1/checkout/sessions/{session}"),
    ("post", "/v1/billing_portal/sessions"),
    ("get", "/v1/subscriptions"),
    ("get", "/v1/subscriptions/{subscription_exposed_id}"),
    ("post", "/v1/subscriptions/{subscription_exposed_id}"),
    ("delete", "/v1/subscriptions/{subscription_exposed_id}"),
    ("get", "/v1/invoices/{invoice}"),
    ("get", "/v1/events"),
    ("get", "/v1/events/{id}"),
    # the subset took this one from the 2026-07-29.dahlia spec (its README,
    # "Operations added 2026-11-24"); the rest are 2023-08-16
    ("post", "/v1/invoices/create_preview"),
]

KINDS = {"string": "s", "integer": "i", "number": "n", "boolean": "b"}


class Gen:
    def __init__(self, spec):
        self.spec = spec
        self.stack = []

    def resolve(self, schema):
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/"):
                raise ValueError("external $ref not supported: " + ref)
            node = self.spec
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            schema = node
            seen += 1
            if seen > 50:
                raise ValueError("$ref loop at " + ref)
        return schema

    def node(self, schema):
        """Return the raw (unsimplified) node dict for a schema."""
        schema = self.resolve(schema)
        if id(schema) in self.stack:  # recursive schema: accept anything below
            return {"m": {"t": "s"}, "t": "s"}
        self.stack.append(id(schema))
        try:
            return self._node(schema)
        finally:
            self.stack.pop()

    def _node(self, schema):
        out = {}
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            for b in branches:
                merge(out, self.node(b))
        for b in schema.get("allOf", []):
            merge(out, self.node(b))
        typ = schema.get("type")
        if typ == "object" or "properties" in schema:
            props = schema.get("properties", {})
            out.setdefault("p", {})
            for name, sub in props.items():
                if name in out["p"]:
                    merge(out["p"][name], self.node(sub))
                else:
                    out["p"][name] = self.node(sub)
            if schema.get("required"):
                out["r"] = sorted(set(out.get("r", [])) | set(schema["required"]))
            addl = schema.get("additionalProperties")
            if addl not in (None, False):
                sub = self.node(addl) if isinstance(addl, dict) else {"t": "s"}
                if "m" in out:
                    merge(out["m"], sub)
                else:
                    out["m"] = sub
            if not props and addl in (None, False) and typ == "object" \
                    and "properties" not in schema:
                out["m"] = {"t": "s"}  # untyped object: free form
        elif typ == "array":
            sub = self.node(schema.get("items", {}))
            if "a" in out:
                merge(out["a"], sub)
            else:
                out["a"] = sub
        elif typ in KINDS:
            enum = schema.get("enum")
            if enum is not None and "" in enum:
                out["e"] = 1
            if enum != [""]:  # {"enum": [""]} only allows unsetting
                k = KINDS[typ]
                out["t"] = k if out.get("t", k) == k else "s"
        elif not branches and not schema.get("allOf"):
            out["t"] = "s"  # untyped: accept a plain value
        return out


def merge(dst, src):
    for key, val in src.items():
        if key == "p":
            p = dst.setdefault("p", {})
            for name, sub in val.items():
                if name in p:
                    merge(p[name], sub)
                else:
                    p[name] = sub
        elif key in ("a", "m"):
            if key in dst:
                merge(dst[key], val)
            else:
                dst[key] = val
        elif key == "t":
            dst["t"] = val if dst.get("t", val) == val else "s"
        elif key == "e":
            dst["e"] = 1
        elif key == "r":
            # anyOf of several object forms: a member is required only if every
            # form requires it; a scalar branch ("" to unset) has no "r"
            dst["r"] = sorted(set(dst["r"]) & set(val)) if "r" in dst else list(val)
            if not dst["r"]:
                del dst["r"]


def simplify(node):
    """Collapse plain leaves to their short string form, recursively."""
    out = {}
    for key in sorted(node):
        val = node[key]
        if key == "p":
            out["p"] = {n: simplify(s) for n, s in sorted(val.items())}
        elif key in ("a", "m"):
            out[key] = simplify(val)
        else:
            out[key] = val
    if out.get("p") == {} and "m" in out:
        del out["p"]
    if set(out) <= {"t", "e"} and "t" in out:
        return out["t"] + ("?" if out.get("e") else "")
    if set(out) == {"e"}:
        return "s?"
    return out


def operation_tree(gen, method, path):
    op = gen.spec["paths"][path][method]
    root = {"p": {}}
    required = []
    for param in op.get("parameters", []):
        param = gen.resolve(param)
        if param.get("in") != "query":
            continue
        root["p"][param["name"]] = gen.node(param.get("schema", {}))
        if param.get("required"):
            required.append(param["name"])
    body = op.get("requestBody")
    if body:
        body = gen.resolve(body)
        form = body.get("content", {}).get("application/x-www-form-urlencoded")
        if form and "schema" in form:
            merge(root, gen.node(form["schema"]))
            root.pop("m", None)  # an empty top-level body schema is not free form
    if required:
        root["r"] = sorted(set(root.get("r", [])) | set(required))
    root.setdefault("p", {})
    return simplify(root)


def main(argv):
    spec_path = argv[1] if len(argv) > 1 else DEFAULT_SPEC
    out_path = argv[2] if len(argv) > 2 else DEFAULT_OUT
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    gen = Gen(spec)
    info = spec.get("x-stripe-subset", {})
    result = {
        "_about": "Generated by tests/data/gen_stripe_params.py from Stripe's OpenAPI "
                  "definitions; do not edit. Node encoding: see the generator.",
        "_source": {
            "api_version": spec.get("info", {}).get("version"),
            "repository": info.get("source_repository"),
            "file": info.get("source_file"),
            "commit": info.get("source_commit"),
        },
        "operations": {},
    }
    for method, path in OPERATIONS:
        result["operations"][method.upper() + " " + path] = operation_tree(gen, method, path)
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        # one operation per line: small, yet diffs stay readable
        f.write("{\n")
        f.write('"_about":%s,\n' % json.dumps(result["_about"]))
        f.write('"_source":%s,\n' % json.dumps(result["_source"], sort_keys=True))
        f.write('"operations":{\n')
        ops = list(result["operations"].items())
        for i, (name, tree) in enumerate(ops):
            f.write("%s:%s%s\n" % (json.dumps(name),
                                   json.dumps(tree, separators=(",", ":"), sort_keys=True),
                                   "," if i + 1 < len(ops) else ""))
        f.write("}}\n")
    with open(tmp, encoding="utf-8") as f:
        if json.load(f) != result:
            raise SystemExit("internal error: written JSON does not round-trip")
    os.replace(tmp, out_path)
    print("wrote %s (%d operations, %d bytes)" % (
        out_path, len(OPERATIONS), os.path.getsize(out_path)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
