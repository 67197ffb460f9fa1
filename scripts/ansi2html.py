#!/usr/bin/env python3
"""Turn a terminal screen with SGR colour codes (`tmux capture-pane -e -p`)
into one self-contained HTML page: a dark terminal, a monospace grid, the
16 ANSI colours, the 256-colour cube and 24-bit colours, bold, dim,
reverse. Usage: ansi2html.py < screen.txt > screen.html"""

import html
import re
import sys

BASE = ["#1e1e1e", "#e05561", "#8cc265", "#d18f52", "#4aa5f0", "#c162de", "#42b3c2", "#d7dae0",
        "#5c6370", "#ff616e", "#a5e075", "#f0a45d", "#4dc4ff", "#de73ff", "#4cd1e0", "#ffffff"]
FG, BG = "#d7dae0", "#1e1e1e"


def colour256(n):
    if n < 16:
        return BASE[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return "#%02x%02x%02x" % (steps[n // 36], steps[n // 6 % 6], steps[n % 6])
    v = 8 + (n - 232) * 10
    return "#%02x%02x%02x" % (v, v, v)


class Pen:
    def __init__(self):
        self.reset()

    def reset(self):
        self.fg = self.bg = None
        self.bold = self.dim = self.reverse = False

    def apply(self, params):
        codes = [int(p) if p else 0 for p in params.split(";")] if params else [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                self.reset()
            elif c == 1:
                self.bold = True
            elif c == 2:
                self.dim = True
            elif c == 22:
                self.bold = self.dim = False
            elif c == 7:
                self.reverse = True
            elif c == 27:
                self.reverse = False
            elif 30 <= c <= 37:
                self.fg = BASE[c - 30]
            elif 90 <= c <= 97:
                self.fg = BASE[c - 90 + 8]
            elif 40 <= c <= 47:
                self.bg = BASE[c - 40]
            elif 100 <= c <= 107:
                self.bg = BASE[c - 100 + 8]
            elif c == 39:
                self.fg = None
            elif c == 49:
                self.bg = None
            elif c in (38, 48) and i + 1 < len(codes):
                if codes[i + 1] == 5 and i + 2 < len(codes):
                    value, i = colour256(codes[i + 2]), i + 2
                elif codes[i + 1] == 2 and i + 4 < len(codes):
                    value, i = "#%02x%02x%02x" % tuple(codes[i + 2:i + 5]), i + 4
                else:
                    value = None
                if c == 38:
                    self.fg = value
                else:
                    self.bg = value
            i += 1

    def style(self):
        fg, bg = self.fg or FG, self.bg or BG
        if self.reverse:
            fg, bg = bg, fg
        css = []
        if fg != FG:
            css.append("color:" + fg)
        if bg != BG:
            css.append("background:" + bg)
        if self.bold:
            css.append("font-weight:bold")
        if self.dim:
            css.append("opacity:.6")
        return ";".join(css)


def convert(text):
    pen = Pen()
    out = []
    for line in text.rstrip("\n").split("\n"):
        spans = []
        for part in re.split(r"(\x1b\[[0-9;]*[A-Za-z])", line):
            if part.startswith("\x1b["):
                if part.endswith("m"):
                    pen.apply(part[2:-1])
                continue
            if part:
                style = pen.style()
                body = html.escape(part)
                spans.append('<span style="%s">%s</span>' % (style, body) if style else body)
        out.append("".join(spans))
    return (
        "<!doctype html><meta charset=utf-8><style>"
        "body{margin:0;background:%s}"
        "pre{margin:0;padding:12px;color:%s;background:%s;"
        "font:13px/15px 'DejaVu Sans Mono','Liberation Mono',monospace}"
        "</style><pre>%s</pre>\n" % (BG, FG, BG, "\n".join(out))
    )


if __name__ == "__main__":
    sys.stdout.write(convert(sys.stdin.read()))
