"""Every command the README and docs/ show exists: each `chatforge ...` parses with the real CLI, each
`python -m stages.<name> ...` names a stage whose `--set` overrides load against params.yaml, and each
`make <target>` is a target of the Makefile. A reader should never meet a command that does not work."""

import importlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from chatforge.core.config import load_params_file, parse_args

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# a command starts at one of these words; it ends at a comment, a pipe, `&&`, `;` or the end of the code
STARTS = re.compile(r"(?:^|[\s`|;(&])((?:chatforge|python -m stages\.\w+|make)(?=\s|$)[^`#|;&\n]*)")
PLACEHOLDERS = {"NAME", "DIR", "FILE", "N", "KEY", "PORT"}


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every command shown in code: indented blocks and `inline` spans."""
    found = []
    for page in PAGES:
        text = page.read_text()
        lines = text.replace("\\\n", " ").splitlines()          # backslash continuations joined
        fenced = [i for i, line in enumerate(lines) if line.lstrip().startswith("```")]
        inside = {i for a, b in zip(fenced[0::2], fenced[1::2]) for i in range(a + 1, b)}
        code = [line[4:] for line in lines if line.startswith("    ")] + [lines[i] for i in sorted(inside)]
        code += re.findall(r"`([^`\n]+)`", text)
        for snippet in code:
            for match in STARTS.finditer(snippet):
                command = match.group(1).strip()
                words = command.split()
                if words[0] == "chatforge" and (len(words) == 1 or not re.fullmatch(r"[a-z-]+", words[1])):
                    continue                  # prose ("chatforge-policy", "chatforge's") or the bare name
                if words[0] == "make" and len(words) == 1:
                    continue
                found.append((page.name, command))
    return sorted(set(found))


COMMANDS = documented_commands()


def tokens(command: str) -> list[str]:
    words = shlex.split(command.replace("[", " ").replace("]", " ").replace("...", " "))
    return ["x" if w in PLACEHOLDERS else w for w in words]


def test_the_pages_show_commands_of_every_kind():
    kinds = {c.split()[0] if not c.startswith("python") else "stages" for _, c in COMMANDS}
    assert kinds == {"chatforge", "stages", "make"}, kinds


@pytest.mark.parametrize("page,command", [c for c in COMMANDS if c[1].startswith("chatforge")])
def test_chatforge_command_parses(page, command):
    from flows.cli import build_parser

    args = tokens(command)[1:]
    if len(args) == 1:                           # a subcommand named in prose: it exists
        args.append("--help")
    try:
        build_parser().parse_args(args)
    except SystemExit as exit_:
        assert exit_.code == 0, f"{page}: `{command}` does not parse with the chatforge CLI"


@pytest.mark.parametrize("page,command", [c for c in COMMANDS if c[1].startswith("python -m stages")])
def test_stage_command_loads(page, command):
    words = tokens(command)
    module = importlib.import_module(words[2])
    assert callable(module.main), f"{page}: {words[2]} has no main()"
    args = parse_args(words[3:])
    params = args.params if args.params.is_absolute() else REPO / args.params
    load_params_file(module.Params, params, args.overrides)   # raises ConfigError naming the key


@pytest.mark.parametrize("page,command", [c for c in COMMANDS if c[1].startswith("make")])
def test_make_target_exists(page, command):
    target = tokens(command)[1]
    proc = subprocess.run(["make", "-n", "-C", str(REPO), target], capture_output=True, text=True)
    assert proc.returncode == 0, f"{page}: `{command}`: {proc.stderr.strip()}"
