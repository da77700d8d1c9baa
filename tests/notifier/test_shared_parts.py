"""Template parts that read only a run's shared context render once per run;
every message's output must be exactly what a full render gives."""

import pytest

from notifier import templating

SHARED = {
    "items": [{"title": "Tea <b>", "price": 3.5}, {"title": "Cake", "price": 12}],
    "headline": "Autumn & winter",
    "show_banner": True,
    "colours": ["red", "green", "blue"],
    "n": 3,
}
RECIPIENTS = [
    {"name": "Ann", "first_name": "Ann", "attributes": {"vip": True, "plan": "pro"}},
    {"name": "Bob <x>", "first_name": "Bob", "attributes": {"vip": False, "plan": "free"}},
    {"name": "", "first_name": "", "attributes": {}},
]

TEMPLATES = [
    # shared loop with filters, beside per-recipient variables
    "<h1>{{ headline }}</h1><p>Hi {{ recipient.name }}</p>{% for i in items %}"
    "<li>{{ forloop.counter }}. {{ i.title }} {{ i.price|floatformat:2 }}</li>{% endfor %}",
    # a shared loop whose body reads the recipient: per message
    "{% for i in items %}{{ i.title }} for {{ recipient.first_name }};{% endfor %}",
    # conditions: shared, per recipient, mixed
    "{% if show_banner %}BANNER{% else %}none{% endif %}"
    "{% if recipient.attributes.vip %}VIP{% elif n > 2 %}many{% endif %}"
    "{% if show_banner and recipient.attributes.plan == 'pro' %}PRO{% endif %}",
    # a filter argument read from the recipient
    "{{ headline|default:recipient.name }}{{ colours|join:recipient.first_name }}",
    # cycle and ifchanged keep per-render state: never shared
    "{% for c in colours %}{% cycle 'a' 'b' %}{{ c }}{% endfor %}"
    "{% for c in colours %}{% ifchanged %}{{ c }}{% endifchanged %}{% endfor %}",
    # nested loops, the inner one reading the outer loop's state
    "{% for c in colours %}{% for i in items %}{{ forloop.parentloop.counter }}"
    "{{ forloop.counter }}{{ c }}{{ i.title }} {% endfor %}{% endfor %}",
    # a loop variable shadowing a shared name
    "{% for items in colours %}{{ items }}{% endfor %}{{ items|length }}",
    # with binds a name; random differs per render (checked separately)
    "{% with h=headline %}{{ h }} {{ recipient.name }}{% endwith %}",
    # empty loop branch and a missing name
    "{% for x in nothing %}{{ x }}{% empty %}{{ headline }}{% endfor %}{{ missing }}",
]


def _both(source, recipient, *, autoescape=True, row=None):
    shared = templating.shared_layer(SHARED)
    context = {**shared, **(row or {}), "recipient": recipient}
    names = frozenset(k for k, v in shared.items() if context.get(k) is v)
    full = templating.render(source, context, autoescape=autoescape)
    parts = templating.render(
        source, context, autoescape=autoescape, shared=shared, shared_names=names
    )
    return full, parts


@pytest.mark.parametrize("source", TEMPLATES)
@pytest.mark.parametrize("autoescape", [True, False])
def test_output_is_the_full_render_for_every_recipient(source, autoescape):
    for recipient in RECIPIENTS:
        full, parts = _both(source, recipient, autoescape=autoescape)
        assert parts == full


def test_a_row_context_overriding_a_shared_name_is_not_shared():
    source = "{{ headline }} {% for i in items %}{{ i.title }}{% endfor %}"
    full, parts = _both(source, RECIPIENTS[0], row={"headline": "Variant B", "items": []})
    assert parts == full == "Variant B "


def test_the_shared_parts_render_once_per_run(monkeypatch):
    calls = []
    original = templating._render_shared_parts

    def counting(*args):
        calls.append(args[0])
        return original(*args)

    monkeypatch.setattr(templating, "_render_shared_parts", counting)
    source = "{% for i in items %}{{ i.title }}{% endfor %} {{ recipient.name }} #unique-1"
    shared = templating.shared_layer(SHARED)
    for recipient in RECIPIENTS:
        templating.render_message(
            subject="s",
            html_body=source,
            text_body="t",
            context={**shared, "recipient": recipient},
            shared=shared,
        )
    # Once for the three messages; the plain subject and text ("s", "t")
    # are filled in directly and have no parts to share.
    assert calls == [source]
    parts = templating._shared_parts_for(source, shared, frozenset(SHARED), True)
    assert not any(isinstance(n, templating.defaulttags.ForNode) for n in parts.template.nodelist)
    # Another run's content is another entry.
    other = templating.shared_layer({**SHARED, "items": []})
    templating.render(
        source, {**other, "recipient": RECIPIENTS[0]}, shared=other, shared_names=frozenset(SHARED)
    )
    assert calls[1:] == [source]


def test_random_renders_per_message():
    source = "{{ colours|random }}{{ headline }}"
    shared = templating.shared_layer(SHARED)
    nodes = templating._shared_parts_for(source, shared, frozenset(SHARED), True).template.nodelist
    assert isinstance(nodes[0], templating.VariableNode)  # the random pick: each render
    assert isinstance(nodes[1], templating.TextNode)  # the headline: once


def test_the_budget_still_counts_the_shared_work(settings):
    shared = templating.shared_layer({"rows": list(range(300))})
    source = "{% for a in rows %}{% for b in rows %}.{% endfor %}{% endfor %}{{ recipient.name }}"
    settings.NOTIFIER_RENDER_MAX_STEPS = 50_000
    for _ in range(2):  # first render computes the parts, the second reuses them
        with pytest.raises(templating.RenderLimitExceeded):
            templating.render(
                source,
                {**shared, "recipient": RECIPIENTS[0]},
                shared=shared,
                shared_names=frozenset({"rows"}),
            )
    settings.NOTIFIER_RENDER_MAX_STEPS = 1_000_000
    cheap = templating.shared_layer({"rows": list(range(100))})
    steps = templating._shared_parts_for(source, cheap, frozenset({"rows"}), True).steps
    assert steps > 10_000  # 100 x 100 iterations, charged to each message's budget
