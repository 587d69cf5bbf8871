"""An Ollama ``Modelfile`` for an exported GGUF, and a check that its template renders a
conversation exactly as the model's own (Jinja) chat template does.

Ollama writes prompt templates in Go's ``text/template`` language. The renderer below covers
only what ``modelfile`` writes (``range .Messages``, ``.Role``, ``.Content``,
``if eq .Role "..."``, ``end``), so that the check runs without Ollama installed."""

from __future__ import annotations

import re

_TEMPLATE = (
    '{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}{{ if eq .Role "assistant" }}'
    "{{EOS}}{{ end }}\n{{ end }}<|assistant|>\n"
)


def modelfile(gguf_file: str, eos_token: str, num_ctx: int) -> str:
    """The Modelfile text: FROM the GGUF, its chat TEMPLATE, the stop token, greedy decoding."""
    template = _TEMPLATE.replace("{{EOS}}", eos_token)
    return (
        f"FROM ./{gguf_file}\n"
        f'TEMPLATE """{template}"""\n'
        f'PARAMETER stop "{eos_token}"\n'
        "PARAMETER temperature 0\n"
        f"PARAMETER num_ctx {num_ctx}\n"
    )


def parse_modelfile(text: str) -> dict:
    """``{"FROM": str, "TEMPLATE": str, "PARAMETER": {name: [values]}}`` of a Modelfile."""
    out: dict = {"PARAMETER": {}}
    template = re.search(r'^TEMPLATE """(.*?)"""', text, flags=re.S | re.M)
    if template is None:
        raise ValueError('Modelfile has no TEMPLATE """...""" block')
    out["TEMPLATE"] = template.group(1)
    for number, line in enumerate(
        text[: template.start()].splitlines() + text[template.end() :].splitlines(), 1
    ):
        if not line.strip() or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "FROM":
            out["FROM"] = rest.strip()
        elif word == "PARAMETER":
            name, _, value = rest.partition(" ")
            out["PARAMETER"].setdefault(name, []).append(value.strip().strip('"'))
        else:
            raise ValueError(f"Modelfile line {number}: unknown instruction {word!r}")
    return out


def render(template: str, messages: list[dict]) -> str:
    """Render the Go-template subset above for ``messages`` ([{"role", "content"}])."""
    parts = re.split(r"(\{\{-?.*?-?\}\})", template)
    body_start = parts.index(next(p for p in parts if "range .Messages" in p))
    body_end = len(parts) - 1 - parts[::-1].index("{{ end }}")
    head, body, tail = parts[:body_start], parts[body_start + 1 : body_end], parts[body_end + 1 :]
    text = "".join(head)
    for message in messages:
        skip = False
        for part in body:
            if part.startswith("{{ if eq .Role"):
                skip = message["role"] != re.search(r'"(.*)"', part).group(1)
            elif part == "{{ end }}":
                skip = False
            elif not skip:
                text += {"{{ .Role }}": message["role"], "{{ .Content }}": message["content"]}.get(
                    part, part
                )
    return text + "".join(tail)
