"""Text-level reading of returned mail: charsets, DSN fields, addresses, bounce wording (pure).

Everything here takes strings or ``email`` messages and returns plain values; nothing
raises on odd input (unknown charsets, broken encodings, missing parts). The wording
lists cover what real MTAs and providers write in their non-standard bounces and
auto-replies, in the languages those are commonly sent in.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.header
import email.message
import email.policy
import html
import quopri
import re
from collections.abc import Iterable

from gateway.rewrite.tokens import VERP_PREFIX

# Charsets that mail declares but Python names differently or more narrowly.
_CHARSETS: dict[str, tuple[str, ...]] = {
    "gb2312": ("gb18030",), "gbk": ("gb18030",), "x-gbk": ("gb18030",), "gb_2312-80": ("gb18030",),
    "euc-cn": ("gb18030",), "cp936": ("gb18030",), "big5": ("big5hkscs", "cp950"),
    "iso-2022-jp": ("iso2022_jp", "iso2022_jp_2", "iso2022_jp_ext", "cp932"),
    "shift_jis": ("cp932",), "shift-jis": ("cp932",), "x-sjis": ("cp932",), "sjis": ("cp932",),
    "windows-31j": ("cp932",), "euc-jp": ("euc_jp", "cp932"), "ks_c_5601-1987": ("cp949",),
    "euc-kr": ("cp949",), "iso-8859-1": ("cp1252",), "latin1": ("cp1252",), "us-ascii": ("cp1252",),
    "ascii": ("cp1252",), "koi8-r": ("koi8_r",), "koi8-u": ("koi8_u",),
    "unknown-8bit": (),  # raw 8-bit: UTF-8 when it decodes as such, else windows-1252
}

ADDRESS_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z][A-Za-z0-9-]{0,61}[A-Za-z0-9]")
_STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)")
REPLY_CODE_RE = re.compile(r"(?<![\w.:/-])([245][0-9][0-9])(?:[ \-]|$)|#[45]\.\d{1,3}\.\d{1,3}")
_SPACE_RE = re.compile(r"\s+")
MAX_BOUNCE_TEXT = 64 * 1024  # a bounce's own text is short; anything longer is read this far
MAX_HTML = 1024 * 1024
_NOT_RECIPIENT_LOCAL = re.compile(
    r"^(?:mailer-daemon|postmaster|hostmaster|abuse|root|nobody|double-bounce|no-?reply|donotreply|"
    r"do-not-reply|bounces?|unsubscribe\+.*|b\+[a-z0-9]{20,})$", re.IGNORECASE)
# Before an address, these words say "this is the recipient" (many languages).
_RECIPIENT_CUE = re.compile(
    r"(?:\bto|\bfor|recipients?|rcpt|address(?:es)?|mailbox|\buser|addressee|收件人|收信人|收件地址|"
    r"地址|用户|发送到|发往|寄给|宛先|あて先|宛て|送信先|受信者|получател[ьяи]|адресат|адрес|empfänger|adresse|"
    r"destinataire|destinatario|destinatário|ontvanger|mottagare|odbiorca|al\u0131c\u0131|수신자)"
    r"[^@\n]{0,14}$", re.IGNORECASE)

_RETURNED_RE = re.compile(
    r"^[ \t]*(?:-{2,}|\*{2,}|={2,})?[ \t]*(?:Below this line is a copy of the message|"
    r"This is a copy of (?:the|your) message|"
    r"(?:[\w ]{0,30}?)(?:original|undelivered|returned|unsent|rejected) message "
    r"(?:follows|headers? follows?)|"
    r"(?<=[-*=] )(?:the )?original message|Returned message|Message header follows|"
    r"The header of the original message is following|Original message headers:|"
    r"原始邮件|原邮件|元のメッセージ|Исходное сообщение|Ursprüngliche Nachricht|Message d'origine|"
    r"Headers of the original message|Your message reads)",
    re.IGNORECASE | re.MULTILINE)
# A returned message pasted without a marker: its header section starts like this.
_HEADER_START_RE = re.compile(
    r"^(?:Return-Path|Received|DKIM-Signature|Delivered-To|X-Original-To|Message-ID|MIME-Version):[ \t]"
    r".*\n(?:[ \t].*\n)*[A-Za-z][\w-]{1,60}:[ \t]", re.IGNORECASE | re.MULTILINE)

_BOUNCE_SUBJECT = re.compile(
    r"undeliver|not delivered|non[- ]?deliver|delivery (?:status|failure|failed|problem|error|has failed|"
    r"report|notification|incomplete)|mail delivery|failure notice|returned mail|returned to sender|"
    r"could not (?:be )?deliver|unable to deliver|mail system error|message (?:delivery|not delivered|"
    r"could not)|delayed mail|delivery delayed|delivery (?:is )?delay|could not send message|"
    r"(?:un|nicht )zustellbar|nicht zugestellt|non remis|non distribu|non délivré|"
    r"échec (?:de (?:la )?)?(?:remise|distribution)|non recapitabile|non recapitat|mancato recapito|"
    r"no se (?:ha )?pud(?:o|ido) entregar|no se puede entregar|no entregado|"
    r"não (?:foi )?entregue|não foi possível entregar|onbestelbaar|niet (?:afgeleverd|bezorgd)|"
    r"niedostarczon|nedoručiteln|olevererbar|kunne ikke leveres|退信|退回|投递失败|投遞失敗|發送失敗|"
    r"发送失败|未送达|无法投递|無法投遞|无法送达|配信不能|配送不能|配信エラー|配信失敗|不達|返送|"
    r"недоставлен|не доставлен|не может быть доставлено|ошибка доставки|전송 실패|배달 ?실패|반송",
    re.IGNORECASE)
_BOUNCE_SENDER = re.compile(
    r"mailer[-_ ]?daemon|postmaster|mail delivery (?:sub)?system|mail ?administrator|"
    r"microsoftexchange[0-9a-f]{20,}|delivery status notification|系统退信|退信", re.IGNORECASE)
_BOUNCE_WORDING = re.compile(
    r"this is the mail system at host|created automatically by mail delivery software|"
    r"wasn't able to deliver your message|this is the qmail-send program|"
    r"following addresses had (?:permanent|transient) (?:fatal )?errors|"
    r"delivery has failed to these recipients|did not reach some or all of the intended recipients|"
    r"delivery to the following recipients? (?:failed|has been delayed)|"
    r"could not be delivered to one or more|the original message was received at|"
    r"(?:message|mail) (?:could not|couldn't|cannot|can't) be delivered|unable to deliver (?:your )?message|"
    r"your message (?:wasn't|was not|couldn't be|could not be|has not been) delivered|"
    r"transcript of session follows|sorry, we were unable to deliver|remote server returned|"
    r"has not yet been delivered|message delivery to .{1,200} (?:failed|has been delayed)|"
    r"退信原因|无法送达|投递失败|无法投递|未能成功送达|不能送达|配信できませんでした|"
    r"届けることができませんでした|配送できませんでした|не (?:может быть|было|удалось) достав|"
    r"konnte nicht zugestellt werden|n'a pas pu être (?:remis|distribu)|no (?:se )?pudo (?:ser )?entregar",
    re.IGNORECASE)
_REPLY_PREFIX = re.compile(
    r"^\s*(?:re|aw|sv|antw|odp|ynt|rif|r|fwd?|wg|tr|vs|回复|答复|転送|返信)\s*[:\uff1a]", re.IGNORECASE)
_DELAY_SUBJECT = re.compile(
    r"\bdelay|still being retried|could not send message for past|will retry|verzögert|retard|ritard|"
    r"retras|vertraagd|задерж|延迟|延遲|遅延", re.IGNORECASE)
_DELAY_BODY = re.compile(
    r"will (?:continue|keep) (?:trying|to try)|will be retried|(?:is )?still (?:trying|being retried)|"
    r"this is (?:a|only a) warning|has not yet been delivered|delivery (?:is|has been) delayed|"
    r"will retry (?:for|until|delivery)|no action is required on your part", re.IGNORECASE)
_FINAL_BODY = re.compile(r"permanent(?:ly)? (?:error|fail)|giving up|gave up|have given up|"
                         r"could not be delivered|couldn't be delivered|failed permanently", re.IGNORECASE)

_AUTO_SUBJECT_STRONG = re.compile(
    r"out of (?:the )?office|\bOOO\b|automatic(?:ally)? (?:reply|response|answer)|auto[- ]?(?:reply|respon)|"
    r"away from (?:my|the) (?:e-?mail|mail|office|desk)|abwesenheit|automatische antwort|nicht im büro|"
    r"außer haus|réponse automatique|absent du bureau|respuesta autom[aá]tica|fuera de la oficina|"
    r"risposta automatica|fuori (?:ufficio|sede)|resposta autom[aá]tica|automatisch antwoord|"
    r"afwezigheid|autosvar|automaattinen vastaus|odpowied[zź] automatyczna|automatická odpověď|"
    r"自动回复|自動回覆|自动答复|自動回复|自動応答|自動返信|自動回答|Автоответ|Автоматический ответ|"
    r"자동 ?응답|부재중|otomatik yan[\u0131i]t", re.IGNORECASE)
_AUTO_SUBJECT_WEAK = re.compile(r"vacation|on holiday|on leave|\babsence\b|ausente|assente|afwezig|"
                                r"\babwesend|不在|休假|отпуск", re.IGNORECASE)
# Said only by auto-responders, in the first lines of their text (for those that set no header).
_AUTO_BODY = re.compile(
    r"this is an? automat(?:ed|ic) (?:reply|response|message|answer)|\bauto-?reply\b|automatic reply|"
    r"i am (?:currently )?out of (?:the )?office|"
    r"i(?:'m| am| will be) (?:currently )?(?:away|on (?:annual )?leave|on vacation|on holiday)|"
    r"out of (?:the )?office (?:until|from|till|through|and)|"
    r"limited access to (?:my )?e-?mail|(?:respond|reply|get back to you) .{0,40}(?:upon|on|after) my return|"
    r"nicht im büro|außer haus|abwesenheitsnotiz|je suis absente?|je serai absente?|réponse automatique|"
    r"estoy fuera de la oficina|respuesta autom[aá]tica|sono fuori (?:ufficio|sede)|risposta automatica|"
    r"estou fora do escrit[oó]rio|resposta autom[aá]tica|ben (?:ik )?afwezig|"
    r"自动回复|自動回覆|自动答复|自動返信|自動応答|不在にしております|"
    r"я в отпуске|автоматический ответ|автоответ",
    re.IGNORECASE)
_AUTO_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-autogenerated", "x-vacation")


# --- charsets and MIME parts -------------------------------------------------------------


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset (or its superset), else UTF-8, never failing."""
    names = _CHARSETS.get((charset or "").strip().lower(), (charset,) if charset else ())
    for name in (*names, "utf-8"):
        try:
            return data.decode(name)
        except (LookupError, UnicodeDecodeError, TypeError):
            continue
    if not names:
        return data.decode("cp1252", errors="replace")
    return data.decode(names[0] if _known(names[0]) else "cp1252", errors="replace")


