#!/usr/bin/env python3
"""The values table of charts/switchyard/README.md, generated from values.yaml.

Every documented value has a comment starting with `# --` right above it (continued by further
`#` lines); a documented map or list is one row, and what is below it is not listed separately.
Every scalar must be documented: an undocumented leaf is an error.

Usage: values_table.py            print the table
       values_table.py --write    replace the table between the README's markers
       values_table.py --check    exit 1 when the README's table differs or a value is undocumented
"""

import json
import pathlib
import re
import sys

import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "switchyard"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)")


def rows():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    out, errors, stack, pending, skip_below = [], [], [], None, None
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_below is not None:
            if not stripped or indent > skip_below:
                continue
            skip_below = None
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        m = KEY.match(line)
        if not m:
            pending = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [m.group(2)]
        value = values
        for k in path:
            value = value[k]
        if pending is not None:
            out.append((".".join(path), value, " ".join(pending)))
            pending = None
            skip_below = indent
        elif isinstance(value, dict) and value:
            stack.append((indent, m.group(2)))
        else:
            errors.append(f"values.yaml: `{'.'.join(path)}` has no `# --` comment")
    return out, errors


def table():
    out, errors = rows()
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, value, desc in out:
        default = json.dumps(value, ensure_ascii=False)
        desc = desc.replace("|", "\\|")
        lines.append(f"| `{key}` | `{default}` | {desc} |")
    return "\n".join(lines) + "\n", errors


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    generated, errors = table()
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if mode not in ("--write", "--check"):
        sys.stdout.write(generated)
        return 1 if errors else 0
    readme = CHART / "README.md"
    text = readme.read_text()
    try:
        head, rest = text.split(START + "\n", 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        print(f"error: {readme} lacks the markers {START} / {END}", file=sys.stderr)
        return 1
    updated = f"{head}{START}\n{generated}{END}{tail}"
    if mode == "--write":
        readme.write_text(updated)
    elif updated != text:
        print(f"error: the values table of {readme} is out of date: run .tools/venv/bin/python tests/chart/values_table.py --write",
              file=sys.stderr)
        return 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
