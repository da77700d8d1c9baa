import pytest
from django.core.exceptions import ValidationError

from notifier import templating
from notifier.models import Template


def test_renders_with_autoescape_and_derives_text():
    subject, html, text = templating.render_message(
        subject="Hi {{ name }}",
        html_body="<p>{{ name }} said {{ quote }}</p>",
        text_body="",
        context={"name": "Ann", "quote": "<script>x</script>"},
    )
    assert subject == "Hi Ann"
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "Ann said" in text and "<p>" not in text


def test_subject_is_not_html_escaped_and_is_one_line():
    subject, _, _ = templating.render_message(
        subject="Tom & Jerry\n{{ x }}", html_body="", text_body="t", context={"x": "<3"}
    )
    assert subject == "Tom & Jerry <3"


@pytest.mark.parametrize(
    "source",
    [
        "{% load static %}{% static 'x' %}",
        "{% include 'admin/base.html' %}",
        "{% extends 'admin/base.html' %}",
        "{% debug %}",
        "{% url 'admin:index' %}",
        "{% csrf_token %}",
    ],
)
def test_tags_reaching_beyond_the_data_are_refused(source):
    with pytest.raises(templating.TemplateSyntaxProblem):
        templating.check_syntax(source)


def test_private_attributes_are_refused():
    with pytest.raises(templating.TemplateSyntaxProblem, match="underscore"):
        templating.check_syntax("{{ name.__class__ }}")


def test_context_must_be_plain_data():
    with pytest.raises(templating.ContextNotPlainData):
        templating.plain_data({"user": object()})


def test_syntax_error_names_the_line():
    with pytest.raises(templating.TemplateSyntaxProblem, match="line 2"):
        templating.check_syntax("ok\n{% if %}")


@pytest.mark.django_db
def test_template_clean_reports_each_broken_part():
    template = Template(name="t", subject="{{ a", html_body="{% for x in %}", text_body="fine")
    with pytest.raises(ValidationError) as info:
        template.full_clean()
    assert set(info.value.message_dict) == {"subject", "html_body"}


# --- Render limits ----------------------------------------------------------------------

FOUR_NESTED_LOOPS = (
    "{% for a in s %}{% for b in s %}{% for c in s %}{% for d in s %}"
    "{% endfor %}{% endfor %}{% endfor %}{% endfor %}"
)


@pytest.mark.parametrize(
    "source",
    [
        '{{ "x"|ljust:"100000000" }}',
        '{{ "x"|rjust:"100000000" }}',
        '{{ "x"|center:"100000000" }}',
        '{{ 1|stringformat:"0100000000d" }}',
        '{{ 1|floatformat:"100000000" }}',
    ],
)
def test_width_arguments_over_the_limit_are_refused_before_the_output_is_built(source):
    with pytest.raises(templating.RenderLimitExceeded, match="NOTIFIER_RENDER_MAX_WIDTH"):
        templating.render(source, {})


def test_widths_within_the_limit_still_pad():
    assert templating.render('[{{ "ab"|ljust:"5" }}]', {}) == "[ab   ]"


def test_runaway_nested_loops_stop_at_the_step_budget():
    with pytest.raises(templating.RenderLimitExceeded, match="NOTIFIER_RENDER_MAX_STEPS"):
        templating.render(FOUR_NESTED_LOOPS, {"s": "x" * 200})


def test_the_clock_stops_a_render_over_its_time_budget(settings):
    settings.NOTIFIER_RENDER_MAX_SECONDS = 0
    with pytest.raises(templating.RenderLimitExceeded, match="NOTIFIER_RENDER_MAX_SECONDS"):
        templating.render("{% for a in s %}{{ a }}{% endfor %}", {"s": "x" * 1000})


def test_output_over_the_size_cap_is_refused(settings):
    settings.NOTIFIER_RENDER_MAX_CHARS = 1000
    with pytest.raises(templating.RenderLimitExceeded, match="NOTIFIER_RENDER_MAX_CHARS"):
        templating.render("{% for a in s %}0123456789{% endfor %}", {"s": "x" * 101})
    assert len(templating.render("{% for a in s %}0123456789{% endfor %}", {"s": "x" * 100}))


def test_doubling_with_add_and_join_cannot_build_a_huge_value():
    doubled = "".join(f"{{% with v{i}=v{i - 1}|add:v{i - 1} %}}" for i in range(1, 25))
    source = doubled + "{{ v24|make_list|join:v24 }}" + "{% endwith %}" * 24
    with pytest.raises(templating.RenderLimitExceeded, match="NOTIFIER_RENDER_MAX_CHARS"):
        templating.render(source, {"v0": "xy"})


def test_a_runaway_template_is_refused_when_saved():
    runaway = "{% for a in recipient.email %}" * 5 + "{% endfor %}" * 5
    with pytest.raises(templating.TemplateSyntaxProblem, match="steps"):
        templating.check_syntax(runaway)
    template = Template(name="t", subject="Hi", html_body=runaway, text_body="")
    with pytest.raises(ValidationError) as info:
        template.clean()
    assert "NOTIFIER_RENDER_MAX_STEPS" in str(info.value.message_dict["html_body"])


# --- Read-only data ---------------------------------------------------------------------


def test_templates_cannot_mutate_the_context():
    context = {"coupons": ["A", "B", "C"], "offer": {"code": "X"}}
    html = templating.render(
        "{{ coupons.pop }}{{ coupons.clear }}{{ offer.popitem }}{{ offer.clear }}"
        "{% for c in coupons %}{{ c }}{% endfor %}-{{ offer.code }}",
        context,
    )
    assert html == "ABC-X"
    assert context == {"coupons": ["A", "B", "C"], "offer": {"code": "X"}}


