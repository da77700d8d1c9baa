"""Read an email's HTML the way a test needs: its doctype and its elements."""

from html.parser import HTMLParser


class Document(HTMLParser):
    """The doctype and every start tag (name, attributes, text right after it)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.doctype = ""
        self.elements: list[dict] = []
        self.feed(html)
        self.close()

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": ""})

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_data(self, data):
        if self.elements:
            self.elements[-1]["text"] += data

    def find(self, tag: str, **attrs) -> list[dict]:
        return [
            e
            for e in self.elements
            if e["tag"] == tag and all(e["attrs"].get(k) == v for k, v in attrs.items())
        ]

    def tags(self) -> list[str]:
        return [e["tag"] for e in self.elements]


def assert_complete_document(html: str) -> Document:
    document = Document(html)
    assert document.doctype.lower() == "doctype html", document.doctype
    tags = document.tags()
    assert tags[:2] == ["html", "head"], tags[:5]
    assert document.find("meta", charset="utf-8") or document.find(
        "meta", **{"http-equiv": "Content-Type"}
    )
    assert document.find("meta", name="viewport")
    assert "body" in tags
    return document
