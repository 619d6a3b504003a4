"""Every command's flags (names, defaults, choices, help) against the list recorded in
``tests/recorded/cli_flags.json``: moving the command line around must not change it.

After a deliberate change to a flag, record the list again with
``python tests/test_cli_flags.py > tests/recorded/cli_flags.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RECORDED = Path(__file__).resolve().parent / "recorded" / "cli_flags.json"
PLAIN = (str, int, float, bool, type(None), list)


def describe(parser: argparse.ArgumentParser) -> list[dict]:
    return [
        {
            "dest": action.dest,
            "options": list(action.option_strings),
            "default": action.default
            if isinstance(action.default, PLAIN)
            else repr(action.default),
            "required": action.required,
            "nargs": action.nargs
            if isinstance(action.nargs, (int, str, type(None)))
            else repr(action.nargs),
            "choices": list(action.choices) if action.choices else None,
            "help": action.help,
        }
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
    ]


def all_flags() -> dict:
    from spectrumkd.cli import build_parser

    parser = build_parser()
    flags = {"": describe(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                flags[name] = describe(command)
            flags["(commands)"] = [
                {"dest": c.dest, "help": c.help} for c in action._choices_actions
            ]
    # a JSON round trip, so tuples compare equal to the recorded lists
    return json.loads(json.dumps(flags, sort_keys=True, default=repr))


def test_commands_and_flags_match_the_recorded_list():
    recorded = json.loads(RECORDED.read_text())
    current = all_flags()
    assert sorted(current) == sorted(recorded), "commands were added or removed"
    for command in recorded:
        assert current[command] == recorded[command], f"flags of {command or 'spectrumkd'} changed"


if __name__ == "__main__":
    print(json.dumps(all_flags(), indent=1, sort_keys=True))
