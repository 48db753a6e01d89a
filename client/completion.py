"""Shell completion: a script with the nouns, verbs and options of the verb
table written in (no process started on each TAB).

    source <(cloud-engine completion bash)        # ~/.bashrc
    source <(cloud-engine completion zsh)         # ~/.zshrc (through bashcompinit)
"""

from __future__ import annotations

from cloud_engine.client.verbs import VERBS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

COMMON = "--profile --output -o --help"
TOP = ("login", "events", "completion", "console")


def _options(spec: dict[str, Any]) -> str:
    words = ["--" + f["flag"] for f in spec["body"]]
    words += ["--" + q["name"].replace("_", "-") for q in spec["query"]]
    if spec["command"]:
        words += ["--json", "--idempotency-key"]
    if spec["operation"]:
        words += ["--wait"]
    return " ".join([*words, COMMON])


def bash(prog: str) -> str:
    func = "_" + prog.replace("-", "_")
    nouns = " ".join([*TOP, *VERBS])
    verbs = "\n".join(f'    {noun}) words="{" ".join(v)}";;' for noun, v in VERBS.items())
    options = "\n".join(
        f'    {noun}_{verb}) words="{_options(spec)}";;'
        for noun, v in VERBS.items()
        for verb, spec in v.items()
    )
    return f"""# {prog} completion (bash)
{func}() {{
  local cur=${{COMP_WORDS[COMP_CWORD]}} words=""
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "{nouns}" -- "$cur")); return
  fi
  if [ "$COMP_CWORD" -eq 2 ]; then
    case "${{COMP_WORDS[1]}}" in
{verbs}
    completion) words="bash zsh";;
    events) words="--follow --type {COMMON}";;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur")); return
  fi
  case "${{COMP_WORDS[1]}}_${{COMP_WORDS[2]}}" in
{options}
  esac
  case "${{COMP_WORDS[COMP_CWORD-1]}}" in
    -o|--output) words="table json yaml";;
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F {func} {prog}
"""


def script(shell: str, prog: str) -> str:
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + bash(prog)
    return bash(prog)
