"""The README's shell blocks run as written: every `convirt ...` line in a ```bash block names a real command and
only options that command has (usage synopses such as `[--model ...]` belong in ```text blocks)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def without_substitutions(text: str) -> str:
    """Each "$(...)" (nested parentheses and all) becomes one word: VALUE."""
    out, i = [], 0
    while (start := text.find("$(", i)) >= 0:
        depth, j = 0, start + 1
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        quoted = start > 0 and text[start - 1] == '"'
        out.append(text[i:start - quoted] + "VALUE")
        i = j + 1 + (quoted and text[j + 1:j + 2] == '"')
    return "".join(out) + text[i:]


def shell_commands(markdown: str) -> list[str]:
    """`convirt ...` commands of the ```bash / ```shell / ```sh blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```(?:bash|shell|sh)\n(.*?)```", markdown, flags=re.DOTALL):
        text = re.sub(r"\\\n\s*", " ", block)
        text = without_substitutions(text)
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"&&|\|\||;|\|", line):
                part = part.strip()
                if part.startswith("convirt ") or part == "convirt":
                    out.append(part)
    return out


def check(command: str) -> list[str]:
    """Problems with one command line: unknown sub-command or option, or synopsis brackets."""
    from convirt_cli.cli.main import COMMANDS, build_command

    if re.search(r"\[--|\bPRESET\||\|PRESET|\.\.\.\]", command):
        return [f"{command!r}: a usage synopsis, not a command (put it in a ```text block)"]
    words = shlex.split(command)[1:]
    while words and words[0].startswith("--"):  # root options: --config FILE
        words = words[2:]
    if not words or words[0] not in COMMANDS:
        return [f"{command!r}: no such command"]
    cmd = build_command(words[0])
    rest = words[1:]
    if hasattr(cmd, "commands"):  # a group: `index build`, `evaluate retrieval`
        if not rest or rest[0] not in cmd.commands:
            return [f"{command!r}: no such sub-command"]
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    known = {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", []))}
    return [f"{command!r}: {w.split('=')[0]} is not an option of {cmd.name}" for w in rest
            if w.startswith("-") and w.split("=")[0] not in known and not re.fullmatch(r"-\d+(\.\d+)?", w)]


def test_readme_shell_blocks_use_real_commands_and_options():
    commands = shell_commands((ROOT / "README.md").read_text())
    assert len(commands) >= 8, commands  # the parser found the README's commands
    problems = [p for c in commands for p in check(c)]
    assert not problems, "\n".join(problems)


def test_the_check_catches_synopses_and_wrong_flags():
    assert check("convirt pretrain DATA [--model tiny|PRESET]")
    assert check("convirt pretrain data --nosuchflag")
    assert check("convirt nosuchcommand")
    assert not check("convirt pretrain examples/data --lr 1e-3")
    assert not check("convirt index build idx --faiss")
