"""``$(VAR)`` references in a container's command, expanded as Kubernetes expands them.

Clara runs each operator as a Kubernetes container, and NVIDIA's own definitions rely on
Kubernetes' expansion of ``command`` (``--model-store=$(NVIDIA_CLARA_SERVICE_DATA_PATH)/models``).
The Clara docs say nothing more, so the mock follows the Kubernetes rules exactly:

* ``$(NAME)`` becomes the value of ``NAME`` in the environment;
* a reference to a variable the environment does not have is left as written;
* ``$$`` becomes ``$`` and is not expanded further (``$$(NAME)`` gives ``$(NAME)``);
* any other ``$`` (``$NAME``, ``${NAME}``, an unclosed ``$(``) is left as written: there is
  no shell, so shell syntax means nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["expand_command", "expand_references"]


def expand_command(argv: Iterable[str], env: Mapping[str, str]) -> list[str]:
    """Return ``argv`` with every word's ``$(VAR)`` references expanded from ``env``.

    Args:
        argv: The command line, one word per item (a container's ``command``).
        env: The environment the process will get.

    Returns:
        A new list; ``argv`` is not changed. Words are never split or joined.

    Example:
        >>> expand_command(["serve", "--store=$(DATA)/models", "$$(DATA)", "$(NOPE)"],
        ...                {"DATA": "/srv"})
        ['serve', '--store=/srv/models', '$(DATA)', '$(NOPE)']
    """
    return [expand_references(word, env) for word in argv]


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Return ``text`` with its ``$(VAR)`` references expanded (see the module docstring)."""
    out: list[str] = []
    position = 0
    length = len(text)
    while position < length:
        dollar = text.find("$", position)
        if dollar == -1 or dollar == length - 1:
            break
        out.append(text[position:dollar])
        following = text[dollar + 1]
        if following == "$":
            out.append("$")
            position = dollar + 2
        elif following == "(":
            close = text.find(")", dollar + 2)
            if close == -1:  # incomplete reference: keep "$(" and scan on after it
                out.append("$(")
                position = dollar + 2
            else:
                name = text[dollar + 2 : close]
                out.append(env.get(name, f"$({name})"))
                position = close + 1
        else:
            out.append("$" + following)
            position = dollar + 2
    out.append(text[position:])
    return "".join(out)
