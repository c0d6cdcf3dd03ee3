#!/usr/bin/env python3
"""A `terraform fmt -check` stand-in (no terraform binary here): the layout rules terraform fmt applies,
as hclwrite implements them, over every .tf file under the given directories.

  - indentation: two spaces per level, a level for each line that opens more brackets ({, [, () than it
    closes, ended by the line that closes them; no tabs, no trailing whitespace, one final newline;
  - `=` of consecutive one-line attributes aligned one space after the longest name, one space after it
    (a blank line, a comment line, a block header or a line that opens a multi-line value ends the run);
  - trailing comments of consecutive lines aligned one space after the longest line.

It does not normalise spacing inside expressions (terraform fmt turns `[ "a" ]` into `["a"]`).

  python3 tests/deploy/tffmt.py DIR...            # exit 1 and name each line that differs
  python3 tests/deploy/tffmt.py --write DIR...    # rewrite the files
"""

import sys
from pathlib import Path

OPEN, CLOSE = "{[(", "}])"


class Line:
    def __init__(self, text):
        self.text = text.strip()
        self.code_end = len(self.text)  # where a trailing comment starts
        self.net = 0  # bracket change outside strings
        self.equals = []  # (index, net bracket change from there to the end of the code)


def scan(lines):
    """Per line: brackets outside strings, the comment's start, the top-level `=` signs. A string may hold
    ${...} with nested strings; strings do not span lines (no heredocs in these files)."""
    out = []
    for raw in lines:
        ln = Line(raw)
        t = ln.text
        if t.startswith("<<") or "<<EOF" in t or "<<-" in t:
            raise ValueError("heredocs are not supported by this check")
        stack = []  # "str" or "interp"
        events = []  # (index, +1/-1) outside strings
        i = 0
        while i < len(t):
            c = t[i]
            mode = stack[-1] if stack else "code"
            if mode == "str":
                if c == "\\":
                    i += 2
                    continue
                if t.startswith("${", i) or t.startswith("%{", i):
                    stack.append("interp")
                    i += 2
                    continue
                if c == '"':
                    stack.pop()
                i += 1
                continue
            # code or interpolation
            if c == '"':
                stack.append("str")
            elif mode == "code" and (c == "#" or t.startswith("//", i)):
                ln.code_end = i
                break
            elif mode == "interp" and c == "{":
                stack.append("interp-brace")
            elif mode == "interp" and c == "}":
                stack.pop()
            elif mode == "interp-brace" and c == "}":
                stack.pop()
            elif mode == "interp-brace" and c == "{":
                stack.append("interp-brace")
            elif mode == "code" and c in OPEN:
                events.append((i, 1))
            elif mode == "code" and c in CLOSE:
                events.append((i, -1))
            elif mode == "code" and c == "=":
                prev, nxt = t[i - 1 : i], t[i + 1 : i + 2]
                if prev not in "=!<>" and nxt not in "=>":
                    ln.equals.append(i)
            i += 1
        ln.net = sum(d for _, d in events)
        ln.equals = [(e, sum(d for j, d in events if j > e)) for e in ln.equals]
        out.append(ln)
    return out


def formatted(text):
    raw = text.rstrip("\n").split("\n") if text.strip() else []
    lines = scan(raw)
    indents = []  # hclwrite's indent stack: how many brackets each indenting line opened
    rows = []  # [indent, lead, assign, comment]
    for ln in lines:
        if ln.net > 0:
            indent = "  " * len(indents)
            indents.append(ln.net)
        elif ln.net < 0:
            closed = -ln.net
            while closed > 0 and indents:
                if closed >= indents[-1]:
                    closed -= indents.pop()
                else:
                    indents[-1] -= closed
                    closed = 0
            indent = "  " * len(indents)
        else:
            indent = "  " * len(indents)
        indent = indent if ln.text else ""
        code, comment = ln.text[: ln.code_end].rstrip(), ln.text[ln.code_end :].strip()
        if not code:  # a comment-only or blank line
            rows.append([indent, comment, None, None])
        else:
            lead, assign = code, None
            # The first `=` after the first token; aligned only when the rest is a whole expression.
            if ln.equals and ln.equals[0][0] > 0 and ln.equals[0][1] == 0:
                e = ln.equals[0][0]
                lead, assign = code[:e].rstrip(), code[e + 1 :].strip()
            rows.append([indent, lead, assign, comment or None])
    # Align `=` over runs of rows that have one.
    run = []

    def close_run():
        width = max((len(r[1]) for r in run), default=0)
        for r in run:
            r[1] = r[1].ljust(width)
        run.clear()

    for r in rows:
        if r[2] is None:
            close_run()
        else:
            run.append(r)
    close_run()
    texts = [r[0] + r[1] + (" = " + r[2] if r[2] is not None else "") for r in rows]
    # Align trailing comments over runs of rows that have one.
    out, run = [], []

    def close_comments():
        width = max((len(texts[i]) for i in run), default=0)
        for i in run:
            texts[i] = texts[i].ljust(width) + " " + rows[i][3]
        run.clear()

    for i, r in enumerate(rows):
        if r[3] is None or r[2] is None and not r[1]:
            close_comments()
            if r[3] is not None:
                texts[i] += " " + r[3]
        else:
            run.append(i)
    close_comments()
    return "\n".join(t.rstrip() for t in texts) + "\n" if texts else ""


def files(dirs):
    for d in dirs:
        yield from sorted(Path(d).rglob("*.tf"))


def main(argv):
    write = "--write" in argv
    dirs = [a for a in argv if a != "--write"]
    bad = 0
    for f in files(dirs):
        text = f.read_text()
        want = formatted(text)
        if text == want:
            continue
        if write:
            f.write_text(want)
            print(f"formatted {f}")
            continue
        have_lines, want_lines = text.split("\n"), want.split("\n")
        for n, (h, w) in enumerate(zip(have_lines, want_lines), 1):
            if h != w:
                print(f"{f}:{n}: not as terraform fmt writes it:\n  have: {h!r}\n  want: {w!r}")
                bad += 1
                break
        else:
            print(f"{f}: line count or final newline differs from terraform fmt's")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