def _known(codec: str) -> bool:
    try:
        b"".decode(codec)
    except LookupError:
        return False
    return True


def fix_surrogates(text: str) -> str:
    """compat32 keeps 8-bit header/body bytes as surrogates: give them back as characters."""
    if not any("\udc80" <= ch <= "\udcff" for ch in text):
        return text
    return decode_bytes(text.encode("utf-8", "surrogateescape"), None)


def part_text(part: email.message.Message) -> str:
    """The decoded text of a MIME part (transfer encoding and charset undone), LF line ends."""
    return _part_text(part).replace("\r\n", "\n").replace("\r", "\n")


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list):
        text = "\n\n".join(_sub_text(sub) for sub in payload if isinstance(sub, email.message.Message))
        return _undo_transfer_encoding(part, text)
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return fix_surrogates(str(payload or ""))
    try:
        charset = part.get_content_charset()
    except (LookupError, ValueError):
        charset = None
    return decode_bytes(data, charset)


def _sub_text(sub: email.message.Message) -> str:
    # decode=True hands back the raw bytes; the str payload would have 8-bit text replaced by "?".
    body = sub.get_payload(decode=True) if not sub.is_multipart() else None
    tail = decode_bytes(body, None) if isinstance(body, bytes) else ""
    return header_block(sub) + ("\n\n" + tail if tail.strip() else "")


