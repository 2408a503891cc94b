"""The bench's message templates: a plain personalised message of a given size, and the
newsletter-like multipart/alternative (text + HTML) messages of a campaign mix.

Every template is personalised per recipient (``{{email}}`` in ``To:``, the subject and
the body; campaign messages also ``{{first_name}}``), so no two rendered messages are
alike and DKIM hashes every body afresh, as it does for a real campaign.
"""

from __future__ import annotations

SENDER = "news@sender.bench.test"


def message_template(size: int) -> bytes:
    """A personalised message (one per recipient) of about ``size`` bytes once rendered."""
    head = ("From: Bench Sender <news@sender.bench.test>\r\n"
            "To: {{email}}\r\n"
            "Subject: fastmta bench message for {{email}}\r\n"
            "Message-ID: <{{email}}.bench@sender.bench.test>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "List-Unsubscribe: <mailto:unsub@sender.bench.test>\r\n"
            "\r\n"
            "Hello {{email}},\r\n\r\n")
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = []
    n = len(head) + 40
    while n < size:
        body.append(line)
        n += len(line)
    return (head + "".join(body)).encode()


_TEXT_LINE = "Our selection this week: new arrivals, the best sellers and a few surprises.\r\n"
_HTML_ROW = ('<tr><td class="item" style="padding:12px;font-family:Arial,sans-serif;'
             'font-size:14px;color:#333333"><a href="https://shop.sender.bench.test/p/'
             '{n}?utm_source=newsletter&amp;utm_medium=email">Product {n}</a> - '
             'a short description of the product, its price and why you will like it.'
             '</td></tr>\r\n')


def campaign_template(size: int, html: bool = True, name: str = "newsletter") -> bytes:
    """A personalised campaign message of about ``size`` bytes: multipart/alternative
    (a text part and an HTML part, 7bit, lines under 200 characters) when ``html``,
    else plain text.  Fields: ``{{email}}``, ``{{first_name}}``."""
    if not html:
        return message_template(size).replace(b"Hello {{email}}", b"Hello {{first_name}}")
    boundary = f"=_fastmta_bench_{name}"
    head = ("From: Sender News <news@sender.bench.test>\r\n"
            "To: {{first_name}} <{{email}}>\r\n"
            f"Subject: {{{{first_name}}}}, this week's {name} from Sender\r\n"
            "MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'
            "List-Unsubscribe: <https://sender.bench.test/u?e={{email}}>, "
            "<mailto:unsub@sender.bench.test>\r\n"
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            "\r\n")
    text_head = (f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n"
                 "Content-Transfer-Encoding: 7bit\r\n\r\nHello {{first_name}},\r\n\r\n")
    html_head = (f"--{boundary}\r\nContent-Type: text/html; charset=us-ascii\r\n"
                 "Content-Transfer-Encoding: 7bit\r\n\r\n"
                 "<!DOCTYPE html>\r\n<html><head><meta charset=\"us-ascii\"><title>Sender "
                 "news</title></head>\r\n<body style=\"margin:0;padding:0\">\r\n"
                 "<table role=\"presentation\" width=\"100%\">\r\n"
                 "<tr><td><h1>Hello {{first_name}}</h1></td></tr>\r\n")
    html_tail = ("<tr><td style=\"font-size:11px\">Sent to {{email}}. "
                 "<a href=\"https://sender.bench.test/u?e={{email}}\">Unsubscribe</a>"
                 "</td></tr>\r\n</table>\r\n</body></html>\r\n")
    end = f"--{boundary}--\r\n"
    fixed = len(head) + len(text_head) + len(html_head) + len(html_tail) + len(end) + 60
    budget = max(0, size - fixed)
    text_budget = budget // 6  # the text part is the short one
    text = []
    n = 0
    while n + len(_TEXT_LINE) <= text_budget:
        text.append(_TEXT_LINE)
        n += len(_TEXT_LINE)
    rows = []
    n = 0
    i = 1
    html_budget = budget - text_budget
    while True:
        row = _HTML_ROW.format(n=i)
        if n + len(row) > html_budget:
            break
        rows.append(row)
        n += len(row)
        i += 1
    return (head + text_head + "".join(text) + "\r\n" + html_head + "".join(rows)
            + html_tail + end).encode()


def first_name(i: int) -> str:
    """A deterministic personalisation value for recipient ``i``."""
    return _NAMES[i % len(_NAMES)]


_NAMES = ("Alice", "Bruno", "Chloe", "Dmitri", "Emma", "Farid", "Giulia", "Hugo", "Ines",
          "Jonas", "Keiko", "Lucas", "Maria", "Noah", "Olga", "Pedro", "Quentin", "Rosa",
          "Sven", "Thi", "Ulla", "Victor", "Wen", "Xavier", "Yasmin", "Zoe")
