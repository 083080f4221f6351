"""A second synthetic task for the trainer sweeps: free-form JSON extraction from invoice emails.

"invoice-extract": the user message is a short email about an invoice, written from varied
templates with filler (greeting, line items, a purchase-order reference, sign-off); the system
prompt asks for one JSON object of eight fields::

    {"vendor": "Northbridge Office Supplies Ltd", "customer": "Keller & Sons",
     "invoice_number": "INV-2024-04817", "issue_date": "2024-03-14", "due_date": "2024-04-13",
     "currency": "EUR", "total": 1284.5, "line_items": 3}

Dates are written in four formats and answered in ISO form, amounts with a symbol or a code and
answered as a number and an ISO currency code, ``due_date`` is null when the email gives none.
The teacher is deterministic: it answers from the invoice the email was written from, so its
answers are always right. Prompts are about 80-150 tokens (SmolLM2 tokenizer), answers 65-95.

``write_store`` puts N teacher exchanges of the task into a store as the gateway and the
sidecar would: chat.completions requests from 60 users (their ids hashed into the record's
``user`` as the gateway hashes them), answers with usage, timestamps spread over one day, one
Parquet part per hourly partition. ``config`` is the settings file ``protege train --config``
reads for it (the trainer section of what ``protege demo`` writes, for this task): no label
rule, since a free-form extraction has no single class field, so the test set is
``test-indist`` and the headline metric is the mean per-field agreement.

The generators (``invoice``, ``email``, ``exchanges``) are pure and seeded with
``random.Random``; ``records`` adds fresh request ids (ULIDs at the exchanges' times).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from core.ids import new_id
from core.keys import Partition, part_key, partition_of
from core.record import SCHEMA_VERSION, records_to_table
from core.redact import Redactor
from core.store import open_store
from gateway.capture import hash_id
from sidecar.parts import parquet_writer

TASK: Final = "invoice-extract"
ALIAS: Final = "invoices"  # the model name the application asks for
TEACHER_MODEL: Final = "sweep-teacher"
FINGERPRINT: Final = "protege-sweep-teacher"  # a synthetic teacher, not an LLM
FIELDS: Final = (
    "vendor", "customer", "invoice_number", "issue_date", "due_date", "currency", "total",
    "line_items",
)  # fmt: skip
SYSTEM: Final = (
    "Extract the invoice from the email. Reply with one JSON object and nothing else, with the "
    "keys vendor, customer, invoice_number, issue_date and due_date (YYYY-MM-DD, due_date null "
    "if not given), currency (ISO code), total (a number) and line_items (how many items)."
)
USERS: Final = 60  # distinct users the traffic comes from (splits go by user)
MAX_TOKENS: Final = 200
DAY: Final = datetime(2024, 5, 1, tzinfo=UTC)  # the day the exchanges are spread over
_SALT: Final = b"protege"  # the gateway's default hash_salt, its user-hashing key
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_NAMES: Final = (
    "Northbridge", "Hartwell", "Bluefin", "Calder", "Oakmont", "Riverside", "Stonegate",
    "Larkspur", "Meridian", "Ashford", "Pinecrest", "Harbor Point", "Greystone", "Silverline",
)  # fmt: skip
_TRADES: Final = (
    "Office Supplies", "Logistics", "Catering", "Print Works", "IT Services", "Cleaning",
    "Electrical", "Packaging", "Furniture", "Consulting",
)  # fmt: skip
_FORMS: Final = ("Ltd", "GmbH", "Inc.", "LLC", "AG", "& Co.")
_CUSTOMERS: Final = (
    "Keller & Sons", "Acme Robotics", "Vance Dental Clinic", "Orchard Bakery", "Tidewater Hotel",
    "Brightpath School", "Mosaic Architects", "Quill Publishing", "Elm Street Pharmacy",
    "Fjord Outdoor", "Sunrise Care Home", "Copperleaf Studio",
)  # fmt: skip
_GOODS: Final = (
    "toner cartridges", "A4 paper boxes", "desk lamps", "office chairs", "network cables",
    "hours of on-site support", "catering trays", "shipping pallets", "monitor arms",
    "cleaning visits", "printed brochures", "laptop docks", "filing cabinets", "coffee sacks",
)  # fmt: skip
_PEOPLE: Final = (
    "Maria Lopez", "Tom Becker", "Aisha Khan", "Jonas Weber", "Emily Carter", "Luca Rossi",
    "Sofia Novak", "Daniel Kim",
)  # fmt: skip
_CURRENCIES: Final = {"USD": "$", "EUR": "€", "GBP": "£", "CHF": "", "SEK": ""}
_MONTHS: Final = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_FILLER: Final = (
    "Thank you for your business.", "Let us know if anything looks off.",
    "The goods were delivered on Tuesday as agreed.", "Our bank details have not changed.",
    "Please quote the invoice number with your payment.", "Hope the week is going well.",
    "A paper copy follows by post.", "Sorry for sending this a little late.",
)  # fmt: skip

# The wordings of an email's parts (str.format templates).
_GREETING: Final = ("Dear {customer} accounts team,", "Hello {customer},", "Hi all at {customer},")
_INTRO: Final = (
    "Please find attached invoice {number} from {vendor}.",
    "{vendor} has issued invoice {number} for your recent order.",
    "This email carries our invoice no. {number} ({vendor}).",
    "Attached is invoice {number}; it is from {vendor}.",
)
_DATED: Final = ("The invoice is dated {}.", "Invoice date: {}.", "It was issued on {}.")
_TOTAL: Final = (
    "The total due is {}.", "Amount payable: {}.", "Total: {} (VAT included).",
    "That comes to {} in all.",
)  # fmt: skip
_DUE: Final = ("Payment is due by {}.", "Please pay before {}.", "Due date: {}.")
_SIGN_OFF: Final = (
    "Kind regards,\n{person}\n{vendor}", "Best,\n{person}, {vendor}",
    "Thanks,\n{person} (billing, {vendor})",
)  # fmt: skip


@dataclass(frozen=True)
class Invoice:
    """What an email is written from: the facts the teacher's answer states."""

    vendor: str
    customer: str
    invoice_number: str
    issue_date: date
    due_date: date | None
    currency: str
    total_cents: int
    items: tuple[tuple[int, str], ...]  # (quantity, goods) per line

    def fields(self) -> dict[str, Any]:
        """The answer's fields, in ``FIELDS`` order."""
        return {
            "vendor": self.vendor,
            "customer": self.customer,
            "invoice_number": self.invoice_number,
            "issue_date": self.issue_date.isoformat(),
            "due_date": self.due_date.isoformat() if self.due_date else None,
            "currency": self.currency,
            "total": self.total_cents / 100,
            "line_items": len(self.items),
        }