def _undo_transfer_encoding(part: email.message.Message, text: str) -> str:
    """A message/* part should never be encoded, but some MTAs base64 the DSN fields."""
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    try:
        if cte == "base64":
            raw = base64.b64decode("".join(text.split()).encode("ascii", "ignore"), validate=False)
            return decode_bytes(raw, None)
        if cte == "quoted-printable":
            return decode_bytes(quopri.decodestring(text.encode("utf-8", "surrogateescape")), None)
    except (binascii.Error, ValueError):
        return text
    return text


def header_text(value: object) -> str:
    """A header value decoded (RFC 2047, raw 8-bit) and folded into one line."""
    if value is None:
        return ""
    # compat32 gives raw 8-bit header values as Header objects (charset unknown-8bit).
    raw: str | email.header.Header = value if isinstance(value, email.header.Header) else fix_surrogates(
        str(value))
    try:
        pieces = email.header.decode_header(raw)
    except (ValueError, LookupError, AssertionError, UnicodeError):
        return one_line(str(raw), 2000)
    text = "".join(
        decode_bytes(chunk, charset) if isinstance(chunk, bytes) else chunk for chunk, charset in pieces)
    return one_line(text, 2000)


def header_block(message: email.message.Message) -> str:
    lines = []
    for name, value in message.items():
        lines.append(f"{name}: {header_text(value)}")
    return "\n".join(lines)