def test_each_message_sees_the_same_shared_context():
    shared = templating.freeze({"coupons": ["A", "B"]})
    first = templating.render_message(
        subject="{{ coupons.pop }}", html_body="{{ coupons.0 }}", text_body="", context=shared
    )
    second = templating.render_message(
        subject="{{ coupons.pop }}", html_body="{{ coupons.0 }}", text_body="", context=shared
    )
    assert first[1] == second[1] == "A"
    assert shared["coupons"] == ["A", "B"]


def test_reading_frozen_data_works_as_plain_data():
    html = templating.render(
        "{% for k, v in d.items %}{{ k }}={{ v }};{% endfor %}{{ l|join:',' }}|{{ l|length }}"
        "|{{ l|first }}{% cycle 'a' 'b' as z %}{% regroup rows by kind as groups %}"
        "{% for g in groups %}{{ g.grouper }}{% endfor %}",
        {"d": {"a": 1}, "l": [1, 2], "rows": [{"kind": "k"}]},
    )
    assert html == "a=1;1,2|2|1ak"


# --- Many small renders ----------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "<b>{{ data.title }}</b> #{{ data.n }}",
        "{% cycle 'odd' 'even' %}{% cycle 'a' 'b' as z %}{{ z }}{{ data.title|upper }}",
        "{% with t=data.title %}{{ t }}{% endwith %}{{ t }}{{ data.pop }}{{ data.title }}",
        "{% for c in data.title %}{% ifchanged %}{{ c }}{% endifchanged %}{% endfor %}",
    ],
)
def test_render_each_gives_what_separate_renders_give(source):
    contexts = [{"data": {"title": title, "n": n}} for n, title in enumerate(["aab", "<x>", "b"])]
    assert templating.render_each(source, contexts) == [
        templating.render(source, context) for context in contexts
    ]
    assert contexts[0] == {"data": {"title": "aab", "n": 0}}


PLAIN_DATA = [
    {"title": "Bob & <Ann>", "n": 5, "neg": -1200000, "it's": "q"},
    {"title": "", "n": 0, "nested": {"deep": {"x": "y"}}},
    {"title": True, "n": 1.5, "items": [1, 2]},
    {"title": None, "n": False, "keys": "k"},
    {"title": ["a"], "n": {"a": 1}},
    {"n": 10**30},
    {},
    {"title": "{{ recipient.email }}{% now 'Y' %}", "n": -7},
]


@pytest.mark.parametrize(
    "source",
    [
        "<b>{{ data.title }}</b> #{{ data.n }}",
        "{{ data.nested.deep.x }}|{{ data.neg }}|{{ data.items }}|{{ data.keys }}",
        "{{ data }}{{ data.items.0 }}{{ data.title.upper }}{{ True }}{{ None }}",
        "{{ missing.title }} text only {{ data.title.0 }}",
        "no variables at all",
        "{{ data.title|safe }}|{{ data.n|pluralize }}|{{ data.n|safe }}|{{ data.title|pluralize }}",
        "{% if data.title %}<b>{{ data.title }}</b>{% elif data.n %}{{ data.n }}{% else %}-{% endif %}",
        "{% if missing %}x{% endif %}{% if data.nested.deep %}{{ data.nested.deep.x }}{% endif %}",
        "{% if data.title %}{% if data.n %}{{ data.n|pluralize }}{% endif %}{% endif %}.",
        "{% if not data.title %}n{% endif %}{{ data.title|upper }}{{ data.n|pluralize:'es' }}",
    ],
)
@pytest.mark.parametrize("autoescape", [True, False])
def test_render_each_of_text_and_plain_variables_gives_what_render_gives(
    source, autoescape, settings
):
    contexts = [{"data": data} for data in PLAIN_DATA]
    expected = [templating.render(source, c, autoescape=autoescape) for c in contexts]
    assert templating.render_each(source, contexts, autoescape=autoescape) == expected
    settings.USE_THOUSAND_SEPARATOR = True  # integers then go through Django's formatting
    expected = [templating.render(source, c, autoescape=autoescape) for c in contexts]
    assert templating.render_each(source, contexts, autoescape=autoescape) == expected


def test_plain_templates_keep_the_step_limit(settings):
    settings.NOTIFIER_RENDER_MAX_STEPS = 50
    with pytest.raises(templating.RenderLimitExceeded):
        templating.render("{{ a }}" * 60, {"a": "x"})
    assert templating.render("{{ a }}" * 40, {"a": "x"}) == "x" * 40


def test_render_each_keeps_the_output_limit_for_plain_templates(settings):
    settings.NOTIFIER_RENDER_MAX_CHARS = 10
    short, long = templating.render_each("{{ a }}", [{"a": "x" * 10}, {"a": "x" * 11}])
    assert short == "x" * 10
    assert isinstance(long, templating.RenderLimitExceeded)


def test_render_each_returns_each_renders_error_in_its_place(settings):
    settings.NOTIFIER_RENDER_MAX_CHARS = 50
    results = templating.render_each(
        "{% for a in s %}0123456789{% endfor %}", [{"s": "x"}, {"s": "x" * 6}, {"s": "xx"}]
    )
    assert results[0] == "0123456789" and results[2] == "0123456789" * 2
    assert isinstance(results[1], templating.RenderLimitExceeded)
    broken = templating.render_each("{% if %}", [{}, {}])
    assert all(isinstance(result, templating.TemplateSyntaxProblem) for result in broken)