def invoice(rng: random.Random) -> Invoice:
    """A random invoice."""
    vendor = f"{rng.choice(_NAMES)} {rng.choice(_TRADES)}"
    if rng.random() < 0.7:
        vendor += f" {rng.choice(_FORMS)}"
    issued = date(2024, 1, 1) + timedelta(days=rng.randrange(366))
    due = issued + timedelta(days=rng.choice((14, 30, 45, 60))) if rng.random() < 0.7 else None
    goods = rng.sample(_GOODS, rng.randint(1, 3))
    return Invoice(
        vendor=vendor,
        customer=rng.choice(_CUSTOMERS),
        invoice_number=_invoice_number(rng, issued.year),
        issue_date=issued,
        due_date=due,
        currency=rng.choice(sorted(_CURRENCIES)),
        total_cents=rng.randrange(1_500, 2_500_000),
        items=tuple((rng.randint(2, 40), g) for g in goods),
    )


def _invoice_number(rng: random.Random, year: int) -> str:
    n = rng.randrange(1, 100_000)
    forms = (f"INV-{year}-{n:05}", f"{n:06}", f"A/{year}/{n % 1000:03}", f"FAC-{n:05}")
    return rng.choice(forms)


def written_date(day: date, rng: random.Random) -> str:
    """``day`` as an email might write it: 14 March 2024, March 14, 2024, 2024-03-14, 14.03.2024."""
    month = _MONTHS[day.month - 1]
    forms = (
        f"{day.day} {month} {day.year}",
        f"{month} {day.day}, {day.year}",
        day.isoformat(),
        f"{day.day:02}.{day.month:02}.{day.year}",
    )
    return rng.choice(forms)


def written_amount(cents: int, currency: str, rng: random.Random) -> str:
    """An amount as an email might write it: $1,284.50, EUR 1,284.50, 1284.50 EUR."""
    amount, grouped = f"{cents / 100:.2f}", f"{cents / 100:,.2f}"
    symbol = _CURRENCIES[currency]
    forms = [f"{currency} {grouped}", f"{grouped} {currency}", f"{amount} {currency}"]
    if symbol:
        forms.append(f"{symbol}{grouped}")
    return rng.choice(forms)


def email(inv: Invoice, rng: random.Random) -> str:
    """The email about ``inv``: greeting, the facts in varied order and wording, filler."""
    names = {"number": inv.invoice_number, "vendor": inv.vendor, "customer": inv.customer}
    facts = [
        rng.choice(_DATED).format(written_date(inv.issue_date, rng)),
        _items(inv.items, rng),
        rng.choice(_TOTAL).format(written_amount(inv.total_cents, inv.currency, rng)),
    ]
    if inv.due_date is not None:
        facts.append(rng.choice(_DUE).format(written_date(inv.due_date, rng)))
    if rng.random() < 0.4:
        facts.append(f"Your purchase order reference was PO-{rng.randrange(1000, 9999)}.")
    facts += rng.sample(_FILLER, rng.randint(0, 1))
    rng.shuffle(facts)
    parts = [
        rng.choice(_GREETING).format(**names),
        "",
        rng.choice(_INTRO).format(**names),
        "".join(f if f.endswith("\n") else f + " " for f in facts).rstrip(),
        "",
        rng.choice(_SIGN_OFF).format(person=rng.choice(_PEOPLE), **names),
    ]
    return "\n".join(parts)


