// The template editor: the HTML/MJML source highlighted as it is typed (a
// transparent textarea over a highlighted copy: the textarea stays the form
// field), and a live preview beside it, rendered by the server with sample
// data (POST with the CSRF token, debounced). No inline handlers, no eval.
(function () {
  "use strict";

  var TOKEN = /(\{#[\s\S]*?#\})|(\{%[\s\S]*?%\})|(\{\{[\s\S]*?\}\})|(<!--[\s\S]*?(?:-->|$))|(<\/?[A-Za-z][^<>]*>?)/g;

  function escapeHtml(text) {
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function span(cls, text) {
    return '<span class="' + cls + '">' + escapeHtml(text) + "</span>";
  }

  function highlightTag(tag) {
    // <name attr="value" ...> : the name, attribute names and quoted values.
    var match = /^(<\/?)([A-Za-z][\w:-]*)([\s\S]*)$/.exec(tag);
    if (!match) return escapeHtml(tag);
    var rest = match[3].replace(
      /([\w:-]+)(\s*=\s*)?("[^"]*"?|'[^']*'?)?|([\s\S])/g,
      function (all, name, eq, value, other) {
        if (other !== undefined) return escapeHtml(other);
        return span("t-attr", name) + escapeHtml(eq || "") + (value ? highlightValue(value) : "");
      }
    );
    return span("t-tag", match[1] + match[2]) + rest;
  }

  function highlightValue(value) {
    // Template language inside an attribute value stays visible as such.
    var out = "", last = 0, m, re = /\{\{[\s\S]*?\}\}|\{%[\s\S]*?%\}/g;
    while ((m = re.exec(value))) {
      out += span("t-str", value.slice(last, m.index));
      out += span(m[0].charAt(1) === "%" ? "t-djtag" : "t-dj", m[0]);
      last = m.index + m[0].length;
    }
    return out + span("t-str", value.slice(last));
  }

  function highlight(source) {
    var out = "", last = 0, m;
    TOKEN.lastIndex = 0;
    while ((m = TOKEN.exec(source))) {
      if (m[0] === "") { TOKEN.lastIndex++; continue; }
      out += escapeHtml(source.slice(last, m.index));
      if (m[1] || m[4]) out += span("t-com", m[0]);
      else if (m[2]) out += span("t-djtag", m[0]);
      else if (m[3]) out += span("t-dj", m[0]);
      else out += highlightTag(m[0]);
      last = m.index + m[0].length;
    }
    // A final newline needs a character after it to take up a line.
    return out + escapeHtml(source.slice(last)) + "\n ";
  }

  function field(form, name) {
    return form.querySelector('[name="' + name + '"]');
  }

  function setUp() {
    var config = document.getElementById("template-editor-config");
    var textarea = document.getElementById("id_html_body");
    if (!config || !textarea) return;
    var form = textarea.form;

    var workspace = document.createElement("div");
    workspace.className = "tpl-workspace";
    var source = document.createElement("div");
    source.className = "tpl-source";
    var editor = document.createElement("div");
    editor.className = "tpl-editor";
    var pre = document.createElement("pre");
    pre.setAttribute("aria-hidden", "true");
    pre.id = "template-highlight";
    textarea.parentNode.insertBefore(workspace, textarea);
    editor.appendChild(pre);
    editor.appendChild(textarea);
    textarea.setAttribute("spellcheck", "false");
    source.appendChild(editor);

    var preview = document.createElement("div");
    preview.className = "tpl-preview";
    preview.id = "template-live-preview";
    var subject = document.createElement("p");
    subject.className = "tpl-subject";
    subject.id = "template-live-subject";
    var frame = document.createElement("iframe");
    frame.setAttribute("sandbox", "");
    frame.setAttribute("title", "Live preview");
    var status = document.createElement("p");
    status.className = "tpl-status";
    status.id = "template-live-status";
    status.setAttribute("role", "status");
    preview.appendChild(subject);
    preview.appendChild(frame);
    preview.appendChild(status);
    workspace.appendChild(source);
    workspace.appendChild(preview);

    function paint() {
      pre.innerHTML = highlight(textarea.value);
      pre.scrollTop = textarea.scrollTop;
    }
    textarea.addEventListener("scroll", function () {
      pre.scrollTop = textarea.scrollTop;
      pre.scrollLeft = textarea.scrollLeft;
    });

    var timer = null, sent = 0;
    function refresh() {
      var body = new URLSearchParams();
      ["subject", "source_format", "layout", "html_body", "text_body"].forEach(function (name) {
        var input = field(form, name);
        if (input) body.append(name, input.value);
      });
      var token = field(form, "csrfmiddlewaretoken");
      var number = ++sent;
      status.textContent = "Rendering\u2026";
      status.classList.remove("error");
      fetch(config.dataset.previewUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": token ? token.value : "" },
        body: body
      })
        .then(function (response) { return response.json(); })
        .then(function (answer) {
          if (number !== sent) return; // a newer one is on its way
          if (answer.error) {
            status.textContent = answer.error;
            status.classList.add("error");
            return;
          }
          subject.textContent = answer.subject;
          frame.srcdoc = answer.html;
          status.textContent = "Preview with sample data (Ada Lovelace), as it will be sent.";
        })
        .catch(function () {
          if (number !== sent) return;
          status.textContent = "The preview could not be loaded.";
          status.classList.add("error");
        });
    }
    function later() {
      clearTimeout(timer);
      timer = setTimeout(refresh, 400);
    }
    textarea.addEventListener("input", function () { paint(); later(); });
    ["subject", "source_format", "layout", "text_body"].forEach(function (name) {
      var input = field(form, name);
      if (input) input.addEventListener("input", later);
      if (input) input.addEventListener("change", later);
    });
    paint();
    refresh();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUp);
  else setUp();
})();
