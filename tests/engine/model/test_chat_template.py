"""Chat templates render as transformers' apply_chat_template renders them: the same
environment (tojson without HTML escaping, loop controls, namespaces, dict, raise_exception,
the generation tag), checked on templates that use each, against transformers' own
compiled template on the same arguments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from llmq.engine.model.chat_template import TemplateError, compile_template, render

# ChatML with tools as Qwen's templates write them: tojson of nested values holding "<", "&"
# and non-ASCII text, which Jinja's own tojson would escape
CHATML_TOOLS = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for tool in tools %}{{ tool | tojson }}\n"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Llama 3 style: a namespace, a date, loop controls, and a system message pulled out first
LLAMA3_STYLE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% if messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ strftime_now('%d %b %Y') }}"
    "\n{{ ns.system }}<|eot_id|>"
    "{% for m in messages %}{% if loop.index > 8 %}{% break %}{% endif %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}"
    "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% endif %}")
# Gemma style: no system role, a role map built with dict(), the generation tag
GEMMA_STYLE = (
    "{{ bos_token }}{% set roles = dict(user='user', assistant='model') %}"
    "{% for m in messages %}{% if m['role'] not in roles %}"
    "{{ raise_exception('Conversation roles must be user or assistant') }}{% endif %}"
    "<start_of_turn>{{ roles[m['role']] }}\n{% generation %}{{ m['content'] }}"
    "{% endgeneration %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

MESSAGES = [{"role": "system", "content": "Be brief & <exact>."},
            {"role": "user", "content": "  Hi — ça va?  "},
            {"role": "assistant", "content": "Oui."},
            {"role": "user", "content": "Et <toi>?"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "a < b & c é",
                                           "parameters": {"type": "object"}}}]


def transformers_render(source: str, **context: Any) -> str:
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(source).render(**context)


@pytest.mark.parametrize(("source", "messages", "extra"), [
    (CHATML_TOOLS, MESSAGES, {"tools": TOOLS}),
    (LLAMA3_STYLE, MESSAGES, {}),
    (GEMMA_STYLE, MESSAGES[1:], {}),
])
def test_a_template_renders_as_transformers_renders_it(source: str, messages: list[dict],
                                                       extra: dict[str, Any]) -> None:
    context = {"add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>", **extra}
    ours = render(compile_template(source, now=datetime.now()), messages, **context)
    assert ours == transformers_render(source, messages=messages, **context)
    if source == CHATML_TOOLS:
        assert "a < b & c é" in ours  # Jinja's own tojson would write \u003c and \u0026


def test_a_template_that_refuses_the_messages_says_why() -> None:
    with pytest.raises(TemplateError, match="roles must be user or assistant"):
        render(compile_template(GEMMA_STYLE), MESSAGES, add_generation_prompt=True,
               bos_token="<s>")


def test_a_pinned_date_is_the_date_templates_see() -> None:
    source = "{{ strftime_now('%Y-%m-%d') }}"
    assert render(compile_template(source, now=datetime(2025, 2, 3)), []) == "2025-02-03"
    assert render(compile_template(source), []) == datetime.now().strftime("%Y-%m-%d")


def test_templates_cannot_reach_python_through_a_namespace() -> None:
    import jinja2

    template = compile_template("{% set ns = namespace() %}{% set ns._x = 1 %}{{ ns._x }}")
    with pytest.raises((TemplateError, jinja2.exceptions.SecurityError)):
        render(template, [])


def test_a_pinned_chat_date_reaches_the_prompt_through_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``LLMQ_CHAT_DATE`` pins what a template's strftime_now gives, from the setting through
    the engine's config to the tokens: a batch rendered over midnight keeps one prompt."""
    from datetime import date

    from llmq.engine.config import EngineConfig
    from llmq.engine.engine import Engine
    from llmq.engine.generation import GenerationRequest
    from llmq.engine.model.decoder import LlamaModel
    from llmq.engine.model.tokenizer import TextTokenizer
    from llmq.settings import Settings
    from tests.engine.tiny import random_weights, smollm2_tokenizer, tiny_config

    monkeypatch.setenv("LLMQ_CHAT_DATE", "2025-02-03")
    pinned = Settings().chat_date
    assert pinned == date(2025, 2, 3)
    base = smollm2_tokenizer()
    tok = TextTokenizer(base._tok, LLAMA3_STYLE, base.bos_token_id, base.eos_token_ids)
    assert "Today Date: 03 Feb 2025\n" in tok.render_chat(MESSAGES, pinned)
    assert f"Today Date: {datetime.now():%d %b %Y}\n" in tok.render_chat(MESSAGES)
    config = tiny_config(tok)
    model = LlamaModel.from_hf_weights(config, random_weights(config))
    with Engine(model, tok, EngineConfig(slots=1, chat_date=pinned)) as engine:
        ids = engine.encode(GenerationRequest(messages=MESSAGES))
    assert tok.decode(ids).count("Today Date: 03 Feb 2025") == 1