def _items(items: tuple[tuple[int, str], ...], rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "It covers:\n" + "\n".join(f"- {q} x {goods}" for q, goods in items) + "\n"
    return "Items: " + ", ".join(f"{q} {goods}" for q, goods in items) + "."


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def answer(inv: Invoice) -> str:
    """The teacher's (always correct) answer: the invoice's fields as one JSON object."""
    return orjson.dumps(inv.fields()).decode()


def exchanges(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` exchanges as ``(user, email text, teacher answer)``: the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        inv = invoice(rng)
        out.append((f"user{rng.randrange(USERS)}", email(inv, rng), answer(inv)))
    return out


def _tokens(text: str) -> int:
    """A rough token count (four characters a token) for the usage block."""
    return max(1, (len(text) + 3) // 4)


def record(user: str, text: str, reply: str, when: datetime, latency_ms: float) -> dict[str, Any]:
    """One teacher exchange as the gateway spools it (``ts`` in integer microseconds)."""
    ts_us = (when - _EPOCH) // timedelta(microseconds=1)
    request_id = new_id(now_ms=ts_us // 1000)
    request = {"model": ALIAS, "messages": messages(text), "user": user, "temperature": 0,
               "max_tokens": MAX_TOKENS}  # fmt: skip
    usage = {"prompt_tokens": _tokens(orjson.dumps(request["messages"]).decode()),
             "completion_tokens": _tokens(reply)}  # fmt: skip
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    response = {
        "id": f"chatcmpl-{request_id.lower()}", "object": "chat.completion",
        "created": int(when.timestamp()), "model": TEACHER_MODEL,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": usage,
    }  # fmt: skip
    return {
        "request_id": request_id, "schema_version": SCHEMA_VERSION, "ts": ts_us, "task": TASK,
        "endpoint": "chat.completions", "backend": "teacher", "adapter": None,
        "route": "teacher", "shadow_of": None, "stream": False, "complete": True,
        "status": 200, "error": None, "request": orjson.dumps(request).decode(),
        "response": orjson.dumps(response).decode(),
        "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
        "latency_ms": round(latency_ms, 3), "ttft_ms": None,
        "client": hash_id("sweep-app-key", _SALT), "user": hash_id(user, _SALT), "detail": None,
    }  # fmt: skip


def records(n: int, seed: int = 0, day: datetime = DAY) -> list[dict[str, Any]]:
    """``n`` exchange records over ``day`` in time order, redacted as the gateway redacts."""
    rng = random.Random(seed + 1)
    moments = sorted(day + timedelta(seconds=rng.uniform(0, 86_400)) for _ in range(n))
    redactor = Redactor((), builtin=True)
    out = []
    for (user, text, reply), when in zip(exchanges(n, seed), moments, strict=True):
        row = record(user, text, reply, when, rng.uniform(300.0, 1500.0))
        row["request"] = redactor.json(row["request"].encode()).decode()
        row["response"] = redactor.json(row["response"].encode()).decode()
        out.append(row)
    return out


async def write_store(store_uri: str, n: int, seed: int = 0, day: datetime = DAY) -> int:
    """Put ``n`` exchanges of the task into the store, one part per hourly partition (as the
    sidecar ships a segment); returns how many records were written."""
    by_partition: defaultdict[Partition, list[dict[str, Any]]] = defaultdict(list)
    for row in records(n, seed, day):
        by_partition[partition_of(row["task"], row["ts"])].append(row)
    async with open_store(store_uri) as store:
        with tempfile.TemporaryDirectory(prefix="protege-sweep-") as tmp:
            for partition, rows in sorted(by_partition.items()):
                path = Path(tmp) / "part.parquet"
                await asyncio.to_thread(_write_part, path, rows)
                await store.put_file(part_key(partition, new_id()), path)
    return sum(len(rows) for rows in by_partition.values())


def _write_part(path: Path, rows: list[dict[str, Any]]) -> None:
    with parquet_writer(path) as writer:
        writer.write_table(records_to_table(rows))


def config(store_uri: str) -> dict[str, Any]:
    """The settings ``protege train --config`` reads for the task (as ``protege demo`` writes
    them for its own): the store, and the task's curation. No label rule: the answer is an
    object of many fields, scored field by field."""
    return {
        "store": store_uri,
        "trainer": {"tasks": {TASK: {
            # a fifth of the users, by a hash of each (9 of the 60: 150 test examples of
            # 1,000), enough to tell settings apart while evaluation stays short on a CPU
            "test_fraction": 0.2,
            "test_balanced_per_class": 0,  # no classes: test-indist is the test set
            "must_match": [r"^\s*\{"],  # a JSON object, nothing before it
        }}},
    }  # fmt: skip
