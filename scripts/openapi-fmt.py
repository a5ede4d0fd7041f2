#!/usr/bin/env python3
"""Reformats appliance/openapi.json in the project's compact style (small objects on one line)."""
import json, sys
path = sys.argv[1] if len(sys.argv) > 1 else "appliance/openapi.json"
def fmt(v, ind=0):
    one = json.dumps(v, ensure_ascii=False, separators=(", ", ": "))
    if isinstance(v, dict) and one != "{}":
        one = "{ " + one[1:-1] + " }"
    small = len(one) + ind <= 96 and (not isinstance(v, dict) or all(not isinstance(x, (dict, list)) or len(json.dumps(x)) < 60 for x in v.values()))
    if not isinstance(v, (dict, list)) or small:
        return one
    pad = " " * (ind + 2)
    if isinstance(v, dict):
        return "{\n" + ",\n".join(pad + json.dumps(k) + ": " + fmt(x, ind + 2) for k, x in v.items()) + "\n" + " " * ind + "}"
    return "[\n" + ",\n".join(pad + fmt(x, ind + 2) for x in v) + "\n" + " " * ind + "]"
with open(path) as f:
    doc = json.load(f)
with open(path, "w") as f:
    f.write(fmt(doc) + "\n")