def parse_headers(text: str) -> email.message.Message | None:
    """A header section given as text (a returned message inline in a bounce), else None."""
    head = text.lstrip("\r\n").split("\n\n", 1)[0]
    if not re.match(r"[A-Za-z0-9-]{1,76}:", head):
        return None
    return email.message_from_string(head + "\n\n", policy=email.policy.compat32)


def html_to_text(markup: str) -> str:
    markup = markup[:MAX_HTML]
    markup = re.sub(r"(?is)<(style|script|head)\b.*?</\1\s*>", " ", markup)
    markup = re.sub(r"(?i)<br\s*/?>|</(?:p|div|tr|li|h\d|table|blockquote)\s*>", "\n", markup)
    markup = re.sub(r"(?s)<[^>]{0,2000}>", " ", markup)
    return html.unescape(markup)


def one_line(text: str, limit: int) -> str:
    return _SPACE_RE.sub(" ", text).strip()[:limit]


# --- DSN fields ----------------------------------------------------------------------------


def status_blocks(text: str, multi: tuple[str, ...] = ()) -> tuple[dict[str, str], list[dict[str, str]]]:
    """RFC 3464 field groups: (per-message fields, one dict per recipient).

    Tolerant of MTAs that forget the blank line between recipients: a second
    Final-Recipient starts a new group anyway.
    """
    blocks: list[dict[str, str]] = [{}]
    last = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            last = ""
            continue
        if line[:1] in (" ", "\t") and last:
            blocks[-1][last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not re.fullmatch(r"[a-z0-9-]{1,60}", name):
            continue
        if _starts_recipient(name, blocks[-1]):
            blocks.append({})
        _add_field(blocks[-1], name, value.strip(), multi)
        last = name
    per_message: dict[str, str] = {}
    recipients = []
    for block in blocks:
        if {"final-recipient", "original-recipient", "action"} & block.keys():
            recipients.append(block)
        else:
            for name, value in block.items():
                _add_field(per_message, name, value, multi)
    return per_message, recipients


def _starts_recipient(name: str, block: dict[str, str]) -> bool:
    if name == "final-recipient":
        return name in block
    return name == "original-recipient" and (name in block or "action" in block)


def _add_field(fields: dict[str, str], name: str, value: str, multi: tuple[str, ...]) -> None:
    if name in fields:
        if name in multi:
            fields[name] += "\n" + value
        return
    fields[name] = value


def enhanced_status(text: str) -> str:
    match = _STATUS_RE.search(text)
    return match.group(0) if match else ""


def clean_address(value: str) -> str:
    """The address in a DSN field or header value, also a quoted or UTF-8 local part (RFC 6531)."""
    value = _unescape_utf8_type(value.strip()).strip().strip("<>").strip()
    if _WHOLE_ADDRESS_RE.fullmatch(value):
        return normalize_address(value)
    match = ADDRESS_RE.search(value)
    if match:
        return normalize_address(match.group(0))
    value = value.strip("\"' ")
    return value if value and " " not in value and len(value) <= 320 else ""


_WHOLE_ADDRESS_RE = re.compile(r'(?:"(?:[^"\\]|\\.){1,64}"|[^\s@<>()",;:]{1,64})@[^\s@<>()",;:]{1,255}')


def _unescape_utf8_type(value: str) -> str:
    """RFC 6533 "utf-8" address type: non-ASCII written as \\x{HEX}."""
    return re.sub(r"\\x\{([0-9A-Fa-f]{1,6})\}", lambda m: chr(int(m.group(1), 16)), value)


def normalize_address(address: str) -> str:
    local, _, domain = address.strip().strip("<>").rpartition("@")
    return f"{local}@{domain.rstrip('.').lower()}" if local else address.strip()


def addresses(text: str) -> list[str]:
    return list(dict.fromkeys(normalize_address(m.group(0)) for m in ADDRESS_RE.finditer(text)))


# --- VERP --------------------------------------------------------------------------------


def verp_tokens(texts: Iterable[str], bounce_domain: str) -> tuple[str, ...]:
    domain = re.escape(bounce_domain) if bounce_domain else r"[A-Za-z0-9.-]+"
    prefix = re.escape(VERP_PREFIX)
    pattern = re.compile(rf"(?<![A-Za-z0-9._%+=-]){prefix}([A-Za-z0-9]{{8,100}})@{domain}"
                         r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])", re.IGNORECASE)
    found: dict[str, None] = {}
    for text in texts:
        for match in pattern.finditer(text):
            found.setdefault(match.group(1), None)
    return tuple(found)


