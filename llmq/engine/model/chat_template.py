"""Chat templates rendered as transformers' ``apply_chat_template`` renders them: the
checkpoint's own Jinja template in a sandbox, with transformers' filters and globals
(``tojson`` without HTML escaping, ``raise_exception``, ``strftime_now``, ``namespace`` that
refuses underscore names, loop controls, the ``{% generation %}`` tag), so a chat request
becomes the exact text the model was trained on. Templates come from the Hub, so they are
untrusted code: the sandbox is immutable and nothing outside the template's arguments is
reachable."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, time
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """A template that raised (``raise_exception``) or could not render the messages."""


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template error: {message}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class _TemplateDict:
    """``dict`` for templates, without the attribute access that would reach Python."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace refusing dunder and underscore names, as transformers' does."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's own signature
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore names on a namespace: {name!r}")


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks;
    rendering leaves its body as it is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body
                                      ).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def compile_template(source: str, now: datetime | None = None) -> jinja2.Template:
    """``source`` compiled in transformers' environment; ``now`` pins ``strftime_now``
    (None: the clock at each render)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: (now or datetime.now()).strftime(fmt)
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"chat template does not compile: {exc}") from None


def pinned_clock(day: date) -> Callable[[str], str]:
    """A ``strftime_now`` that renders ``day`` (at midnight), whatever the clock says: passed
    as a render variable, it overrides the compiled template's own."""
    moment = datetime.combine(day, time())
    return moment.strftime


def render(template: jinja2.Template, messages: list[dict[str, Any]], **context: Any) -> str:
    """The prompt text of ``messages``; TemplateError when the template refuses them."""
    try:
        return template.render(messages=messages, **context)
    except TemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template error: {exc}") from None