# --- what kind of mail ---------------------------------------------------------------------


def bounce_by_envelope(sender: str, subject: str, body: str) -> bool:
    """Subject or sender of a bounce (and not someone replying to or forwarding one)."""
    daemon = bool(_BOUNCE_SENDER.search(sender))
    if _REPLY_PREFIX.match(subject) and not daemon:
        return False
    if _BOUNCE_SUBJECT.search(subject) and not _AUTO_SUBJECT_STRONG.search(subject):
        return True
    return daemon and bool(REPLY_CODE_RE.search(body) or _STATUS_RE.search(body)
                           or _BOUNCE_WORDING.search(body))


def bounce_by_wording(subject: str, body: str) -> bool:
    if _REPLY_PREFIX.match(subject):
        return False
    return bool(_BOUNCE_WORDING.search(body[:20000]))


def is_report_digest(subject: str) -> bool:
    """DMARC aggregate and TLS-RPT mail: reports about our domain, not about a delivery."""
    return bool(re.match(r"\s*(?:report domain:|\[?dmarc|tls report|smtp tls report)", subject,
                         re.IGNORECASE))


def is_auto_reply(message: email.message.Message, subject: str, body: str = "") -> bool:
    submitted = str(message.get("Auto-Submitted", "")).strip().lower()
    if submitted and not submitted.startswith("no"):
        return True
    for name in _AUTO_HEADERS:
        value = str(message.get(name, "")).strip().lower()
        if value and value not in ("no", "false", "0"):
            return True
    if "auto_reply" in str(message.get("Precedence", "")).lower():
        return True
    if _AUTO_SUBJECT_STRONG.search(subject) or _AUTO_BODY.search(body[:3000]):
        return True
    return bool(_AUTO_SUBJECT_WEAK.search(subject)) and not _REPLY_PREFIX.match(subject)


def mentions_delay(subject: str, body: str) -> bool:
    if _DELAY_SUBJECT.search(subject):
        return True
    return bool(_DELAY_BODY.search(body[:20000])) and not _FINAL_BODY.search(body[:20000])


# --- bounce text -------------------------------------------------------------------------


def split_returned_message(body: str) -> tuple[str, str]:
    """(the bounce's own text, the returned original message) for single-part bounces."""
    marker = _RETURNED_RE.search(body)
    headers = _HEADER_START_RE.search(body)
    if headers is not None and (marker is None or headers.start() < marker.start()):
        return body[:headers.start()], body[headers.start():]
    if marker is None:
        return body, ""
    rest = body[marker.end():].split("\n", 1)
    return body[:marker.start()], rest[1] if len(rest) > 1 else ""


def recipients_in_text(body: str, exclude: Iterable[str]) -> list[tuple[str, str]]:
    """(address, diagnostic) for each failed recipient a plain-text bounce names."""
    lines = body[:MAX_BOUNCE_TEXT].replace("\r\n", "\n").split("\n")
    excluded = {a.lower() for a in exclude}
    hits = _address_hits(lines, excluded)
    chosen = [(i, a) for i, a, placed in hits if placed]
    if not chosen and len({a for _, a, _ in hits}) <= 5:
        # No address stands where a recipient would: take the few mentioned, each with its
        # own text, rather than give several recipients one shared (maybe wrong) reason.
        chosen = [(i, a) for i, a, _ in hits]
    order = list(dict.fromkeys(a for _, a in chosen))
    result = []
    for address in order[:100]:
        result.append((address, _diagnostic_for(address, chosen, lines)))
    return result


def _address_hits(lines: list[str], excluded: set[str]) -> list[tuple[int, str, bool]]:
    hits = []
    for number, line in enumerate(lines):
        if len(line) > 2000:
            line = line[:2000]
        for match in ADDRESS_RE.finditer(line):
            address = normalize_address(match.group(0))
            local = address.rpartition("@")[0]
            if address.lower() in excluded or _NOT_RECIPIENT_LOCAL.match(local):
                continue
            before = line[:match.start()]
            placed = (not before.strip(" \t<\"'*•-·>(:[")) or bool(_RECIPIENT_CUE.search(before[-40:]))
            hits.append((number, address, placed))
    return hits


def _diagnostic_for(address: str, chosen: list[tuple[int, str]], lines: list[str]) -> str:
    coded: list[str] = []
    plain: list[str] = []
    for index, (start, hit) in enumerate(chosen):
        if hit != address:
            continue
        end = next((n for n, other in chosen[index + 1:] if other != address and n > start), len(lines))
        for paragraph in _paragraphs(lines[start:min(end, start + 40)], address):
            target = coded if _has_reply(paragraph) else plain
            if paragraph not in target:
                target.append(paragraph)
    return one_line(" | ".join(coded[:3] or plain[:4]), 1000)


def _paragraphs(lines: list[str], address: str) -> list[str]:
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    lead = re.compile(rf"^[<'\"]?{re.escape(address)}[>'\"]?\s*:?\s*", re.IGNORECASE)
    texts = []
    for paragraph in paragraphs:
        text = lead.sub("", " ".join(paragraph))
        bare = text.replace(f"<{address}>", "").replace(address, "").strip(" :<>'\"()-")
        if len(bare) > 2:
            texts.append(text)
    return texts


def _has_reply(text: str) -> bool:
    return bool(REPLY_CODE_RE.search(text) or _STATUS_RE.search(text))


def best_diagnostic(body: str) -> str:
    """The most telling paragraph of a bounce that names no recipient we can use."""
    lines = body.replace("\r\n", "\n").split("\n")[:400]
    paragraphs = _paragraphs(lines, "\x00")
    coded = [p for p in paragraphs if _has_reply(p)]
    if coded:
        return one_line(" | ".join(coded[:3]), 1000)
    reasons = [p for p in paragraphs if re.search(
        r"reason|原因|理由|grund|raison|motivo|причин|error|said|returned|response|diagnos|エラー|错误",
        p, re.IGNORECASE)]
    return one_line(" | ".join(reasons[:3] or paragraphs[:3]), 1000)
